//! Starting instances and getting their results from any process.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use tokio::sync::OnceCell;
use tracing::{debug, info_span, Instrument};

use serde::de::DeserializeOwned;

use crate::dtask::Call;
use crate::engine::DEFAULT_STATE_BUDGET;
use crate::error::Error;
use crate::protocol::codec::{decode, decode_value};
use crate::protocol::message::{ResultRecord, Status};
use crate::protocol::outgoing::Outgoing;
use crate::protocol::state::{new_claim_nonce, InstanceId, InstanceState, Outcome, ReplyTo};
use crate::registry::Registry;
use crate::store::{
    Fact, FactKind, InstanceStore, IntoPayloads, IntoStore, PayloadStore, Payloads,
    DEFAULT_PAYLOAD_THRESHOLD,
};
use crate::transport::{IntoTransport, Transport};

mod budget;
mod cancel;
mod events;
mod handle;
mod manage;
mod replies;

use handle::Early;
pub use handle::{Handle, Untyped};
use replies::ReplyHub;

/// Starts DTask instances and reads their results. Cheap to clone.
///
/// A client needs no registry: it can run in a process that is not a worker.
#[derive(Clone)]
pub struct Client {
    transport: Arc<dyn Transport>,
    /// Where the facts of roots are read (and starts recorded): the transport's store
    /// unless another was given.
    store: Option<Arc<dyn InstanceStore>>,
    registry: Option<Registry>,
    /// The largest start, event or resume this client sends, in bytes: the workers' state
    /// budget, which a start's arguments count against from its first step.
    budget: usize,
    /// This client's reply queue and its readers, made by the first `call`.
    replies: Arc<OnceCell<ReplyHub>>,
    /// Whether the roots this client starts record their children in the store.
    records_children: bool,
    /// Where values over the threshold are kept out of band.
    payloads: Payloads,
    /// Whether the payload store was given ([`Client::with_payloads`]), rather than taken
    /// from the instance store or the transport.
    payloads_given: bool,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

impl Client {
    /// A client on `transport` (a [`Transport`] by value, or shared in an `Arc`).
    pub fn new(transport: impl IntoTransport) -> Self {
        let transport = transport.into_transport();
        let store = transport.store();
        let payloads = Payloads {
            store: payloads_of(store.as_ref(), &transport),
            threshold: DEFAULT_PAYLOAD_THRESHOLD,
        };
        Self {
            store,
            transport,
            registry: None,
            budget: DEFAULT_STATE_BUDGET,
            replies: Arc::new(OnceCell::new()),
            records_children: false,
            payloads,
            payloads_given: false,
        }
    }

    /// Keeps values over the payload threshold in `store` (and reads the values results
    /// reference from it) instead of the instance store's or the transport's: the payload
    /// store the workers use ([`WorkerConfig::payloads`](crate::WorkerConfig::payloads)).
    pub fn with_payloads(mut self, store: impl IntoPayloads) -> Self {
        self.payloads.store = Some(store.into_payloads());
        self.payloads_given = true;
        self
    }

    /// The size in bytes over which a start's arguments, an event's value or a resume
    /// value is stored out of band, the message carrying a reference (default
    /// [`DEFAULT_PAYLOAD_THRESHOLD`], 256 KiB; see
    /// [`WorkerConfig::payload_threshold`](crate::WorkerConfig::payload_threshold)). The
    /// size check ([`Client::with_state_budget`]) applies to the message as sent, the
    /// reference in it.
    pub fn with_payload_threshold(mut self, bytes: usize) -> Self {
        self.payloads.threshold = bytes;
        self
    }

    /// Reads the facts of roots from `store`, and records starts there, instead of the
    /// transport's own store ([`Transport::store`]): the store the workers write to
    /// ([`WorkerConfig::store`](crate::WorkerConfig::store)).
    pub fn with_store(mut self, store: impl IntoStore) -> Self {
        let store = store.into_store();
        if !self.payloads_given {
            self.payloads.store = payloads_of(Some(&store), &self.transport);
        }
        self.store = Some(store);
        self
    }

    /// A client whose roots ([`Client::start`] and the other starts; not
    /// [`Client::call`]) record their children, and the children theirs, in the instance
    /// store: each child is then listed with its parent ([`Filter::parent`]), has a page
    /// of its own in `dtasks-axum`, and can be read by id like a root.
    ///
    /// This costs store writes that roots alone do not make: a child's start goes with
    /// the step of its parent that starts it (one write with that step's other facts),
    /// and each child writes its finish, and its status when it suspends, as a root does
    /// — about one more store write per child. Leave it off for high-volume fan-outs
    /// whose children nobody looks at; roots are recorded either way.
    ///
    /// ```
    /// # use dtasks::{dtask, Runtime, WorkerConfig};
    /// # use dtasks::store::{Filter, Query};
    /// #[dtask]
    /// async fn double(x: u64) -> u64 { x * 2 }
    ///
    /// #[dtask]
    /// async fn sum_of_doubles(n: u64) -> u64 {
    ///     let mut sum = 0;
    ///     for i in 0..n {
    ///         sum += double(i).await;
    ///     }
    ///     sum
    /// }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), dtasks::Error> {
    /// let rt = Runtime::new(WorkerConfig::new().register(double).register(sum_of_doubles))?;
    /// let client = rt.client().recording_children();
    /// let handle = client.start(sum_of_doubles(3)).await?;
    /// assert_eq!(handle.result().await?, 6);
    /// let children = client.list(&Query::new(Filter::new().parent(handle.id().clone()))).await?;
    /// assert_eq!(children.instances.len(), 3);
    /// # Ok(()) }
    /// ```
    ///
    /// [`Filter::parent`]: crate::store::Filter::parent
    pub fn recording_children(mut self) -> Self {
        self.records_children = true;
        self
    }

    /// A client that checks names and inputs against `registry` before starting
    /// (unknown names and bad inputs fail at once instead of waiting for a worker).
    pub fn with_registry(mut self, registry: Registry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Starts `task` (a call of a `#[dtask]` function) as a new root instance.
    ///
    /// ```
    /// # use dtasks::{dtask, Runtime, WorkerConfig};
    /// #[dtask]
    /// async fn add_one(x: u64) -> u64 { x + 1 }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), dtasks::Error> {
    /// let rt = Runtime::new(WorkerConfig::new().register(add_one))?;
    /// let handle = rt.client().start(add_one(41)).await?;
    /// assert_eq!(handle.result().await?, 42);
    /// # Ok(()) }
    /// ```
    pub async fn start<T>(&self, task: Call<T>) -> Result<Handle<T>, Error> {
        let (name, input) = task.into_encoded()?;
        // A fresh random id cannot have been started: nothing to claim.
        self.publish_start(InstanceId::random(), name, input, ClaimId::No)
            .await
    }

    /// Starts `task` under the chosen `id`, once: an id that was already started (its
    /// instance is running, suspended or finished) is refused with
    /// [`Error::is_already_started`], and the second start never runs.
    ///
    /// This holds for starts from any number of clients and processes at once (exactly
    /// one wins), and through crashes: the start is published first and the id claimed
    /// after it, and a worker claims the id for a start whose client died in between, so
    /// an id is never left claimed with nothing running. After an error other than
    /// already-started (a broker outage), the start may be out: start the same id again,
    /// which either starts it or reports it already started.
    ///
    /// An id is remembered for the result retention of the transport (on RabbitMQ the
    /// claim register expires when unused for that long; in memory, never); after that it
    /// can be started again. Each start under a chosen id costs one more register than
    /// [`Client::start`] (on RabbitMQ, a queue).
    ///
    /// ```
    /// # use dtasks::{dtask, InstanceId, Runtime, WorkerConfig};
    /// #[dtask]
    /// async fn add_one(x: u64) -> u64 { x + 1 }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), dtasks::Error> {
    /// let rt = Runtime::new(WorkerConfig::new().register(add_one))?;
    /// let id = InstanceId::new("order-17")?;
    /// let handle = rt.client().start_with_id(id.clone(), add_one(41)).await?;
    /// assert_eq!(handle.result().await?, 42);
    /// let again = rt.client().start_with_id(id, add_one(1)).await.unwrap_err();
    /// assert!(again.is_already_started());
    /// # Ok(()) }
    /// ```
    pub async fn start_with_id<T>(
        &self,
        id: InstanceId,
        task: Call<T>,
    ) -> Result<Handle<T>, Error> {
        let (name, input) = task.into_encoded()?;
        self.publish_start(id, name, input, ClaimId::Yes).await
    }

    /// Starts the DTask registered as `name` with `input`: the MessagePack encoding of the
    /// tuple of its arguments (an array, e.g. `[41]` for one argument). For the CLI and
    /// callers in other languages; read the result with [`Handle::result_bytes`].
    pub async fn start_by_name(
        &self,
        name: &str,
        input: Vec<u8>,
    ) -> Result<Handle<Untyped>, Error> {
        check_name(name)?;
        self.publish_start(InstanceId::random(), name.to_string(), input, ClaimId::No)
            .await
    }

    /// [`Client::start_by_name`] under the chosen `id`, once: an id already started is
    /// refused with [`Error::is_already_started`], as [`Client::start_with_id`] says.
    pub async fn start_by_name_with_id(
        &self,
        id: InstanceId,
        name: &str,
        input: Vec<u8>,
    ) -> Result<Handle<Untyped>, Error> {
        check_name(name)?;
        self.publish_start(id, name.to_string(), input, ClaimId::Yes)
            .await
    }

    /// Runs `task` (a call of a `#[dtask]` function) as a new root instance and waits for
    /// its result, which comes back on this client's reply queue: one queue per client,
    /// made by the first call, instead of a result register per instance.
    ///
    /// The work is as durable as any instance's; what differs is the result. It reaches
    /// only this call: the instance has no id to look up later and reports no status, and
    /// if this process is gone when the result arrives, nobody receives it (it waits in
    /// the reply queue until that expires). Use [`Client::start`] when the result must
    /// outlive the caller or be read from another process. On a transport without reply
    /// queues ([`Transport::replies`]) this is [`Client::start`] followed by
    /// [`Handle::result`].
    ///
    /// ```
    /// use dtasks::{dtask, Runtime, WorkerConfig};
    ///
    /// #[dtask]
    /// async fn add_one(x: u64) -> u64 {
    ///     x + 1
    /// }
    ///
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), dtasks::Error> {
    /// let rt = Runtime::new(WorkerConfig::new().register(add_one))?;
    /// assert_eq!(rt.client().call(add_one(41)).await?, 42);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn call<T: DeserializeOwned>(&self, task: Call<T>) -> Result<T, Error> {
        let (name, input) = task.into_encoded()?;
        if self.transport.replies().is_none() {
            let h: Handle<T> = self
                .publish_start(InstanceId::random(), name, input, ClaimId::No)
                .await?;
            return h.result().await;
        }
        self.check(&name, &input)?;
        let hub = self.hub().await?;
        let id = InstanceId::random();
        let input = self.payloads.externalize(&id, input).await?;
        // Waiting before the start is out: the result may come back at once.
        let waiting = hub.wait(&id);
        let state = InstanceState::new(
            id.clone(),
            name.clone(),
            input,
            ReplyTo::Client {
                client: hub.client.clone(),
            },
        );
        // The root of the instance's trace, or a child of the caller's span.
        let span = info_span!("dtask.call", instance = %id, dtask = %name);
        let start = span.in_scope(|| Outgoing::start(&state));
        self.check_size(&format!("the start of `{name}`"), &start)?;
        let record = async {
            self.transport.publish(vec![start]).await?;
            waiting.result().await
        }
        .instrument(span)
        .await?;
        let bytes = self.payloads.resolve(outcome_bytes(&record)?).await?;
        decode_value(&bytes).map_err(Error::decode)
    }

    /// With a registry: fails at once for an unknown name or an input that does not
    /// decode as the arguments.
    fn check(&self, name: &str, input: &[u8]) -> Result<(), Error> {
        if let Some(reg) = &self.registry {
            let entry = reg.get(name).ok_or_else(|| Error::unknown_dtask(name))?;
            // Builds (never polls) the body: checks that the input decodes as the arguments.
            let _unpolled_body = entry
                .run
                .start(input)
                .map_err(|f| Error::bad_input(f.message().to_string()))?;
        }
        Ok(())
    }

    /// Publishes the start of a root; with `claim`, claims its id after that (see
    /// [`Client::start_with_id`]).
    pub(crate) async fn publish_start<T>(
        &self,
        id: InstanceId,
        name: String,
        input: Vec<u8>,
        claim: ClaimId,
    ) -> Result<Handle<T>, Error> {
        self.check(&name, &input)?;
        let store = self.store()?;
        // Durable before the start that references it is published.
        let input = self.payloads.externalize(&id, input).await?;
        let mut state = InstanceState::new(id.clone(), name, input, ReplyTo::Root);
        state.claim = (claim != ClaimId::No).then(new_claim_nonce);
        state.records_children = self.records_children;
        // The result comes back to this client's reply queue too: waiting for it needs
        // no lookup.
        let early = match self.transport.replies() {
            Some(_) => {
                let hub = self.hub().await?;
                state.notify = Some(hub.client.clone());
                Some(Arc::new(Early::new(hub.wait(&id), self.replies.clone())))
            }
            None => None,
        };
        // The root of the instance's trace, or a child of the caller's span.
        let start = info_span!("dtask.start", instance = %id, dtask = %state.name)
            .in_scope(|| Outgoing::start(&state));
        self.check_size(&format!("the start of `{}`", state.name), &start)?;
        // Recorded while the start goes out, not before it: the store's rules take the
        // facts of an instance in any order (a Started fact after the worker's first status
        // or even its finish changes no status), and both are durable before this returns,
        // so a read by id from any process then finds the instance. A failed record fails
        // the start, which may be out then, as after a publish whose confirm was lost.
        let started = Fact::new(
            id.clone(),
            state.name.clone(),
            self.transport.now(),
            FactKind::Started { parent: None },
        )
        .with_records_children(state.records_children);
        futures::try_join!(
            store.record(vec![started]),
            self.transport.publish(vec![start])
        )?;
        // Claimed only once the start is out: a client that dies before this leaves a
        // start that a worker claims for it, never a claim with nothing started.
        if let (ClaimId::Yes, Some(nonce)) = (claim, state.claim) {
            if !store.claim(&id, nonce).await? {
                debug!(instance = %id, "the id was already started; this start loses");
                return Err(Error::already_started(id.as_str()));
            }
        }
        let mut handle = self.handle(id);
        handle.early = early;
        Ok(handle)
    }

    /// This client's reply queue, made by the first call or start.
    async fn hub(&self) -> Result<&ReplyHub, Error> {
        self.replies
            .get_or_try_init(|| ReplyHub::start(self.transport.clone()))
            .await
    }

    /// The instance store, or an error saying that there is none.
    pub(crate) fn store(&self) -> Result<&Arc<dyn InstanceStore>, Error> {
        self.store.as_ref().ok_or_else(no_store)
    }

    /// A handle to the root instance `id` (started earlier, maybe by another process).
    pub fn handle<T>(&self, id: InstanceId) -> Handle<T> {
        Handle {
            id,
            store: self.store.clone(),
            payloads: self.payloads.clone(),
            early: None,
            _t: PhantomData,
        }
    }

    /// The status of the root instance `id`; [`Error::is_not_found`] when unknown.
    pub async fn status(&self, id: &InstanceId) -> Result<Status, Error> {
        Ok(self.instance(id).await?.status)
    }
}

/// Whether a start claims its id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ClaimId {
    /// A random id: nothing to claim.
    No,
    /// A chosen id: the start carries a claim nonce, and the client claims the id with it
    /// once the start is published.
    Yes,
    /// The start carries a claim nonce, but the client stops before claiming: what a
    /// client killed between its two steps leaves behind (for tests).
    #[cfg(feature = "test-util")]
    PublishOnly,
}

/// The payload store of a process given `store` on `transport`: the instance store's, else
/// the transport's.
fn payloads_of(
    store: Option<&Arc<dyn InstanceStore>>,
    transport: &Arc<dyn Transport>,
) -> Option<Arc<dyn PayloadStore>> {
    store
        .and_then(|s| s.payloads())
        .or_else(|| transport.payloads())
}

fn check_name(name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > 200 {
        return Err(Error::bad_input("a DTask name has 1 to 200 bytes"));
    }
    Ok(())
}

fn no_store() -> Error {
    Error::config(
        "there is no instance store (the transport keeps none and none was given): start \
         instances with Client::call, which returns the result to the caller, or give the \
         client and the workers a store",
    )
}

fn outcome_bytes(record: &[u8]) -> Result<Vec<u8>, Error> {
    let rec: ResultRecord = decode(record)?;
    match rec.outcome {
        Outcome::Ok(b) => Ok(b),
        Outcome::Failed(f) => Err(Error::failed(f)),
    }
}

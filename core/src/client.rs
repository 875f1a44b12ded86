//! Starting instances and getting their results from any process.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::sync::{oneshot, OnceCell};
use tracing::{debug, info_span, warn, Instrument};

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
    Fact, FactKind, InstanceInfo, InstanceStore, IntoPayloads, IntoStore, PayloadStore, Payloads,
    DEFAULT_PAYLOAD_THRESHOLD,
};
use crate::transport::{IntoTransport, Reply, Transport};

mod budget;
mod cancel;
mod events;
mod manage;

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
        // Known first: once the start is out, the instance may finish at once.
        let started = Fact::new(
            id.clone(),
            state.name.clone(),
            self.transport.now(),
            FactKind::Started { parent: None },
        )
        .with_records_children(state.records_children);
        store.record(vec![started]).await?;
        self.transport.publish(vec![start]).await?;
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

type Waiters = Arc<Mutex<HashMap<InstanceId, oneshot::Sender<Vec<u8>>>>>;

/// A client's reply queue: one reader task hands each result to the call waiting for it.
struct ReplyHub {
    /// The reply queue's name.
    client: String,
    waiters: Waiters,
    reader: tokio::task::JoinHandle<()>,
}

impl ReplyHub {
    async fn start(transport: Arc<dyn Transport>) -> Result<Self, Error> {
        let client = format!("c-{}", InstanceId::random());
        let queues = transport
            .replies()
            .ok_or_else(|| Error::config("this transport has no reply queues"))?;
        let replies = queues.consume_replies(&client).await?;
        let waiters: Waiters = Arc::default();
        let reader = tokio::spawn(read_replies(replies, waiters.clone()));
        Ok(Self {
            client,
            waiters,
            reader,
        })
    }

    /// Registers a call waiting for the result of `id`.
    fn wait(&self, id: &InstanceId) -> Waiting {
        let (tx, rx) = oneshot::channel();
        lock(&self.waiters).insert(id.clone(), tx);
        Waiting {
            id: id.clone(),
            waiters: self.waiters.clone(),
            rx,
        }
    }
}

impl Drop for ReplyHub {
    fn drop(&mut self) {
        // The last clone of the client is gone: stop reading (unread replies stay queued),
        // and tell any call still waiting.
        self.reader.abort();
        lock(&self.waiters).clear();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A call waiting for its result; dropped, it stops waiting.
struct Waiting {
    id: InstanceId,
    waiters: Waiters,
    rx: oneshot::Receiver<Vec<u8>>,
}

impl Waiting {
    async fn result(mut self) -> Result<Vec<u8>, Error> {
        (&mut self.rx)
            .await
            .map_err(|_| Error::transport("the reply queue's reader stopped"))
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        lock(&self.waiters).remove(&self.id);
    }
}

async fn read_replies(mut replies: BoxStream<'static, Result<Reply, Error>>, waiters: Waiters) {
    while let Some(next) = replies.next().await {
        match next {
            Ok(reply) => {
                let waiting = lock(&waiters).remove(&reply.instance);
                match waiting {
                    Some(tx) => {
                        let _ = tx.send(reply.body);
                    }
                    // A second result of redone work, or the result of a dropped call.
                    None => debug!(instance = %reply.instance, "a reply nobody waits for"),
                }
                if let Err(e) = reply.settle.ack().await {
                    warn!(error = %e, "acking a reply failed; it may come again");
                }
            }
            Err(e) => warn!(error = %e, "reading the reply queue failed"),
        }
    }
    // The stream ended: the calls still waiting get an error.
    lock(&waiters).clear();
}

/// The result type of handles from [`Client::start_by_name`]: read them with
/// [`Handle::result_bytes`], or convert with [`Handle::typed`].
#[derive(Debug, Clone, Copy)]
pub enum Untyped {}

/// A handle to a root instance: its id, its status and its result.
pub struct Handle<T> {
    id: InstanceId,
    store: Option<Arc<dyn InstanceStore>>,
    /// Where a result stored out of band is read.
    payloads: Payloads,
    /// The result on its way to this client's reply queue (a handle from a start).
    early: Option<Arc<Early>>,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for Handle<T> {
    fn clone(&self) -> Self {
        Self {
            id: self.id.clone(),
            store: self.store.clone(),
            payloads: self.payloads.clone(),
            early: self.early.clone(),
            _t: PhantomData,
        }
    }
}

/// The news that a root this process started finished, as its result comes back on the
/// reply queue: awaited once, kept for every clone of the handle. Only the news is used:
/// the result that stands is read from the store.
struct Early {
    waiting: Mutex<Option<Waiting>>,
    finished: OnceCell<bool>,
    /// The reply queue's reader stays while a handle may wait on it, even when the
    /// client that started the instance is gone.
    _hub: Arc<OnceCell<ReplyHub>>,
}

impl Early {
    fn new(waiting: Waiting, hub: Arc<OnceCell<ReplyHub>>) -> Self {
        Self {
            waiting: Mutex::new(Some(waiting)),
            finished: OnceCell::new(),
            _hub: hub,
        }
    }

    /// Whether the reply came (`false` when the reply queue's reader stopped first).
    async fn finished(&self) -> bool {
        *self
            .finished
            .get_or_init(|| async {
                let waiting = lock(&self.waiting).take();
                match waiting {
                    Some(w) => w.result().await.is_ok(),
                    None => false,
                }
            })
            .await
    }
}

impl<T> fmt::Debug for Handle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle").field("id", &self.id).finish()
    }
}

impl<T> Handle<T> {
    /// The instance's id: keep it to get the result later with [`Client::handle`].
    pub fn id(&self) -> &InstanceId {
        &self.id
    }

    /// The instance's status; [`Error::is_not_found`] when the store holds nothing of it.
    pub async fn status(&self) -> Result<Status, Error> {
        Ok(self.info().await?.status)
    }

    /// What the store knows of the instance; [`Error::is_not_found`] when nothing.
    pub async fn info(&self) -> Result<InstanceInfo, Error> {
        let store = self.store.as_ref().ok_or_else(no_store)?;
        store
            .get(&self.id)
            .await?
            .ok_or_else(|| Error::not_found(self.id.as_str()))
    }

    /// Waits for the result and returns it as MessagePack bytes; [`Error::is_not_found`]
    /// at once when the store holds nothing of the instance.
    ///
    /// A handle from [`Client::start`] learns of the finish on the client's reply queue and
    /// then reads the result (no polling); any other handle waits for it in the instance
    /// store. Either way the result is the one the store recorded first.
    pub async fn result_bytes(&self) -> Result<Vec<u8>, Error> {
        let store = self.store.as_ref().ok_or_else(no_store)?;
        // The reply says that it finished; the store holds the result that stands (the
        // first recorded: the reply of a step redone after a crash may carry another).
        let finished = match &self.early {
            Some(early) => early.finished().await,
            None => false,
        };
        let info = if finished {
            store.read_finished(&self.id).await?
        } else {
            store.wait_finished(&self.id).await?
        };
        let bytes = info
            .result_bytes()
            .unwrap_or_else(|| Err(Error::transport("a finished instance without its result")))?;
        // A result stored out of band is read from the payload store.
        self.payloads.resolve(bytes).await
    }

    /// The same instance with a different result type.
    pub fn typed<U>(self) -> Handle<U> {
        Handle {
            id: self.id,
            store: self.store,
            payloads: self.payloads,
            early: self.early,
            _t: PhantomData,
        }
    }
}

fn outcome_bytes(record: &[u8]) -> Result<Vec<u8>, Error> {
    let rec: ResultRecord = decode(record)?;
    match rec.outcome {
        Outcome::Ok(b) => Ok(b),
        Outcome::Failed(f) => Err(Error::failed(f)),
    }
}

impl<T: DeserializeOwned> Handle<T> {
    /// Waits for the instance to finish and returns its result, or
    /// [`Error::is_failed`] with its [`Failure`](crate::Failure).
    pub async fn result(&self) -> Result<T, Error> {
        let bytes = self.result_bytes().await?;
        decode_value(&bytes).map_err(Error::decode)
    }

    /// The result if the instance has finished, without waiting.
    pub async fn try_result(&self) -> Result<Option<T>, Error> {
        match self.info().await?.result_bytes() {
            None => Ok(None),
            Some(bytes) => {
                let bytes = self.payloads.resolve(bytes?).await?;
                decode_value(&bytes).map(Some).map_err(Error::decode)
            }
        }
    }
}

//! The settings of a worker, written once for every place that runs workers.

use std::time::Duration;

use crate::engine::DEFAULT_STATE_BUDGET;
use crate::error::Error;
use crate::registry::{DTaskFn, Registry};
use crate::store::{
    IntoPayloads, IntoStore, SharedPayloads, SharedStore, DEFAULT_PAYLOAD_THRESHOLD,
};

/// The default of [`WorkerConfig::inline_steps`].
pub const DEFAULT_INLINE_STEPS: usize = 32;

/// The default of [`WorkerConfig::inline_time`].
const INLINE_TIME: Duration = Duration::from_millis(200);

/// How long a worker hands back a message of a newer build before failing its instance.
const DEFAULT_NEWER_PATIENCE: Duration = Duration::from_secs(15 * 60);

/// The settings of a worker: which DTasks it runs and how. One type for every place that
/// runs workers: [`Worker::new`](crate::Worker::new), [`Runtime::new`](crate::Runtime::new)
/// and `dtasks_actors::WorkerPod::new`.
///
/// Setters chain; a registration that fails (a function that is not a `#[dtask]`, two
/// DTasks under one name) is kept and reported, with every other one, when the worker is
/// built.
///
/// ```
/// use std::time::Duration;
/// use dtasks::{dtask, Runtime, WorkerConfig};
///
/// #[dtask]
/// async fn double(x: u64) -> u64 { x * 2 }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), dtasks::Error> {
/// let config = WorkerConfig::new()
///     .register(double)
///     .concurrency(16)
///     .inline_time(Duration::from_millis(50));
/// let rt = Runtime::new(config)?;
/// assert_eq!(rt.client().call(double(21)).await?, 42);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub(crate) registry: Registry,
    /// Every registration that failed, in order.
    problems: Vec<String>,
    pub(crate) concurrency: usize,
    pub(crate) state_budget: usize,
    pub(crate) dedupe_window: usize,
    pub(crate) max_redeliveries: u32,
    pub(crate) inline_steps: usize,
    pub(crate) inline_time: Duration,
    pub(crate) summary_every: Option<Duration>,
    pub(crate) store: Option<SharedStore>,
    pub(crate) newer_patience: Duration,
    pub(crate) payloads: Option<SharedPayloads>,
    pub(crate) payload_threshold: usize,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            registry: Registry::new(),
            problems: Vec::new(),
            concurrency: 64,
            state_budget: DEFAULT_STATE_BUDGET,
            dedupe_window: 10_000,
            max_redeliveries: 5,
            inline_steps: DEFAULT_INLINE_STEPS,
            inline_time: INLINE_TIME,
            summary_every: None,
            store: None,
            newer_patience: DEFAULT_NEWER_PATIENCE,
            payloads: None,
            payload_threshold: DEFAULT_PAYLOAD_THRESHOLD,
        }
    }
}

impl WorkerConfig {
    /// Records the facts of root instances (status, result) in `store` instead of the
    /// transport's own store ([`Transport::store`](crate::Transport::store)): e.g. the
    /// PostgreSQL store of `dtasks-postgres`. Clients that read them must use the same
    /// store ([`Client::with_store`](crate::Client::with_store)).
    pub fn store(mut self, store: impl IntoStore) -> Self {
        self.store = Some(SharedStore(store.into_store()));
        self
    }

    /// Keeps values over the [payload threshold](Self::payload_threshold) in `store`
    /// instead of the instance store's ([`InstanceStore::payloads`]) or the transport's
    /// ([`Transport::payloads`]). Clients that read them must use the same store
    /// ([`Client::with_payloads`](crate::Client::with_payloads)).
    ///
    /// [`InstanceStore::payloads`]: crate::store::InstanceStore::payloads
    /// [`Transport::payloads`]: crate::transport::Transport::payloads
    pub fn payloads(mut self, store: impl IntoPayloads) -> Self {
        self.payloads = Some(SharedPayloads(store.into_payloads()));
        self
    }

    /// The size in bytes over which an encoded value (a child's arguments, a result, a
    /// value a `DTask::run` returned, the input of the next run) is stored out of band and
    /// travels as a reference of about 100 bytes (default
    /// [`DEFAULT_PAYLOAD_THRESHOLD`], 256 KiB). Values at or below it travel inline, in
    /// the state. Without a payload store every value travels inline.
    ///
    /// Each value stored costs one confirmed write before the step's messages are
    /// published, and each step of an instance reads every value its state references
    /// before it runs (a replayed body decodes them all again).
    pub fn payload_threshold(mut self, bytes: usize) -> Self {
        self.payload_threshold = bytes;
        self
    }

    /// The defaults, with no DTask registered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the `#[dtask]` function `f` (pass the function itself:
    /// `register(charge)`); the worker consumes its queue.
    pub fn register<F, M>(mut self, f: F) -> Self
    where
        F: DTaskFn<M>,
    {
        if let Err(e) = self.registry.register(f) {
            self.problems.push(e.detail());
        }
        self
    }

    /// Registers every function in `registry`.
    pub fn registry(mut self, registry: &Registry) -> Self {
        if let Err(e) = self.registry.extend(registry) {
            self.problems.push(e.detail());
        }
        self
    }

    /// Registers every `#[dtask]` function linked into the binary.
    pub fn register_all(mut self) -> Self {
        match Registry::all() {
            Ok(all) => self.registry(&all),
            Err(e) => {
                self.problems.push(e.detail());
                self
            }
        }
    }

    /// How long this worker hands back a message written by a newer build of dtasks (an
    /// envelope revision above [`ENVELOPE_VERSION`](crate::ENVELOPE_VERSION)) for a newer
    /// worker to take, before it fails the message's instance (default 15 minutes).
    ///
    /// During a rolling upgrade, workers of the old build and clients or workers of the
    /// new one run side by side. A message the old build cannot read is put back (after a
    /// pause of a second, so that it goes round the consumers rather than in a tight loop)
    /// and a worker of the new build takes it. When no such worker takes it within the
    /// patience (the new build was rolled back, or only clients were upgraded), the
    /// message is dead-lettered with a reason that says so, and its instance fails with
    /// [`Failure::is_dead_lettered`](crate::Failure::is_dead_lettered): a root's waiter
    /// and status see the failure, and so does a parent that keeps its state in its
    /// mailbox. A child whose parent rides in its message cannot be failed without reading
    /// the parent: its dead letter stays, and a worker of the new build takes it when it
    /// is replayed (`dtasks dead-letters replay`). A mailbox item of a newer build is
    /// handed back the same way, with its instance failed once the patience is over.
    ///
    /// The patience is counted by each worker from when it first saw the message; a
    /// restart starts it again.
    pub fn newer_message_patience(mut self, patience: Duration) -> Self {
        self.newer_patience = patience;
        self
    }

    /// How many steps run at once (default 64). A step holds its slot while it runs and
    /// gives it back before its messages are published: a step waiting for the broker's
    /// confirms does not keep a due timer or a new start waiting. The deliveries held at
    /// once are bounded by the transport (the broker's prefetch counts).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// The largest message (state included) an instance may produce, in bytes (default
    /// 4 MiB). An instance past it fails with [`Failure::is_state_too_large`].
    ///
    /// [`Failure::is_state_too_large`]: crate::Failure::is_state_too_large
    pub fn state_budget(mut self, bytes: usize) -> Self {
        self.state_budget = bytes;
        self
    }

    /// How many recently handled message ids a worker remembers to drop redeliveries of
    /// work it already finished (default 10,000; 0 turns it off). A redelivery that comes
    /// while the first delivery is still being handled waits for it: dropped if that
    /// handling published its outputs, handled if it failed. This only saves work:
    /// correctness never depends on it.
    pub fn dedupe_window(mut self, n: usize) -> Self {
        self.dedupe_window = n;
        self
    }

    /// How many steps one delivery may run inline (default [`DEFAULT_INLINE_STEPS`]; 0
    /// turns it off).
    ///
    /// When a step hands its instance on with exactly one task message (a sequential
    /// await: a child's start carrying the parent's state, or a child's result carrying
    /// it back; not a [`DTask::yield_now`](crate::DTask::yield_now), which stays a durable
    /// checkpoint) and the worker runs that DTask, the worker runs the next step at once
    /// instead of publishing the message and consuming it again. Durability is unchanged:
    /// the delivery is acknowledged only after the messages of the last step run are
    /// confirmed, so a crash redoes the whole run from the delivery, as it would redo one
    /// step. Fan-outs (several messages), timers and mailbox messages are always
    /// published, so parallel work still spreads over the workers; a run also stops
    /// inlining after [`inline_time`](Self::inline_time).
    pub fn inline_steps(mut self, n: usize) -> Self {
        self.inline_steps = n;
        self
    }

    /// How long a delivery may have been handled and still run a next step inline
    /// (default 200 ms): a bound on the work redone after a crash, and on how long one
    /// delivery holds its slot.
    pub fn inline_time(mut self, limit: Duration) -> Self {
        self.inline_time = limit;
        self
    }

    /// How often a failing delivery is retried before it is dead-lettered (default 5).
    ///
    /// A task message past it (its step failed to publish, or its worker died, at every
    /// delivery) goes to the dead-letter queue with the reason, and its instance fails with
    /// [`Failure::is_dead_lettered`](crate::Failure::is_dead_lettered): a root's waiter and
    /// status see the failure, a child's parent receives it as a child failure.
    pub fn max_redeliveries(mut self, n: u32) -> Self {
        self.max_redeliveries = n;
        self
    }

    /// Logs a one-line summary (processed, in flight) at info level every `every`
    /// (default: never).
    pub fn summary_every(mut self, every: Duration) -> Self {
        self.summary_every = Some(every);
        self
    }

    /// The names of the DTasks registered so far, sorted.
    pub fn dtasks(&self) -> Vec<String> {
        self.registry.names()
    }

    /// Checks the configuration: every failed registration, and a worker with nothing to
    /// run, reported together in one error.
    pub fn validate(&self) -> Result<(), Error> {
        let mut problems = self.problems.clone();
        if self.registry.names().is_empty() {
            problems.push("a worker needs at least one registered DTask".to_string());
        }
        match problems.len() {
            0 => Ok(()),
            1 => Err(Error::config(problems.remove(0))),
            n => Err(Error::config(format!(
                "{n} problems: {}",
                problems.join("; ")
            ))),
        }
    }
}

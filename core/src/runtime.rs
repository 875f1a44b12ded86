//! The embedded runtime: workers and a client on the in-memory transport, in this process.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::Error;
use crate::memory::MemoryTransport;
use crate::registry::{DTaskFn, Registry};
use crate::{Client, Worker, WorkerStats};

/// Configures a [`Runtime`].
#[derive(Debug, Default)]
pub struct RuntimeBuilder {
    registry: Registry,
    errors: Vec<Error>,
    workers: Option<usize>,
    concurrency: Option<usize>,
    virtual_time: bool,
    duplicate: bool,
    dedupe_window: Option<usize>,
    state_budget: Option<usize>,
    mailbox_retention: Option<Duration>,
}

impl RuntimeBuilder {
    /// Registers the `#[dtask]` function `f`.
    pub fn register<F, M>(mut self, f: F) -> Self
    where
        F: DTaskFn<M>,
    {
        if let Err(e) = self.registry.register(f) {
            self.errors.push(e);
        }
        self
    }

    /// Registers every `#[dtask]` function linked into the binary.
    pub fn register_all(mut self) -> Self {
        match Registry::all() {
            Ok(all) => {
                if let Err(e) = self.registry.extend(&all) {
                    self.errors.push(e);
                }
            }
            Err(e) => self.errors.push(e),
        }
        self
    }

    /// How many workers share the transport (default 1). More than one exercises the
    /// same hand-offs as separate processes do.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n.max(1));
        self
    }

    /// Deliveries each worker handles at once (default 64).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = Some(n);
        self
    }

    /// Timers fire only when [`Runtime::advance`] moves the clock.
    pub fn virtual_time(mut self) -> Self {
        self.virtual_time = true;
        self
    }

    /// Every message is delivered twice.
    pub fn duplicate_delivery(mut self) -> Self {
        self.duplicate = true;
        self
    }

    /// See [`WorkerBuilder::dedupe_window`](crate::WorkerBuilder::dedupe_window).
    pub fn dedupe_window(mut self, n: usize) -> Self {
        self.dedupe_window = Some(n);
        self
    }

    /// See [`WorkerBuilder::state_budget`](crate::WorkerBuilder::state_budget).
    pub fn state_budget(mut self, bytes: usize) -> Self {
        self.state_budget = Some(bytes);
        self
    }

    /// Mailboxes unused for `retention` are deleted, as on a broker (see
    /// [`MemoryTransportBuilder::mailbox_retention`](crate::MemoryTransportBuilder::mailbox_retention)).
    pub fn mailbox_retention(mut self, retention: Duration) -> Self {
        self.mailbox_retention = Some(retention);
        self
    }

    /// Starts the workers on the current tokio runtime.
    ///
    /// # Panics
    /// Outside of a tokio runtime.
    pub fn build(self) -> Result<Runtime, Error> {
        if let Some(e) = self.errors.into_iter().next() {
            return Err(e);
        }
        let mut t = MemoryTransport::builder();
        if self.virtual_time {
            t = t.virtual_time();
        }
        if self.duplicate {
            t = t.duplicate_delivery();
        }
        if let Some(r) = self.mailbox_retention {
            t = t.mailbox_retention(r);
        }
        let transport = t.build();
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut workers = Vec::new();
        let mut handles = Vec::new();
        for _ in 0..self.workers.unwrap_or(1) {
            let mut b = Worker::builder(transport.clone()).registry(&self.registry);
            if let Some(c) = self.concurrency {
                b = b.concurrency(c);
            }
            if let Some(n) = self.dedupe_window {
                b = b.dedupe_window(n);
            }
            if let Some(n) = self.state_budget {
                b = b.state_budget(n);
            }
            let worker = b.build()?;
            handles.push(worker.clone());
            let mut stop = stop_rx.clone();
            workers.push(tokio::spawn(async move {
                worker
                    .run_until(async move {
                        let _ = stop.wait_for(|s| *s).await;
                    })
                    .await
            }));
        }
        let client = Client::new(transport.clone()).with_registry(self.registry.clone());
        Ok(Runtime {
            transport,
            client,
            stop: stop_tx,
            workers,
            handles,
        })
    }
}

/// Workers and a client on the in-memory transport: the embedded default.
///
/// ```
/// use std::time::Duration;
/// use dtasks::{dtask, DTask, Runtime};
///
/// #[dtask]
/// async fn remind(days: u64) -> String {
///     DTask::delay(Duration::from_secs(days * 86_400)).await;
///     format!("{days} days later")
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), dtasks::Error> {
/// let rt = Runtime::builder().register(remind).virtual_time().build()?;
/// let h = rt.client().start(remind(30)).await?;
/// rt.wait_idle().await;
/// rt.advance(Duration::from_secs(30 * 86_400));
/// assert_eq!(h.result().await?, "30 days later");
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Runtime {
    transport: MemoryTransport,
    client: Client,
    stop: watch::Sender<bool>,
    workers: Vec<JoinHandle<Result<(), Error>>>,
    handles: Vec<Worker>,
}

impl Runtime {
    /// The counters of all workers, summed.
    pub fn stats(&self) -> WorkerStats {
        self.handles
            .iter()
            .map(Worker::stats)
            .fold(WorkerStats::default(), |a, b| a + b)
    }

    /// Configures a runtime.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder::default()
    }

    /// A client that starts instances on this runtime.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The in-memory transport (for its test helpers).
    pub fn transport(&self) -> &MemoryTransport {
        &self.transport
    }

    /// Under virtual time, moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.transport.advance(by);
    }

    /// Waits until nothing is queued or running (timers may still wait).
    pub async fn wait_idle(&self) {
        self.transport.wait_idle().await;
    }

    /// Stops the workers after the deliveries in flight.
    pub async fn shutdown(self) -> Result<(), Error> {
        let _ = self.stop.send(true);
        for w in self.workers {
            match w.await {
                Ok(r) => r?,
                Err(e) => return Err(Error::transport(e)),
            }
        }
        Ok(())
    }
}

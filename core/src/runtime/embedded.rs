//! The embedded runtime: workers and a client on the in-memory transport, in this process.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::config::WorkerConfig;
use super::worker::{Worker, WorkerStats};
use crate::client::Client;
use crate::error::Error;
use crate::transport::{MemoryTransport, MemoryTransportBuilder};

/// Configures a [`Runtime`] beyond its workers' settings: how many workers, the
/// in-memory transport's test modes, and its retentions.
#[derive(Debug)]
pub struct RuntimeBuilder {
    config: WorkerConfig,
    workers: usize,
    transport: MemoryTransportBuilder,
}

impl RuntimeBuilder {
    /// How many workers share the transport (default 1). More than one exercises the
    /// same hand-offs as separate processes do.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n.max(1);
        self
    }

    /// Timers fire only when [`Runtime::advance`] moves the clock.
    pub fn virtual_time(mut self) -> Self {
        self.transport = self.transport.virtual_time();
        self
    }

    /// Every message is delivered twice.
    pub fn duplicate_delivery(mut self) -> Self {
        self.transport = self.transport.duplicate_delivery();
        self
    }

    /// Mailboxes unused for `retention` are deleted, as on a broker (see
    /// [`MemoryTransportBuilder::mailbox_retention`]).
    pub fn mailbox_retention(mut self, retention: Duration) -> Self {
        self.transport = self.transport.mailbox_retention(retention);
        self
    }

    /// Values stored out of band longer ago than `retention` are removed, whatever their
    /// instance (see [`MemoryTransportBuilder::payload_retention`]): a bound on the memory
    /// that large values take, the values of `Client::call` roots included, which no
    /// purge reaches. An instance that waits longer than that loses its values. A zero
    /// retention is refused by [`build`](Self::build).
    pub fn payload_retention(mut self, retention: Duration) -> Self {
        self.transport = self.transport.payload_retention(retention);
        self
    }

    /// Starts the workers on the current tokio runtime; fails with every problem of the
    /// workers' configuration.
    ///
    /// # Panics
    /// Outside of a tokio runtime.
    pub fn build(self) -> Result<Runtime, Error> {
        self.config.validate()?;
        if self
            .transport
            .payload_retention
            .is_some_and(|r| r.is_zero())
        {
            return Err(Error::invalid("the payload retention cannot be zero"));
        }
        let transport = self.transport.build();
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut workers = Vec::new();
        let mut handles = Vec::new();
        for _ in 0..self.workers {
            let worker = Worker::new(transport.clone(), self.config.clone())?;
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
        let mut client = Client::new(transport.clone())
            .with_registry(self.config.registry.clone())
            .with_state_budget(self.config.state_budget);
        // The workers' store, when one was given: the client reads what they write.
        if let Some(store) = &self.config.store {
            client = client.with_store(store.0.clone());
        }
        // And their payload store and threshold.
        if let Some(payloads) = &self.config.payloads {
            client = client.with_payloads(payloads.0.clone());
        }
        client = client.with_payload_threshold(self.config.payload_threshold);
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
/// use dtasks::{dtask, DTask, Runtime, WorkerConfig};
///
/// #[dtask]
/// async fn remind(days: u64) -> String {
///     DTask::delay(Duration::from_secs(days * 86_400)).await;
///     format!("{days} days later")
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), dtasks::Error> {
/// let rt = Runtime::builder(WorkerConfig::new().register(remind))
///     .virtual_time()
///     .build()?;
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

    /// Starts a runtime of one worker with the settings of `config`, on the current tokio
    /// runtime; fails with every problem of `config`.
    ///
    /// # Panics
    /// Outside of a tokio runtime.
    pub fn new(config: WorkerConfig) -> Result<Runtime, Error> {
        Self::builder(config).build()
    }

    /// Configures a runtime whose workers have the settings of `config`.
    pub fn builder(config: WorkerConfig) -> RuntimeBuilder {
        RuntimeBuilder {
            config,
            workers: 1,
            transport: MemoryTransport::builder(),
        }
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

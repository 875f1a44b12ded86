//! Worker pods for [dtasks]: what a deployment runs.
//!
//! A [`WorkerPod`] is a small actor tree on [ractor]: a supervisor that starts one or more
//! consumer actors, each running a [`dtasks::Worker`] on the pod's transport, restarts a
//! consumer whose loop fails (with backoff), logs a one-line progress summary at info
//! level, and shuts down gracefully: on SIGTERM or Ctrl-C (or a future of your choice) the
//! consumers stop taking messages, finish the ones in flight, and the pod returns. A
//! message in flight when the process is killed outright is redelivered by the broker.
//!
//! ```
//! use std::time::Duration;
//! use dtasks::{dtask, MemoryTransport, WorkerConfig};
//! use dtasks_actors::WorkerPod;
//!
//! #[dtask]
//! async fn greet(name: String) -> String {
//!     format!("hello {name}")
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), dtasks::Error> {
//! let transport = MemoryTransport::new();
//! let client = dtasks::Client::new(transport.clone());
//! let pod = WorkerPod::builder(transport, WorkerConfig::new().register(greet))
//!     .summary_every(Duration::from_secs(30))
//!     .build()?;
//! let handle = client.start(greet("pods".into())).await?;
//! let report = pod
//!     .run_until(async move {
//!         assert_eq!(handle.result().await.unwrap(), "hello pods");
//!     })
//!     .await?;
//! assert!(report.stats.processed >= 1);
//! # Ok(()) }
//! ```

mod metrics;

pub use metrics::{serve_prometheus, serve_prometheus_from_env, METRICS_ADDR_ENV, RESTARTS};

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use dtasks::{Error, IntoTransport, Transport, Worker, WorkerConfig, WorkerStats};
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::watch;
use tracing::{error, info, warn};

/// Configures a [`WorkerPod`] beyond its workers' settings.
pub struct WorkerPodBuilder {
    transport: Arc<dyn Transport>,
    config: WorkerConfig,
    consumers: usize,
    summary_every: Duration,
}

impl std::fmt::Debug for WorkerPodBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPodBuilder")
            .field("config", &self.config)
            .field("consumers", &self.consumers)
            .finish_non_exhaustive()
    }
}

impl WorkerPodBuilder {
    /// How many consumer actors (each with its own worker loop) the pod runs (default 1).
    pub fn consumers(mut self, n: usize) -> Self {
        self.consumers = n.max(1);
        self
    }

    /// How often the pod logs its one-line summary of all its consumers (default 10 s).
    pub fn summary_every(mut self, every: Duration) -> Self {
        self.summary_every = every;
        self
    }

    /// Builds the pod; fails with every problem of the workers' configuration.
    pub fn build(self) -> Result<WorkerPod, Error> {
        let workers = (0..self.consumers)
            .map(|_| Worker::new(self.transport.clone(), self.config.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(WorkerPod {
            transport: self.transport,
            workers,
            summary_every: self.summary_every,
        })
    }
}

/// A supervised group of workers: see the [crate docs](crate).
pub struct WorkerPod {
    transport: Arc<dyn Transport>,
    workers: Vec<Worker>,
    summary_every: Duration,
}

impl std::fmt::Debug for WorkerPod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPod")
            .field("consumers", &self.workers.len())
            .finish_non_exhaustive()
    }
}

/// What a pod did, returned when it stops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PodReport {
    /// The counters of all its workers.
    pub stats: WorkerStats,
    /// How many times a consumer was restarted after its loop failed.
    pub restarts: u64,
}

impl WorkerPod {
    /// A pod of one consumer on `transport` (a [`Transport`] by value, or shared in an
    /// `Arc`), its worker with the settings of `config`; fails with every problem of
    /// `config`.
    pub fn new(transport: impl IntoTransport, config: WorkerConfig) -> Result<WorkerPod, Error> {
        Self::builder(transport, config).build()
    }

    /// Configures a pod on `transport` whose workers have the settings of `config`.
    pub fn builder(transport: impl IntoTransport, config: WorkerConfig) -> WorkerPodBuilder {
        WorkerPodBuilder {
            transport: transport.into_transport(),
            config,
            consumers: 1,
            summary_every: Duration::from_secs(10),
        }
    }

    /// The pod's counters so far.
    pub fn stats(&self) -> WorkerStats {
        sum(&self.workers)
    }

    /// Runs until SIGTERM or Ctrl-C, then shuts down gracefully.
    pub async fn run_until_signal(self) -> Result<PodReport, Error> {
        self.run_until(shutdown_signal()).await
    }

    /// Runs until `shutdown` resolves, then shuts down gracefully: consumers stop taking
    /// messages and finish the ones in flight.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<PodReport, Error> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let args = PodArgs {
            transport: self.transport.clone(),
            workers: self.workers.clone(),
            stop: stop_rx,
            summary_every: self.summary_every,
        };
        let (sup, join) = Actor::spawn(None, Supervisor, args)
            .await
            .map_err(|e| Error::transport(e.to_string()))?;
        info!(consumers = self.workers.len(), dtasks = ?self.workers[0].dtasks(), "worker pod started");
        shutdown.await;
        info!("worker pod shutting down: finishing in-flight messages");
        let _ = stop_tx.send(true);
        let restarts = ractor::call!(sup, PodMsg::Drain).unwrap_or(0);
        sup.stop(None);
        let _ = join.await;
        let report = PodReport {
            stats: sum(&self.workers),
            restarts,
        };
        info!(
            processed = report.stats.processed,
            restarts, "worker pod stopped"
        );
        Ok(report)
    }
}

fn sum(workers: &[Worker]) -> WorkerStats {
    workers
        .iter()
        .map(Worker::stats)
        .fold(WorkerStats::default(), |a, b| a + b)
}

/// Resolves on SIGTERM (Unix) or Ctrl-C.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM; waiting for Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

struct PodArgs {
    transport: Arc<dyn Transport>,
    workers: Vec<Worker>,
    stop: watch::Receiver<bool>,
    summary_every: Duration,
}

enum PodMsg {
    Summary,
    Restart(usize),
    Drain(ractor::RpcReplyPort<u64>),
}

struct PodState {
    args: PodArgs,
    consumers: Vec<Option<ActorRef<ConsumerMsg>>>,
    restarts: u64,
    draining: Option<ractor::RpcReplyPort<u64>>,
}

struct Supervisor;

impl Supervisor {
    async fn start_consumer(
        myself: &ActorRef<PodMsg>,
        state: &mut PodState,
        slot: usize,
    ) -> Result<(), ActorProcessingErr> {
        let args = ConsumerArgs {
            slot,
            worker: state.args.workers[slot].clone(),
            stop: state.args.stop.clone(),
        };
        let (consumer, _) = Actor::spawn_linked(None, Consumer, args, myself.get_cell()).await?;
        state.consumers[slot] = Some(consumer);
        Ok(())
    }

    fn slot_of(state: &PodState, cell: &ractor::ActorCell) -> Option<usize> {
        state
            .consumers
            .iter()
            .position(|c| c.as_ref().is_some_and(|c| c.get_id() == cell.get_id()))
    }

    fn finish_drain_if_done(state: &mut PodState) {
        if state.consumers.iter().all(Option::is_none) {
            if let Some(port) = state.draining.take() {
                let _ = port.send(state.restarts);
            }
        }
    }
}

impl Actor for Supervisor {
    type Msg = PodMsg;
    type State = PodState;
    type Arguments = PodArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<PodMsg>,
        args: PodArgs,
    ) -> Result<PodState, ActorProcessingErr> {
        let mut state = PodState {
            consumers: vec![None; args.workers.len()],
            args,
            restarts: 0,
            draining: None,
        };
        for slot in 0..state.consumers.len() {
            Self::start_consumer(&myself, &mut state, slot).await?;
        }
        let every = state.args.summary_every;
        myself.send_interval(every, || PodMsg::Summary);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<PodMsg>,
        msg: PodMsg,
        state: &mut PodState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PodMsg::Summary => {
                let s = sum(&state.args.workers);
                let timers = state.args.transport.pending_timers().await.ok().flatten();
                if let Some(t) = timers {
                    ::metrics::gauge!(dtasks::metrics::TIMERS_HELD).set(t as f64);
                }
                info!(
                    processed = s.processed,
                    in_flight = s.in_flight,
                    suspended_timers = timers.map(|t| t as i64).unwrap_or(-1),
                    dead_lettered = s.dead_lettered,
                    duplicate_results = s.duplicate_results,
                    duplicate_starts = s.duplicate_starts,
                    restarts = state.restarts,
                    "dtasks summary"
                );
            }
            PodMsg::Restart(slot) => {
                if state.draining.is_none() && state.consumers[slot].is_none() {
                    Self::start_consumer(&myself, state, slot).await?;
                }
            }
            PodMsg::Drain(port) => {
                state.draining = Some(port);
                Self::finish_drain_if_done(state);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<PodMsg>,
        event: SupervisionEvent,
        state: &mut PodState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, failure) = match event {
            SupervisionEvent::ActorTerminated(cell, _, reason) => (cell, reason),
            SupervisionEvent::ActorFailed(cell, err) => (cell, Some(err.to_string())),
            _ => return Ok(()),
        };
        let Some(slot) = Self::slot_of(state, &cell) else {
            return Ok(());
        };
        state.consumers[slot] = None;
        let stopping = *state.args.stop.borrow() || state.draining.is_some();
        if stopping {
            Self::finish_drain_if_done(state);
        } else {
            state.restarts += 1;
            ::metrics::counter!(RESTARTS).increment(1);
            let backoff = Duration::from_millis(200 * 2u64.pow(state.restarts.min(5) as u32));
            error!(slot, reason = ?failure, ?backoff, "a consumer stopped; restarting it");
            myself.send_after(backoff, move || PodMsg::Restart(slot));
        }
        Ok(())
    }
}

struct ConsumerArgs {
    slot: usize,
    worker: Worker,
    stop: watch::Receiver<bool>,
}

enum ConsumerMsg {
    Exited(Result<(), Error>),
}

struct Consumer;

impl Actor for Consumer {
    type Msg = ConsumerMsg;
    type State = usize;
    type Arguments = ConsumerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ConsumerMsg>,
        args: ConsumerArgs,
    ) -> Result<usize, ActorProcessingErr> {
        let ConsumerArgs {
            slot,
            worker,
            mut stop,
        } = args;
        tokio::spawn(async move {
            let result = worker
                .run_until(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
            let _ = myself.cast(ConsumerMsg::Exited(result));
        });
        Ok(slot)
    }

    async fn handle(
        &self,
        myself: ActorRef<ConsumerMsg>,
        msg: ConsumerMsg,
        slot: &mut usize,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ConsumerMsg::Exited(Ok(())) => {
                myself.stop(Some(format!("consumer {slot} finished")));
                Ok(())
            }
            ConsumerMsg::Exited(Err(e)) => Err(format!("consumer {slot} failed: {e}").into()),
        }
    }
}

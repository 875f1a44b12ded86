//! The worker: consumes a transport's queues and runs the steps of DTask instances.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::engine::{Engine, Settlement, Stepped, DEFAULT_STATE_BUDGET};
use crate::error::Error;
use crate::registry::{DTaskFn, Registry};
use crate::state::TaskMessage;
use crate::transport::{Delivery, DeliveryKind, Destination, Outgoing, Published, Transport};
use crate::InstanceId;

/// How long a root's first step runs before its status is written as `Running`.
const RUNNING_AFTER: Duration = Duration::from_millis(50);

/// The default of [`WorkerBuilder::inline_steps`].
pub const DEFAULT_INLINE_STEPS: usize = 32;

/// The default of [`WorkerBuilder::inline_time`].
const INLINE_TIME: Duration = Duration::from_millis(200);

/// Configures a [`Worker`].
pub struct WorkerBuilder {
    transport: Arc<dyn Transport>,
    registry: Registry,
    errors: Vec<Error>,
    concurrency: usize,
    budget: usize,
    dedupe_window: usize,
    max_redeliveries: u32,
    inline_steps: usize,
    inline_time: Duration,
    summary_every: Option<Duration>,
}

impl std::fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerBuilder")
            .field("registry", &self.registry)
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

impl WorkerBuilder {
    /// Registers the `#[dtask]` function `f`; this worker consumes its queue.
    pub fn register<F, M>(mut self, f: F) -> Self
    where
        F: DTaskFn<M>,
    {
        if let Err(e) = self.registry.register(f) {
            self.errors.push(e);
        }
        self
    }

    /// Registers every function in `registry`.
    pub fn registry(mut self, registry: &Registry) -> Self {
        if let Err(e) = self.registry.extend(registry) {
            self.errors.push(e);
        }
        self
    }

    /// Registers every `#[dtask]` function linked into the binary.
    pub fn register_all(mut self) -> Self {
        match Registry::all() {
            Ok(all) => return self.registry(&all),
            Err(e) => self.errors.push(e),
        }
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
        self.budget = bytes;
        self
    }

    /// How many recently handled message ids this worker remembers to drop redeliveries
    /// of work it already finished (default 10,000; 0 turns it off). This only saves work:
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
    /// checkpoint) and this worker runs that DTask, the worker runs the next step at once
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
    pub fn max_redeliveries(mut self, n: u32) -> Self {
        self.max_redeliveries = n;
        self
    }

    /// Logs a one-line summary (processed, in flight) at info level every `every`.
    pub fn summary_every(mut self, every: Duration) -> Self {
        self.summary_every = Some(every);
        self
    }

    /// Builds the worker.
    pub fn build(self) -> Result<Worker, Error> {
        if let Some(e) = self.errors.into_iter().next() {
            return Err(e);
        }
        if self.registry.names().is_empty() {
            return Err(Error::config(
                "a worker needs at least one registered DTask",
            ));
        }
        let keepalive = self.transport.mailbox_retention().map(|r| r / 4);
        let clock = self.transport.clone();
        Ok(Worker {
            inner: Arc::new(Inner {
                transport: self.transport,
                engine: Engine::new(self.registry, self.budget)
                    .with_keepalive(keepalive)
                    .with_clock(Arc::new(move || clock.now())),
                concurrency: self.concurrency,
                dedupe: Mutex::new(Dedupe::new(self.dedupe_window)),
                max_redeliveries: self.max_redeliveries,
                inline_steps: self.inline_steps,
                inline_time: self.inline_time,
                summary_every: self.summary_every,
                stats: Stats::default(),
            }),
        })
    }
}

/// Runs DTask instances: consumes the task queues of its registered DTasks and the
/// mailbox doorbells, and handles each delivery (ack only after every message it caused
/// is durable).
#[derive(Clone)]
pub struct Worker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("dtasks", &self.inner.engine.registry.names())
            .finish_non_exhaustive()
    }
}

struct Inner {
    transport: Arc<dyn Transport>,
    engine: Engine,
    concurrency: usize,
    dedupe: Mutex<Dedupe>,
    max_redeliveries: u32,
    inline_steps: usize,
    inline_time: Duration,
    summary_every: Option<Duration>,
    stats: Stats,
}

#[derive(Default)]
struct Stats {
    processed: AtomicU64,
    in_flight: AtomicU64,
    dead_lettered: AtomicU64,
    duplicate_results: AtomicU64,
    inlined: AtomicU64,
}

/// Counters of a worker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerStats {
    /// Deliveries handled to completion.
    pub processed: u64,
    /// Deliveries being handled now.
    pub in_flight: u64,
    /// Deliveries moved to the dead-letter queue.
    pub dead_lettered: u64,
    /// Result writes refused because the instance's result was already recorded (work
    /// redone after a redelivery; the first result stands).
    pub duplicate_results: u64,
    /// Steps run inline, within the delivery of the step before them
    /// ([`WorkerBuilder::inline_steps`]); not counted in `processed`.
    pub inlined: u64,
}

impl std::ops::Add for WorkerStats {
    type Output = WorkerStats;

    fn add(self, o: WorkerStats) -> WorkerStats {
        WorkerStats {
            processed: self.processed + o.processed,
            in_flight: self.in_flight + o.in_flight,
            dead_lettered: self.dead_lettered + o.dead_lettered,
            duplicate_results: self.duplicate_results + o.duplicate_results,
            inlined: self.inlined + o.inlined,
        }
    }
}

struct Dedupe {
    cap: usize,
    seen: HashSet<String>,
    order: VecDeque<String>,
}

impl Dedupe {
    fn new(cap: usize) -> Self {
        Self {
            cap,
            seen: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    /// Marks `id` taken; false when it already was.
    fn take(&mut self, id: &str) -> bool {
        if self.cap == 0 {
            return true;
        }
        if self.seen.contains(id) {
            return false;
        }
        self.seen.insert(id.to_string());
        self.order.push_back(id.to_string());
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }

    fn release(&mut self, id: &str) {
        self.seen.remove(id);
    }
}

impl Worker {
    /// Configures a worker on `transport`.
    pub fn builder(transport: impl Transport) -> WorkerBuilder {
        Self::builder_arc(Arc::new(transport))
    }

    /// Configures a worker on a shared transport.
    pub fn builder_arc(transport: Arc<dyn Transport>) -> WorkerBuilder {
        WorkerBuilder {
            transport,
            registry: Registry::new(),
            errors: Vec::new(),
            concurrency: 64,
            budget: DEFAULT_STATE_BUDGET,
            dedupe_window: 10_000,
            max_redeliveries: 5,
            inline_steps: DEFAULT_INLINE_STEPS,
            inline_time: INLINE_TIME,
            summary_every: None,
        }
    }

    /// The names of the DTasks this worker runs.
    pub fn dtasks(&self) -> Vec<String> {
        self.inner.engine.registry.names()
    }

    /// The worker's counters.
    pub fn stats(&self) -> WorkerStats {
        let s = &self.inner.stats;
        WorkerStats {
            processed: s.processed.load(Ordering::Relaxed),
            in_flight: s.in_flight.load(Ordering::Relaxed),
            dead_lettered: s.dead_lettered.load(Ordering::Relaxed),
            duplicate_results: s.duplicate_results.load(Ordering::Relaxed),
            inlined: s.inlined.load(Ordering::Relaxed),
        }
    }

    /// Runs until the transport's stream ends or fails.
    pub async fn run(self) -> Result<(), Error> {
        self.run_until(std::future::pending()).await
    }

    /// Runs until `shutdown` resolves, then stops taking deliveries and finishes the ones
    /// in flight before returning (graceful shutdown).
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let inner = self.inner.clone();
        let mut stream = inner
            .transport
            .consume(inner.engine.registry.names())
            .await?;
        let permits = Arc::new(Semaphore::new(inner.concurrency));
        let mut tasks = JoinSet::new();
        tokio::pin!(shutdown);
        let mut summary = inner
            .summary_every
            .map(|d| tokio::time::interval_at(tokio::time::Instant::now() + d, d));
        let result = loop {
            let permit = tokio::select! {
                biased;
                _ = &mut shutdown => break Ok(()),
                p = permits.clone().acquire_owned() => p.expect("semaphore is never closed"),
            };
            let next = tokio::select! {
                biased;
                _ = &mut shutdown => break Ok(()),
                _ = tick(&mut summary) => {
                    let s = self.stats();
                    info!(processed = s.processed, in_flight = s.in_flight, dead_lettered = s.dead_lettered, "worker summary");
                    continue;
                }
                Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
                n = stream.next() => n,
            };
            match next {
                Some(Ok(delivery)) => {
                    // The handling future is large (it holds the whole step); boxed, the
                    // task spawned per delivery stays small and cheap to move.
                    let handler = inner.clone();
                    let handling = Box::pin(async move { handler.handle(delivery, permit).await });
                    let inner = inner.clone();
                    tasks.spawn(async move {
                        inner.stats.in_flight.fetch_add(1, Ordering::Relaxed);
                        handling.await;
                        inner.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
                        inner.stats.processed.fetch_add(1, Ordering::Relaxed);
                    });
                }
                Some(Err(e)) => break Err(e),
                None => break Ok(()),
            }
        };
        drop(stream);
        while tasks.join_next().await.is_some() {}
        result
    }
}

/// Drops the status writes an inline run made stale: every one of an instance but the last
/// (a register keeps the last write, and one publish batch need not keep their order), and
/// all of an instance whose result is in the batch (the result register answers its
/// status from then on).
fn last_status_only(outputs: Vec<Outgoing>) -> Vec<Outgoing> {
    let mut seen: HashSet<InstanceId> = outputs
        .iter()
        .filter_map(|o| match &o.destination {
            Destination::Result { instance } => Some(instance.clone()),
            _ => None,
        })
        .collect();
    let mut kept: Vec<Outgoing> = outputs
        .into_iter()
        .rev()
        .filter(|o| match &o.destination {
            Destination::Status { instance } => seen.insert(instance.clone()),
            _ => true,
        })
        .collect();
    kept.reverse();
    kept
}

async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

impl Inner {
    fn count_duplicates(&self, report: &[Published]) {
        let n = report
            .iter()
            .filter(|p| **p == Published::Duplicate)
            .count() as u64;
        if n > 0 {
            debug!(n, "duplicate results refused by the result register");
            self.stats.duplicate_results.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Runs the steps that `outputs` hand on, here, while each hands its instance on with
    /// exactly one task message for a DTask this worker runs (see
    /// [`WorkerBuilder::inline_steps`]). Returns every message still to publish, in order,
    /// with each instance's status writes but its last dropped.
    async fn inline(
        &self,
        stepped: Stepped,
        mut current: InstanceId,
        started: Instant,
    ) -> Vec<Outgoing> {
        let Stepped {
            mut outputs,
            next: mut next_msg,
        } = stepped;
        if self.inline_steps == 0 {
            return outputs;
        }
        let mut kept: Vec<Outgoing> = Vec::new();
        for _ in 0..self.inline_steps {
            if started.elapsed() >= self.inline_time {
                break;
            }
            let mut hand_offs = outputs.iter().enumerate().filter(|(_, o)| {
                matches!(
                    o.destination,
                    Destination::Task { .. }
                        | Destination::Delayed { .. }
                        | Destination::Mailbox { .. }
                )
            });
            let (Some((i, next)), None) = (hand_offs.next(), hand_offs.next()) else {
                break;
            };
            let Destination::Task { name } = &next.destination else {
                break;
            };
            // A hand-off to the instance that just ran is a yield: a durable checkpoint
            // the user asked for, so it goes through the broker.
            if !self.engine.registry.contains(name) || next.instance == current {
                break;
            }
            // The step's own message when it kept one (no decoding), else the body.
            let msg = match next_msg.take() {
                Some(msg) => msg,
                None => match self.engine.decode_task(&next.body) {
                    Ok(msg) => msg,
                    Err(_) => break,
                },
            };
            debug!(dtask = %name, message_id = %next.message_id, "running the next step inline");
            current = outputs.remove(i).instance;
            kept.append(&mut outputs);
            Stepped {
                outputs,
                next: next_msg,
            } = self
                .engine
                .handle_task_next(msg, self.transport.now())
                .await;
            self.stats.inlined.fetch_add(1, Ordering::Relaxed);
        }
        if kept.is_empty() {
            return outputs;
        }
        kept.append(&mut outputs);
        last_status_only(kept)
    }

    /// Handles one delivery. `slot` is held while the step runs and given back before its
    /// messages are published: waiting for the broker takes no slot.
    async fn handle(&self, delivery: Delivery, slot: OwnedSemaphorePermit) {
        let Delivery {
            kind,
            redeliveries,
            settle,
        } = delivery;
        match kind {
            DeliveryKind::Task { body, message_id } => {
                if redeliveries > self.max_redeliveries {
                    self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    let reason = format!("failed {redeliveries} times (retry budget exhausted)");
                    warn!(%reason, "dead-lettering a message");
                    let _ = settle.dead_letter(reason).await;
                    return;
                }
                let msg = match self.engine.decode_task(&body) {
                    Ok(m) => m,
                    Err(e) => {
                        self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                        warn!(error = %e, "dead-lettering an undecodable message");
                        let _ = settle.dead_letter(e.to_string()).await;
                        return;
                    }
                };
                if let Some(id) = &message_id {
                    let fresh = self
                        .dedupe
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .take(id);
                    if !fresh {
                        debug!(message_id = %id, "dropping a redelivery of finished work");
                        let _ = settle.ack().await;
                        return;
                    }
                }
                let span = info_span!(
                    "dtask.step",
                    message_id = message_id.as_deref().unwrap_or("")
                );
                let started = Instant::now();
                let outcome = async {
                    let running = self.engine.info(&msg).root_first_step;
                    let instance = match &msg {
                        TaskMessage::Step { state, .. } => state.id.clone(),
                        TaskMessage::Forward { instance, .. } => instance.clone(),
                    };
                    let step = self.engine.handle_task_next(msg, self.transport.now());
                    tokio::pin!(step);
                    // A root's first step reports `Running` only when it takes a while:
                    // most first steps suspend within milliseconds, and the write would
                    // cost a confirmed publish each. The write is confirmed before the
                    // step's own outputs are published, so it can never land after them.
                    let outputs = match running {
                        None => step.await,
                        Some(status) => {
                            tokio::select! {
                                out = &mut step => out,
                                _ = tokio::time::sleep(RUNNING_AFTER) => {
                                    let (written, out) =
                                        tokio::join!(self.transport.publish(vec![status]), &mut step);
                                    written?;
                                    out
                                }
                            }
                        }
                    };
                    debug!(outputs = outputs.outputs.len(), "step done");
                    let outputs = self.inline(outputs, instance, started).await;
                    drop(slot);
                    self.transport.publish(outputs).await
                }
                .instrument(span)
                .await;
                match outcome {
                    Ok(report) => {
                        self.count_duplicates(&report);
                        let _ = settle.ack().await;
                    }
                    Err(e) => {
                        warn!(error = %e, "publishing a step's messages failed; the message will be redelivered");
                        if let Some(id) = &message_id {
                            self.dedupe
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .release(id);
                        }
                        let _ = settle.requeue().await;
                    }
                }
            }
            DeliveryKind::Doorbell { instance } => {
                let span = info_span!("dtask.mailbox", instance = %instance);
                async {
                    let items = match self.transport.drain_mailbox(&instance).await {
                        Ok(items) => items,
                        Err(e) => {
                            warn!(error = %e, "draining a mailbox failed");
                            let _ = settle.requeue().await;
                            return;
                        }
                    };
                    let bodies: Vec<Vec<u8>> = items.iter().map(|m| m.body.clone()).collect();
                    let plan = self.engine.handle_mailbox(&bodies, self.transport.now()).await;
                    drop(slot);
                    match self.transport.publish(plan.outputs).await {
                        Ok(report) => self.count_duplicates(&report),
                        Err(e) => {
                            warn!(error = %e, "publishing a mailbox step failed; it will be retried");
                            for m in items {
                                let _ = m.settle.requeue().await;
                            }
                            let _ = settle.requeue().await;
                            return;
                        }
                    }
                    for (m, (how, reason)) in items.into_iter().zip(plan.settle) {
                        let _ = match how {
                            Settlement::Ack => m.settle.ack().await,
                            Settlement::Requeue => m.settle.requeue().await,
                            Settlement::DeadLetter => {
                                self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                                m.settle.dead_letter(reason).await
                            }
                        };
                    }
                    if plan.waiting_for_state {
                        debug!("events wait for the instance's state");
                    }
                    let _ = settle.ack().await;
                }
                .instrument(span)
                .await;
            }
        }
    }
}

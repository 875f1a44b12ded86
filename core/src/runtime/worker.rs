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

use super::claim;
use super::config::WorkerConfig;
use crate::engine::{Engine, Settlement, Stepped};
use crate::error::Error;
use crate::protocol::message::TaskMessage;
use crate::protocol::InstanceId;
use crate::transport::{
    Delivery, DeliveryKind, Destination, IntoTransport, Outgoing, Published, Transport,
};

/// How long a root's first step runs before its status is written as `Running`.
const RUNNING_AFTER: Duration = Duration::from_millis(50);

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
    duplicate_starts: AtomicU64,
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
    /// ([`WorkerConfig::inline_steps`]); not counted in `processed`.
    pub inlined: u64,
    /// Starts dropped without running because another start holds their id: a second
    /// [`Client::start_with_id`](crate::Client::start_with_id) of an id, whose client was
    /// told [`Error::is_already_started`].
    pub duplicate_starts: u64,
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
            duplicate_starts: self.duplicate_starts + o.duplicate_starts,
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
    /// A worker on `transport` (a [`Transport`] by value, or shared in an `Arc`) with the
    /// settings of `config`; fails with every problem of `config` (see
    /// [`WorkerConfig::validate`]).
    pub fn new(transport: impl IntoTransport, config: WorkerConfig) -> Result<Worker, Error> {
        config.validate()?;
        let transport = transport.into_transport();
        let keepalive = transport.mailbox_retention().map(|r| r / 4);
        let clock = transport.clone();
        let mut engine = Engine::new(config.registry, config.state_budget)
            .with_keepalive(keepalive)
            .with_clock(Arc::new(move || clock.now()));
        if let Some(cancels) = transport.cancels() {
            engine = engine.with_cancels(cancels.book());
        }
        Ok(Worker {
            inner: Arc::new(Inner {
                engine,
                transport,
                concurrency: config.concurrency,
                dedupe: Mutex::new(Dedupe::new(config.dedupe_window)),
                max_redeliveries: config.max_redeliveries,
                inline_steps: config.inline_steps,
                inline_time: config.inline_time,
                summary_every: config.summary_every,
                stats: Stats::default(),
            }),
        })
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
            duplicate_starts: s.duplicate_starts.load(Ordering::Relaxed),
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
        // Every cancel record published so far is known before the first step runs.
        let _following = match inner.transport.cancels() {
            Some(cancels) => Some(cancels.follow().await?),
            None => None,
        };
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
    /// Forgets a message id taken for a delivery that is put back: its redelivery is news.
    fn forget(&self, message_id: Option<&str>) {
        if let Some(id) = message_id {
            self.dedupe
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .release(id);
        }
    }

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
    /// [`WorkerConfig::inline_steps`]). Returns every message still to publish, in order,
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
                match claim::may_run(&*self.transport, &msg).await {
                    Ok(true) => {}
                    Ok(false) => {
                        self.stats.duplicate_starts.fetch_add(1, Ordering::Relaxed);
                        debug!(
                            message_id = message_id.as_deref().unwrap_or(""),
                            "another start holds this start's id: dropped without running"
                        );
                        let _ = settle.ack().await;
                        return;
                    }
                    Err(e) => {
                        warn!(error = %e, "claiming the id of a start failed; it will be redelivered");
                        self.forget(message_id.as_deref());
                        let _ = settle.requeue().await;
                        return;
                    }
                }
                let span = info_span!(
                    "dtask.delivery",
                    message_id = message_id.as_deref().unwrap_or("")
                );
                let started = Instant::now();
                let outcome = async {
                    let running = self.engine.running_status(&msg);
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

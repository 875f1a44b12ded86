//! The worker: consumes a transport's queues and runs the steps of DTask instances.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, info_span, warn, Instrument};

use super::config::WorkerConfig;
use dedupe::{Dedupe, Taken};
use stats::Stats;
pub use stats::WorkerStats;

mod dedupe;
mod merge;
mod newer;
mod stats;
use super::{claim, facts};
use crate::engine::{Engine, Probes, Stepped};
use crate::error::Error;
use crate::metrics;
use crate::protocol::codec;
use crate::protocol::message::TaskMessage;
use crate::protocol::{InstanceId, ENVELOPE_VERSION};
use crate::store::{InstanceStore, Payloads};
use crate::trace;
use crate::transport::{
    Delivery, DeliveryKind, Destination, IntoTransport, Outgoing, Published, Settle, Transport,
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
    /// Where the facts of roots go: the configured store, else the transport's.
    store: Option<Arc<dyn InstanceStore>>,
    engine: Engine,
    concurrency: usize,
    dedupe: Mutex<Dedupe>,
    max_redeliveries: u32,
    inline_steps: usize,
    inline_time: Duration,
    summary_every: Option<Duration>,
    stats: Stats,
    /// The mailboxes this worker merges now: one merge of an instance at a time.
    merging: Mutex<HashMap<InstanceId, Arc<tokio::sync::Mutex<()>>>>,
    /// See [`WorkerConfig::newer_message_patience`].
    newer_patience: Duration,
    /// When this worker first handed back each message (or mailbox) of a newer build.
    newer: Mutex<HashMap<String, Instant>>,
}

impl Worker {
    /// A worker on `transport` (a [`Transport`] by value, or shared in an `Arc`) with the
    /// settings of `config`; fails with every problem of `config` (see
    /// [`WorkerConfig::validate`]).
    pub fn new(transport: impl IntoTransport, config: WorkerConfig) -> Result<Worker, Error> {
        config.validate()?;
        let transport = transport.into_transport();
        let probes = Probes::for_retention(transport.mailbox_retention());
        let clock = transport.clone();
        let store = config.store.map(|s| s.0).or_else(|| transport.store());
        // An explicit payload store, else the instance store's, else the transport's.
        let payloads = Payloads {
            store: config
                .payloads
                .map(|p| p.0)
                .or_else(|| store.as_ref().and_then(|s| s.payloads()))
                .or_else(|| transport.payloads()),
            threshold: config.payload_threshold,
        };
        let mut engine = Engine::new(config.registry, config.state_budget)
            .with_probes(probes)
            .with_clock(Arc::new(move || clock.now()))
            .with_payloads(payloads);
        if let Some(cancels) = transport.cancels() {
            engine = engine.with_cancels(cancels.book());
        }
        Ok(Worker {
            inner: Arc::new(Inner {
                store,
                engine,
                transport,
                concurrency: config.concurrency,
                dedupe: Mutex::new(Dedupe::new(config.dedupe_window)),
                max_redeliveries: config.max_redeliveries,
                inline_steps: config.inline_steps,
                inline_time: config.inline_time,
                summary_every: config.summary_every,
                stats: Stats::default(),
                merging: Mutex::new(HashMap::new()),
                newer_patience: config.newer_patience,
                newer: Mutex::new(HashMap::new()),
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
            handed_back: s.handed_back.load(Ordering::Relaxed),
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
                        let in_flight = ::metrics::gauge!(metrics::IN_FLIGHT);
                        in_flight.increment(1.0);
                        handling.await;
                        in_flight.decrement(1.0);
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

async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

impl Inner {
    /// Takes the delivery of message `id` for handling (`true`), or says that its work
    /// is done (`false`); while another delivery of it is being handled, waits for that
    /// handling to end first.
    async fn take(&self, id: &str) -> bool {
        loop {
            let notify = {
                let mut dedupe = self.dedupe.lock().unwrap_or_else(|p| p.into_inner());
                match dedupe.take(id) {
                    Taken::Fresh => return true,
                    Taken::Done => return false,
                    Taken::Wait(notify) => notify,
                }
            };
            // Registered first, then checked again: a handling that ended before the
            // registration shows in the check, one that ends after it wakes this wait.
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.dedupe_settled(id, &notify) {
                continue;
            }
            debug!(message_id = %id, "a delivery of this message is being handled; waiting for it");
            notified.await;
        }
    }

    /// Whether the handling `notify` belongs to has ended since it was handed out.
    fn dedupe_settled(&self, id: &str, notify: &Arc<tokio::sync::Notify>) -> bool {
        let dedupe = self.dedupe.lock().unwrap_or_else(|p| p.into_inner());
        dedupe.ended(id, notify)
    }

    /// Forgets a message id taken for a delivery that is put back: its redelivery is news.
    fn forget(&self, message_id: Option<&str>) {
        if let Some(id) = message_id {
            self.dedupe
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .release(id);
        }
    }

    /// Records the facts among `outputs` and publishes the rest (see [`facts::emit`]).
    async fn emit(&self, outputs: Vec<Outgoing>) -> Result<(Vec<Published>, u64), Error> {
        let started = Instant::now();
        let emitted = facts::emit(&*self.transport, self.store.as_ref(), outputs).await;
        ::metrics::histogram!(metrics::PUBLISH_DURATION).record(metrics::seconds(started.into()));
        emitted
    }

    fn count_duplicates(&self, (report, refused): &(Vec<Published>, u64)) {
        let n = refused
            + report
                .iter()
                .filter(|p| **p == Published::Duplicate)
                .count() as u64;
        if n > 0 {
            debug!(n, "duplicate results refused by the instance store");
            self.stats.duplicate_results.fetch_add(n, Ordering::Relaxed);
            ::metrics::counter!(metrics::DUPLICATE_RESULTS).increment(n);
        }
    }

    /// Moves a task message that cannot be handled to the dead-letter queue, after ending
    /// its instance as failed (the failure is published first: its waiter, its status and
    /// its parent learn of it, and nothing waits for the dead letter).
    async fn dead_letter(&self, body: &[u8], mut reason: String, settle: Box<dyn Settle>) {
        if let Ok(msg) = self.engine.decode_task(body) {
            // A start that lost its chosen id to another start must not fail the winner.
            match claim::may_run(self.store.as_deref(), &msg).await {
                Ok(true) => {
                    let failure =
                        self.engine
                            .fail_dead_lettered(msg, &reason, self.transport.now());
                    if let Err(e) = self.emit(failure).await {
                        warn!(error = %e, "publishing the failure of a dead-lettered message's instance failed");
                        reason =
                            format!("{reason}; its instance's failure could not be published: {e}");
                    }
                }
                Ok(false) => {
                    self.stats.duplicate_starts.fetch_add(1, Ordering::Relaxed);
                    ::metrics::counter!(metrics::DUPLICATE_STARTS).increment(1);
                    debug!("another start holds this start's id: dropped without running");
                    let _ = settle.ack().await;
                    return;
                }
                Err(e) => {
                    reason = format!(
                        "{reason}; its instance was not failed (whether this start holds its \
                         id cannot be read: {e})"
                    );
                }
            }
        }
        self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
        ::metrics::counter!(metrics::DEAD_LETTERS).increment(1);
        warn!(%reason, "dead-lettering a message");
        let _ = settle.dead_letter(reason).await;
    }

    /// Runs the steps that `outputs` hand on, here, while each hands its instance on with
    /// exactly one task message for a DTask this worker runs (see
    /// [`WorkerConfig::inline_steps`]). Returns every message still to publish, in order,
    /// (the facts among them are trimmed when recorded).
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
            let stepped = match self
                .engine
                .handle_task_next(msg, self.transport.now())
                .await
            {
                Ok(stepped) => stepped,
                Err(e) => {
                    // The hand-off is published instead, and its step runs from it later.
                    warn!(error = %e, "an inline step's payloads failed; its message is published");
                    break;
                }
            };
            current = outputs.remove(i).instance;
            kept.append(&mut outputs);
            Stepped {
                outputs,
                next: next_msg,
            } = stepped;
            self.stats.inlined.fetch_add(1, Ordering::Relaxed);
            ::metrics::counter!(metrics::INLINE_STEPS).increment(1);
        }
        if kept.is_empty() {
            return outputs;
        }
        kept.append(&mut outputs);
        kept
    }

    /// Handles one delivery. `slot` is held while the step runs and given back before its
    /// messages are published: waiting for the broker takes no slot.
    async fn handle(&self, delivery: Delivery, slot: OwnedSemaphorePermit) {
        let Delivery {
            kind,
            redeliveries,
            settle,
        } = delivery;
        if redeliveries > 0 {
            ::metrics::counter!(metrics::REDELIVERIES).increment(1);
        }
        let kind_label = match kind {
            DeliveryKind::Task { .. } => "task",
            DeliveryKind::Doorbell { .. } => "mailbox",
        };
        ::metrics::counter!(metrics::DELIVERIES, "kind" => kind_label).increment(1);
        match kind {
            DeliveryKind::Task {
                body,
                message_id,
                trace,
            } => {
                // Read by a newer build only: handed back before any other check (as a
                // fresh copy, so that its hand-backs count against no retry budget).
                if let Some(revision) = codec::revision(&body).filter(|r| *r > ENVELOPE_VERSION) {
                    drop(slot);
                    self.hand_back_task(body, revision, message_id, trace, settle)
                        .await;
                    return;
                }
                if redeliveries > self.max_redeliveries {
                    let reason = format!("failed {redeliveries} times (retry budget exhausted)");
                    self.dead_letter(&body, reason, settle).await;
                    return;
                }
                let msg = match self.engine.decode_task(&body) {
                    Ok(m) => m,
                    Err(e) => {
                        self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                        ::metrics::counter!(metrics::DEAD_LETTERS).increment(1);
                        warn!(error = %e, "dead-lettering an undecodable message");
                        let _ = settle.dead_letter(e.to_string()).await;
                        return;
                    }
                };
                if let Some(id) = &message_id {
                    if !self.take(id).await {
                        debug!(message_id = %id, "dropping a redelivery of finished work");
                        let _ = settle.ack().await;
                        return;
                    }
                }
                match claim::may_run(self.store.as_deref(), &msg).await {
                    Ok(true) => {}
                    Ok(false) => {
                        self.stats.duplicate_starts.fetch_add(1, Ordering::Relaxed);
                        ::metrics::counter!(metrics::DUPLICATE_STARTS).increment(1);
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
                    message_id = message_id.as_deref().unwrap_or(""),
                    redeliveries,
                );
                // The span that sent the message is this one's parent, in whatever
                // process and however long ago it ran.
                trace::continue_trace(&span, trace.as_ref());
                let started = Instant::now();
                let outcome = async {
                    let running = self.engine.running_status(&msg, self.transport.now());
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
                        None => step.await?,
                        Some(status) => {
                            tokio::select! {
                                biased;
                                out = &mut step => out?,
                                _ = tokio::time::sleep(RUNNING_AFTER) => {
                                    let (written, out) =
                                        tokio::join!(self.emit(vec![status]), &mut step);
                                    written?;
                                    out?
                                }
                            }
                        }
                    };
                    debug!(outputs = outputs.outputs.len(), "step done");
                    let outputs = self.inline(outputs, instance, started).await;
                    drop(slot);
                    self.emit(outputs).await
                }
                .instrument(span)
                .await;
                match outcome {
                    Ok(report) => {
                        self.count_duplicates(&report);
                        if let Some(id) = &message_id {
                            self.dedupe
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .done(id);
                        }
                        let _ = settle.ack().await;
                    }
                    Err(e) => {
                        warn!(error = %e, "publishing a step's messages failed; the message will be redelivered");
                        self.forget(message_id.as_deref());
                        let _ = settle.requeue().await;
                    }
                }
            }
            DeliveryKind::Doorbell { instance, tag } => {
                // A doorbell handed out again after this worker's connection dropped may come
                // while the merge under the first one still runs (its write in flight): it
                // waits for that merge, so that it drains what the first took and wrote.
                let turn = self
                    .merging
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(instance.clone())
                    .or_default()
                    .clone();
                let merging = turn.lock().await;
                match self.transport.drain_for_doorbell(&instance, tag).await {
                    Ok(items) => {
                        // A merge under a doorbell that went back to the broker (its
                        // channel closed) is abandoned, as a crash would end it: the
                        // doorbell's next taker merges again from what is durable, and
                        // when that is this worker, it must not wait for this merge.
                        let lost = settle.lost();
                        let merge = self.merge(instance.clone(), items, settle, slot);
                        match lost {
                            Some(lost) => {
                                tokio::select! {
                                    biased;
                                    () = merge => {}
                                    () = lost => warn!(
                                        %instance,
                                        "the doorbell went back to the broker during its \
                                         merge; the merge is abandoned"
                                    ),
                                }
                            }
                            None => merge.await,
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, %instance, "draining a mailbox failed");
                        let _ = settle.requeue().await;
                    }
                }
                drop(merging);
                let mut all = self.merging.lock().unwrap_or_else(|p| p.into_inner());
                if Arc::strong_count(&turn) == 2 {
                    all.remove(&instance);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::transport::MemoryTransport;

    #[crate::dtask]
    async fn noop() {}

    /// `take(id)` on a task of its own, to see whether it waits.
    fn take_later(inner: &Arc<Inner>, id: &'static str) -> tokio::task::JoinHandle<bool> {
        let inner = inner.clone();
        tokio::spawn(async move { inner.take(id).await })
    }

    fn worker() -> Arc<Inner> {
        let w = Worker::new(MemoryTransport::new(), WorkerConfig::new().register(noop))
            .expect("a worker");
        w.inner.clone()
    }

    #[tokio::test]
    async fn a_delivery_of_work_being_handled_waits_and_is_dropped_once_that_work_is_done() {
        let inner = worker();
        assert!(inner.take("m").await);
        let second = take_later(&inner, "m");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!second.is_finished(), "it waits while the first is handled");
        inner.dedupe.lock().unwrap().done("m");
        assert!(!second.await.unwrap(), "done work is not handled again");
        assert!(!inner.take("m").await);
    }

    #[tokio::test]
    async fn a_delivery_of_work_being_handled_is_handled_once_that_handling_fails() {
        let inner = worker();
        assert!(inner.take("m").await);
        let second = take_later(&inner, "m");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!second.is_finished(), "it waits while the first is handled");
        inner.forget(Some("m"));
        assert!(second.await.unwrap(), "the redelivery is handled");
        // And it is the one being handled now.
        let third = take_later(&inner, "m");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!third.is_finished());
        inner.dedupe.lock().unwrap().done("m");
        assert!(!third.await.unwrap());
    }

    /// The DTask of a start rewritten as a newer build writes it.
    #[crate::dtask]
    async fn elsewhere() {}

    /// A message as a build of the next envelope revision writes it.
    fn newer(bytes: &[u8]) -> Vec<u8> {
        crate::protocol::codec::tests::as_newer(bytes)
    }

    #[tokio::test]
    async fn a_start_of_a_newer_build_is_handed_back_then_fails_its_root_visibly() {
        let transport = MemoryTransport::new();
        let client = crate::Client::new(transport.clone());
        // A client's start, rewritten as a newer build writes it before any worker runs.
        let handle = client.start(elsewhere()).await.unwrap();
        let mut registry = crate::Registry::new();
        registry.register(elsewhere).unwrap();
        let name = &registry.names()[0];
        let start = transport.take_raw(name).expect("the start");
        transport.inject_raw(name, newer(&start));
        let config = WorkerConfig::new()
            .register(elsewhere)
            .newer_message_patience(Duration::from_millis(2500));
        let worker = Worker::new(transport.clone(), config).unwrap();
        let stats = worker.clone();
        let run = tokio::spawn(worker.run());
        // Within the patience it is put back, not dead-lettered.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(stats.stats().handed_back >= 1, "{:?}", stats.stats());
        assert!(transport.dead_letters().is_empty());
        let e = tokio::time::timeout(Duration::from_secs(10), handle.result())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the waiter did not learn of the failure: {:?} {:?}",
                    stats.stats(),
                    transport.dead_letters()
                )
            })
            .unwrap_err();
        let f = e.failure().expect("a failure");
        assert!(f.is_dead_lettered(), "{f:?}");
        assert!(f.message().contains("newer build"), "{f:?}");
        let dead = transport.dead_letters();
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert!(
            dead[0].reason.contains("envelope revision"),
            "{}",
            dead[0].reason
        );
        assert_eq!(stats.stats().dead_lettered, 1);
        run.abort();
    }

    #[tokio::test]
    async fn a_mailbox_item_of_a_newer_build_is_handed_back_and_the_drain_left_whole() {
        let transport = MemoryTransport::new();
        let config = WorkerConfig::new()
            .register(noop)
            .newer_message_patience(Duration::from_secs(60));
        let worker = Worker::new(transport.clone(), config).unwrap();
        let stats = worker.clone();
        let id = InstanceId::new("boxed").unwrap();
        let state = crate::protocol::state::InstanceState::new(
            id.clone(),
            "noop".into(),
            Vec::new(),
            crate::protocol::state::ReplyTo::Root,
        );
        let mut item = newer(&Outgoing::start(&state).body);
        item[3] = crate::protocol::codec::Kind::Mailbox as u8;
        transport.inject_raw_mailbox(&id, item);
        let run = tokio::spawn(worker.run());
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(stats.stats().handed_back >= 2, "{:?}", stats.stats());
        assert!(transport.dead_letters().is_empty());
        assert_eq!(transport.mailboxes(), vec![id]);
        run.abort();
    }

    #[tokio::test]
    async fn without_a_window_every_delivery_is_handled() {
        let config = WorkerConfig::new().register(noop).dedupe_window(0);
        let w = Worker::new(MemoryTransport::new(), config).expect("a worker");
        assert!(w.inner.take("m").await);
        assert!(w.inner.take("m").await);
    }
}

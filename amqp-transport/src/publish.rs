//! Publishing with confirms: raw messages routed to a queue or through the delay levels,
//! retried through connection failures; and a batch of the core's messages, followed by
//! the doorbells of the mailboxes it wrote, shared by publishes to one mailbox at once.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dtasks::transport::{Destination, Outgoing, Published};
use dtasks::InstanceId;
use lapin::options::BasicPublishOptions;
use lapin::types::AMQPValue;
use lapin::{BasicProperties, Channel, Confirmation};
use tracing::{debug, warn};

use crate::clock::{ceil_ms, now_ms};
use crate::conn::{self, Backoff, ATTEMPT_TIMEOUT};
use crate::error::{AmqpError, Context, Result};
use crate::headers::{
    properties, with_headers, with_trace, H_AT, H_MARKER, H_RECORDED, H_RINGS, H_TARGET,
};
use crate::metrics::{CONFIRM_DURATION, PUBLISHED};
use crate::pack::{self, Part, TaskPart, H_PACK, MAX_PACK_BYTES};
use crate::records::{join_round, next_round, MAX_RINGS_LEN};
use crate::shared::Shared;
use crate::topology::{self, short, text, Kind};

/// The mailbox messages of one instance in a batch: its instance, its DTask, the messages
/// to write (with the properties of each alone) and the ids of those already written.
type MailboxRound<'a> = (
    &'a InstanceId,
    &'a str,
    Vec<(Part, BasicProperties)>,
    Vec<String>,
);

/// The task messages of one task queue in a batch: the queue, its DTask, and the
/// messages (with the properties of each alone).
type TaskBatch = (String, String, Vec<(TaskPart, BasicProperties)>);

/// The index in `rounds` of the round of `instance`, added when missing.
fn round_of<'a>(
    rounds: &mut Vec<MailboxRound<'a>>,
    instance: &'a InstanceId,
    dtask: &'a str,
) -> usize {
    match rounds.iter().position(|(i, ..)| *i == instance) {
        Some(at) => at,
        None => {
            rounds.push((instance, dtask, Vec::new(), Vec::new()));
            rounds.len() - 1
        }
    }
}

/// Where a raw message goes.
#[derive(Clone, Debug)]
pub(crate) enum Route {
    Queue {
        queue: String,
        kind: Kind,
    },
    /// To the task queue of `target` at `at_ms`, through the delay levels until then.
    Delayed {
        target: String,
        at_ms: i64,
    },
}

/// One message of a raw publish, and whether it is done.
#[derive(Debug)]
pub(crate) struct RawItem {
    pub(crate) route: Route,
    pub(crate) body: Vec<u8>,
    pub(crate) props: BasicProperties,
    pub(crate) done: Option<Published>,
}

impl RawItem {
    pub(crate) fn to_queue(
        queue: String,
        kind: Kind,
        body: Vec<u8>,
        props: BasicProperties,
    ) -> Self {
        Self {
            route: Route::Queue { queue, kind },
            body,
            props,
            done: None,
        }
    }
}

impl Shared {
    /// The queue a message on `route` goes to now.
    fn resolve(&self, route: &Route) -> (String, Kind) {
        match route {
            Route::Queue { queue, kind } => (queue.clone(), *kind),
            Route::Delayed { target, at_ms } => {
                let remaining = at_ms - now_ms();
                if remaining <= 0 {
                    (self.topo.wake(target), Kind::Task)
                } else {
                    // A worker looks at every timer at least once a hop: a cancel may
                    // bring it before its time (`delay.rs`).
                    let level =
                        topology::level_for(remaining as u64).min(topology::hop_level(&self.cfg));
                    (self.topo.delay_level(level), Kind::DelayLevel(level))
                }
            }
        }
    }

    /// Publishes every item not yet done and waits for the broker's confirms; retries
    /// through connection failures with backoff, up to the publish timeout.
    pub(crate) async fn publish_raw(&self, items: &mut [RawItem]) -> Result<()> {
        let deadline = Instant::now() + self.cfg.publish_timeout;
        let mut backoff = Backoff::new(Duration::from_millis(50), self.cfg.max_backoff);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let res = match tokio::time::timeout(ATTEMPT_TIMEOUT, self.attempt(items)).await {
                Ok(r) => r,
                Err(_) => Err(AmqpError::Timeout(format!(
                    "no publisher confirm within {ATTEMPT_TIMEOUT:?}"
                ))),
            };
            let e = match res {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if e.is_permanent() {
                return Err(e);
            }
            let pause = backoff.next_delay();
            if Instant::now() + pause >= deadline {
                warn!(error = %e, attempt, "publish failed; giving up");
                return Err(AmqpError::Timeout(format!(
                    "publish failed for {:?} ({attempt} attempts): {e}",
                    self.cfg.publish_timeout
                )));
            }
            if attempt < 3 {
                // A quorum queue refuses publishes for a moment after its creation.
                debug!(error = %e, attempt, "publish failed; retrying");
            } else {
                warn!(error = %e, attempt, "publish failed; retrying");
            }
            tokio::time::sleep(pause).await;
        }
    }

    async fn attempt(&self, items: &mut [RawItem]) -> Result<()> {
        if items.iter().all(|i| i.done.is_some()) {
            return Ok(());
        }
        let started = Instant::now();
        // Every queue of the batch exists before its first publish: declared on a control
        // channel (the publish channel carries other batches' publishes meanwhile, and a
        // declaration the broker refuses closes its channel).
        let mut targets = Vec::with_capacity(items.len());
        let mut control = None;
        for (i, item) in items.iter().enumerate() {
            if item.done.is_some() {
                continue;
            }
            let (queue, kind) = self.resolve(&item.route);
            // The calling client declared its reply queue before the start; never
            // recreated here (a missing one means the client is gone). A keep-alive never
            // creates a mailbox (a missing one was deleted when its instance finished).
            if kind != Kind::Reply && kind != Kind::Touch && !self.declared.contains(&queue) {
                if control.is_none() {
                    control = Some(conn::get_channel(&self.control).await?);
                }
                if let Some(ch) = &control {
                    self.declare(ch, &queue, kind).await?;
                }
            }
            targets.push((i, queue, kind));
        }
        drop(control);
        let ch = conn::get_channel(&self.channels).await?;
        // Kept to close the channel should the broker refuse a message (below).
        let carrier: Channel = (*ch).clone();
        let mut pending = Vec::with_capacity(targets.len());
        for (i, queue, kind) in targets {
            let item = &items[i];
            let confirm = ch
                .basic_publish(
                    "".into(),
                    short(&queue)?,
                    BasicPublishOptions {
                        mandatory: true,
                        immediate: false,
                    },
                    &item.body,
                    item.props.clone(),
                )
                .await
                .context(|| format!("publishing to `{queue}`"))?;
            pending.push((i, queue, kind, confirm));
        }
        // The batch is out, in order on one channel: the channel goes back to the pool
        // now, so that other batches publish on it while this one waits for its confirms
        // (a channel held until its confirms came made every publish wait a round trip
        // for a channel under load).
        drop(ch);
        let mut first_err = None;
        // A queue the broker refused a message for, if any.
        let mut refused = None;
        let batch = pending.len();
        for (i, queue, kind, confirm) in pending {
            let outcome = match confirm.await {
                Ok(Confirmation::Ack(None)) => Ok(Published::Stored),
                Ok(Confirmation::Ack(Some(_))) if kind == Kind::Touch => {
                    debug!(queue, "a keep-alive for a deleted mailbox is dropped");
                    Ok(Published::Dropped)
                }
                Ok(Confirmation::Ack(Some(_))) if kind == Kind::Reply => {
                    // The caller is gone and so is its reply queue: nobody can receive
                    // this result (`Client::call` says so).
                    warn!(
                        queue,
                        "a reply queue is gone; the result it was for is dropped"
                    );
                    Ok(Published::Stored)
                }
                Ok(Confirmation::Ack(Some(_))) => {
                    // Deleted since we declared it (e.g. an expired mailbox): declare again.
                    self.declared.forget(&queue);
                    Err(AmqpError::Returned(queue))
                }
                Ok(Confirmation::Nack(_)) => Err(AmqpError::Nacked(queue)),
                Ok(Confirmation::NotRequested) => Err(AmqpError::Invalid(
                    "a publish channel is not in confirm mode".into(),
                )),
                Err(e) => Err(AmqpError::broker(
                    format!("confirm of a publish to `{queue}`"),
                    e,
                )),
            };
            match outcome {
                Ok(p) => items[i].done = Some(p),
                Err(e) => {
                    if let AmqpError::Nacked(queue) = &e {
                        refused.get_or_insert_with(|| queue.clone());
                    }
                    first_err.get_or_insert(e);
                }
            }
        }
        if batch > 0 {
            // From the first publish of the batch to its last confirm.
            ::metrics::histogram!(CONFIRM_DURATION).record(started.elapsed().as_secs_f64());
            ::metrics::counter!(PUBLISHED).increment(batch as u64);
        }
        if let Some(queue) = refused {
            // RabbitMQ 3.10 keeps, per channel and quorum queue, what the channel's first
            // publish to the queue found: when that came just after the queue's leader
            // died (before its new leader was recorded), every later publish on the
            // channel to that queue is refused, for good, while a fresh channel's go
            // through (`docs/architecture.md`, section 5, "A cluster"). The retry takes
            // a fresh channel; batches still waiting for confirms on this one fail and
            // are retried too.
            warn!(
                queue,
                "the broker refused a message; closing its publish channel"
            );
            let _ = carrier.close(200, "a queue refused a publish".into()).await;
        }
        match first_err {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    /// Turns an outgoing message into a raw one.
    fn item_for(&self, o: &Outgoing) -> Result<RawItem> {
        let props = with_trace(
            properties(&o.message_id, o.instance.as_str(), &o.dtask),
            o.trace.as_ref(),
        );
        let (route, props) = match &o.destination {
            Destination::Task { name } => (
                Route::Queue {
                    queue: self.topo.task_for(name, o.instance.as_str()),
                    kind: Kind::Task,
                },
                props,
            ),
            Destination::Delayed { name, at } => {
                let at_ms = ceil_ms(*at);
                let props = with_headers(
                    props,
                    vec![
                        (H_AT, AMQPValue::LongLongInt(at_ms)),
                        (H_TARGET, text(name)),
                    ],
                );
                (
                    Route::Delayed {
                        target: name.clone(),
                        at_ms,
                    },
                    props,
                )
            }
            Destination::Mailbox { instance } => (
                Route::Queue {
                    queue: self.topo.mailbox(instance.as_str()),
                    kind: Kind::Mailbox,
                },
                props,
            ),
            Destination::Store { .. } => (
                Route::Queue {
                    queue: self.topo.facts(),
                    kind: Kind::Facts,
                },
                props,
            ),
            Destination::Reply { client, recorded } => (
                Route::Queue {
                    queue: self.topo.reply(client),
                    kind: Kind::Reply,
                },
                if *recorded {
                    with_headers(props, vec![(H_RECORDED, AMQPValue::ShortShortUInt(1))])
                } else {
                    props
                },
            ),
            Destination::Cancel { .. } => (
                Route::Queue {
                    queue: self.topo.cancels(),
                    kind: Kind::Cancels,
                },
                props,
            ),
            Destination::Touch { instance } => (
                Route::Queue {
                    queue: self.topo.mailbox(instance.as_str()),
                    kind: Kind::Touch,
                },
                props,
            ),
            other => {
                return Err(AmqpError::Invalid(format!(
                    "this transport does not support the destination {other:?}"
                )))
            }
        };
        Ok(RawItem {
            route,
            body: o.body.clone(),
            props,
            done: None,
        })
    }

    pub(crate) async fn publish(self: &Arc<Self>, batch: Vec<Outgoing>) -> Result<Vec<Published>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let items = batch
            .iter()
            .map(|o| self.item_for(o))
            .collect::<Result<Vec<_>>>()?;
        let total = items.len();
        // Mailbox messages go through their instance's rounds (`Shared::ring`), after
        // the rest of the batch is confirmed: a batch cut short by a crash lands a prefix,
        // and a suspending step's state must never land without the operations it awaits
        // (those come first in the batch, and are published first here too).
        // Doorbells only after their mailbox messages are confirmed: a doorbell must
        // never find its message missing. One per instance is enough, and it is shared
        // with the other publishes of this process that wrote to the same mailbox
        // meanwhile. Each doorbell names the messages it announces, so that the consumer
        // can tell a spent one (its messages already drained) from news.
        let mut rounds: Vec<MailboxRound<'_>> = Vec::new();
        let mut others: Vec<RawItem> = Vec::new();
        // For each of `others`, the outgoing message it is when a task pack may carry it.
        let mut tasks: Vec<Option<&Outgoing>> = Vec::new();
        // Where each message of the batch went: `Some(i)`, `others[i]`; `None`, a round.
        let mut slots = Vec::with_capacity(total);
        for (o, item) in batch.iter().zip(items) {
            match &o.destination {
                Destination::Mailbox { instance } => {
                    let (traceparent, tracestate) = pack::trace_fields(o.trace.as_ref());
                    let part = Part {
                        id: o.message_id.clone(),
                        traceparent,
                        tracestate,
                        body: item.body,
                    };
                    let at = round_of(&mut rounds, instance, &o.dtask);
                    rounds[at].2.push((part, item.props));
                    slots.push(None);
                }
                _ => {
                    slots.push(Some(others.len()));
                    others.push(item);
                    tasks.push(
                        Some(o).filter(|o| matches!(o.destination, Destination::Task { .. })),
                    );
                }
            }
        }
        // Task messages go through their task queue's rounds, in packs, beside the rest
        // (`Shared::task_round`); with packs off, with the rest.
        let mut task_rounds: Vec<TaskBatch> = Vec::new();
        if self.cfg.task_packs > 1 {
            for (i, o) in tasks.iter().enumerate() {
                let (
                    Some(o),
                    Route::Queue {
                        queue,
                        kind: Kind::Task,
                    },
                ) = (o, &others[i].route)
                else {
                    continue;
                };
                let queue = queue.clone();
                let Destination::Task { name } = &o.destination else {
                    continue;
                };
                let item = &mut others[i];
                let part = task_part(o, std::mem::take(&mut item.body));
                let props = std::mem::take(&mut item.props);
                // Counted as published here; the round's outcome is what the batch waits for.
                item.done = Some(Published::Stored);
                match task_rounds.iter_mut().find(|(q, ..)| *q == queue) {
                    Some((.., parts)) => parts.push((part, props)),
                    None => task_rounds.push((queue, name.clone(), vec![(part, props)])),
                }
            }
        }
        let rest = self.publish_raw(&mut others);
        let rounds_done = futures::future::try_join_all(
            task_rounds
                .into_iter()
                .map(|(queue, name, parts)| self.task_round(queue, name, parts)),
        );
        futures::future::try_join(rest, rounds_done).await?;
        if others.iter().any(|i| {
            matches!(
                i.route,
                Route::Queue {
                    kind: Kind::Cancels,
                    ..
                }
            )
        }) {
            self.nudge_cancels().await;
        }
        // A keep-alive rings only when it found its mailbox.
        for (o, slot) in batch.iter().zip(&slots) {
            if let (Destination::Touch { instance }, Some(i)) = (&o.destination, slot) {
                if others[*i].done == Some(Published::Stored) {
                    let at = round_of(&mut rounds, instance, &o.dtask);
                    rounds[at].3.push(o.message_id.clone());
                }
            }
        }
        let n = rounds.len();
        futures::future::try_join_all(rounds.into_iter().map(
            |(instance, dtask, parts, stored)| self.ring(instance.as_str(), dtask, parts, stored),
        ))
        .await?;
        debug!(messages = total, mailboxes = n, "batch published");
        Ok(slots
            .iter()
            .map(|slot| match slot {
                Some(i) => others[*i].done.unwrap_or(Published::Stored),
                None => Published::Stored,
            })
            .collect())
    }
}

/// When a process nudges `P.cancels` again after it published a cancel record: the first
/// wait, then the second.
const CANCEL_NUDGES: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(3)];

/// How long the publish of a cancel record waits for its first nudge.
const FIRST_NUDGE_LIMIT: Duration = Duration::from_secs(5);

// Markers in streams, and nudges: on RabbitMQ before 4.0.x a stream consumer attached to
// a replica can miss the notice of a committed offset and read nothing more until the next
// write to the stream (`follow.rs`). A nudge is that write: a marker nobody waits for.
impl Shared {
    /// Publishes the marker `marker` to the stream `queue` (after every record published
    /// to it so far); resolves once the broker confirmed it.
    pub(crate) async fn publish_marker(&self, queue: &str, kind: Kind, marker: &str) -> Result<()> {
        let props = with_headers(properties(marker, "", ""), vec![(H_MARKER, text(marker))]);
        let mut item = [RawItem::to_queue(
            queue.to_string(),
            kind,
            Vec::new(),
            props,
        )];
        self.publish_raw(&mut item).await
    }

    /// Publishes a nudge to the stream `queue`.
    pub(crate) async fn nudge(&self, queue: &str, kind: Kind) -> Result<()> {
        let nudge = format!("nudge-{}", InstanceId::random());
        self.publish_marker(queue, kind, &nudge).await
    }

    /// After this process published a cancel record: nudges `P.cancels` at once (before
    /// the publish returns, so that a process that exits right after a cancel, as
    /// `dtasks cancel` does, writes one too; waited for up to [`FIRST_NUDGE_LIMIT`]), and
    /// again later ([`Shared::nudge_cancels_later`]). Best effort: the record is durable
    /// whatever becomes of its nudges.
    async fn nudge_cancels(self: &Arc<Self>) {
        let queue = self.topo.cancels();
        match tokio::time::timeout(FIRST_NUDGE_LIMIT, self.nudge(&queue, Kind::Cancels)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => debug!(error = %e, "nudging the cancel records failed"),
            Err(_) => debug!("nudging the cancel records took too long; left to the next nudge"),
        }
        self.nudge_cancels_later();
    }

    /// After this process published a cancel record: nudges `P.cancels` a second later
    /// and again 3 s after that, so that a worker whose follower missed the record's
    /// commit reads it then, not at the next cancel (a worker's follower syncs only when
    /// it starts). One sequence at a time per process: records published before its
    /// first nudge are covered by both of its nudges, and a record published after that
    /// starts the next sequence. Best effort: a nudge that fails is not retried.
    fn nudge_cancels_later(self: &Arc<Self>) {
        if self.cancel_nudges.swap(true, Ordering::AcqRel) {
            return;
        }
        let shared = self.clone();
        tokio::spawn(async move {
            let queue = shared.topo.cancels();
            for (k, wait) in CANCEL_NUDGES.into_iter().enumerate() {
                tokio::time::sleep(wait).await;
                if k == 0 {
                    // Before the first nudge: a record confirmed from here on is not
                    // covered by it, and starts a sequence of its own.
                    shared.cancel_nudges.store(false, Ordering::Release);
                }
                if let Err(e) = shared.nudge(&queue, Kind::Cancels).await {
                    debug!(error = %e, "nudging the cancel records failed");
                }
            }
        });
    }
}

// Doorbells shared by the publishes of one process that wrote to one mailbox at about the
// same time.
//
// A publish that wrote mailbox messages returns only once a doorbell published after those
// messages were confirmed is confirmed too: that doorbell announces them. While a doorbell
// of an instance is on its way, the publishes that wrote to its mailbox meanwhile wait for
// the next one, which is published once the first is confirmed and announces all of them.
// Under a fan-in (many children of one parent finishing at once on one worker), this turns
// one doorbell per child result into one per round trip to the broker, and so also fewer
// doorbell deliveries to hand out and acknowledge.
//
// A round is published by a task of its own, so that a publish whose caller gave up
// (dropped its future) never leaves the others waiting. Nothing here is durable, and
// nothing needs to be: a caller acks the work that wrote the messages only after its
// doorbell is confirmed, so a crash before that redoes the work, which writes the same
// messages and rings again.
impl Shared {
    /// Writes `parts` to the mailbox of `instance` and rings its doorbell for them and for
    /// the mailbox messages `stored` (already confirmed): resolves once the parts are
    /// confirmed and then a doorbell that announces all of them.
    pub(crate) async fn ring(
        self: &Arc<Self>,
        instance: &str,
        dtask: &str,
        parts: Vec<(Part, BasicProperties)>,
        stored: Vec<String>,
    ) -> Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let start = join_round(self.ringer.rounds(), instance, tx, |round| {
            if round.dtask.is_empty() {
                round.dtask = dtask.to_string();
            }
            round.parts.extend(parts);
            round.stored.extend(stored);
        });
        if start {
            let shared = self.clone();
            let instance = instance.to_string();
            tokio::spawn(async move { shared.ring_rounds(instance).await });
        }
        round_outcome(rx, "mailbox").await
    }

    /// Publishes the rounds of `instance` one after the other until none waits.
    async fn ring_rounds(self: Arc<Self>, instance: String) {
        while let Some(round) = next_round(self.ringer.rounds(), &instance) {
            let outcome = self
                .one_round(&instance, round.dtask, round.parts, round.stored)
                .await;
            let outcome = outcome.map_err(Arc::new);
            for w in round.waiters {
                let _ = w.send(outcome.clone());
            }
        }
    }

    /// One round of a mailbox: its messages (packed when there are several), confirmed,
    /// then a doorbell that names them, confirmed.
    async fn one_round(
        &self,
        instance: &str,
        dtask: String,
        parts: Vec<(Part, BasicProperties)>,
        stored: Vec<String>,
    ) -> Result<()> {
        let mut ids = String::new();
        for id in parts.iter().map(|(p, _)| &p.id).chain(&stored) {
            if !ids.is_empty() {
                ids.push(' ');
            }
            ids.push_str(id);
        }
        if !parts.is_empty() {
            let mut items = self.packed(instance, &dtask, parts);
            self.publish_raw(&mut items).await?;
        }
        let mut props = properties(&format!("{instance}:bell"), instance, &dtask);
        // A doorbell without the list is never spent: it always drains.
        if ids.len() <= MAX_RINGS_LEN {
            props = with_headers(props, vec![(H_RINGS, text(&ids))]);
        }
        let mut bell = [RawItem::to_queue(
            self.topo.shard_of(instance),
            Kind::Shard,
            instance.as_bytes().to_vec(),
            props,
        )];
        self.publish_raw(&mut bell).await
    }

    /// The messages that carry `parts` to the mailbox of `instance`: one alone as it is;
    /// several in packs of up to [`MAX_PACK_BYTES`] of bodies (one past it alone).
    pub(crate) fn packed(
        &self,
        instance: &str,
        dtask: &str,
        parts: Vec<(Part, BasicProperties)>,
    ) -> Vec<RawItem> {
        let queue = self.topo.mailbox(instance);
        let mut out = Vec::new();
        let mut group: Vec<(Part, BasicProperties)> = Vec::new();
        let mut bytes = 0;
        let flush =
            |group: &mut Vec<(Part, BasicProperties)>, out: &mut Vec<RawItem>| match group.len() {
                0 => {}
                1 => {
                    let (part, props) = group.pop().expect("one part");
                    out.push(RawItem::to_queue(
                        queue.clone(),
                        Kind::Mailbox,
                        part.body,
                        props,
                    ));
                }
                n => {
                    self.ringer.count_packed(n);
                    let parts: Vec<Part> = group.drain(..).map(|(p, _)| p).collect();
                    let id = format!("{}+{}", parts[0].id, n - 1);
                    let props = with_headers(
                        properties(&id, instance, dtask),
                        vec![(H_PACK, AMQPValue::LongLongInt(n as i64))],
                    );
                    out.push(RawItem::to_queue(
                        queue.clone(),
                        Kind::Mailbox,
                        pack::encode(&parts),
                        props,
                    ));
                }
            };
        for (part, props) in parts {
            let len = part.body.len();
            if !group.is_empty() && bytes + len > MAX_PACK_BYTES {
                flush(&mut group, &mut out);
                bytes = 0;
            }
            bytes += len;
            group.push((part, props));
        }
        flush(&mut group, &mut out);
        out
    }
}

/// What the publish of a round a caller joined came to (`what`: the kind of round).
async fn round_outcome(
    rx: tokio::sync::oneshot::Receiver<std::result::Result<(), Arc<AmqpError>>>,
    what: &str,
) -> Result<()> {
    match rx.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(AmqpError::Shared(e)),
        Err(_) => Err(AmqpError::Connect(format!(
            "the {what} round was dropped before it was published"
        ))),
    }
}

/// The part a task message is in a task pack.
fn task_part(o: &Outgoing, body: Vec<u8>) -> TaskPart {
    let (traceparent, tracestate) = pack::trace_fields(o.trace.as_ref());
    TaskPart {
        id: o.message_id.clone(),
        instance: o.instance.as_str().to_string(),
        traceparent,
        tracestate,
        body,
    }
}

// Task messages shared by the publishes of one process that go to one task queue at about
// the same time, as the mailbox rounds above: while a round of a task queue is on its way,
// the task messages published to it meanwhile wait for the next round, which goes once
// the first is confirmed and carries all of them, in task packs (`pack.rs`). A publish
// returns once the round that carried its messages is confirmed. Under load (a fan-out's
// starts, many chains' hand-offs on one worker) this turns one AMQP message per task
// message into one per pack; a lone message goes alone, at once, to the task queue.
impl Shared {
    /// Publishes `parts` (task messages of DTask `dtask`, each with the properties it has
    /// alone) to the task queue `queue` in its next round; resolves once that round is
    /// confirmed.
    pub(crate) async fn task_round(
        self: &Arc<Self>,
        queue: String,
        dtask: String,
        parts: Vec<(TaskPart, BasicProperties)>,
    ) -> Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let start = join_round(self.ringer.task_rounds(), &queue, tx, |round| {
            if round.dtask.is_empty() {
                round.dtask = dtask;
            }
            round.parts.extend(parts);
        });
        if start {
            let shared = self.clone();
            tokio::spawn(async move { shared.task_rounds(queue).await });
        }
        round_outcome(rx, "task").await
    }

    /// Publishes the rounds of the task queue `queue` one after the other until none
    /// waits.
    async fn task_rounds(self: Arc<Self>, queue: String) {
        while let Some(round) = next_round(self.ringer.task_rounds(), &queue) {
            let mut items = self.task_packed(&queue, &round.dtask, round.parts);
            let outcome = self.publish_raw(&mut items).await.map_err(Arc::new);
            for w in round.waiters {
                let _ = w.send(outcome.clone());
            }
        }
    }

    /// The messages that carry `parts` (task messages of DTask `dtask` for the task queue
    /// `queue`): in packs of up to `with_task_packs` messages and [`MAX_PACK_BYTES`] of
    /// bodies to the DTask's pack queue, the one that goes alone as it is to `queue`.
    fn task_packed(
        &self,
        queue: &str,
        dtask: &str,
        parts: Vec<(TaskPart, BasicProperties)>,
    ) -> Vec<RawItem> {
        let keys: Vec<(Option<&str>, usize)> = parts
            .iter()
            .map(|(p, _)| (Some(queue), p.body.len()))
            .collect();
        let groups = pack::plan(&keys, usize::from(self.cfg.task_packs), MAX_PACK_BYTES);
        let mut parts: Vec<Option<(TaskPart, BasicProperties)>> =
            parts.into_iter().map(Some).collect();
        let mut out = Vec::with_capacity(groups.len());
        for group in groups {
            let mut members: Vec<(TaskPart, BasicProperties)> =
                group.iter().filter_map(|&i| parts[i].take()).collect();
            if members.len() == 1 {
                let (part, props) = members.pop().expect("one part");
                out.push(RawItem::to_queue(
                    queue.to_string(),
                    Kind::Task,
                    part.body,
                    props,
                ));
                continue;
            }
            let n = members.len();
            self.ringer.count_task_packed(n);
            let parts: Vec<TaskPart> = members.into_iter().map(|(p, _)| p).collect();
            let props = with_headers(
                properties(
                    &format!("{}+{}", parts[0].id, n - 1),
                    &parts[0].instance,
                    dtask,
                ),
                vec![(H_PACK, AMQPValue::LongLongInt(n as i64))],
            );
            // Packs have queues of their own, consumed with a smaller prefetch; a part
            // written again alone goes to the DTask's task queue.
            out.push(RawItem::to_queue(
                self.topo.packs_for(dtask, &parts[0].instance),
                Kind::Task,
                pack::encode_tasks(&parts),
                props,
            ));
        }
        out
    }
}

//! Consuming a worker's queues: one supervised session per `consume()` call, subscribed
//! to the task and wake queues of its DTasks, every doorbell shard and the ready queue.
//!
//! Every session subscribes to every shard, and the broker's single active consumer
//! serializes each shard; a session that is the active consumer of more than its share
//! of the shards hands the next one it gets a delivery from over to the next session in
//! line (see [`Spread`]), so the merges spread over every worker.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use deadpool::managed::Object;
use futures::stream::{BoxStream, SelectAll};
use futures::StreamExt;
use lapin::message::Delivery as AmqpDelivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicNackOptions, BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::Channel;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::acks::Acks;
use crate::conn;
use crate::delay;
use crate::delivery::{task_deliveries, Due, Output};
use crate::error::{AmqpError, Context, Result};
use crate::mailbox::doorbell;
use crate::publish::RawItem;
use crate::shared::Shared;
use crate::supervise::{subscribe, supervised, End};
use crate::topology::{short, Kind};

/// How often a session counts the sessions that consume the shards.
const COUNT_EVERY: Duration = Duration::from_secs(1);

/// How long a hand-over waits for the copy of its doorbell to be confirmed before it
/// requeues the doorbell instead.
const COPY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a session keeps a shard it handed over when the shard comes back to it: a
/// hand-over costs a confirmed publish, and counts that differ for a moment between
/// sessions must not pass a shard around in a circle.
const KEEP_AFTER_HAND_OVER: Duration = Duration::from_secs(5);

/// Starts a supervised session and returns its deliveries. The first subscription is
/// made before this returns, so that an unreachable broker or a refused declaration is
/// reported to the caller; later failures are retried.
pub(crate) async fn consume(
    shared: Arc<Shared>,
    names: Vec<String>,
) -> Result<BoxStream<'static, Output>> {
    // Unbounded, yet bounded in practice: the broker sends no more than the prefetch
    // counts allow before deliveries are settled.
    let (tx, mut rx) = mpsc::unbounded_channel();
    // Due timers handed over by the ready queue's consumer: they come first.
    let (due_tx, mut due_rx) = mpsc::unbounded_channel();
    let due = Due::new(due_tx, &names);
    let (first_tx, first_rx) = oneshot::channel();
    let span = info_span!("dtasks.amqp.session", prefix = shared.topo.prefix());
    tokio::spawn(supervise(shared, names, tx, due, first_tx).instrument(span));
    first_rx
        .await
        .map_err(|_| AmqpError::Connect("the consumer task ended".into()))??;
    Ok(futures::stream::poll_fn(move |cx| {
        if let Poll::Ready(Some(d)) = due_rx.poll_recv(cx) {
            return Poll::Ready(Some(d));
        }
        rx.poll_recv(cx)
    })
    .boxed())
}

#[derive(Clone, Debug)]
enum Source {
    Task(Arc<str>),
    /// A shard queue, and the tag of the subscription the item came from.
    Shard(Arc<str>, ShortString),
    Ready,
}

struct Incoming {
    source: Source,
    /// `None`: the consumer ended.
    item: Option<lapin::Result<AmqpDelivery>>,
}

struct Session {
    task_ch: Channel,
    /// The task channel's coalesced acks.
    task_acks: Arc<Acks>,
    shard_ch: Channel,
    ready_ch: Channel,
    streams: SelectAll<BoxStream<'static, Incoming>>,
    spread: Spread,
}

/// Which doorbell shards a session holds, and when it hands one over.
///
/// Each shard queue has a single active consumer (the broker's); every session subscribes
/// to every shard, and the broker makes the first in line active, the others waiting. A
/// session learns that it is the active consumer of a shard from a delivery. When it is
/// the active consumer of more shards than its share (`ceil(shards / sessions)`, the
/// sessions counted as the consumers of the ready queue, which each consumes once), it hands the shard of the delivery in
/// hand over instead of handling it: it cancels its subscription (the broker makes the
/// next session in line active), publishes a copy of the doorbell to the shard, acks the
/// original, and subscribes again at the end of the line. With a prefetch of 1 per shard
/// consumer, a delivery in hand means no other doorbell of the shard is being handled by
/// this session, so no merge of the shard's mailboxes runs here when the next consumer
/// starts: one merger per mailbox holds through the hand-over. A session that dies hands
/// its shards over through the broker (its subscriptions end with its channel).
struct Spread {
    shared: Arc<Shared>,
    shards: usize,
    /// The tag of each shard's current subscription.
    tags: HashMap<Arc<str>, ShortString>,
    /// The shards a delivery came from on their current subscription.
    held: BTreeSet<Arc<str>>,
    /// When each shard was last handed over.
    handed: HashMap<Arc<str>, Instant>,
    /// The sessions consuming the shards, counted in the background by `counter`.
    sessions: Arc<AtomicUsize>,
    counter: tokio::task::JoinHandle<()>,
}

impl Spread {
    /// Whether this session gives the shard `queue`, of which a delivery is in hand, to
    /// the next session in line.
    fn hand_over(&mut self, queue: &Arc<str>) -> bool {
        if self.held.insert(queue.clone()) {
            self.shared.doorbells.hold_shard(queue);
            info!(shard = %queue, held = self.held.len(), "holding a doorbell shard");
        }
        let sessions = self.sessions.load(Ordering::Relaxed).max(1);
        let share = self.shards.div_ceil(sessions);
        self.held.len() > share
            && self
                .handed
                .get(queue)
                .is_none_or(|at| at.elapsed() >= KEEP_AFTER_HAND_OVER)
    }

    fn release(&mut self, queue: &Arc<str>) {
        if self.held.remove(queue) {
            self.shared.doorbells.release_shard(queue);
        }
        self.handed.insert(queue.clone(), Instant::now());
    }
}

impl Drop for Spread {
    fn drop(&mut self) {
        self.counter.abort();
        for queue in &self.held {
            self.shared.doorbells.release_shard(queue);
        }
    }
}

/// The number of consumers of `queue`.
pub(crate) async fn consumers(shared: &Shared, queue: &str) -> Result<usize> {
    let ch = conn::get_channel(&shared.control).await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    match ch
        .queue_declare(short(queue)?, passive, FieldTable::default())
        .await
    {
        Ok(q) => Ok(q.consumer_count() as usize),
        Err(e) => {
            // The broker closed the channel: it leaves the pool.
            drop(Object::take(ch));
            Err(AmqpError::broker(
                format!("counting the consumers of `{queue}`"),
                e,
            ))
        }
    }
}

/// Keeps `sessions` at the number of consumers of `queue` (the ready queue: one per
/// session).
async fn count_sessions(shared: Arc<Shared>, queue: String, sessions: Arc<AtomicUsize>) {
    loop {
        tokio::time::sleep(COUNT_EVERY).await;
        match consumers(&shared, &queue).await {
            Ok(n) => {
                let before = sessions.swap(n, Ordering::Relaxed);
                if before != n {
                    info!(sessions = n, "doorbell shard consumers counted");
                }
            }
            Err(e) => debug!(error = %e, "counting the shard consumers failed"),
        }
    }
}

fn tagged(consumer: lapin::Consumer, source: Source) -> BoxStream<'static, Incoming> {
    let end = source.clone();
    consumer
        .map(move |item| Incoming {
            source: source.clone(),
            item: Some(item),
        })
        .chain(futures::stream::once(async move {
            Incoming {
                source: end,
                item: None,
            }
        }))
        .boxed()
}

async fn open(shared: &Arc<Shared>, names: &[String]) -> Result<Session> {
    let topo = &shared.topo;
    let task_ch = conn::open_channel(&shared.consume_conns).await?;
    // Prefetch 1 per shard consumer: doorbells of one shard, hence of one instance, are
    // handled one at a time. The mailbox is drained on this same channel, so that a dead
    // consumer's doorbell and mailbox messages go back together.
    let shard_ch = conn::open_channel(&shared.consume_conns).await?;
    let ready_ch = conn::open_channel(&shared.consume_conns).await?;
    // Each DTask's task queue and its wake queue (due timers), consumed alike: with a
    // prefetch of its own, a due timer does not queue behind every start waiting in the
    // task queue (only behind the deliveries already prefetched).
    let tasks: Vec<String> = names
        .iter()
        .flat_map(|n| {
            let mut queues = topo.tasks(n);
            queues.push(topo.wake(n));
            queues
        })
        .collect();
    let packs: Vec<String> = names.iter().flat_map(|n| topo.packs(n)).collect();
    let shards: Vec<String> = (0..topo.shards()).map(|i| topo.shard(i)).collect();
    let ready = topo.delay_ready();

    // Declare everything before consuming anything: a quorum queue consumed right after
    // its creation can still be starting (RabbitMQ 3.10 then closes the connection).
    for queue in tasks.iter().chain(&packs) {
        shared.declare_uncached(&task_ch, queue, Kind::Task).await?;
    }
    for queue in &shards {
        shared
            .declare_uncached(&shard_ch, queue, Kind::Shard)
            .await?;
    }
    shared
        .declare_uncached(&ready_ch, &ready, Kind::DelayReady)
        .await?;

    let qos = [
        (&task_ch, shared.cfg.prefetch),
        (&shard_ch, 1),
        (&ready_ch, shared.cfg.delay_prefetch),
    ];
    for (ch, n) in qos {
        ch.basic_qos(n, BasicQosOptions::default())
            .await
            .context(|| "setting the prefetch".into())?;
    }
    let mut streams = SelectAll::new();
    for queue in tasks {
        let c = subscribe(&task_ch, &queue).await?;
        streams.push(tagged(c, Source::Task(queue.into())));
    }
    // Task packs (`pack.rs`): a pack carries up to `task_packs` messages, so that many
    // fewer packs are held at once: up to twice the prefetch in messages. A pack's slot
    // is freed only once its last message settles, and with just the prefetch's worth a
    // worker ran short of work between packs (W2: 7,424 steps/s against 9,797 with
    // twice, and 10,052 with four times; `bench/README.md`). The prefetch applies to
    // the consumers made after it is set.
    let per_pack = u32::from(shared.cfg.task_packs.max(1));
    let pack_prefetch = (2 * u32::from(shared.cfg.prefetch))
        .div_ceil(per_pack)
        .clamp(1, u32::from(u16::MAX));
    task_ch
        .basic_qos(pack_prefetch as u16, BasicQosOptions::default())
        .await
        .context(|| "setting the prefetch of the pack queues".into())?;
    for queue in packs {
        let c = subscribe(&task_ch, &queue).await?;
        streams.push(tagged(c, Source::Task(queue.into())));
    }
    let mut tags = HashMap::new();
    for queue in &shards {
        let c = subscribe(&shard_ch, queue).await?;
        let queue: Arc<str> = queue.as_str().into();
        tags.insert(queue.clone(), c.tag());
        let tag = c.tag();
        streams.push(tagged(c, Source::Shard(queue, tag)));
    }
    let c = subscribe(&ready_ch, &ready).await?;
    streams.push(tagged(c, Source::Ready));

    // Every session consumes the ready queue once, and nothing else does: its consumers
    // are the sessions. (A shard's consumer count is 1: the broker counts only the active
    // one of a single-active-consumer queue.)
    let sessions = Arc::new(AtomicUsize::new(consumers(shared, &ready).await?));
    let counter = tokio::spawn(count_sessions(shared.clone(), ready, sessions.clone()));
    let spread = Spread {
        shared: shared.clone(),
        shards: shards.len(),
        tags,
        held: BTreeSet::new(),
        handed: HashMap::new(),
        sessions,
        counter,
    };
    Ok(Session {
        task_ch,
        task_acks: Arc::default(),
        shard_ch,
        ready_ch,
        streams,
        spread,
    })
}

/// Gives the shard `queue` to the next session in line (see [`Spread`]): cancels this
/// session's subscription, publishes a copy of the doorbell `d` in hand to the shard and
/// acks it, then subscribes again, at the end of the line.
async fn hand_over(
    shared: &Arc<Shared>,
    s: &mut Session,
    queue: Arc<str>,
    d: AmqpDelivery,
) -> std::result::Result<(), String> {
    if let Some(tag) = s.spread.tags.remove(&queue) {
        s.shard_ch
            .basic_cancel(tag, BasicCancelOptions::default())
            .await
            .map_err(|e| format!("cancelling the consumer of `{queue}`: {e}"))?;
    }
    s.spread.release(&queue);
    // A copy rather than a requeue: a requeued doorbell comes back marked redelivered,
    // which its next consumer takes for one a dead consumer left (it waits before the
    // drain, and never takes it as spent).
    let mut copy = [RawItem::to_queue(
        queue.to_string(),
        Kind::Shard,
        d.data.clone(),
        d.properties.clone(),
    )];
    // Bounded: the session's other deliveries wait meanwhile. A copy confirmed after the
    // bound is a second doorbell, which costs a drain at most.
    let copied = tokio::time::timeout(COPY_TIMEOUT, shared.publish_raw(&mut copy))
        .await
        .unwrap_or_else(|_| {
            Err(AmqpError::Timeout(format!(
                "no confirm of the copy within {COPY_TIMEOUT:?}"
            )))
        });
    let settled = match copied {
        Ok(()) => d.acker.ack(BasicAckOptions::default()).await,
        Err(e) => {
            warn!(shard = %queue, error = %e, "copying a doorbell failed; requeuing it");
            d.acker
                .nack(BasicNackOptions {
                    requeue: true,
                    multiple: false,
                })
                .await
        }
    };
    settled.map_err(|e| format!("settling a doorbell of `{queue}`: {e}"))?;
    let c = subscribe(&s.shard_ch, &queue)
        .await
        .map_err(|e| e.to_string())?;
    let tag = c.tag();
    s.spread.tags.insert(queue.clone(), tag.clone());
    s.streams.push(tagged(c, Source::Shard(queue.clone(), tag)));
    info!(shard = %queue, held = s.spread.held.len(), "handed a doorbell shard over");
    Ok(())
}

async fn supervise(
    shared: Arc<Shared>,
    names: Vec<String>,
    tx: mpsc::UnboundedSender<Output>,
    due: Due,
    first: oneshot::Sender<Result<()>>,
) {
    let (shared, names, tx, due) = (&shared, &names, &tx, &due);
    supervised(
        shared,
        "consumers",
        tx,
        first,
        || open(shared, names),
        |session| pump(shared, session, tx, due),
    )
    .await;
}

async fn pump(
    shared: &Arc<Shared>,
    mut s: Session,
    tx: &mpsc::UnboundedSender<Output>,
    due: &Due,
) -> End {
    loop {
        let incoming = tokio::select! {
            _ = tx.closed() => return End::Closed,
            i = s.streams.next() => i,
        };
        let Some(Incoming { source, item }) = incoming else {
            return End::Lost("no consumer left".into());
        };
        let d = match item {
            // The end of a subscription this session cancelled to hand its shard over.
            None if matches!(&source, Source::Shard(q, tag)
                if s.spread.tags.get(q).is_none_or(|t| t != tag)) =>
            {
                continue
            }
            None => return End::Lost(format!("the consumer of {source:?} was cancelled")),
            Some(Err(e)) => return End::Lost(e.to_string()),
            Some(Ok(d)) => d,
        };
        match source {
            Source::Task(queue) => {
                let deliveries =
                    task_deliveries(shared, &s.task_ch, Some(&s.task_acks), queue.to_string(), d);
                for delivery in deliveries {
                    // If the receiver is gone the delivery drops here and is requeued.
                    let _ = tx.send(Ok(delivery));
                }
            }
            Source::Shard(queue, _) => {
                // A redelivered doorbell is one a dead consumer left: handled here, with
                // the pause that gives its mailbox messages time to come back.
                if !d.redelivered && s.spread.hand_over(&queue) {
                    if let Err(why) = hand_over(shared, &mut s, queue, d).await {
                        return End::Lost(why);
                    }
                } else {
                    doorbell(shared, &s.shard_ch, &queue, d, tx);
                }
            }
            Source::Ready => {
                tokio::spawn(delay::reroute(
                    shared.clone(),
                    s.ready_ch.clone(),
                    d,
                    due.clone(),
                ));
            }
        }
    }
}

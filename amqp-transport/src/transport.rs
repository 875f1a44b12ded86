//! [`AmqpTransport`]: the `dtasks` transport contract on RabbitMQ.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use deadpool::managed::Object;
use dtasks::transport::{Destination, MailboxMessage, Outgoing, Published, Transport};
use dtasks::InstanceId;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation};
use tracing::{debug, info, warn};

use crate::config::AmqpConfig;
use crate::conn::{self, Backoff, ChannelPool, ConfirmChannels};
use crate::consume::{self, AmqpSettle};
use crate::error::{is_not_found, AmqpError, Context, Result};
use crate::topology::{self, text, Kind, Topology};

/// How many queue declarations a process remembers (see `Shared::remember`).
const MAX_REMEMBERED: usize = 65_536;

/// Header: why a message was dead-lettered.
pub(crate) const H_REASON: &str = "x-dtasks-reason";
/// Header: the queue a dead-lettered message came from.
pub(crate) const H_QUEUE: &str = "x-dtasks-queue";
/// Header: the instance a message is about.
pub(crate) const H_INSTANCE: &str = "x-dtasks-instance";
/// Header: the DTask name of that instance.
pub(crate) const H_DTASK: &str = "x-dtasks-dtask";
/// Header: the envelope version of the body.
pub(crate) const H_ENVELOPE: &str = "x-dtasks-envelope";
/// Header: a message id too long for the `message_id` property.
pub(crate) const H_MESSAGE_ID: &str = "x-dtasks-message-id";
/// Header: when a delayed message is due (milliseconds since the Unix epoch).
pub(crate) const H_AT: &str = "x-dtasks-at";
/// Header: the DTask whose task queue a delayed message goes to when due.
pub(crate) const H_TARGET: &str = "x-dtasks-target";
/// Header of a doorbell: the ids of the mailbox messages it announces, space-separated.
pub(crate) const H_RINGS: &str = "x-dtasks-rings";
/// The longest list of ids a doorbell carries (bytes).
const MAX_RINGS_LEN: usize = 4096;

/// How long one publish attempt may take before it is abandoned and retried.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);

/// The RabbitMQ transport. Cheap to clone; clones share connections.
///
/// Create it with [`AmqpTransport::connect`], then hand it to a
/// [`Worker`](dtasks::Worker) or a [`Client`](dtasks::Client). See the
/// [crate docs](crate) for the queues it creates.
#[derive(Clone)]
pub struct AmqpTransport {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for AmqpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpTransport")
            .field("prefix", &self.shared.topo.prefix())
            .finish_non_exhaustive()
    }
}

pub(crate) struct Shared {
    pub(crate) cfg: AmqpConfig,
    pub(crate) topo: Topology,
    pub(crate) consume_conns: deadpool_lapin::Pool,
    pub(crate) channels: ChannelPool,
    /// Queues declared by this process and not found missing since.
    declared: Mutex<HashSet<String>>,
    /// Every queue this process declared (the first [`MAX_REMEMBERED`]).
    ever_declared: Mutex<BTreeSet<String>>,
    /// Set once `ever_declared` is full.
    ever_full: AtomicBool,
    /// Result registers that a write found missing: declared before the next write.
    missing: Mutex<HashSet<String>>,
    /// The shard channel that holds the outstanding doorbell of an instance: its mailbox
    /// is drained on the same channel.
    doorbells: Mutex<HashMap<String, (u64, Channel)>>,
    doorbell_seq: AtomicU64,
    /// Ids of mailbox messages this process drained and acked: merged into a state that
    /// was confirmed first. A doorbell that announces only such messages has nothing to
    /// report and is acked without a drain (see [`Shared::merged`]).
    merged: Mutex<Generations>,
    /// Doorbells acked without a drain because they were spent.
    pub(crate) doorbells_spent: AtomicU64,
    /// The channel every result wait of this process consumes on (one consumer per
    /// waiting handle), opened on first use and again after it closed.
    waits: tokio::sync::Mutex<Option<Channel>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Milliseconds since the epoch, rounded up: a timer is never due before its time.
fn ceil_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => {
            let ms = d.as_millis() as i64;
            if d.subsec_nanos() % 1_000_000 == 0 {
                ms
            } else {
                ms + 1
            }
        }
        Err(_) => 0,
    }
}

pub(crate) fn short(s: &str) -> Result<ShortString> {
    ShortString::try_new(s).map_err(|_| {
        AmqpError::Invalid(format!(
            "`{s}` is longer than 255 bytes, the broker's limit for names"
        ))
    })
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
    /// A nack means the write-once register is full: [`Published::Duplicate`].
    pub(crate) register: bool,
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
            register: false,
            done: None,
        }
    }
}

/// The properties of a message published by the transport: persistent, with its id and
/// the dtasks headers.
pub(crate) fn properties(message_id: &str, instance: &str, dtask: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(H_INSTANCE.into(), text(instance));
    headers.insert(H_DTASK.into(), text(dtask));
    headers.insert(
        H_ENVELOPE.into(),
        AMQPValue::ShortShortUInt(dtasks::ENVELOPE_VERSION),
    );
    let mut props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/x-dtasks".into())
        .with_timestamp((now_ms() / 1000) as u64);
    match ShortString::try_new(message_id) {
        Ok(id) => props = props.with_message_id(id),
        Err(_) => {
            headers.insert(H_MESSAGE_ID.into(), text(message_id));
        }
    }
    props.with_headers(headers)
}

/// Adds `extra` headers to `props`.
pub(crate) fn with_headers(
    props: BasicProperties,
    extra: Vec<(&str, AMQPValue)>,
) -> BasicProperties {
    let mut headers = props.headers().clone().unwrap_or_default();
    for (k, v) in extra {
        headers.insert(k.into(), v);
    }
    props.with_headers(headers)
}

impl Shared {
    /// The state of a transport for `cfg`; connects nothing yet (the pools connect on
    /// first use).
    fn new(cfg: AmqpConfig) -> Result<Self> {
        cfg.validate().map_err(AmqpError::Config)?;
        let publish_conns =
            conn::connection_pool(&cfg.url, format!("dtasks {} publisher", cfg.prefix), 1)?;
        let consume_conns =
            conn::connection_pool(&cfg.url, format!("dtasks {} consumer", cfg.prefix), 1)?;
        let channels = conn::channel_pool(publish_conns, cfg.publish_channels)?;
        Ok(Self {
            topo: Topology::new(&cfg),
            cfg,
            consume_conns,
            channels,
            declared: Mutex::new(HashSet::new()),
            ever_declared: Mutex::new(BTreeSet::new()),
            ever_full: AtomicBool::new(false),
            missing: Mutex::new(HashSet::new()),
            doorbells: Mutex::new(HashMap::new()),
            doorbell_seq: AtomicU64::new(0),
            merged: Mutex::new(Generations::default()),
            doorbells_spent: AtomicU64::new(0),
            waits: tokio::sync::Mutex::new(None),
        })
    }

    /// Declares `queue` unless this process already did.
    pub(crate) async fn declare(&self, ch: &Channel, queue: &str, kind: Kind) -> Result<()> {
        if lock(&self.declared).contains(queue) {
            return Ok(());
        }
        if let Kind::DelayLevel(_) = kind {
            // Levels dead-letter into the ready queue: it must exist first.
            let ready = self.topo.delay_ready();
            Box::pin(self.declare(ch, &ready, Kind::DelayReady)).await?;
        }
        self.declare_uncached(ch, queue, kind).await
    }

    /// Declares `queue` (idempotent: the same arguments every time).
    pub(crate) async fn declare_uncached(
        &self,
        ch: &Channel,
        queue: &str,
        kind: Kind,
    ) -> Result<()> {
        let (opts, args) = self.topo.declaration(kind);
        ch.queue_declare(short(queue)?, opts, args)
            .await
            .context(|| format!("declaring queue `{queue}`"))?;
        debug!(queue, "queue declared");
        self.remember(queue);
        Ok(())
    }

    /// Records that `queue` was declared. Both records are bounded: a process that starts
    /// or runs millions of instances (a queue or two each) must not grow without end.
    /// Forgetting a declaration costs one more (idempotent) declare.
    fn remember(&self, queue: &str) {
        let mut declared = lock(&self.declared);
        if declared.len() >= MAX_REMEMBERED {
            declared.clear();
        }
        declared.insert(queue.to_string());
        drop(declared);
        let mut ever = lock(&self.ever_declared);
        if ever.len() < MAX_REMEMBERED {
            ever.insert(queue.to_string());
        } else if !ever.contains(queue) && !self.ever_full.swap(true, Ordering::Relaxed) {
            warn!(
                limit = MAX_REMEMBERED,
                "declared_queues() lists only the first queues this process declared"
            );
        }
    }

    fn forget(&self, queue: &str) {
        lock(&self.declared).remove(queue);
    }

    /// The queue a message on `route` goes to now.
    fn resolve(&self, route: &Route) -> (String, Kind) {
        match route {
            Route::Queue { queue, kind } => (queue.clone(), *kind),
            Route::Delayed { target, at_ms } => {
                let remaining = at_ms - now_ms();
                if remaining <= 0 {
                    (self.topo.wake(target), Kind::Task)
                } else {
                    let level = topology::level_for(remaining as u64);
                    (self.topo.delay_level(level), Kind::DelayLevel(level))
                }
            }
        }
    }

    /// Creates the result register `queue` (empty when new); retries through connection
    /// failures with backoff, up to the publish timeout, like a publish: a start during a
    /// broker outage waits for the broker.
    async fn create_register(&self, queue: &str) -> Result<()> {
        let deadline = Instant::now() + self.cfg.publish_timeout;
        let mut backoff = Backoff::new(Duration::from_millis(50), self.cfg.max_backoff);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let once = async {
                let ch = conn::get_channel(&self.channels).await?;
                self.declare(&ch, queue, Kind::Result).await
            };
            let e = match tokio::time::timeout(ATTEMPT_TIMEOUT, once).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => e,
                Err(_) => AmqpError::Timeout(format!("declaring `{queue}`")),
            };
            if e.is_permanent() {
                return Err(e);
            }
            let pause = backoff.next_delay();
            if Instant::now() + pause >= deadline {
                warn!(error = %e, attempt, queue, "creating a register failed; giving up");
                return Err(e);
            }
            warn!(error = %e, attempt, queue, "creating a register failed; retrying");
            tokio::time::sleep(pause).await;
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
        let ch = conn::get_channel(&self.channels).await?;
        let mut pending = Vec::new();
        for (i, item) in items.iter().enumerate() {
            if item.done.is_some() {
                continue;
            }
            let (queue, kind) = self.resolve(&item.route);
            if kind == Kind::Reply {
                // The calling client declared its reply queue before the start; never
                // recreated here (a missing one means the client is gone).
            } else if kind != Kind::Result {
                self.declare(&ch, &queue, kind).await?;
            } else if lock(&self.missing).contains(&queue) {
                self.declare(&ch, &queue, kind).await?;
                lock(&self.missing).remove(&queue);
            }
            // A root's result register exists from its start (the client creates it), so
            // a result is written without declaring it first (a round trip and broker work
            // per root); a register found missing (expired) is declared on the retry.
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
        let mut first_err = None;
        for (i, queue, kind, confirm) in pending {
            let outcome = match confirm.await {
                Ok(Confirmation::Ack(None)) => Ok(Published::Stored),
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
                    self.forget(&queue);
                    if kind == Kind::Result {
                        lock(&self.missing).insert(queue.clone());
                    }
                    Err(AmqpError::Returned(queue))
                }
                Ok(Confirmation::Nack(_)) if items[i].register => Ok(Published::Duplicate),
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
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    /// Turns an outgoing message into a raw one.
    fn item_for(&self, o: &Outgoing) -> Result<RawItem> {
        let props = properties(&o.message_id, o.instance.as_str(), &o.dtask);
        let (route, register, props) = match &o.destination {
            Destination::Task { name } => (
                Route::Queue {
                    queue: self.topo.task(name),
                    kind: Kind::Task,
                },
                false,
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
                    false,
                    props,
                )
            }
            Destination::Mailbox { instance } => (
                Route::Queue {
                    queue: self.topo.mailbox(instance.as_str()),
                    kind: Kind::Mailbox,
                },
                false,
                props,
            ),
            Destination::Result { instance } => (
                Route::Queue {
                    queue: self.topo.result(instance.as_str()),
                    kind: Kind::Result,
                },
                true,
                props,
            ),
            Destination::Status { instance } => (
                Route::Queue {
                    queue: self.topo.status(instance.as_str()),
                    kind: Kind::Status,
                },
                false,
                props,
            ),
            Destination::Reply { client } => (
                Route::Queue {
                    queue: self.topo.reply(client),
                    kind: Kind::Reply,
                },
                false,
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
            register,
            done: None,
        })
    }

    async fn publish(&self, batch: Vec<Outgoing>) -> Result<Vec<Published>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut items = batch
            .iter()
            .map(|o| self.item_for(o))
            .collect::<Result<Vec<_>>>()?;
        self.publish_raw(&mut items).await?;
        // Doorbells only after their mailbox messages are confirmed: a doorbell must
        // never find its message missing. One per instance is enough.
        // Each doorbell names the messages it announces, so that the consumer can tell a
        // spent one (its messages already drained) from news.
        let mut rung: Vec<(&InstanceId, &str, String)> = Vec::new();
        for o in &batch {
            if let Destination::Mailbox { instance } = &o.destination {
                match rung.iter_mut().find(|(i, _, _)| *i == instance) {
                    Some((_, _, ids)) => {
                        ids.push(' ');
                        ids.push_str(&o.message_id);
                    }
                    None => rung.push((instance, &o.dtask, o.message_id.clone())),
                }
            }
        }
        let mut bells = Vec::new();
        for (instance, dtask, ids) in rung {
            let mut props = properties(&format!("{instance}:bell"), instance.as_str(), dtask);
            // A doorbell without the list is never spent: it always drains. Long lists
            // (a batch of many messages to one mailbox) are left out to keep headers small.
            if ids.len() <= MAX_RINGS_LEN {
                props = with_headers(props, vec![(H_RINGS, text(&ids))]);
            }
            bells.push(RawItem::to_queue(
                self.topo.shard_of(instance.as_str()),
                Kind::Shard,
                instance.as_str().as_bytes().to_vec(),
                props,
            ));
        }
        if !bells.is_empty() {
            self.publish_raw(&mut bells).await?;
        }
        debug!(
            messages = items.len(),
            doorbells = bells.len(),
            "batch published"
        );
        Ok(items
            .iter()
            .map(|i| i.done.unwrap_or(Published::Stored))
            .collect())
    }

    /// Whether `queue` exists.
    async fn exists(&self, queue: &str) -> Result<bool> {
        Ok(self.lookup(queue).await?.is_some())
    }

    /// Looks `queue` up without creating it; a pooled channel when it exists. A missing
    /// queue closes the channel, which leaves the pool.
    async fn lookup(&self, queue: &str) -> Result<Option<Object<ConfirmChannels>>> {
        let ch = conn::get_channel(&self.channels).await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        match ch
            .queue_declare(short(queue)?, passive, FieldTable::default())
            .await
        {
            Ok(_) => Ok(Some(ch)),
            Err(e) if is_not_found(&e) => {
                drop(Object::take(ch));
                Ok(None)
            }
            Err(e) => Err(AmqpError::broker(format!("checking queue `{queue}`"), e)),
        }
    }

    /// Reads a register without consuming it: takes its messages and puts them back.
    /// `last` picks the newest (status) instead of the oldest (result).
    async fn peek(&self, queue: &str, last: bool) -> Result<Option<Vec<u8>>> {
        // Looked up, not declared: reading must not create a register (an unknown id
        // stays unknown, and polling the status of a pending instance leaves no empty
        // queue behind).
        let Some(ch) = self.lookup(queue).await? else {
            return Ok(None);
        };
        let mut got = Vec::new();
        loop {
            match ch
                .basic_get(short(queue)?, BasicGetOptions { no_ack: false })
                .await
            {
                Ok(Some(m)) => {
                    got.push(m.delivery);
                    if !last {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) if is_not_found(&e) => {
                    // Deleted this instant (expired): as good as empty.
                    drop(Object::take(ch));
                    return Ok(None);
                }
                Err(e) => return Err(AmqpError::broker(format!("reading `{queue}`"), e)),
            }
        }
        if let Some(newest) = got.last() {
            let nack = newest.acker.nack(BasicNackOptions {
                multiple: true,
                requeue: true,
            });
            consume::settled(&ch, nack)
                .await
                .context(|| format!("putting back the messages of `{queue}`"))?;
        }
        let pick = if last {
            got.pop()
        } else {
            got.into_iter().next()
        };
        Ok(pick.map(|d| d.data))
    }

    async fn read_status(&self, queue: &str) -> Result<Option<Vec<u8>>> {
        // A register being read by someone else this instant looks empty (a read takes
        // the message and puts it back): look again shortly before calling it unwritten.
        for attempt in 0..3 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            if let Some(v) = self.peek(queue, true).await? {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    async fn wait_result(&self, instance: &InstanceId) -> Result<Vec<u8>> {
        let queue = self.topo.result(instance.as_str());
        let mut backoff = Backoff::new(Duration::from_millis(100), self.cfg.max_backoff);
        loop {
            match self.try_wait_result(&queue).await {
                Ok(body) => return Ok(body),
                Err(e) if e.is_permanent() => return Err(e),
                Err(e) => {
                    warn!(error = %e, queue, "waiting for a result failed; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }

    /// The channel result waits consume on: one per process, so that many waiting
    /// handles cost one consumer each, not a channel each.
    async fn wait_channel(&self) -> Result<Channel> {
        let mut held = self.waits.lock().await;
        if let Some(ch) = held.as_ref().filter(|ch| ch.status().connected()) {
            return Ok(ch.clone());
        }
        let ch = conn::open_channel(&self.consume_conns).await?;
        // Per consumer: each waiting handle takes at most the one result message.
        ch.basic_qos(1, BasicQosOptions::default())
            .await
            .context(|| "setting the prefetch".into())?;
        *held = Some(ch.clone());
        Ok(ch)
    }

    async fn try_wait_result(&self, queue: &str) -> Result<Vec<u8>> {
        // Always declare: the register may have expired since this process last did. On a
        // pooled channel: a refused declaration closes its channel, and the wait channel
        // is shared by every waiting handle.
        let pooled = conn::get_channel(&self.channels).await?;
        self.declare_uncached(&pooled, queue, Kind::Result).await?;
        drop(pooled);
        let ch = self.wait_channel().await?;
        let consumer = ch
            .basic_consume(
                short(queue)?,
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .context(|| format!("consuming `{queue}`"))?;
        let mut wait = ResultWait {
            ch,
            consumer: Some(consumer),
        };
        let d = match wait.next().await {
            Some(Ok(d)) => d,
            Some(Err(e)) => return Err(AmqpError::broker(format!("waiting on `{queue}`"), e)),
            None => {
                return Err(AmqpError::Connect(format!(
                    "the consumer of `{queue}` was cancelled"
                )))
            }
        };
        // The register keeps its result: put it back, once the consumer is cancelled so
        // that it is not delivered to this consumer again.
        wait.cancel().await;
        let _ = consume::settled(
            &wait.ch,
            d.acker.reject(BasicRejectOptions { requeue: true }),
        )
        .await;
        Ok(d.data)
    }

    async fn drain_mailbox(self: &Arc<Self>, instance: &InstanceId) -> Result<Vec<MailboxMessage>> {
        let queue = self.topo.mailbox(instance.as_str());
        // A missing mailbox (expired, or never written) is empty. `basic.get` on a missing
        // queue would close the shard channel, so look first on another channel (only for
        // existence: a message count seen from another channel may miss a message this
        // channel has just put back).
        if !self.exists(&queue).await? {
            return Ok(Vec::new());
        }
        let held = lock(&self.doorbells)
            .get(instance.as_str())
            .map(|(_, ch)| ch.clone())
            .filter(|ch| ch.status().connected());
        let ch = match held {
            Some(ch) => ch,
            // No doorbell outstanding in this process: a channel of its own.
            None => conn::open_channel(&self.consume_conns).await?,
        };
        let mut out = Vec::new();
        loop {
            match ch
                .basic_get(short(&queue)?, BasicGetOptions { no_ack: false })
                .await
            {
                Ok(Some(m)) => {
                    let d = m.delivery;
                    let id = consume::message_id(&d.properties);
                    let mut settle = AmqpSettle::new(
                        self.clone(),
                        ch.clone(),
                        d.acker,
                        queue.clone(),
                        d.data.clone(),
                        d.properties,
                        None,
                    );
                    if let Some(id) = id {
                        // Acked only once merged into a confirmed state (or dropped as a
                        // duplicate): its doorbell, if still to come, is spent.
                        let shared = self.clone();
                        settle.set_on_ack(Box::new(move || shared.mark_merged(id)));
                    }
                    out.push(MailboxMessage {
                        body: d.data,
                        settle: Box::new(settle),
                    });
                }
                Ok(None) => break,
                Err(e) => {
                    // The messages taken so far go back when their settles drop.
                    return Err(AmqpError::broker(format!("draining `{queue}`"), e));
                }
            }
        }
        debug!(instance = %instance, messages = out.len(), "mailbox drained");
        Ok(out)
    }

    /// The timers waiting in the delay levels and the ready queue.
    async fn pending_timers(&self) -> Result<u64> {
        let ch = conn::get_channel(&self.channels).await?;
        // Declared, not looked up: a missing queue would close the channel with an error.
        // The levels are part of the deployment's topology anyway.
        let mut queues: Vec<(String, Kind)> = (0..=topology::MAX_LEVEL)
            .map(|k| (self.topo.delay_level(k), Kind::DelayLevel(k)))
            .collect();
        queues.push((self.topo.delay_ready(), Kind::DelayReady));
        let mut n = 0u64;
        for (queue, kind) in queues {
            let (opts, args) = self.topo.declaration(kind);
            let q = ch
                .queue_declare(short(&queue)?, opts, args)
                .await
                .context(|| format!("declaring queue `{queue}`"))?;
            self.remember(&queue);
            n += u64::from(q.message_count());
        }
        Ok(n)
    }

    /// Records that `instance`'s doorbell is outstanding on `ch`; returns a token for
    /// [`Shared::doorbell_done`].
    pub(crate) fn doorbell_out(&self, instance: &str, ch: &Channel) -> u64 {
        let token = self.doorbell_seq.fetch_add(1, Ordering::Relaxed);
        lock(&self.doorbells).insert(instance.to_string(), (token, ch.clone()));
        token
    }

    pub(crate) fn doorbell_done(&self, instance: &str, token: u64) {
        let mut map = lock(&self.doorbells);
        if map.get(instance).is_some_and(|(t, _)| *t == token) {
            map.remove(instance);
        }
    }

    /// Records that the mailbox message `id` was drained and acked.
    pub(crate) fn mark_merged(&self, id: String) {
        lock(&self.merged).insert(id);
    }

    /// Whether every message a doorbell announces (`rings`, non-empty) was drained and
    /// acked by this process. Such a doorbell is spent: whatever else is in the mailbox
    /// has a doorbell of its own, or was there for the drain that acked these.
    pub(crate) fn merged(&self, rings: &[&str]) -> bool {
        let merged = lock(&self.merged);
        !rings.is_empty() && rings.iter().all(|id| merged.contains(id))
    }
}

/// A bounded set in two generations: when the newer one is full, the older one is
/// dropped. A forgotten id only costs a drain that finds nothing new.
#[derive(Default)]
pub(crate) struct Generations {
    new: HashSet<String>,
    old: HashSet<String>,
}

impl Generations {
    fn insert(&mut self, id: String) {
        if self.new.len() >= MAX_REMEMBERED {
            self.old = std::mem::take(&mut self.new);
        }
        self.new.insert(id);
    }

    fn contains(&self, id: &str) -> bool {
        self.new.contains(id) || self.old.contains(id)
    }
}

/// One handle's consumer of a result register, on the shared wait channel. Cancelled when
/// the wait ends or is abandoned (its future dropped): a result delivered to it and not
/// yet handed over is put back, so that it is never held by a consumer nobody reads.
struct ResultWait {
    ch: Channel,
    consumer: Option<lapin::Consumer>,
}

impl ResultWait {
    async fn next(&mut self) -> Option<lapin::Result<lapin::message::Delivery>> {
        self.consumer.as_mut()?.next().await
    }

    async fn cancel(&mut self) {
        if let Some(consumer) = self.consumer.take() {
            give_back(self.ch.clone(), consumer).await;
        }
    }
}

impl Drop for ResultWait {
    fn drop(&mut self) {
        let Some(consumer) = self.consumer.take() else {
            return;
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(give_back(self.ch.clone(), consumer));
        }
    }
}

/// Cancels `consumer` and puts back whatever was delivered to it before the cancel took
/// effect (the broker sends nothing for it after confirming the cancel).
async fn give_back(ch: Channel, mut consumer: lapin::Consumer) {
    if ch
        .basic_cancel(consumer.tag(), Default::default())
        .await
        .is_err()
    {
        // The channel is gone, and with it every unacknowledged delivery.
        return;
    }
    while let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_secs(1), consumer.next()).await
    {
        let _ = consume::settled(&ch, d.acker.reject(BasicRejectOptions { requeue: true })).await;
    }
}

impl AmqpTransport {
    /// Connects to the broker of `cfg` and declares the queues shared by the deployment.
    /// Fails when the broker cannot be reached or the configuration is invalid.
    ///
    /// ```no_run
    /// use dtasks_amqp::{AmqpConfig, AmqpTransport};
    ///
    /// # async fn run() -> Result<(), dtasks::Error> {
    /// let transport = AmqpTransport::connect(AmqpConfig::from_env().with_prefix("shop")).await?;
    /// let client = dtasks::Client::new(transport);
    /// # Ok(()) }
    /// ```
    pub async fn connect(cfg: AmqpConfig) -> std::result::Result<Self, dtasks::Error> {
        Ok(Self::connect_inner(cfg).await?)
    }

    async fn connect_inner(cfg: AmqpConfig) -> Result<Self> {
        let shared = Arc::new(Shared::new(cfg)?);
        let ch = conn::get_channel(&shared.channels).await?;
        shared.declare(&ch, &shared.topo.dead(), Kind::Dead).await?;
        shared
            .declare(&ch, &shared.topo.delay_ready(), Kind::DelayReady)
            .await?;
        drop(ch);
        info!(prefix = shared.topo.prefix(), "connected to the broker");
        Ok(Self { shared })
    }

    /// The queue name prefix.
    pub fn prefix(&self) -> &str {
        self.shared.topo.prefix()
    }

    /// How many doorbells this transport acked without draining their mailbox, because it
    /// had itself drained and acked every message they announce (a fan-in rings once per
    /// result, and one drain usually takes several results).
    pub fn spent_doorbells(&self) -> u64 {
        self.shared.doorbells_spent.load(Ordering::Relaxed)
    }

    /// The names of the queues this transport has declared so far, sorted (for tools and
    /// tests that clean up a prefix): every one, up to the first 65,536 (a long-running
    /// process declares a queue or two per instance; list the broker's queues by prefix
    /// beyond that).
    pub fn declared_queues(&self) -> Vec<String> {
        lock(&self.shared.ever_declared).iter().cloned().collect()
    }

    /// The name of the dead-letter queue.
    pub fn dead_letter_queue(&self) -> String {
        self.shared.topo.dead()
    }

    /// The name of the task queue of the DTask `name`.
    pub fn task_queue(&self, name: &str) -> String {
        self.shared.topo.task(name)
    }

    /// The name of the queue due timers of DTask `name` are delivered from.
    pub fn wake_queue(&self, name: &str) -> String {
        self.shared.topo.wake(name)
    }

    /// The name of the delay queue of `level` (messages wait `2^level` ms in it).
    pub fn delay_queue(&self, level: u8) -> String {
        self.shared.topo.delay_level(level)
    }
}

impl Transport for AmqpTransport {
    fn mailbox_retention(&self) -> Option<Duration> {
        Some(self.shared.cfg.mailbox_retention)
    }

    fn publish(
        &self,
        batch: Vec<Outgoing>,
    ) -> BoxFuture<'_, std::result::Result<Vec<Published>, dtasks::Error>> {
        async move { Ok(self.shared.publish(batch).await?) }.boxed()
    }

    fn consume(
        &self,
        names: Vec<String>,
    ) -> BoxFuture<
        '_,
        std::result::Result<
            BoxStream<'static, std::result::Result<dtasks::transport::Delivery, dtasks::Error>>,
            dtasks::Error,
        >,
    > {
        async move { Ok(consume::consume(self.shared.clone(), names).await?) }.boxed()
    }

    fn drain_mailbox(
        &self,
        instance: &InstanceId,
    ) -> BoxFuture<'_, std::result::Result<Vec<MailboxMessage>, dtasks::Error>> {
        let instance = instance.clone();
        async move { Ok(self.shared.drain_mailbox(&instance).await?) }.boxed()
    }

    fn create_register(
        &self,
        instance: &InstanceId,
    ) -> BoxFuture<'_, std::result::Result<(), dtasks::Error>> {
        let queue = self.shared.topo.result(instance.as_str());
        async move { Ok(self.shared.create_register(&queue).await?) }.boxed()
    }

    fn register_exists(
        &self,
        instance: &InstanceId,
    ) -> BoxFuture<'_, std::result::Result<bool, dtasks::Error>> {
        let queue = self.shared.topo.result(instance.as_str());
        async move { Ok(self.shared.exists(&queue).await?) }.boxed()
    }

    fn read_result(
        &self,
        instance: &InstanceId,
    ) -> BoxFuture<'_, std::result::Result<Option<Vec<u8>>, dtasks::Error>> {
        let queue = self.shared.topo.result(instance.as_str());
        async move { Ok(self.shared.peek(&queue, false).await?) }.boxed()
    }

    fn wait_result(
        &self,
        instance: &InstanceId,
    ) -> BoxFuture<'_, std::result::Result<Vec<u8>, dtasks::Error>> {
        let instance = instance.clone();
        async move { Ok(self.shared.wait_result(&instance).await?) }.boxed()
    }

    fn read_status(
        &self,
        instance: &InstanceId,
    ) -> BoxFuture<'_, std::result::Result<Option<Vec<u8>>, dtasks::Error>> {
        let queue = self.shared.topo.status(instance.as_str());
        async move { Ok(self.shared.read_status(&queue).await?) }.boxed()
    }

    fn supports_replies(&self) -> bool {
        true
    }

    fn consume_replies(
        &self,
        client: &str,
    ) -> BoxFuture<
        '_,
        std::result::Result<
            BoxStream<'static, std::result::Result<dtasks::transport::Reply, dtasks::Error>>,
            dtasks::Error,
        >,
    > {
        let client = client.to_string();
        async move { Ok(consume::consume_replies(self.shared.clone(), &client).await?) }.boxed()
    }

    fn pending_timers(&self) -> BoxFuture<'_, std::result::Result<Option<u64>, dtasks::Error>> {
        async move { Ok(Some(self.shared.pending_timers().await?)) }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn declarations_remembered_are_bounded() {
        let shared = Shared::new(AmqpConfig::new("amqp://127.0.0.1:1/%2f")).expect("valid");
        let n = MAX_REMEMBERED + 10;
        for i in 0..n {
            shared.remember(&format!("p.result.{i}"));
        }
        let declared = lock(&shared.declared).len();
        assert!(declared <= MAX_REMEMBERED, "{declared}");
        // The most recent one is still known: no declare before its next use.
        assert!(lock(&shared.declared).contains(&format!("p.result.{}", n - 1)));
        assert_eq!(lock(&shared.ever_declared).len(), MAX_REMEMBERED);
        assert!(shared.ever_full.load(Ordering::Relaxed));
    }
}

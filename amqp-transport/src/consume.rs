//! Consuming: one supervised session per `consume()` call, which reconnects and
//! re-subscribes when the connection is lost, and the settles of its deliveries.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use dtasks::transport::{Delivery, DeliveryKind, Reply, Settle};
use dtasks::InstanceId;
use futures::future::BoxFuture;
use futures::stream::{BoxStream, SelectAll};
use futures::{FutureExt, StreamExt};
use lapin::message::Delivery as AmqpDelivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Acker, BasicProperties, Channel};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::conn::{self, Backoff};
use crate::delay;
use crate::error::{AmqpError, Context, Result};
use crate::topology::{text, Kind};
use crate::transport::{
    short, with_headers, RawItem, Shared, H_INSTANCE, H_MESSAGE_ID, H_QUEUE, H_REASON, H_RINGS,
};

type Output = std::result::Result<Delivery, dtasks::Error>;

/// A session that lived this long resets the reconnect backoff.
const HEALTHY: Duration = Duration::from_secs(5);

/// How often a settle that has not completed checks whether its channel is still open.
const SETTLE_CHECK: Duration = Duration::from_secs(1);

/// Waits for an ack, nack or reject of a delivery of `channel`, or until the channel is
/// no longer open (`Ok(false)`: the broker puts the message back by itself).
///
/// lapin (4.12) can lose a settle issued while its connection fails: the command is queued
/// behind the shutdown of the connection's internal loop, and neither runs nor fails while
/// the delivery's acker (which holds the queue open) waits for it. Without this bound the
/// wait never ends, and the worker's slot for the delivery is lost for good.
pub(crate) async fn settled(
    channel: &Channel,
    settle: impl std::future::Future<Output = lapin::Result<bool>>,
) -> lapin::Result<bool> {
    tokio::pin!(settle);
    loop {
        tokio::select! {
            r = &mut settle => return r,
            _ = tokio::time::sleep(SETTLE_CHECK) => {
                if !channel.status().connected() {
                    warn!(
                        channel = channel.id(),
                        "a settle did not complete and its channel is closed; \
                         the broker puts the message back"
                    );
                    return Ok(false);
                }
            }
        }
    }
}

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
    let due = Due {
        tx: due_tx,
        served: Arc::new(names.iter().cloned().collect()),
    };
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

/// Where the ready queue's consumer hands a due timer of a DTask this session consumes:
/// straight to the worker, ahead of the deliveries waiting for it, still unacked in the
/// ready queue (a crash puts it back there), instead of one more confirmed publish and
/// delivery through the DTask's wake queue.
#[derive(Clone)]
pub(crate) struct Due {
    tx: mpsc::UnboundedSender<Output>,
    served: Arc<HashSet<String>>,
}

impl Due {
    /// Whether due timers of `dtask` can be handed over here.
    pub(crate) fn serves(&self, dtask: &str) -> bool {
        self.served.contains(dtask) && !self.tx.is_closed()
    }

    /// Hands a due timer over as a task delivery. A delivery that cannot be handed over
    /// (the stream is gone) is dropped, which puts it back in its queue.
    pub(crate) fn hand_over(
        &self,
        shared: &Arc<Shared>,
        ch: &Channel,
        queue: String,
        d: AmqpDelivery,
    ) {
        let _ = self.tx.send(Ok(task_delivery(shared, ch, queue, d)));
    }
}

/// A task message as the worker gets it, settled on `ch` (the channel it came on).
fn task_delivery(shared: &Arc<Shared>, ch: &Channel, queue: String, d: AmqpDelivery) -> Delivery {
    let message_id = message_id(&d.properties);
    let redeliveries = redeliveries(&d);
    let settle = AmqpSettle::new(
        shared.clone(),
        ch.clone(),
        d.acker,
        queue,
        d.data.clone(),
        d.properties,
        None,
    );
    Delivery {
        kind: DeliveryKind::Task {
            body: d.data,
            message_id,
        },
        redeliveries,
        settle: Box::new(settle),
    }
}

#[derive(Clone, Debug)]
enum Source {
    Task(Arc<str>),
    Shard(Arc<str>),
    Ready,
}

struct Incoming {
    source: Source,
    /// `None`: the consumer ended.
    item: Option<lapin::Result<AmqpDelivery>>,
}

struct Session {
    task_ch: Channel,
    shard_ch: Channel,
    ready_ch: Channel,
    streams: SelectAll<BoxStream<'static, Incoming>>,
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

async fn subscribe(ch: &Channel, queue: &str) -> Result<lapin::Consumer> {
    ch.basic_consume(
        short(queue)?,
        "".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await
    .context(|| format!("consuming `{queue}`"))
}

async fn open(shared: &Shared, names: &[String]) -> Result<Session> {
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
        .flat_map(|n| [topo.task(n), topo.wake(n)])
        .collect();
    let shards: Vec<String> = (0..topo.shards()).map(|i| topo.shard(i)).collect();
    let ready = topo.delay_ready();

    // Declare everything before consuming anything: a quorum queue consumed right after
    // its creation can still be starting (RabbitMQ 3.10 then closes the connection).
    for queue in &tasks {
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
    for queue in shards {
        let c = subscribe(&shard_ch, &queue).await?;
        streams.push(tagged(c, Source::Shard(queue.into())));
    }
    let c = subscribe(&ready_ch, &ready).await?;
    streams.push(tagged(c, Source::Ready));

    Ok(Session {
        task_ch,
        shard_ch,
        ready_ch,
        streams,
    })
}

enum End {
    /// The stream was dropped.
    Closed,
    /// The connection or a channel failed.
    Lost(String),
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

/// The reconnect loop of a consumer task: `open` subscribes, `pump` forwards deliveries to
/// `tx` until the subscription is lost (then this subscribes again, with backoff) or `tx`
/// is dropped (then it returns). `first` gets the outcome of the first subscription; what
/// retrying cannot fix, or a broker away for longer than the publish timeout, is reported
/// there and ends the task.
async fn supervised<T, S, OF, PF>(
    shared: &Shared,
    what: &'static str,
    tx: &mpsc::UnboundedSender<T>,
    first: oneshot::Sender<Result<()>>,
    mut open: impl FnMut() -> OF,
    mut pump: impl FnMut(S) -> PF,
) where
    OF: std::future::Future<Output = Result<S>>,
    PF: std::future::Future<Output = End>,
{
    let mut first = Some(first);
    let started = Instant::now();
    let mut backoff = Backoff::new(Duration::from_millis(100), shared.cfg.max_backoff);
    loop {
        let opened = tokio::select! {
            _ = tx.closed() => return,
            s = open() => s,
        };
        match opened {
            Ok(session) => {
                if let Some(f) = first.take() {
                    let _ = f.send(Ok(()));
                } else {
                    info!("{what} re-subscribed");
                }
                let since = Instant::now();
                match pump(session).await {
                    End::Closed => {
                        debug!("{what}: stream dropped; consumers cancelled");
                        return;
                    }
                    End::Lost(why) => {
                        warn!(reason = %why, "lost the {what}; reconnecting");
                    }
                }
                if since.elapsed() >= HEALTHY {
                    backoff.reset();
                }
            }
            Err(e) => {
                let give_up = e.is_permanent() || started.elapsed() >= shared.cfg.publish_timeout;
                if first.is_some() && give_up {
                    if let Some(f) = first.take() {
                        let _ = f.send(Err(e));
                    }
                    return;
                }
                warn!(error = %e, "subscribing the {what} failed; retrying");
            }
        }
        tokio::select! {
            _ = tx.closed() => return,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
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
            None => return End::Lost(format!("the consumer of {source:?} was cancelled")),
            Some(Err(e)) => return End::Lost(e.to_string()),
            Some(Ok(d)) => d,
        };
        match source {
            Source::Task(queue) => {
                let delivery = task_delivery(shared, &s.task_ch, queue.to_string(), d);
                // If the receiver is gone the delivery drops here and is requeued.
                let _ = tx.send(Ok(delivery));
            }
            Source::Shard(queue) => doorbell(shared, &s.shard_ch, &queue, d, tx),
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

fn doorbell(
    shared: &Arc<Shared>,
    ch: &Channel,
    queue: &str,
    d: AmqpDelivery,
    tx: &mpsc::UnboundedSender<Output>,
) {
    let instance = String::from_utf8(d.data.clone())
        .ok()
        .and_then(|s| InstanceId::new(s).ok());
    let mut settle = AmqpSettle::new(
        shared.clone(),
        ch.clone(),
        d.acker,
        queue.to_string(),
        d.data,
        d.properties,
        None,
    );
    let Some(instance) = instance else {
        tokio::spawn(async move {
            let reason = "a doorbell whose body is not an instance id".to_string();
            warn!(reason, "dead-lettering a doorbell");
            let _ = Box::new(settle).dead_letter(reason).await;
        });
        return;
    };
    if !d.redelivered {
        if let Some(rings) = header_str(settle.props(), H_RINGS) {
            let rings: Vec<&str> = rings.split(' ').filter(|s| !s.is_empty()).collect();
            if shared.merged(&rings) {
                // Spent: this process drained and acked what it announces, after merging
                // it into a confirmed state. Nothing to drain.
                debug!(instance = %instance, "a spent doorbell");
                shared.doorbells_spent.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    if let Err(e) = Box::new(settle).ack().await {
                        debug!(error = %e, "acking a spent doorbell failed; it comes back");
                    }
                });
                return;
            }
        }
    }
    let token = shared.doorbell_out(instance.as_str(), ch);
    let (sh, id) = (shared.clone(), instance.as_str().to_string());
    settle.set_on_settle(Box::new(move || sh.doorbell_done(&id, token)));
    let delivery = Delivery {
        kind: DeliveryKind::Doorbell { instance },
        redeliveries: u32::from(d.redelivered),
        settle: Box::new(settle),
    };
    if d.redelivered {
        // Redelivered after a consumer failed: the mailbox messages that consumer held
        // come back independently; give them time to be back before draining.
        let pause = shared.cfg.redelivery_pause;
        let tx = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(pause).await;
            let _ = tx.send(Ok(delivery));
        });
    } else {
        let _ = tx.send(Ok(delivery));
    }
}

pub(crate) fn message_id(props: &BasicProperties) -> Option<String> {
    if let Some(id) = props.message_id() {
        return Some(id.to_string());
    }
    let headers = props.headers().as_ref()?;
    match headers.inner().get(H_MESSAGE_ID)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        _ => None,
    }
}

pub(crate) fn header_i64(props: &BasicProperties, key: &str) -> Option<i64> {
    let v = props.headers().as_ref()?.inner().get(key)?;
    match v {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::Timestamp(n) => i64::try_from(*n).ok(),
        _ => None,
    }
}

pub(crate) fn header_str(props: &BasicProperties, key: &str) -> Option<String> {
    match props.headers().as_ref()?.inner().get(key)? {
        AMQPValue::LongString(s) => String::from_utf8(s.as_bytes().to_vec()).ok(),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

/// Earlier deliveries of a task message: the quorum queue counts them in
/// `x-delivery-count`.
fn redeliveries(d: &AmqpDelivery) -> u32 {
    match header_i64(&d.properties, "x-delivery-count") {
        Some(n) => n.clamp(0, i64::from(u32::MAX)) as u32,
        None => u32::from(d.redelivered),
    }
}

/// Settles a delivery or a mailbox message. Holds its channel open until settled;
/// dropped unsettled, it puts the message back.
pub(crate) struct AmqpSettle {
    inner: Option<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    /// Keeps the channel open: closing it would put the message back.
    channel: Channel,
    acker: Acker,
    queue: String,
    body: Vec<u8>,
    props: BasicProperties,
    on_settle: Option<Box<dyn FnOnce() + Send>>,
    on_ack: Option<Box<dyn FnOnce() + Send>>,
}

impl AmqpSettle {
    pub(crate) fn new(
        shared: Arc<Shared>,
        channel: Channel,
        acker: Acker,
        queue: String,
        body: Vec<u8>,
        props: BasicProperties,
        on_settle: Option<Box<dyn FnOnce() + Send>>,
    ) -> Self {
        Self {
            inner: Some(Inner {
                shared,
                channel,
                acker,
                queue,
                body,
                props,
                on_settle,
                on_ack: None,
            }),
        }
    }

    fn props(&self) -> &BasicProperties {
        &self.inner.as_ref().expect("a settle is used once").props
    }

    /// Runs `f` once the message is acked (not when it is put back or dead-lettered).
    pub(crate) fn set_on_ack(&mut self, f: Box<dyn FnOnce() + Send>) {
        if let Some(inner) = self.inner.as_mut() {
            inner.on_ack = Some(f);
        }
    }

    fn set_on_settle(&mut self, f: Box<dyn FnOnce() + Send>) {
        if let Some(inner) = self.inner.as_mut() {
            inner.on_settle = Some(f);
        }
    }

    fn take(&mut self) -> Inner {
        self.inner.take().expect("a settle is used once")
    }
}

impl Inner {
    fn finish(&mut self) {
        if let Some(f) = self.on_settle.take() {
            f();
        }
    }

    /// Interprets the result of an ack or a reject.
    fn outcome(
        &self,
        what: &str,
        r: lapin::Result<bool>,
    ) -> std::result::Result<(), dtasks::Error> {
        match r {
            Ok(true) => Ok(()),
            Ok(false) => {
                // The channel is gone: the broker puts the message back by itself.
                debug!(queue = %self.queue, what, channel = self.channel.id(), "settling on a closed channel; the message will be redelivered");
                Ok(())
            }
            Err(e) => {
                warn!(queue = %self.queue, what, error = %e, "settling failed; the message will be redelivered");
                Err(AmqpError::broker(format!("{what} on `{}`", self.queue), e).into())
            }
        }
    }
}

impl Settle for AmqpSettle {
    fn ack(mut self: Box<Self>) -> BoxFuture<'static, std::result::Result<(), dtasks::Error>> {
        let mut inner = self.take();
        async move {
            let r = settled(&inner.channel, inner.acker.ack(BasicAckOptions::default())).await;
            if r.is_ok() {
                if let Some(f) = inner.on_ack.take() {
                    f();
                }
            }
            inner.finish();
            inner.outcome("ack", r)
        }
        .boxed()
    }

    fn requeue(mut self: Box<Self>) -> BoxFuture<'static, std::result::Result<(), dtasks::Error>> {
        let mut inner = self.take();
        async move {
            let r = settled(
                &inner.channel,
                inner.acker.reject(BasicRejectOptions { requeue: true }),
            )
            .await;
            inner.finish();
            inner.outcome("requeue", r)
        }
        .boxed()
    }

    fn dead_letter(
        mut self: Box<Self>,
        reason: String,
    ) -> BoxFuture<'static, std::result::Result<(), dtasks::Error>> {
        let mut inner = self.take();
        async move {
            let dead = inner.shared.topo.dead();
            let props = with_headers(
                inner.props.clone(),
                vec![(H_REASON, text(&reason)), (H_QUEUE, text(&inner.queue))],
            );
            let mut item = [RawItem::to_queue(
                dead,
                Kind::Dead,
                std::mem::take(&mut inner.body),
                props,
            )];
            // Ack the original only once the dead letter is safely stored.
            if let Err(e) = inner.shared.publish_raw(&mut item).await {
                warn!(queue = %inner.queue, error = %e, "dead-lettering failed; the message goes back");
                let _ = settled(
                    &inner.channel,
                    inner.acker.reject(BasicRejectOptions { requeue: true }),
                )
                .await;
                inner.finish();
                return Err(e.into());
            }
            info!(queue = %inner.queue, %reason, "message dead-lettered");
            let r = settled(&inner.channel, inner.acker.ack(BasicAckOptions::default())).await;
            if r.is_ok() {
                if let Some(f) = inner.on_ack.take() {
                    f();
                }
            }
            inner.finish();
            inner.outcome("ack of a dead-lettered message", r)
        }
        .boxed()
    }
}

impl Drop for AmqpSettle {
    fn drop(&mut self) {
        let Some(mut inner) = self.inner.take() else {
            return;
        };
        inner.finish();
        // Unsettled means redelivered. Without a runtime, closing the channel (when its
        // last handle drops) puts the message back all the same.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = settled(
                    &inner.channel,
                    inner.acker.reject(BasicRejectOptions { requeue: true }),
                )
                .await;
                drop(inner.channel);
            });
        }
    }
}

type ReplyOutput = std::result::Result<Reply, dtasks::Error>;

/// Consumes the reply queue of the client `client` (declared first, so that the first
/// call's result has somewhere to go), supervised like [`consume`]: reconnects and
/// subscribes again after the connection is lost; unacked replies come back.
pub(crate) async fn consume_replies(
    shared: Arc<Shared>,
    client: &str,
) -> Result<BoxStream<'static, ReplyOutput>> {
    let queue = shared.topo.reply(client);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (first_tx, first_rx) = oneshot::channel();
    let span = info_span!("dtasks.amqp.replies", queue = %queue);
    tokio::spawn(supervise_replies(shared, queue, tx, first_tx).instrument(span));
    first_rx
        .await
        .map_err(|_| AmqpError::Connect("the reply consumer task ended".into()))??;
    Ok(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed())
}

async fn open_replies(shared: &Shared, queue: &str) -> Result<(Channel, lapin::Consumer)> {
    let ch = conn::open_channel(&shared.consume_conns).await?;
    shared.declare_uncached(&ch, queue, Kind::Reply).await?;
    ch.basic_qos(shared.cfg.prefetch, BasicQosOptions::default())
        .await
        .context(|| "setting the prefetch".into())?;
    let consumer = subscribe(&ch, queue).await?;
    Ok((ch, consumer))
}

async fn supervise_replies(
    shared: Arc<Shared>,
    queue: String,
    tx: mpsc::UnboundedSender<ReplyOutput>,
    first: oneshot::Sender<Result<()>>,
) {
    let (shared, queue, tx) = (&shared, &queue, &tx);
    supervised(
        shared,
        "reply consumer",
        tx,
        first,
        || open_replies(shared, queue),
        |(ch, consumer)| pump_replies(shared, queue, ch, consumer, tx),
    )
    .await;
}

/// Hands each reply to `tx` with its settlement; a reply without a valid instance header
/// is dead-lettered.
async fn pump_replies(
    shared: &Arc<Shared>,
    queue: &str,
    ch: Channel,
    mut consumer: lapin::Consumer,
    tx: &mpsc::UnboundedSender<ReplyOutput>,
) -> End {
    loop {
        let next = tokio::select! {
            _ = tx.closed() => return End::Closed,
            n = consumer.next() => n,
        };
        let d = match next {
            Some(Ok(d)) => d,
            Some(Err(e)) => return End::Lost(e.to_string()),
            None => return End::Lost("the reply consumer was cancelled".into()),
        };
        let instance = header_str(&d.properties, H_INSTANCE).and_then(|s| InstanceId::new(s).ok());
        let settle = AmqpSettle::new(
            shared.clone(),
            ch.clone(),
            d.acker,
            queue.to_string(),
            d.data.clone(),
            d.properties,
            None,
        );
        let Some(instance) = instance else {
            let reason = "a reply without a valid instance header".to_string();
            warn!(reason, "dead-lettering a reply");
            tokio::spawn(Box::new(settle).dead_letter(reason));
            continue;
        };
        let _ = tx.send(Ok(Reply {
            instance,
            body: d.data,
            settle: Box::new(settle),
        }));
    }
}

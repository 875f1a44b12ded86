//! Consuming a worker's queues: one supervised session per `consume()` call, subscribed
//! to the task and wake queues of its DTasks, every doorbell shard and the ready queue.

use std::sync::Arc;
use std::task::Poll;

use futures::stream::{BoxStream, SelectAll};
use futures::StreamExt;
use lapin::message::Delivery as AmqpDelivery;
use lapin::options::BasicQosOptions;
use lapin::Channel;
use tokio::sync::{mpsc, oneshot};
use tracing::{info_span, Instrument};

use crate::conn;
use crate::delay;
use crate::delivery::{task_delivery, Due, Output};
use crate::error::{AmqpError, Context, Result};
use crate::mailbox::doorbell;
use crate::shared::Shared;
use crate::supervise::{subscribe, supervised, End};
use crate::topology::Kind;

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

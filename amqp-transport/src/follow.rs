//! Following a stream queue from its first record: the cancel records (`P.cancels`) and
//! the instance facts (`P.facts`). A follower hands each record to a sink, supervised
//! like a worker's session (after a reconnect the stream is read again from its first
//! record; sinks take a record twice without harm), and can be synced: it publishes a
//! marker after every record published so far and waits until it reads it back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::Channel;
use tokio::sync::{mpsc, oneshot};
use tracing::{info_span, Instrument};

use crate::conn;
use crate::error::{AmqpError, Context, Result};
use crate::headers::{header_str, properties, with_headers};
use crate::publish::RawItem;
use crate::shared::Shared;
use crate::supervise::{supervised, End};
use crate::topology::{short, text, Kind};

/// Header of a marker: a message that is not a record, published by a follower that
/// waits to read it back.
const H_MARKER: &str = "x-dtasks-marker";

/// How many records a follower takes before acking (a stream consumer needs a prefetch).
const PREFETCH: u16 = 512;

/// How long a follower waits for a stream just declared to be ready for consumers.
const STREAM_READY: std::time::Duration = std::time::Duration::from_secs(10);

/// Takes each record of a stream, in stream order.
pub(crate) type Sink = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// The markers a follower waits for, by id.
type Markers = Arc<Mutex<HashMap<String, oneshot::Sender<()>>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A process following a stream; dropped, the following stops.
pub(crate) struct Follower {
    shared: Arc<Shared>,
    queue: String,
    kind: Kind,
    markers: Markers,
    /// Dropped with the follower: its task sees the channel closed and stops.
    _stop: mpsc::UnboundedReceiver<()>,
}

impl Follower {
    /// Starts following `queue` (a stream of `kind`) from its first record into `sink`;
    /// resolves once every record published before the call has been handed to it.
    pub(crate) async fn start(
        shared: Arc<Shared>,
        queue: String,
        kind: Kind,
        what: &'static str,
        sink: Sink,
    ) -> Result<Self> {
        let (tx, stop) = mpsc::unbounded_channel::<()>();
        let (first_tx, first_rx) = oneshot::channel();
        let markers: Markers = Arc::default();
        let span = info_span!("dtasks.amqp.follow", queue = %queue);
        let (task, q, m) = (shared.clone(), queue.clone(), markers.clone());
        tokio::spawn(
            async move {
                let (shared, tx) = (&task, &tx);
                let opened = AtomicBool::new(false);
                supervised(
                    shared,
                    what,
                    tx,
                    first_tx,
                    || open(shared, &q, kind, !opened.load(Ordering::Relaxed)),
                    |(ch, consumer)| {
                        // Opened once: from now on the stream is only looked up.
                        opened.store(true, Ordering::Relaxed);
                        pump(&sink, ch, consumer, tx, &m)
                    },
                )
                .await;
            }
            .instrument(span),
        );
        first_rx
            .await
            .map_err(|_| AmqpError::Connect(format!("the follower of `{queue}` ended")))??;
        let follower = Self {
            shared,
            queue,
            kind,
            markers,
            _stop: stop,
        };
        follower.sync().await?;
        Ok(follower)
    }

    /// Resolves once every record published before the call has been handed to the sink:
    /// a marker goes after them, and the follower reads it back.
    pub(crate) async fn sync(&self) -> Result<()> {
        let marker = format!("marker-{}", dtasks::InstanceId::random());
        let (seen_tx, seen_rx) = oneshot::channel();
        lock(&self.markers).insert(marker.clone(), seen_tx);
        let props = with_headers(properties(&marker, "", ""), vec![(H_MARKER, text(&marker))]);
        let mut item = [RawItem::to_queue(
            self.queue.clone(),
            self.kind,
            Vec::new(),
            props,
        )];
        let waited = async {
            self.shared.publish_raw(&mut item).await?;
            tokio::time::timeout(self.shared.cfg.publish_timeout, seen_rx)
                .await
                .map_err(|_| {
                    AmqpError::Timeout(format!("`{}` was not read back in time", self.queue))
                })?
                .map_err(|_| AmqpError::Connect(format!("the follower of `{}` ended", self.queue)))
        }
        .await;
        if waited.is_err() {
            lock(&self.markers).remove(&marker);
        }
        waited
    }
}

/// Declares the stream (the first time; later, only looks it up) and consumes it from its
/// first record. A stream just declared
/// refuses consumers for a moment ("does not have a replica on the local node"): that
/// refusal is waited out, on a fresh channel each time (it closes the channel).
async fn open(
    shared: &Shared,
    queue: &str,
    kind: Kind,
    create: bool,
) -> Result<(Channel, lapin::Consumer)> {
    let deadline = tokio::time::Instant::now() + STREAM_READY;
    loop {
        match open_once(shared, queue, kind, create).await {
            Err(e)
                if e.to_string().contains("replica") && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

async fn open_once(
    shared: &Shared,
    queue: &str,
    kind: Kind,
    create: bool,
) -> Result<(Channel, lapin::Consumer)> {
    let ch = conn::open_channel(&shared.consume_conns).await?;
    if create {
        shared.declare_uncached(&ch, queue, kind).await?;
    } else {
        // Reopened: a stream deleted meanwhile is not created again here (the next write
        // creates it); until then this fails and the follower retries.
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        ch.queue_declare(short(queue)?, passive, FieldTable::default())
            .await
            .context(|| format!("looking up `{queue}`"))?;
    }
    ch.basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .context(|| "setting the prefetch".into())?;
    let mut args = FieldTable::default();
    args.insert("x-stream-offset".into(), text("first"));
    let consumer = ch
        .basic_consume(
            short(queue)?,
            "".into(),
            BasicConsumeOptions::default(),
            args,
        )
        .await
        .context(|| format!("consuming `{queue}`"))?;
    Ok((ch, consumer))
}

/// Hands each record to `sink` (and acks it: a stream consumer's acks are its credit);
/// reports the markers read back.
async fn pump(
    sink: &Sink,
    _ch: Channel,
    mut consumer: lapin::Consumer,
    tx: &mpsc::UnboundedSender<()>,
    markers: &Markers,
) -> End {
    loop {
        let next = tokio::select! {
            _ = tx.closed() => return End::Closed,
            n = consumer.next() => n,
        };
        let d = match next {
            Some(Ok(d)) => d,
            Some(Err(e)) => return End::Lost(e.to_string()),
            None => return End::Lost("the stream's consumer was cancelled".into()),
        };
        match header_str(&d.properties, H_MARKER) {
            Some(m) => {
                if let Some(done) = lock(markers).remove(m.as_str()) {
                    let _ = done.send(());
                }
            }
            None => sink(&d.data),
        }
        if let Err(e) = d.acker.ack(BasicAckOptions::default()).await {
            return End::Lost(e.to_string());
        }
    }
}

//! Following the cancel records: the stream queue `P.cancels`, read from its first record
//! into the transport's [`CancelBook`] by every process that follows it, supervised like a
//! worker's session (after a reconnect it is read again from the first record; adding a
//! record twice changes nothing).

use std::sync::{Arc, Mutex};

use dtasks::transport::{CancelBook, Following};
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::Channel;
use tokio::sync::{mpsc, oneshot};
use tracing::{info_span, warn, Instrument};

use crate::conn;
use crate::error::{AmqpError, Context, Result};
use crate::headers::{header_str, properties, with_headers};
use crate::publish::RawItem;
use crate::shared::Shared;
use crate::supervise::{supervised, End};
use crate::topology::{short, text, Kind};

/// Header of a marker: a message that is not a record, published by a process that
/// starts following, which knows its book holds every earlier record once it reads it.
const H_MARKER: &str = "x-dtasks-marker";

/// The marker a follower waits for, until it has read it.
type Marker = Option<(String, oneshot::Sender<()>)>;

/// How many records a follower takes before acking (a stream consumer needs a prefetch).
const PREFETCH: u16 = 512;

/// Starts following the records into `shared.cancels`; resolves once every record
/// published before the call is in the book. The following stops when the returned
/// guard is dropped.
pub(crate) async fn follow(shared: Arc<Shared>) -> Result<Following> {
    let (tx, rx) = mpsc::unbounded_channel::<()>();
    let (first_tx, first_rx) = oneshot::channel();
    let marker = format!("marker-{}", dtasks::InstanceId::random());
    let (seen_tx, seen_rx) = oneshot::channel();
    let span = info_span!("dtasks.amqp.cancels", prefix = shared.topo.prefix());
    let task = shared.clone();
    let mark = marker.clone();
    tokio::spawn(
        async move {
            let seen = Arc::new(Mutex::new(Some((mark, seen_tx))));
            let (shared, tx) = (&task, &tx);
            supervised(
                shared,
                "cancel records",
                tx,
                first_tx,
                || open(shared),
                |(ch, consumer)| pump(&shared.cancels, ch, consumer, tx, seen.clone()),
            )
            .await;
        }
        .instrument(span),
    );
    first_rx
        .await
        .map_err(|_| AmqpError::Connect("the cancel records' follower ended".into()))??;
    // The marker goes after every record published so far: reading it means they are in.
    let props = with_headers(properties(&marker, "", ""), vec![(H_MARKER, text(&marker))]);
    let mut item = [RawItem::to_queue(
        shared.topo.cancels(),
        Kind::Cancels,
        Vec::new(),
        props,
    )];
    shared.publish_raw(&mut item).await?;
    tokio::time::timeout(shared.cfg.publish_timeout, seen_rx)
        .await
        .map_err(|_| AmqpError::Timeout("the cancel records were not read back in time".into()))?
        .map_err(|_| AmqpError::Connect("the cancel records' follower ended".into()))?;
    Ok(Following::new(rx))
}

/// How long a follower waits for a stream just declared to be ready for consumers.
const STREAM_READY: std::time::Duration = std::time::Duration::from_secs(10);

/// Declares the stream and consumes it from its first record. A stream just declared
/// refuses consumers for a moment ("does not have a replica on the local node"): that
/// refusal is waited out, on a fresh channel each time (it closes the channel).
async fn open(shared: &Shared) -> Result<(Channel, lapin::Consumer)> {
    let deadline = tokio::time::Instant::now() + STREAM_READY;
    loop {
        match open_once(shared).await {
            Err(e)
                if e.to_string().contains("replica") && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

async fn open_once(shared: &Shared) -> Result<(Channel, lapin::Consumer)> {
    let queue = shared.topo.cancels();
    let ch = conn::open_channel(&shared.consume_conns).await?;
    shared.declare_uncached(&ch, &queue, Kind::Cancels).await?;
    ch.basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .context(|| "setting the prefetch".into())?;
    let mut args = FieldTable::default();
    args.insert("x-stream-offset".into(), text("first"));
    let consumer = ch
        .basic_consume(
            short(&queue)?,
            "".into(),
            BasicConsumeOptions::default(),
            args,
        )
        .await
        .context(|| format!("consuming `{queue}`"))?;
    Ok((ch, consumer))
}

/// Adds each record to `book` (and acks it: a stream consumer's acks are its credit);
/// reports the marker this follower waits for.
async fn pump(
    book: &CancelBook,
    _ch: Channel,
    mut consumer: lapin::Consumer,
    tx: &mpsc::UnboundedSender<()>,
    seen: Arc<Mutex<Marker>>,
) -> End {
    loop {
        let next = tokio::select! {
            _ = tx.closed() => return End::Closed,
            n = consumer.next() => n,
        };
        let d = match next {
            Some(Ok(d)) => d,
            Some(Err(e)) => return End::Lost(e.to_string()),
            None => return End::Lost("the consumer of the cancel records was cancelled".into()),
        };
        match header_str(&d.properties, H_MARKER) {
            Some(m) => {
                let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                if seen.as_ref().is_some_and(|(mine, _)| *mine == m) {
                    if let Some((_, done)) = seen.take() {
                        let _ = done.send(());
                    }
                }
            }
            None => {
                if let Err(e) = book.insert_encoded(&d.data) {
                    warn!(error = %e, "a cancel record that does not decode is skipped");
                }
            }
        }
        if let Err(e) = d.acker.ack(BasicAckOptions::default()).await {
            return End::Lost(e.to_string());
        }
    }
}

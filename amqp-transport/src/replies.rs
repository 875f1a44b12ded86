//! Consuming a client's reply queue (`Client::call`), supervised like a worker's
//! session.

use std::sync::Arc;

use dtasks::transport::{Reply, Settle};
use dtasks::InstanceId;
use futures::stream::BoxStream;
use futures::StreamExt;
use lapin::options::BasicQosOptions;
use lapin::Channel;
use tokio::sync::{mpsc, oneshot};
use tracing::{info_span, warn, Instrument};

use crate::conn;
use crate::error::{AmqpError, Context, Result};
use crate::headers::{header_str, recorded, H_INSTANCE};
use crate::settle::AmqpSettle;
use crate::shared::Shared;
use crate::supervise::{subscribe, supervised, End};
use crate::topology::Kind;

type ReplyOutput = std::result::Result<Reply, dtasks::Error>;

/// Consumes the reply queue of the client `client` (declared first, so that the first
/// call's result has somewhere to go), supervised like a worker's session: reconnects
/// and subscribes again after the connection is lost; unacked replies come back.
pub(crate) async fn consume_replies(
    shared: Arc<Shared>,
    client: &str,
) -> Result<BoxStream<'static, ReplyOutput>> {
    let queue = shared.topo.reply(client);
    shared
        .reply_queues
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(queue.clone());
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
        let recorded = recorded(&d.properties);
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
            recorded,
            settle: Box::new(settle),
        }));
    }
}

//! The RabbitMQ-only payload store: values over the payload threshold in one stream,
//! `P.payloads`, cut into chunks of at most [`CHUNK`] bytes.
//!
//! A put publishes a value's chunks with confirms (each with the value's key, its index
//! and the count in headers) and returns the time of the write, in seconds, as the
//! reference's locator. A get consumes the stream from a little before that time (5 s,
//! then 10 minutes) and keeps the chunks whose key header is the value's; it stops once
//! it has them all, or when it reads back a marker it published when it began: past the
//! marker the value cannot be, so a value gone from the stream (past its retention) is
//! `None` at once, never a wait.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dtasks::store::{PayloadRef, PayloadStore};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use tracing::debug;

use crate::conn;
use crate::error::{AmqpError, Context, Result};
use crate::follow::{NUDGE_FIRST, NUDGE_MAX};
use crate::headers::{header_i64, header_str, properties, with_headers, H_MARKER};
use crate::publish::RawItem;
use crate::shared::Shared;
use crate::topology::{short, text, Kind};

/// The most bytes of a value in one stream message: large frames hold up a connection's
/// other traffic, and the broker's limit (128 MiB by default) is far above.
pub(crate) const CHUNK: usize = 1 << 20;

/// Header: the key of the value a chunk belongs to.
const H_KEY: &str = "x-dtasks-payload";
/// Header: the chunk's index in its value.
const H_INDEX: &str = "x-dtasks-chunk";
/// Header: how many chunks the value has.
const H_COUNT: &str = "x-dtasks-chunks";

/// How far before its write time a read starts, first and then when the value was not
/// found: the stream's timestamps are the broker's clock, the locator the writer's. The
/// first covers clocks a few seconds apart and reads little of what others wrote; the
/// second, clocks ten minutes apart, before the value is declared missing.
const CLOCK_SLACK_SECS: [u64; 2] = [5, 600];

/// Chunks a reader takes before acking (a stream consumer needs a prefetch): a bound on
/// the memory of a read beyond the value itself.
const READ_PREFETCH: u16 = 8;

/// The payload store of an [`AmqpTransport`](crate::AmqpTransport) (what its
/// [`Transport::payloads`](dtasks::Transport::payloads) hands out). Cheap to clone.
///
/// Values are kept for the payload retention
/// ([`AmqpConfig::with_payload_retention`](crate::AmqpConfig::with_payload_retention),
/// default the result retention: `x-max-age` of the stream); nothing deletes a value
/// before that, a purge included. Costs: a put is one confirmed publish per MiB; a get
/// reads the stream from a few seconds before the value was written until it has every
/// chunk, so it also reads (and drops) the chunks of values written around it; a value
/// not found is looked for once more from ten minutes before, then reported missing.
#[derive(Clone)]
pub struct StreamPayloads {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for StreamPayloads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamPayloads")
            .field("stream", &self.shared.topo.payloads())
            .finish()
    }
}

impl StreamPayloads {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    async fn put_chunks(&self, r: &PayloadRef, value: &[u8]) -> Result<u64> {
        let queue = self.shared.topo.payloads();
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let count = value.len().div_ceil(CHUNK).max(1);
        // A few chunks per confirmed batch: the publish buffers stay small.
        let mut chunks = value.chunks(CHUNK).enumerate().peekable();
        while chunks.peek().is_some() {
            let mut items: Vec<RawItem> = chunks
                .by_ref()
                .take(READ_PREFETCH as usize)
                .map(|(i, chunk)| {
                    let props = with_headers(
                        properties("", "", ""),
                        vec![
                            (H_KEY, text(r.key())),
                            (H_INDEX, AMQPValue::LongLongInt(i as i64)),
                            (H_COUNT, AMQPValue::LongLongInt(count as i64)),
                        ],
                    );
                    RawItem::to_queue(queue.clone(), Kind::Payloads, chunk.to_vec(), props)
                })
                .collect();
            self.shared.publish_raw(&mut items).await?;
        }
        Ok(at)
    }

    async fn get_chunks(&self, r: &PayloadRef) -> Result<Option<Vec<u8>>> {
        for slack in CLOCK_SLACK_SECS {
            if let Some(value) = self.read_from(r, r.locator().saturating_sub(slack)).await? {
                return Ok(Some(value));
            }
        }
        Ok(None)
    }

    /// Reads the chunks of `r` from the stream's records since `from` (seconds since the
    /// epoch), up to a marker published once the read began.
    async fn read_from(&self, r: &PayloadRef, from: u64) -> Result<Option<Vec<u8>>> {
        let queue = self.shared.topo.payloads();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let (ch, mut consumer) = loop {
            let ch = conn::open_channel(&self.shared.consume_conns).await?;
            // Declared here too: a read may come before any write (a stream that never
            // held the value); the same arguments every time.
            self.shared
                .declare_uncached(&ch, &queue, Kind::Payloads)
                .await?;
            ch.basic_qos(READ_PREFETCH, BasicQosOptions::default())
                .await
                .context(|| "setting the prefetch".into())?;
            let mut args = FieldTable::default();
            args.insert("x-stream-offset".into(), AMQPValue::Timestamp(from));
            match ch
                .basic_consume(
                    short(&queue)?,
                    "".into(),
                    BasicConsumeOptions::default(),
                    args,
                )
                .await
            {
                Ok(c) => break (ch, c),
                // A stream just declared refuses consumers for a moment (and closes the
                // channel): waited out on a fresh channel.
                Err(e)
                    if e.to_string().contains("replica")
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => {
                    return Err(AmqpError::broker(format!("consuming `{queue}`"), e));
                }
            }
        };
        // Everything written before this read comes before the marker.
        let marker = format!("payload-marker-{}", dtasks::InstanceId::random());
        self.shared
            .publish_marker(&queue, Kind::Payloads, &marker)
            .await?;
        let mut parts: Vec<Option<Vec<u8>>> = Vec::new();
        let mut missing = usize::MAX;
        let read = async {
            while let Some(next) = consumer.next().await {
                let mut d = next.map_err(|e| AmqpError::broker(format!("reading `{queue}`"), e))?;
                let ours = header_str(&d.properties, H_KEY).is_some_and(|k| k == r.key());
                let marker_seen = header_str(&d.properties, H_MARKER).is_some_and(|m| m == marker);
                if ours {
                    let index = header_i64(&d.properties, H_INDEX).unwrap_or(-1);
                    let count = header_i64(&d.properties, H_COUNT).unwrap_or(0);
                    if parts.is_empty() && count > 0 {
                        parts = vec![None; count as usize];
                        missing = count as usize;
                    }
                    if let Some(slot) = usize::try_from(index).ok().and_then(|i| parts.get_mut(i)) {
                        if slot.is_none() {
                            *slot = Some(std::mem::take(&mut d.data));
                            missing -= 1;
                        }
                    }
                }
                d.acker
                    .ack(BasicAckOptions::default())
                    .await
                    .map_err(|e| AmqpError::broker("acking a payload chunk", e))?;
                if missing == 0 || marker_seen {
                    break;
                }
            }
            Ok::<_, AmqpError>(())
        };
        // Until the read ends, the stream is nudged now and then: a consumer that missed
        // the commit of the marker (or of a chunk) reads on at the next write
        // (`follow.rs`), and nothing else may write to the stream meanwhile.
        let limit = self.shared.cfg.publish_timeout.max(Duration::from_secs(60));
        let nudged = async {
            let deadline = tokio::time::Instant::now() + limit;
            let mut wait = NUDGE_FIRST;
            loop {
                tokio::time::sleep_until((tokio::time::Instant::now() + wait).min(deadline)).await;
                if tokio::time::Instant::now() >= deadline {
                    return Err(AmqpError::Timeout(format!(
                        "reading `{}` from `{queue}` took over {limit:?}",
                        r.key()
                    )));
                }
                debug!(queue = %queue, "a payload read is not over yet; nudging");
                // Bounded by the read's own limit: a nudge is never waited for past it.
                let nudge = self.shared.nudge(&queue, Kind::Payloads);
                match tokio::time::timeout_at(deadline, nudge).await {
                    Ok(Ok(())) | Err(_) => {}
                    Ok(Err(e)) => debug!(error = %e, "nudging the payloads failed"),
                }
                wait = (wait * 2).min(NUDGE_MAX);
            }
        };
        let outcome = tokio::select! {
            read = read => read,
            timed_out = nudged => timed_out,
        };
        let _ = ch.close(200, "payload read".into()).await;
        match outcome {
            Err(e) => Err(e),
            Ok(()) if missing == 0 => {
                let mut value = Vec::with_capacity(r.len() as usize);
                for part in parts.into_iter().flatten() {
                    value.extend_from_slice(&part);
                }
                Ok(Some(value))
            }
            // The marker came first: the value is not in the stream (past its retention).
            Ok(()) => Ok(None),
        }
    }
}

impl PayloadStore for StreamPayloads {
    fn put<'a>(
        &'a self,
        r: &'a PayloadRef,
        value: &'a [u8],
    ) -> BoxFuture<'a, std::result::Result<u64, dtasks::Error>> {
        async move { Ok(self.put_chunks(r, value).await?) }.boxed()
    }

    fn get<'a>(
        &'a self,
        r: &'a PayloadRef,
    ) -> BoxFuture<'a, std::result::Result<Option<Vec<u8>>, dtasks::Error>> {
        async move { Ok(self.get_chunks(r).await?) }.boxed()
    }
}

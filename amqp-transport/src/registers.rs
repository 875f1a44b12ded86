//! Result, status and claim registers: creating a result register, looking one up,
//! reading one without taking its message, waiting for a result on the channel shared by
//! every wait of the process, and claiming an id.

use std::time::{Duration, Instant};

use deadpool::managed::Object;
use dtasks::InstanceId;
use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::Channel;
use tracing::warn;

use crate::conn::{self, Backoff, ConfirmChannels, ATTEMPT_TIMEOUT};
use crate::error::{is_inequivalent, is_not_found, AmqpError, Context, Result};
use crate::settle::settled;
use crate::shared::Shared;
use crate::topology::{short, Kind};

impl Shared {
    /// Creates the result register `queue` (empty when new); retries through connection
    /// failures with backoff, up to the publish timeout, like a publish: a start during a
    /// broker outage waits for the broker.
    pub(crate) async fn create_register(&self, queue: &str) -> Result<()> {
        self.retrying("creating a register", queue, || async {
            let ch = conn::get_channel(&self.channels).await?;
            self.declare(&ch, queue, Kind::Result).await
        })
        .await
    }

    /// Runs `once` until it succeeds or fails permanently, each attempt bounded by the
    /// attempt timeout, with backoff between attempts, up to the publish timeout.
    async fn retrying<T, F, Fut>(&self, what: &str, queue: &str, mut once: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let deadline = Instant::now() + self.cfg.publish_timeout;
        let mut backoff = Backoff::new(Duration::from_millis(50), self.cfg.max_backoff);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let e = match tokio::time::timeout(ATTEMPT_TIMEOUT, once()).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => e,
                Err(_) => AmqpError::Timeout(format!("{what}: `{queue}`")),
            };
            if e.is_permanent() {
                return Err(e);
            }
            let pause = backoff.next_delay();
            if Instant::now() + pause >= deadline {
                warn!(error = %e, attempt, queue, "{what} failed; giving up");
                return Err(e);
            }
            warn!(error = %e, attempt, queue, "{what} failed; retrying");
            tokio::time::sleep(pause).await;
        }
    }

    /// Claims the claim register `queue` for `nonce`: `true` when it holds `nonce`.
    ///
    /// The claim is the queue's `x-max-length` argument (the queue never holds a
    /// message): declaring it creates a missing queue with the nonce, and the broker
    /// compares an existing queue's arguments with the declaration's, atomically, refusing
    /// another nonce with 406 PRECONDITION_FAILED ("inequivalent arg 'x-max-length'"),
    /// which closes the channel. A register that holds a message would not do: a reader
    /// takes the message and puts it back, and while it holds it the broker counts the
    /// queue as empty and takes a second claim. Retries through connection failures like
    /// [`Shared::create_register`].
    pub(crate) async fn claim(&self, queue: &str, nonce: u64) -> Result<bool> {
        self.retrying("claiming an id", queue, || async {
            let ch = conn::get_channel(&self.channels).await?;
            let (opts, args) = self.topo.declaration(Kind::Claim(nonce));
            match ch.queue_declare(short(queue)?, opts, args).await {
                Ok(_) => {
                    self.declared.remember(queue);
                    Ok(true)
                }
                Err(e) if is_inequivalent(&e, "x-max-length") => {
                    // The broker closed the channel: it leaves the pool.
                    drop(Object::take(ch));
                    Ok(false)
                }
                Err(e) => {
                    drop(Object::take(ch));
                    Err(AmqpError::broker(format!("claiming `{queue}`"), e))
                }
            }
        })
        .await
    }

    /// Whether `queue` exists.
    pub(crate) async fn exists(&self, queue: &str) -> Result<bool> {
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
    pub(crate) async fn peek(&self, queue: &str, last: bool) -> Result<Option<Vec<u8>>> {
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
            settled(&ch, nack)
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

    pub(crate) async fn read_status(&self, queue: &str) -> Result<Option<Vec<u8>>> {
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

    pub(crate) async fn wait_result(&self, instance: &InstanceId) -> Result<Vec<u8>> {
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
        let _ = settled(
            &wait.ch,
            d.acker.reject(BasicRejectOptions { requeue: true }),
        )
        .await;
        Ok(d.data)
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
        let _ = settled(&ch, d.acker.reject(BasicRejectOptions { requeue: true })).await;
    }
}

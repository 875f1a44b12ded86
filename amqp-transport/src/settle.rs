//! Settling deliveries: [`AmqpSettle`] acks, requeues or dead-letters a delivery (or
//! puts it back when dropped unsettled), and [`settled`] bounds the wait for a settle.

use std::sync::Arc;
use std::time::Duration;

use dtasks::transport::Settle;
use futures::future::BoxFuture;
use futures::FutureExt;
use lapin::options::{BasicAckOptions, BasicRejectOptions};
use lapin::types::AMQPValue;
use lapin::{Acker, BasicProperties, Channel};
use tracing::{debug, info, warn};

use crate::acks::Acks;
use crate::config::DEAD_LETTER_BODY;
use crate::error::AmqpError;
use crate::headers::{with_headers, H_QUEUE, H_REASON, H_TRUNCATED};
use crate::publish::RawItem;
use crate::shared::Shared;
use crate::topology::{text, Kind};

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

/// The dead letter of a message of `queue`: its body (cut past [`DEAD_LETTER_BODY`]) and
/// properties, with why and where from.
pub(crate) fn dead_letter_item(
    shared: &Shared,
    queue: &str,
    mut body: Vec<u8>,
    props: BasicProperties,
    reason: &str,
) -> RawItem {
    let mut headers = vec![(H_REASON, text(reason)), (H_QUEUE, text(queue))];
    if body.len() > DEAD_LETTER_BODY {
        // Kept for a person to look at, not to replay: the start of it is enough.
        headers.push((
            H_TRUNCATED,
            AMQPValue::LongLongInt(body.len().min(i64::MAX as usize) as i64),
        ));
        body.truncate(DEAD_LETTER_BODY);
    }
    let props = with_headers(props, headers);
    RawItem::to_queue(shared.topo.dead(), Kind::Dead, body, props)
}

/// Resolves once `channel` is closed: the broker has then put back what was delivered on
/// it and not settled.
pub(crate) fn closed(channel: Channel) -> BoxFuture<'static, ()> {
    async move {
        // lapin tells no one when a channel closes: look now and then.
        while channel.status().connected() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    .boxed()
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
    /// The channel's coalesced acks and this delivery's tag, when its acks go through
    /// them.
    batch: Option<(Arc<Acks>, u64)>,
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
                batch: None,
            }),
        }
    }

    /// Acks through `acks`, the channel's coalesced acks, as the delivery `tag`.
    pub(crate) fn with_batch(mut self, acks: Arc<Acks>, tag: u64) -> Self {
        if let Some(inner) = self.inner.as_mut() {
            inner.batch = Some((acks, tag));
        }
        self
    }

    pub(crate) fn props(&self) -> &BasicProperties {
        &self.inner.as_ref().expect("a settle is used once").props
    }

    /// Runs `f` once the message is acked (not when it is put back or dead-lettered).
    pub(crate) fn set_on_ack(&mut self, f: Box<dyn FnOnce() + Send>) {
        if let Some(inner) = self.inner.as_mut() {
            inner.on_ack = Some(f);
        }
    }

    pub(crate) fn set_on_settle(&mut self, f: Box<dyn FnOnce() + Send>) {
        if let Some(inner) = self.inner.as_mut() {
            inner.on_settle = Some(f);
        }
    }

    fn take(&mut self) -> Inner {
        self.inner.take().expect("a settle is used once")
    }
}

impl Inner {
    /// Acks the message, through the channel's coalesced acks when it has them.
    fn ack(&self) -> impl std::future::Future<Output = lapin::Result<bool>> + Send + 'static {
        let (channel, acker, batch) =
            (self.channel.clone(), self.acker.clone(), self.batch.clone());
        async move {
            match batch {
                Some((acks, tag)) => settled(&channel, acks.ack(tag, acker)).await,
                None => settled(&channel, acker.ack(BasicAckOptions::default())).await,
            }
        }
    }

    /// Puts the message back; once the reject is sent, a coalesced ack may cover its tag.
    fn reject(&self) -> impl std::future::Future<Output = lapin::Result<bool>> + Send + 'static {
        let (channel, acker, batch) =
            (self.channel.clone(), self.acker.clone(), self.batch.clone());
        async move {
            let r = settled(&channel, acker.reject(BasicRejectOptions { requeue: true })).await;
            if let Some((acks, tag)) = batch {
                acks.closed(tag);
            }
            r
        }
    }

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
    fn lost(&self) -> Option<BoxFuture<'static, ()>> {
        Some(closed(self.inner.as_ref()?.channel.clone()))
    }

    fn ack(mut self: Box<Self>) -> BoxFuture<'static, std::result::Result<(), dtasks::Error>> {
        let mut inner = self.take();
        async move {
            let r = inner.ack().await;
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
            let r = inner.reject().await;
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
            let body = std::mem::take(&mut inner.body);
            let mut item = [dead_letter_item(
                &inner.shared,
                &inner.queue,
                body,
                inner.props.clone(),
                &reason,
            )];
            // Ack the original only once the dead letter is safely stored.
            if let Err(e) = inner.shared.publish_raw(&mut item).await {
                warn!(queue = %inner.queue, error = %e, "dead-lettering failed; the message goes back");
                let _ = inner.reject().await;
                inner.finish();
                return Err(e.into());
            }
            info!(queue = %inner.queue, %reason, "message dead-lettered");
            let r = inner.ack().await;
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
                let _ = inner.reject().await;
                drop(inner.channel);
            });
        }
    }
}

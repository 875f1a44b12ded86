//! Doorbells and mailboxes on the consuming side: a doorbell becomes a delivery (or is
//! acked at once when it is spent), and its instance's mailbox is drained on the channel
//! of that delivery, never once it closed; the mailbox of a finished instance is deleted.

use std::sync::Arc;

use dtasks::transport::{Delivery, DeliveryKind, MailboxMessage, Settle};
use dtasks::InstanceId;
use lapin::message::Delivery as AmqpDelivery;
use lapin::options::{BasicGetOptions, QueueDeleteOptions};
use lapin::Channel;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::conn;
use crate::delivery::Output;
use crate::error::{AmqpError, Context, Result};
use crate::headers::{header_i64, header_str, message_id, trace, H_RINGS};
use crate::pack::{self, H_PACK};
use crate::settle::AmqpSettle;
use crate::shared::Shared;
use crate::topology::short;

/// The most `basic.get`s a drain has outstanding at once.
const DRAIN_WINDOW: u32 = 64;

/// Hands a doorbell to the worker, to be settled on the shard channel `ch` that its
/// mailbox is then drained on; a spent one is acked here, without a drain.
pub(crate) fn doorbell(
    shared: &Arc<Shared>,
    ch: &Channel,
    queue: &str,
    d: AmqpDelivery,
    tx: &mpsc::UnboundedSender<Output>,
) {
    let instance = String::from_utf8(d.data.clone())
        .ok()
        .and_then(|s| InstanceId::from_message(s).ok());
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
            if shared.doorbells.merged(&rings) {
                // Spent: this process drained and acked what it announces, after merging
                // it into a confirmed state. Nothing to drain.
                debug!(instance = %instance, "a spent doorbell");
                shared.doorbells.count_spent();
                tokio::spawn(async move {
                    if let Err(e) = Box::new(settle).ack().await {
                        debug!(error = %e, "acking a spent doorbell failed; it comes back");
                    }
                });
                return;
            }
        }
    }
    shared.doorbells.count_handed();
    let token = shared.doorbells.out(instance.as_str(), ch);
    let sh = shared.clone();
    settle.set_on_settle(Box::new(move || sh.doorbells.done(token)));
    let delivery = Delivery {
        kind: DeliveryKind::Doorbell {
            instance,
            tag: token,
        },
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

impl Shared {
    /// Drains the mailbox of `instance` for the doorbell delivery `doorbell` (its token),
    /// on the channel that holds it; without one, on a channel of its own.
    pub(crate) async fn drain_mailbox(
        self: &Arc<Self>,
        instance: &InstanceId,
        doorbell: Option<u64>,
    ) -> Result<Vec<MailboxMessage>> {
        let queue = self.topo.mailbox(instance.as_str());
        let held = match doorbell {
            Some(token) => match self.doorbells.channel(token, instance.as_str()) {
                Some(ch) if ch.status().connected() => Some(ch),
                // The delivery's channel closed (or it was settled): the broker gives the
                // doorbell back, and whoever takes it next, this process included, drains
                // under that delivery. Draining here too, on another channel, would split
                // the mailbox between two merges of the same version.
                _ => {
                    return Err(AmqpError::Connect(format!(
                        "the doorbell delivery of `{instance}` is no longer held (its \
                         channel closed); its next delivery drains the mailbox"
                    )))
                }
            },
            None => None,
        };
        // A missing mailbox (expired, or never written) is empty. `basic.get` on a missing
        // queue would close the shard channel, so look first on another channel (only for
        // existence: a message count seen from another channel may miss a message this
        // channel has just put back).
        if !self.exists(&queue).await? {
            return Ok(Vec::new());
        }
        let ch = match held {
            Some(ch) => ch,
            // Under no doorbell delivery: a channel of its own.
            None => conn::open_channel(&self.consume_conns).await?,
        };
        let mut out = Vec::new();
        // One `basic.get` first; each answer says how many messages were left behind it,
        // and that many are asked for at once (up to `DRAIN_WINDOW`), until the queue
        // said it was empty. A message that lands after that has a doorbell of its own.
        let name = short(&queue)?;
        let mut want = 1;
        while want > 0 {
            let gets =
                (0..want).map(|_| ch.basic_get(name.clone(), BasicGetOptions { no_ack: false }));
            let answers = futures::future::join_all(gets).await;
            let mut left = None;
            let mut failed = None;
            for answer in answers {
                match answer {
                    Ok(Some(m)) => {
                        left = Some(m.message_count);
                        out.extend(self.drained(&ch, &queue, m.delivery));
                    }
                    Ok(None) => left = Some(0),
                    Err(e) => {
                        failed.get_or_insert(e);
                    }
                }
            }
            if let Some(e) = failed {
                // The messages taken so far go back when their settles drop.
                return Err(AmqpError::broker(format!("draining `{queue}`"), e));
            }
            want = left.unwrap_or(0).min(DRAIN_WINDOW);
        }
        debug!(instance = %instance, messages = out.len(), "mailbox drained");
        Ok(out)
    }

    /// The messages a drain took from `queue` on `ch` with the delivery `d`: itself, or
    /// the parts of a pack, each settled on its own (`PartSettle`).
    fn drained(
        self: &Arc<Self>,
        ch: &Channel,
        queue: &str,
        d: AmqpDelivery,
    ) -> Vec<MailboxMessage> {
        let parts = header_i64(&d.properties, H_PACK)
            .and_then(|_| pack::decode(&d.data))
            .filter(|parts| !parts.is_empty());
        let Some(parts) = parts else {
            return vec![self.drained_one(ch, queue, d)];
        };
        crate::parts::mailbox_parts(self, ch, queue, d, parts)
    }

    /// A message a drain took from `queue` on `ch`, settled there.
    fn drained_one(self: &Arc<Self>, ch: &Channel, queue: &str, d: AmqpDelivery) -> MailboxMessage {
        let id = message_id(&d.properties);
        let trace = trace(&d.properties);
        let mut settle = AmqpSettle::new(
            self.clone(),
            ch.clone(),
            d.acker,
            queue.to_string(),
            d.data.clone(),
            d.properties,
            None,
        );
        if let Some(id) = id {
            // Acked only once merged into a confirmed state (or dropped as a duplicate):
            // its doorbell, if still to come, is spent.
            let shared = self.clone();
            settle.set_on_ack(Box::new(move || shared.doorbells.mark_merged(id)));
        }
        MailboxMessage {
            body: d.data,
            trace,
            settle: Box::new(settle),
        }
    }

    /// Deletes the mailbox of `instance`, whatever it holds: the messages a drain holds
    /// unacked go with it, and acking them afterwards is harmless (the broker ignores
    /// settlements for a deleted queue). Deleting a missing queue succeeds.
    pub(crate) async fn delete_mailbox(&self, instance: &InstanceId) -> Result<()> {
        let queue = self.topo.mailbox(instance.as_str());
        let ch = conn::get_channel(&self.control).await?;
        ch.queue_delete(short(&queue)?, QueueDeleteOptions::default())
            .await
            .context(|| format!("deleting queue `{queue}`"))?;
        // Declared again by whatever this process publishes to it next.
        self.declared.forget(&queue);
        debug!(instance = %instance, "mailbox deleted");
        Ok(())
    }
}

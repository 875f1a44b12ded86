//! Doorbells and mailboxes on the consuming side: a doorbell becomes a delivery (or is
//! acked at once when it is spent), and its instance's mailbox is drained on the
//! doorbell's channel.

use std::sync::Arc;

use dtasks::transport::{Delivery, DeliveryKind, MailboxMessage, Settle};
use dtasks::InstanceId;
use lapin::message::Delivery as AmqpDelivery;
use lapin::options::BasicGetOptions;
use lapin::Channel;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::conn;
use crate::delivery::Output;
use crate::error::{AmqpError, Result};
use crate::headers::{header_str, message_id, H_RINGS};
use crate::settle::AmqpSettle;
use crate::shared::Shared;
use crate::topology::short;

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
    let token = shared.doorbells.out(instance.as_str(), ch);
    let (sh, id) = (shared.clone(), instance.as_str().to_string());
    settle.set_on_settle(Box::new(move || sh.doorbells.done(&id, token)));
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

impl Shared {
    pub(crate) async fn drain_mailbox(
        self: &Arc<Self>,
        instance: &InstanceId,
    ) -> Result<Vec<MailboxMessage>> {
        let queue = self.topo.mailbox(instance.as_str());
        // A missing mailbox (expired, or never written) is empty. `basic.get` on a missing
        // queue would close the shard channel, so look first on another channel (only for
        // existence: a message count seen from another channel may miss a message this
        // channel has just put back).
        if !self.exists(&queue).await? {
            return Ok(Vec::new());
        }
        let held = self
            .doorbells
            .channel(instance.as_str())
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
                    let id = message_id(&d.properties);
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
                        settle.set_on_ack(Box::new(move || shared.doorbells.mark_merged(id)));
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
}

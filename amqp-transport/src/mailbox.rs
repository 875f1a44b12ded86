//! Doorbells and mailboxes on the consuming side: a doorbell becomes a delivery (or is
//! acked at once when it is spent), and its instance's mailbox is drained on the channel
//! of that delivery, never once it closed; the mailbox of a finished instance is deleted.

use std::sync::{Arc, Mutex};

use dtasks::trace::TraceContext;
use dtasks::transport::{Delivery, DeliveryKind, MailboxMessage, Settle};
use dtasks::InstanceId;
use futures::future::BoxFuture;
use futures::FutureExt;
use lapin::message::Delivery as AmqpDelivery;
use lapin::options::{BasicGetOptions, QueueDeleteOptions};
use lapin::Channel;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::conn;
use crate::delivery::Output;
use crate::error::{AmqpError, Context, Result};
use crate::headers::{
    header_i64, header_str, message_id, properties, trace, with_trace, H_DTASK, H_INSTANCE, H_RINGS,
};
use crate::pack::{self, H_PACK};
use crate::settle::{closed, dead_letter_item, AmqpSettle};
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
        // The pack's body stays with its book, read again only when some of its parts go
        // back or to the dead letters; the parts' bodies go to the worker.
        let settle = AmqpSettle::new(
            self.clone(),
            ch.clone(),
            d.acker,
            queue.to_string(),
            Vec::new(),
            d.properties.clone(),
            None,
        );
        let book = Arc::new(Mutex::new(Book {
            settle: Some(settle),
            shared: self.clone(),
            queue: queue.to_string(),
            instance: header_str(&d.properties, H_INSTANCE).unwrap_or_default(),
            dtask: header_str(&d.properties, H_DTASK).unwrap_or_default(),
            decided: vec![None; parts.len()],
            ids: parts.iter().map(|p| p.id.clone()).collect(),
            data: d.data,
        }));
        parts
            .into_iter()
            .enumerate()
            .map(|(index, part)| MailboxMessage {
                trace: TraceContext::new(part.traceparent, part.tracestate),
                body: part.body,
                settle: Box::new(PartSettle {
                    index,
                    book: Some(book.clone()),
                    channel: ch.clone(),
                }),
            })
            .collect()
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

/// What became of a part of a pack.
#[derive(Clone, Debug)]
enum Decision {
    Ack,
    Requeue,
    Dead(String),
}

/// The parts of one pack drained together, and what each became: the pack's delivery is
/// settled once every part is.
struct Book {
    /// The delivery; taken by the last part to settle.
    settle: Option<AmqpSettle>,
    shared: Arc<Shared>,
    queue: String,
    instance: String,
    dtask: String,
    /// The parts' message ids, in order.
    ids: Vec<String>,
    /// The pack's body.
    data: Vec<u8>,
    decided: Vec<Option<Decision>>,
}

impl Book {
    /// Records what part `index` became; the whole pack once it was the last.
    fn decide(&mut self, index: usize, d: Decision) -> Option<Settled> {
        if self.decided[index].is_none() {
            self.decided[index] = Some(d);
        }
        if self.decided.iter().any(Option::is_none) {
            return None;
        }
        Some(Settled {
            settle: self.settle.take()?,
            shared: self.shared.clone(),
            queue: std::mem::take(&mut self.queue),
            instance: std::mem::take(&mut self.instance),
            dtask: std::mem::take(&mut self.dtask),
            ids: std::mem::take(&mut self.ids),
            data: std::mem::take(&mut self.data),
            decided: self.decided.iter().flatten().cloned().collect(),
        })
    }
}

/// A pack every part of which has settled.
struct Settled {
    settle: AmqpSettle,
    shared: Arc<Shared>,
    queue: String,
    instance: String,
    dtask: String,
    ids: Vec<String>,
    data: Vec<u8>,
    decided: Vec<Decision>,
}

impl Settled {
    /// Settles the pack's delivery as its parts decided. All merged: acked. None merged or
    /// dead-lettered: put back whole. Otherwise the parts to put back are written to the
    /// mailbox again and those to dead-letter to the dead letters, confirmed, and only then
    /// is the pack acked (a failure puts the whole pack back: its merged parts come again
    /// as duplicates, which a merge drops).
    async fn run(self) -> std::result::Result<(), dtasks::Error> {
        let Settled {
            settle,
            shared,
            queue,
            instance,
            dtask,
            ids,
            data,
            decided,
        } = self;
        let merged: Vec<String> = ids
            .into_iter()
            .zip(&decided)
            .filter(|(_, d)| matches!(d, Decision::Ack))
            .map(|(id, _)| id)
            .collect();
        if merged.is_empty() && !decided.iter().any(|d| matches!(d, Decision::Dead(_))) {
            return Box::new(settle).requeue().await;
        }
        if merged.len() < decided.len() {
            // Decoded when it was drained, so it decodes again; were it not to, the pack
            // goes back whole rather than lose a part.
            let Some(parts) = pack::decode(&data).filter(|p| p.len() == decided.len()) else {
                return Box::new(settle).requeue().await;
            };
            let mut back = Vec::new();
            let mut items = Vec::new();
            for (part, d) in parts.into_iter().zip(decided) {
                if matches!(d, Decision::Ack) {
                    continue;
                }
                let props = with_trace(
                    properties(&part.id, &instance, &dtask),
                    TraceContext::new(part.traceparent.clone(), part.tracestate.clone()).as_ref(),
                );
                match d {
                    Decision::Ack => {}
                    Decision::Requeue => back.push((part, props)),
                    Decision::Dead(reason) => {
                        warn!(queue, id = %part.id, %reason, "dead-lettering a message of a pack");
                        items.push(dead_letter_item(&shared, &queue, part.body, props, &reason));
                    }
                }
            }
            items.extend(shared.packed(&instance, &dtask, back));
            if let Err(e) = shared.publish_raw(&mut items).await {
                warn!(queue, error = %e, "a pack's parts could not be put back; the pack goes back whole");
                let _ = Box::new(settle).requeue().await;
                return Err(e.into());
            }
        }
        Box::new(settle).ack().await?;
        for id in merged {
            shared.doorbells.mark_merged(id);
        }
        Ok(())
    }
}

/// Settles one part of a pack (see [`Book`]); dropped unsettled, it puts its part back.
struct PartSettle {
    index: usize,
    book: Option<Arc<Mutex<Book>>>,
    channel: Channel,
}

impl PartSettle {
    fn decide(&mut self, d: Decision) -> Option<Settled> {
        let book = self.book.take()?;
        let mut book = book.lock().unwrap_or_else(|e| e.into_inner());
        book.decide(self.index, d)
    }

    fn settle(mut self, d: Decision) -> BoxFuture<'static, std::result::Result<(), dtasks::Error>> {
        match self.decide(d) {
            Some(all) => all.run().boxed(),
            None => async { Ok(()) }.boxed(),
        }
    }
}

impl Settle for PartSettle {
    fn lost(&self) -> Option<BoxFuture<'static, ()>> {
        Some(closed(self.channel.clone()))
    }

    fn ack(self: Box<Self>) -> BoxFuture<'static, std::result::Result<(), dtasks::Error>> {
        (*self).settle(Decision::Ack)
    }

    fn requeue(self: Box<Self>) -> BoxFuture<'static, std::result::Result<(), dtasks::Error>> {
        (*self).settle(Decision::Requeue)
    }

    fn dead_letter(
        self: Box<Self>,
        reason: String,
    ) -> BoxFuture<'static, std::result::Result<(), dtasks::Error>> {
        (*self).settle(Decision::Dead(reason))
    }
}

impl Drop for PartSettle {
    fn drop(&mut self) {
        if let Some(all) = self.decide(Decision::Requeue) {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(all.run());
                }
                // Without a runtime the pack's settle drops too, which puts it back.
                Err(_) => drop(all),
            }
        }
    }
}

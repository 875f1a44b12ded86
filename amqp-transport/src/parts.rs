//! The consuming side of packs (`pack.rs`): a pack's parts handed out one by one, each
//! with a settle of its own, and the pack's delivery settled once all of them are.
//!
//! All merged or run: the pack is acked. None of them (and none dead-lettered): the pack
//! goes back whole. Otherwise the parts to put back are written again (a mailbox part to
//! its mailbox, in packs again; a task part to its DTask's task queue, alone) and those to
//! dead-letter to the dead letters, both confirmed, and only then is the pack acked. A
//! failure puts the whole pack back: its parts that were merged come again as duplicates,
//! which a merge drops, and its parts that ran come again as redeliveries.

use std::sync::{Arc, Mutex};

use dtasks::trace::TraceContext;
use dtasks::transport::{Delivery, DeliveryKind, MailboxMessage, Settle};
use futures::future::BoxFuture;
use futures::FutureExt;
use lapin::message::Delivery as AmqpDelivery;
use lapin::{BasicProperties, Channel};
use tracing::{debug, warn};

use crate::acks::Acks;
use crate::headers::{header_str, properties, with_trace, H_DTASK, H_INSTANCE};
use crate::pack::{self, Part, TaskPart};
use crate::publish::RawItem;
use crate::settle::{closed, dead_letter_item, AmqpSettle};
use crate::shared::Shared;
use crate::topology::Kind;

/// Where a pack came from, which says where its parts go back to.
#[derive(Clone, Debug)]
enum Origin {
    /// The mailbox of `instance`, an instance of `dtask`.
    Mailbox { instance: String, dtask: String },
    /// A pack queue of `dtask` (the DTask whose task queue its messages go to).
    Task { dtask: String },
}

/// What became of a part of a pack.
#[derive(Clone, Debug)]
enum Decision {
    Ack,
    Requeue,
    Dead(String),
}

/// The parts of one pack handed out together, and what each became: the pack's delivery
/// is settled once every part is.
struct Book {
    /// The delivery; taken by the last part to settle.
    settle: Option<AmqpSettle>,
    shared: Arc<Shared>,
    queue: String,
    origin: Origin,
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
            origin: self.origin.clone(),
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
    origin: Origin,
    ids: Vec<String>,
    data: Vec<u8>,
    decided: Vec<Decision>,
}

/// A part to write again: its id, instance, trace context and body.
struct Again {
    id: String,
    instance: String,
    trace: Option<TraceContext>,
    body: Vec<u8>,
}

impl Settled {
    /// Settles the pack's delivery as its parts decided (see the module's docs).
    async fn run(self) -> std::result::Result<(), dtasks::Error> {
        let Settled {
            settle,
            shared,
            queue,
            origin,
            ids,
            data,
            decided,
        } = self;
        let acked: Vec<String> = ids
            .into_iter()
            .zip(&decided)
            .filter(|(_, d)| matches!(d, Decision::Ack))
            .map(|(id, _)| id)
            .collect();
        if acked.is_empty() && !decided.iter().any(|d| matches!(d, Decision::Dead(_))) {
            return Box::new(settle).requeue().await;
        }
        if acked.len() < decided.len() {
            // Decoded when it was handed out, so it decodes again; were it not to, the
            // pack goes back whole rather than lose a part.
            let Some(parts) = again(&origin, &data).filter(|p| p.len() == decided.len()) else {
                return Box::new(settle).requeue().await;
            };
            let mut back = Vec::new();
            let mut items = Vec::new();
            for (part, d) in parts.into_iter().zip(decided) {
                let dtask = match &origin {
                    Origin::Mailbox { dtask, .. } | Origin::Task { dtask } => dtask,
                };
                let props = with_trace(
                    properties(&part.id, &part.instance, dtask),
                    part.trace.as_ref(),
                );
                match d {
                    Decision::Ack => {}
                    Decision::Requeue => back.push((part, props)),
                    Decision::Dead(reason) => {
                        // From the queue it would have gone to alone: a replay goes there.
                        let from = match &origin {
                            Origin::Mailbox { .. } => queue.clone(),
                            Origin::Task { dtask } => shared.topo.task_for(dtask, &part.instance),
                        };
                        warn!(queue = from, id = %part.id, %reason, "dead-lettering a message of a pack");
                        items.push(dead_letter_item(&shared, &from, part.body, props, &reason));
                    }
                }
            }
            match &origin {
                Origin::Mailbox { instance, dtask } => {
                    let back = back.into_iter().map(|(a, props)| (mailbox_part(a), props));
                    items.extend(shared.packed(instance, dtask, back.collect()));
                }
                Origin::Task { dtask } => items.extend(back.into_iter().map(|(a, props)| {
                    let task = shared.topo.task_for(dtask, &a.instance);
                    RawItem::to_queue(task, Kind::Task, a.body, props)
                })),
            }
            if let Err(e) = shared.publish_raw(&mut items).await {
                warn!(queue, error = %e, "a pack's parts could not be put back; the pack goes back whole");
                let _ = Box::new(settle).requeue().await;
                return Err(e.into());
            }
        }
        Box::new(settle).ack().await?;
        if matches!(origin, Origin::Mailbox { .. }) {
            for id in acked {
                shared.doorbells.mark_merged(id);
            }
        }
        Ok(())
    }
}

/// The parts of the pack `data` from `origin`, to write again.
fn again(origin: &Origin, data: &[u8]) -> Option<Vec<Again>> {
    match origin {
        Origin::Mailbox { instance, .. } => Some(
            pack::decode(data)?
                .into_iter()
                .map(|p| Again {
                    trace: TraceContext::new(p.traceparent, p.tracestate),
                    id: p.id,
                    instance: instance.clone(),
                    body: p.body,
                })
                .collect(),
        ),
        Origin::Task { .. } => Some(
            pack::decode_tasks(data)?
                .into_iter()
                .map(|p| Again {
                    trace: TraceContext::new(p.traceparent, p.tracestate),
                    id: p.id,
                    instance: p.instance,
                    body: p.body,
                })
                .collect(),
        ),
    }
}

/// A mailbox part written again.
fn mailbox_part(a: Again) -> Part {
    let (traceparent, tracestate) = pack::trace_fields(a.trace.as_ref());
    Part {
        id: a.id,
        traceparent,
        tracestate,
        body: a.body,
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

/// The settles of `n` parts of the pack `d` from `origin`, taken from `queue` on `ch`,
/// the pack's delivery settled through `batch` when given.
fn settles(
    shared: &Arc<Shared>,
    ch: &Channel,
    queue: &str,
    d: AmqpDelivery,
    origin: Origin,
    ids: Vec<String>,
    batch: Option<(&Arc<Acks>, u64)>,
) -> Vec<PartSettle> {
    let n = ids.len();
    // The pack's body stays with its book, read again only when some of its parts go
    // back or to the dead letters; the parts' bodies go to the worker.
    let mut settle = AmqpSettle::new(
        shared.clone(),
        ch.clone(),
        d.acker,
        queue.to_string(),
        Vec::new(),
        d.properties,
        None,
    );
    if let Some((acks, tag)) = batch {
        acks.seen(tag);
        settle = settle.with_batch(acks.clone(), tag);
    }
    let book = Arc::new(Mutex::new(Book {
        settle: Some(settle),
        shared: shared.clone(),
        queue: queue.to_string(),
        origin,
        decided: vec![None; n],
        ids,
        data: d.data,
    }));
    (0..n)
        .map(|index| PartSettle {
            index,
            book: Some(book.clone()),
            channel: ch.clone(),
        })
        .collect()
}

/// The messages of the mailbox pack `d` (with `parts`, decoded from it), drained from
/// `queue` on `ch`.
pub(crate) fn mailbox_parts(
    shared: &Arc<Shared>,
    ch: &Channel,
    queue: &str,
    d: AmqpDelivery,
    parts: Vec<Part>,
) -> Vec<MailboxMessage> {
    let origin = Origin::Mailbox {
        instance: header_str(&d.properties, H_INSTANCE).unwrap_or_default(),
        dtask: header_str(&d.properties, H_DTASK).unwrap_or_default(),
    };
    let ids = parts.iter().map(|p| p.id.clone()).collect();
    let settles = settles(shared, ch, queue, d, origin, ids, None);
    parts
        .into_iter()
        .zip(settles)
        .map(|(part, settle)| MailboxMessage {
            trace: TraceContext::new(part.traceparent, part.tracestate),
            body: part.body,
            settle: Box::new(settle),
        })
        .collect()
}

/// The deliveries of the task pack `d` (with `parts`, decoded from it), consumed from
/// `queue` on `ch`, the pack acked through `acks` when given.
pub(crate) fn task_parts(
    shared: &Arc<Shared>,
    ch: &Channel,
    acks: Option<&Arc<Acks>>,
    queue: &str,
    d: AmqpDelivery,
    parts: Vec<TaskPart>,
) -> Vec<Delivery> {
    let origin = Origin::Task {
        dtask: header_str(&d.properties, H_DTASK).unwrap_or_default(),
    };
    let tag = d.delivery_tag;
    let ids = parts.iter().map(|p| p.id.clone()).collect();
    let settles = settles(shared, ch, queue, d, origin, ids, acks.map(|a| (a, tag)));
    parts
        .into_iter()
        .zip(settles)
        .map(|(part, settle)| Delivery {
            kind: DeliveryKind::Task {
                trace: TraceContext::new(part.traceparent, part.tracestate),
                message_id: Some(part.id),
                body: part.body,
            },
            redeliveries: 0,
            settle: Box::new(settle),
        })
        .collect()
}

/// Splits the task pack `d` (with `parts`) from `queue`, delivered again, into single
/// messages: each part published alone to its task queue, confirmed, then the pack acked (through `acks` when
/// given). A part that fails again and again then counts its own redeliveries, and its
/// siblings are not held back with it. When the publish fails, the pack goes back (and
/// comes again). The pack is taken in hand at once; the returned future does the rest.
pub(crate) fn split(
    shared: &Arc<Shared>,
    ch: &Channel,
    acks: Option<&Arc<Acks>>,
    queue: String,
    d: AmqpDelivery,
    parts: Vec<TaskPart>,
) -> BoxFuture<'static, ()> {
    let dtask = header_str(&d.properties, H_DTASK).unwrap_or_default();
    let mut settle = AmqpSettle::new(
        shared.clone(),
        ch.clone(),
        d.acker,
        queue.clone(),
        Vec::new(),
        d.properties,
        None,
    );
    if let Some(acks) = acks {
        acks.seen(d.delivery_tag);
        settle = settle.with_batch(acks.clone(), d.delivery_tag);
    }
    let mut items: Vec<RawItem> = parts
        .into_iter()
        .map(|p| {
            let trace = TraceContext::new(p.traceparent, p.tracestate);
            let props: BasicProperties =
                with_trace(properties(&p.id, &p.instance, &dtask), trace.as_ref());
            RawItem::to_queue(
                shared.topo.task_for(&dtask, &p.instance),
                Kind::Task,
                p.body,
                props,
            )
        })
        .collect();
    let shared = shared.clone();
    async move {
        let n = items.len();
        match shared.publish_raw(&mut items).await {
            Ok(()) => {
                debug!(queue, parts = n, "a task pack delivered again was split");
                let _ = Box::new(settle).ack().await;
            }
            Err(e) => {
                warn!(queue, error = %e, "splitting a task pack delivered again failed; it goes back");
                let _ = Box::new(settle).requeue().await;
            }
        }
    }
    .boxed()
}

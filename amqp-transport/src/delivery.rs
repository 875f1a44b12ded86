//! Task deliveries as the worker gets them: consumed from a task or wake queue, or
//! handed over as due timers by the ready queue's consumer ([`Due`]).

use std::collections::HashSet;
use std::sync::Arc;

use dtasks::transport::{Delivery, DeliveryKind};
use lapin::message::Delivery as AmqpDelivery;
use lapin::Channel;
use tokio::sync::mpsc;

use crate::acks::Acks;
use crate::headers::{header_i64, message_id, trace};
use crate::pack::{self, H_PACK};
use crate::settle::AmqpSettle;
use crate::shared::Shared;

/// What a session's stream yields.
pub(crate) type Output = std::result::Result<Delivery, dtasks::Error>;

/// Where the ready queue's consumer hands a due timer of a DTask this session consumes:
/// straight to the worker, ahead of the deliveries waiting for it, still unacked in the
/// ready queue (a crash puts it back there), instead of one more confirmed publish and
/// delivery through the DTask's wake queue.
#[derive(Clone)]
pub(crate) struct Due {
    tx: mpsc::UnboundedSender<Output>,
    served: Arc<HashSet<String>>,
}

impl Due {
    /// Hands over to `tx` the due timers of the DTasks `names`.
    pub(crate) fn new(tx: mpsc::UnboundedSender<Output>, names: &[String]) -> Self {
        Self {
            tx,
            served: Arc::new(names.iter().cloned().collect()),
        }
    }

    /// Whether due timers of `dtask` can be handed over here.
    pub(crate) fn serves(&self, dtask: &str) -> bool {
        self.served.contains(dtask) && !self.tx.is_closed()
    }

    /// Hands a due timer over as a task delivery. A delivery that cannot be handed over
    /// (the stream is gone) is dropped, which puts it back in its queue.
    pub(crate) fn hand_over(
        &self,
        shared: &Arc<Shared>,
        ch: &Channel,
        queue: String,
        d: AmqpDelivery,
    ) {
        let _ = self.tx.send(Ok(task_delivery(shared, ch, None, queue, d)));
    }
}

/// The deliveries a message consumed from the task queue `queue` on `ch` makes: itself,
/// or the parts of a task pack, each settled on its own (`parts.rs`); a pack delivered
/// again is split into single messages instead, which come as deliveries of their own.
/// Acks are coalesced with the channel's others through `acks` when given.
pub(crate) fn task_deliveries(
    shared: &Arc<Shared>,
    ch: &Channel,
    acks: Option<&Arc<Acks>>,
    queue: String,
    d: AmqpDelivery,
) -> Vec<Delivery> {
    let parts = header_i64(&d.properties, H_PACK)
        .and_then(|_| pack::decode_tasks(&d.data))
        .filter(|parts| !parts.is_empty());
    let Some(parts) = parts else {
        return vec![task_delivery(shared, ch, acks, queue, d)];
    };
    if d.redelivered {
        tokio::spawn(crate::parts::split(shared, ch, acks, queue, d, parts));
        return Vec::new();
    }
    crate::parts::task_parts(shared, ch, acks, &queue, d, parts)
}

/// A task message as the worker gets it, settled on `ch` (the channel it came on), its
/// ack coalesced with the channel's others through `acks` when given.
pub(crate) fn task_delivery(
    shared: &Arc<Shared>,
    ch: &Channel,
    acks: Option<&Arc<Acks>>,
    queue: String,
    d: AmqpDelivery,
) -> Delivery {
    let message_id = message_id(&d.properties);
    let trace = trace(&d.properties);
    let redeliveries = redeliveries(&d);
    let settle = AmqpSettle::new(
        shared.clone(),
        ch.clone(),
        d.acker,
        queue,
        d.data.clone(),
        d.properties,
        None,
    );
    let settle = match acks {
        Some(acks) => {
            acks.seen(d.delivery_tag);
            settle.with_batch(acks.clone(), d.delivery_tag)
        }
        None => settle,
    };
    Delivery {
        kind: DeliveryKind::Task {
            body: d.data,
            message_id,
            trace,
        },
        redeliveries,
        settle: Box::new(settle),
    }
}

/// Earlier deliveries of a task message: the quorum queue counts them in
/// `x-delivery-count`.
fn redeliveries(d: &AmqpDelivery) -> u32 {
    match header_i64(&d.properties, "x-delivery-count") {
        Some(n) => n.clamp(0, i64::from(u32::MAX)) as u32,
        None => u32::from(d.redelivered),
    }
}

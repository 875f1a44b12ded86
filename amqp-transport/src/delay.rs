//! Timers without a broker plugin: binary delay levels, and the ready queue's consumer
//! that moves a timer on through them.
//!
//! A delayed message carries its due time (`x-dtasks-at`, epoch ms) and its target DTask
//! (`x-dtasks-target`). While `r` ms remain it waits in level `floor(log2(r))`, a quorum
//! queue whose messages all live `2^k` ms and then dead-letter into the ready queue. The
//! consumer of the ready queue (run by every `consume()`) looks again: a message with up
//! to a second left (`AmqpConfig::with_timer_hold`) is held there, unacked, until it is
//! due, rather than passed through ten more levels; the others go to the next level. A
//! due message goes straight to this process's worker when it runs the message's DTask
//! (still unacked in the ready queue until the worker's step is published, so a crash
//! puts it back there), else to the DTask's wake queue (consumed like its task queue). A
//! level never holds a message longer than it has left, so a timer is never early; one
//! TTL per queue keeps each queue in FIFO order, so a long timer never blocks a short one.
//!
//! No timer waits in a level above the hop (`AmqpConfig::with_timer_hop`), so that a
//! worker looks at each at least once a hop: a timer whose instance a cancel record this
//! process has read may stop is then handled as due at once, and the worker's engine ends
//! the sleep cancelled or sends the timer on (architecture, section 11).

use std::sync::Arc;
use std::time::Duration;

use dtasks::transport::Settle;
use lapin::message::Delivery as AmqpDelivery;
use lapin::options::{BasicAckOptions, BasicRejectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use tracing::{debug, warn};

use crate::clock::now_ms;
use crate::conn;
use crate::delivery::Due;
use crate::error::{Context, Result};
use crate::headers::{header_i64, header_str, H_AT, H_INSTANCE, H_TARGET};
use crate::publish::{RawItem, Route};
use crate::settle::{settled, AmqpSettle};
use crate::shared::Shared;
use crate::topology::{self, short, Kind};

/// Headers added by the broker that must not pile up over many hops.
fn is_broker_header(key: &str) -> bool {
    key.starts_with("x-death")
        || key.starts_with("x-first-death")
        || key.starts_with("x-last-death")
        || key == "x-delivery-count"
}

fn without_broker_headers(props: BasicProperties) -> BasicProperties {
    let mut headers = FieldTable::default();
    if let Some(h) = props.headers() {
        for (k, v) in h.inner() {
            if !is_broker_header(k.as_str()) {
                headers.insert(k.clone(), v.clone());
            }
        }
    }
    props.with_headers(headers)
}

/// Moves one message from the ready queue on: when due, to this process's worker or to
/// its wake queue, else to the next delay level. Acks only after the broker confirmed the
/// new copy (or, handed to the worker, when the worker settles it).
pub(crate) async fn reroute(shared: Arc<Shared>, ch: Channel, d: AmqpDelivery, due: Due) {
    let at = header_i64(&d.properties, H_AT);
    let target = header_str(&d.properties, H_TARGET);
    let (Some(at_ms), Some(target)) = (at, target) else {
        let settle = AmqpSettle::new(
            shared.clone(),
            ch,
            d.acker,
            shared.topo.delay_ready(),
            d.data,
            d.properties,
            None,
        );
        let reason = format!("a delayed message without `{H_AT}` and `{H_TARGET}` headers");
        warn!(reason, "dead-lettering a timer");
        let _ = Box::new(settle).dead_letter(reason).await;
        return;
    };
    if at_ms > now_ms() && cancelled(&shared, &d.properties) {
        // Its instance may be cancelled: brought to a worker now, whose engine ends the
        // sleep cancelled (or, for a sleep the cancel does not reach, sends it on to wait
        // the rest).
        debug!(
            target,
            early_ms = at_ms - now_ms(),
            "timer of a cancelled instance brought early"
        );
        if due.serves(&target) {
            due.hand_over(&shared, &ch, shared.topo.delay_ready(), d);
        } else {
            let route = Route::Queue {
                queue: shared.topo.wake(&target),
                kind: Kind::Task,
            };
            forward(&shared, &ch, d, route, &target).await;
        }
        return;
    }
    let hold = shared.cfg.timer_hold.as_millis() as i64;
    loop {
        let remaining = at_ms - now_ms();
        if remaining <= 0 || remaining > hold {
            break;
        }
        // Almost due: cheaper to wait here than to pass through several short levels.
        tokio::time::sleep(Duration::from_millis(remaining as u64)).await;
    }
    if at_ms <= now_ms() && due.serves(&target) {
        debug!(
            target,
            late_ms = now_ms() - at_ms,
            "timer due; handed to this worker"
        );
        due.hand_over(&shared, &ch, shared.topo.delay_ready(), d);
        return;
    }
    let route = Route::Delayed {
        target: target.clone(),
        at_ms,
    };
    forward(&shared, &ch, d, route, &target).await;
}

/// Whether a cancel record this process has read may stop the instance a timer is
/// about (`CancelBook::may_cancel`; the engine decides from the state).
fn cancelled(shared: &Shared, props: &BasicProperties) -> bool {
    header_str(props, H_INSTANCE).is_some_and(|i| shared.cancels.may_cancel(&i))
}

/// Publishes the timer `d` on `route` and acks it once confirmed; puts it back in the
/// ready queue when the publish fails (dead-letters it when that would fail forever).
async fn forward(shared: &Arc<Shared>, ch: &Channel, d: AmqpDelivery, route: Route, target: &str) {
    let at_ms = header_i64(&d.properties, H_AT).unwrap_or_default();
    let mut item = [RawItem {
        route,
        body: d.data,
        props: without_broker_headers(d.properties),
        done: None,
    }];
    match shared.publish_raw(&mut item).await {
        Ok(()) => {
            debug!(target, remaining_ms = at_ms - now_ms(), "timer moved on");
            let _ = settled(ch, d.acker.ack(BasicAckOptions::default())).await;
        }
        Err(e) => {
            warn!(target, error = %e, "moving a timer failed; it goes back to the ready queue");
            if e.is_permanent() {
                // It would fail forever: keep it where a person can look at it.
                let settle = AmqpSettle::new(
                    shared.clone(),
                    ch.clone(),
                    d.acker,
                    shared.topo.delay_ready(),
                    std::mem::take(&mut item[0].body),
                    item[0].props.clone(),
                    None,
                );
                let _ = Box::new(settle).dead_letter(e.to_string()).await;
            } else {
                let _ = settled(ch, d.acker.reject(BasicRejectOptions { requeue: true })).await;
            }
        }
    }
}

impl Shared {
    /// The timers waiting in the delay levels and the ready queue.
    pub(crate) async fn pending_timers(&self) -> Result<u64> {
        let ch = conn::get_channel(&self.control).await?;
        // Declared, not looked up: a missing queue would close the channel with an error.
        // The levels are part of the deployment's topology anyway.
        let mut queues: Vec<(String, Kind)> = (0..=topology::MAX_LEVEL)
            .map(|k| (self.topo.delay_level(k), Kind::DelayLevel(k)))
            .collect();
        queues.push((self.topo.delay_ready(), Kind::DelayReady));
        let mut n = 0u64;
        for (queue, kind) in queues {
            let (opts, args) = self.topo.declaration(kind);
            let q = ch
                .queue_declare(short(&queue)?, opts, args)
                .await
                .context(|| format!("declaring queue `{queue}`"))?;
            self.declared.remember(&queue);
            n += u64::from(q.message_count());
        }
        Ok(n)
    }
}

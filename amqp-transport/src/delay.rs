//! Timers without a broker plugin: binary delay levels.
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

use std::sync::Arc;
use std::time::Duration;

use lapin::message::Delivery as AmqpDelivery;
use lapin::options::{BasicAckOptions, BasicRejectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use tracing::{debug, warn};

use dtasks::transport::Settle;

use crate::consume::{header_i64, header_str, settled, AmqpSettle, Due};
use crate::transport::{now_ms, RawItem, Route, Shared, H_AT, H_TARGET};

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
    let mut item = [RawItem {
        route: Route::Delayed {
            target: target.clone(),
            at_ms,
        },
        body: d.data,
        props: without_broker_headers(d.properties),
        register: false,
        done: None,
    }];
    match shared.publish_raw(&mut item).await {
        Ok(()) => {
            debug!(target, remaining_ms = at_ms - now_ms(), "timer moved on");
            let _ = settled(&ch, d.acker.ack(BasicAckOptions::default())).await;
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
                let _ = settled(&ch, d.acker.reject(BasicRejectOptions { requeue: true })).await;
            }
        }
    }
    // The channel stays open until the message is settled.
    drop(ch);
}

//! The E1 table: the signal round trip, and its ratio to the raw request-reply of the
//! same run.

use std::fmt::Write as _;

use super::numbers::{f1, f2};
use super::Report;
use crate::counting::KINDS;
use crate::stats::pct;

/// A time in ms: three decimals under 1 ms (the in-memory figures), else two.
fn ms(x: f64) -> String {
    if x.is_finite() && x < 1.0 {
        format!("{x:.3}")
    } else {
        f2(x)
    }
}

/// `p50 / p99` of `v`, in ms.
fn p50_p99(v: &[f64]) -> String {
    if v.is_empty() {
        return "—".into();
    }
    format!("{} / {}", ms(pct(v, 0.5)), ms(pct(v, 0.99)))
}

impl Report {
    /// The E1 section, when E1 ran.
    pub(super) fn render_e1(&self, o: &mut String) {
        let m = self.memory.as_ref().and_then(|s| s.e1.as_ref());
        let a = self.amqp.as_ref().and_then(|s| s.e1.as_ref());
        if m.is_none() && a.is_none() {
            return;
        }
        let _ = writeln!(o, "\n## E1: signal round trip\n");
        let _ = writeln!(
            o,
            "One instance at a time waits for an event (`DTask::event`); once its status reads `Suspended`, the client sends the event (`Client::signal`) and the instance, resumed, returns it. Send → result: from the start of `signal` to the result received (the result wait is in place before the send). `signal` alone: until the event is durable (a status read, then a confirmed publish to the instance's mailbox and its doorbell). Raw, on RabbitMQ, alternated round by round with dtasks: lapin publishes a request (persistent, confirmed) to a quorum queue; a consumer publishes it back to a durable classic reply queue (persistent, confirmed) and acks; the client receives it. Percentiles are nearest-rank over the measured rounds ({} warm-up rounds each side not counted).\n",
            crate::signal::WARM_UP
        );
        let _ = writeln!(
            o,
            "| where | rounds | send → result p50 / p99 ms | send alone p50 / p99 ms | publishes / round | confirm waits / round | deliveries / round |"
        );
        let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|");
        for (label, run) in [("in-memory", m), ("RabbitMQ", a)] {
            let Some(r) = run else { continue };
            let per = r.rounds.max(1) as f64;
            let _ = writeln!(
                o,
                "| {label} | {} | {} | {} | {} | {} | {} |",
                r.rounds,
                p50_p99(&r.round_trip_ms),
                p50_p99(&r.send_ms),
                f2(r.counts.total_msgs() as f64 / per),
                f2(r.counts.batches as f64 / per),
                f2(r.deliveries as f64 / per)
            );
        }
        let Some(a) = a.filter(|a| !a.raw_ms.is_empty()) else {
            return;
        };
        let _ = writeln!(
            o,
            "| raw request-reply (lapin, RabbitMQ) | {} | {} | {} | 2.00 | 2.00 | 2.00 |",
            a.raw_ms.len(),
            p50_p99(&a.raw_ms),
            p50_p99(&a.raw_send_ms)
        );
        let ratio = |q: f64| pct(&a.round_trip_ms, q) / pct(&a.raw_ms, q);
        let _ = writeln!(
            o,
            "\nOn RabbitMQ, send → result ÷ raw request-reply: **p50 {}×**, p99 {}×.",
            f1(ratio(0.5)),
            f1(ratio(0.99))
        );
        let _ = writeln!(
            o,
            "\nMessages the core published per E1 round on RabbitMQ (start, suspension, event, result), by destination:\n"
        );
        let _ = writeln!(o, "| destination | messages / round |");
        let _ = write!(o, "|---|---:|");
        for (i, k) in KINDS.iter().enumerate() {
            if a.counts.msgs[i] > 0 {
                let _ = write!(
                    o,
                    "\n| {k} | {} |",
                    f2(a.counts.msgs[i] as f64 / a.rounds.max(1) as f64)
                );
            }
        }
        let _ = writeln!(o);
    }

    /// The verification failures of E1.
    pub(super) fn e1_errors(&self) -> Vec<String> {
        let mut e = Vec::new();
        for (label, set) in [("in-memory", &self.memory), ("RabbitMQ", &self.amqp)] {
            if let Some(r) = set.as_ref().and_then(|s| s.e1.as_ref()) {
                e.extend(r.errors.iter().map(|x| format!("{label} E1: {x}")));
            }
        }
        e
    }
}

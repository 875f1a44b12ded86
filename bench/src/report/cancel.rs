//! The E2 table: the cancellation of a fan-out, to the root's result and to the last
//! child's end.

use std::fmt::Write as _;

use super::numbers::{f1, f2};
use super::Report;
use crate::counting::KINDS;
use crate::stats::pct;

/// A time in ms: two decimals under 10 ms (the in-memory figures), else one.
fn ms(x: f64) -> String {
    if x.is_finite() && x < 10.0 {
        f2(x)
    } else {
        f1(x)
    }
}

/// `min / median / max` of `v`, in ms.
fn spread(v: &[f64]) -> String {
    if v.is_empty() {
        return "—".into();
    }
    format!(
        "{} / {} / {}",
        ms(pct(v, 0.0)),
        ms(pct(v, 0.5)),
        ms(pct(v, 1.0))
    )
}

impl Report {
    /// The E2 section, when E2 ran.
    pub(super) fn render_e2(&self, o: &mut String) {
        let m = self.memory.as_ref().and_then(|s| s.e2.as_ref());
        let a = self.amqp.as_ref().and_then(|s| s.e2.as_ref());
        if m.is_none() && a.is_none() {
            return;
        }
        let width = self.sizes.e2_width;
        let _ = writeln!(o, "\n## E2: cancelling a fan-out of {width} children\n");
        let _ = writeln!(
            o,
            "One round at a time: a root starts {width} children with `DTask::when_all`; each child records that it ran (`DTask::run`) and waits in its mailbox for an event that never comes (`DTask::event`). Once every child's state write to its mailbox is confirmed and the root's status reads `Suspended`, the client calls `Client::cancel` on the root. Times run from the start of that call. **Root's result**: until a result wait set up right after the start returns the cancellation. **Child stopped**: until the broker confirmed the publish batch carrying the child's tombstone (the write that ends a mailbox-mode instance; its cancelled result to the root goes in the same batch), as seen by the counting wrapper of the worker that ran the child; the first, the median and the last of the {width} children of the round. Each figure is min / median / max over the measured rounds ({} warm-up round not counted). Publishes, confirm waits, deliveries and CPU count from the cancel until the workers were idle for 300 ms.\n",
            crate::cancel::WARM_UP
        );
        let _ = writeln!(
            o,
            "| where | rounds | start → all children waiting ms | `cancel` call ms | cancel → root's result Cancelled ms | cancel → first child stopped ms | cancel → median child ms | **cancel → last child stopped ms** |"
        );
        let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|---:|");
        for (label, run) in [("in-memory", m), ("RabbitMQ", a)] {
            let Some(r) = run else { continue };
            let _ = writeln!(
                o,
                "| {label} | {} | {} | {} | {} | {} | {} | **{}** |",
                r.last_stop_ms.len(),
                spread(&r.setup_ms),
                spread(&r.cancel_ms),
                spread(&r.result_ms),
                spread(&r.first_stop_ms),
                spread(&r.median_stop_ms),
                spread(&r.last_stop_ms)
            );
        }
        let _ = writeln!(
            o,
            "\nWhat one cancellation caused (per round, from the cancel until the workers were idle):\n"
        );
        let _ = write!(
            o,
            "| where | publishes | confirm waits | deliveries | this process's CPU ms | broker CPU ms |"
        );
        for k in KINDS {
            let _ = write!(o, " → {k} |");
        }
        let _ = write!(o, "\n|---|---:|---:|---:|---:|---:|");
        for _ in KINDS {
            let _ = write!(o, "---:|");
        }
        for (label, run) in [("in-memory", m), ("RabbitMQ", a)] {
            let Some(r) = run else { continue };
            let per = r.last_stop_ms.len().max(1) as f64;
            let _ = write!(
                o,
                "\n| {label} | {} | {} | {} | {} | {} |",
                f1(r.counts.total_msgs() as f64 / per),
                f1(r.counts.batches as f64 / per),
                f1(r.deliveries as f64 / per),
                f1(r.cpu.bench * 1e3 / per),
                r.cpu.broker.map_or("—".into(), |b| f1(b * 1e3 / per))
            );
            for i in 0..KINDS.len() {
                let _ = write!(o, " {} |", f1(r.counts.msgs[i] as f64 / per));
            }
        }
        let _ = writeln!(o);
    }

    /// The verification failures of E2.
    pub(super) fn e2_errors(&self) -> Vec<String> {
        let mut e = Vec::new();
        for (label, set) in [("in-memory", &self.memory), ("RabbitMQ", &self.amqp)] {
            if let Some(r) = set.as_ref().and_then(|s| s.e2.as_ref()) {
                e.extend(r.errors.iter().map(|x| format!("{label} E2: {x}")));
            }
        }
        e
    }
}

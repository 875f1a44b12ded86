//! The verdicts on the targets, and the evidence of what limits a missed one.

use std::fmt::Write as _;

use super::numbers::{f1, f2, int, pc};
use super::Report;
use crate::raw::RawRun;
use crate::stats::pct;
use crate::workloads::Run;

/// A verdict: `PASS`, or `MISSED` and by how much.
pub(super) struct Verdict {
    target: String,
    measured: String,
    ok: Option<bool>,
    shortfall: String,
}

impl Verdict {
    /// A verdict on `target`: `ok` is `None` when it was not measured.
    pub(super) fn new(
        target: impl Into<String>,
        measured: impl Into<String>,
        ok: Option<bool>,
        shortfall: impl Into<String>,
    ) -> Self {
        Self {
            target: target.into(),
            measured: measured.into(),
            ok,
            shortfall: shortfall.into(),
        }
    }

    fn cell(&self) -> String {
        match self.ok {
            Some(true) => "PASS".into(),
            Some(false) => format!("MISSED — {}", self.shortfall),
            None => format!("not measured{}", self.shortfall),
        }
    }
}

/// Restate's W2 (20 `when_all` of 100 children), measured on this machine with one Restate
/// server (RocksDB) in an earlier sitting: the reference of the fan-in target when a run
/// does not measure it (`bench/restate` not built, or `--restate off`).
const RESTATE_W2_STEPS_PER_S: f64 = 2_877.0;

impl Report {
    fn verdicts(&self) -> Vec<Verdict> {
        let raw = self.raw_median();
        let mut v = Vec::new();
        // W1b on RabbitMQ vs raw, for each way of getting the results. The `start` row is
        // always listed (as not measured when missing); the `call` row when it ran.
        let ratio_verdict = |target: &str, run: &Option<Run>| match (run, &raw) {
            (Some(a), Some(r)) => {
                let ratio = a.steps_per_s() / r.steps_per_s();
                Verdict {
                    target: target.into(),
                    measured: format!(
                        "{} ({} vs {} steps/s)",
                        pc(ratio),
                        int(a.steps_per_s()),
                        int(r.steps_per_s())
                    ),
                    ok: Some(ratio >= 0.40),
                    shortfall: format!(
                        "by {:.1} points; needs {:.2}× its throughput",
                        (0.40 - ratio) * 100.0,
                        0.40 / ratio
                    ),
                }
            }
            _ => Verdict {
                target: target.into(),
                measured: "—".into(),
                ok: None,
                shortfall: String::new(),
            },
        };
        v.push(ratio_verdict(
            "W1b on RabbitMQ with `Client::start` + `Handle::result` (the RabbitMQ-only stream store) ≥ 40% of raw hand-off steps/s",
            &self.amqp.as_ref().and_then(Self::w1b_median),
        ));
        let amqp_call = self.amqp.as_ref().and_then(Self::w1b_call_median);
        if amqp_call.is_some() {
            v.push(ratio_verdict(
                "W1b on RabbitMQ with `Client::call` ≥ 40% of raw hand-off steps/s",
                &amqp_call,
            ));
        }
        let amqp_call0 = self.amqp.as_ref().and_then(Self::w1b_call0_median);
        if amqp_call0.is_some() {
            v.push(ratio_verdict(
                "W1b on RabbitMQ with `Client::call`, every step a delivery (`--inline 0`), ≥ 40% of raw hand-off steps/s",
                &amqp_call0,
            ));
        }
        // W2 on RabbitMQ: against raw, and against Restate's W2.
        let w2 = self.amqp.as_ref().and_then(|s| s.w2.clone());
        if let (Some(w), Some(r)) = (&w2, &raw) {
            let ratio = w.steps_per_s() / r.steps_per_s();
            v.push(Verdict {
                target: "W2 on RabbitMQ ≥ 0.35 of raw hand-off steps/s".into(),
                measured: format!(
                    "{} ({} vs {} steps/s)",
                    f2(ratio),
                    int(w.steps_per_s()),
                    int(r.steps_per_s())
                ),
                ok: Some(ratio >= 0.35),
                shortfall: format!(
                    "by {:.2}; needs {:.2}× its throughput",
                    0.35 - ratio,
                    0.35 / ratio
                ),
            });
            let in_run = self.amqp.as_ref().and_then(|s| s.restate_w2.as_ref());
            let (restate, what) = match in_run {
                Some(r) => (
                    r.median_steps_per_s,
                    format!(
                        "{} steps/s: {}, one node with RocksDB, the Restate Rust SDK, {} × {} children, measured in this run (bench/restate)",
                        int(r.median_steps_per_s),
                        r.server,
                        r.parents,
                        r.children
                    ),
                ),
                None => (
                    RESTATE_W2_STEPS_PER_S,
                    format!(
                        "{} steps/s: one Restate server with RocksDB, 20 × 100 children, measured on this machine in an earlier sitting, not in this run",
                        int(RESTATE_W2_STEPS_PER_S)
                    ),
                ),
            };
            v.push(Verdict {
                target: format!("W2 on RabbitMQ ≥ 2× Restate's W2 ({what})"),
                measured: format!(
                    "{}× ({} steps/s)",
                    f2(w.steps_per_s() / restate),
                    int(w.steps_per_s())
                ),
                ok: Some(w.steps_per_s() >= 2.0 * restate),
                shortfall: format!(
                    "needs {:.2}× its throughput",
                    2.0 * restate / w.steps_per_s()
                ),
            });
        }
        // W1a p50 on RabbitMQ.
        let w1a = self.amqp.as_ref().and_then(|s| s.w1a.clone());
        v.push(match &w1a {
            Some(r) => {
                let p50 = pct(&r.samples_ms, 0.5);
                Verdict {
                    target: format!(
                        "W1a on RabbitMQ p50 < 30 ms ({}-step chain)",
                        self.settings.steps
                    ),
                    measured: format!("p50 {} ms", f1(p50)),
                    ok: Some(p50 < 30.0),
                    shortfall: format!("by {} ms ({:.2}× the target)", f1(p50 - 30.0), p50 / 30.0),
                }
            }
            None => Verdict {
                target: "W1a on RabbitMQ p50 < 30 ms".into(),
                measured: "—".into(),
                ok: None,
                shortfall: String::new(),
            },
        });
        // W3 on RabbitMQ.
        let w3 = self.amqp.as_ref().and_then(|s| s.w3.clone());
        v.push(match &w3 {
            Some(r) => {
                let fired = r.done_at.len();
                let p99 = pct(&r.samples_ms, 0.99);
                let early = r.samples_ms.iter().filter(|x| **x < 0.0).count();
                let all = fired == r.instances && early == 0;
                let mut short = Vec::new();
                if fired != r.instances {
                    short.push(format!("{} of {} fired", fired, r.instances));
                }
                if early > 0 {
                    short.push(format!("{early} early"));
                }
                if p99 >= 100.0 {
                    short.push(format!("p99 late by {} ms over 100 ms", f1(p99 - 100.0)));
                }
                Verdict {
                    target: "W3 on RabbitMQ: every timer fires, none early, lateness p99 < 100 ms"
                        .into(),
                    measured: format!(
                        "{fired}/{} fired, {early} early, p99 {} ms",
                        r.instances,
                        f1(p99)
                    ),
                    ok: Some(all && p99 < 100.0),
                    shortfall: short.join("; "),
                }
            }
            None => Verdict {
                target: "W3 on RabbitMQ: every timer fires, lateness p99 < 100 ms".into(),
                measured: "—".into(),
                ok: None,
                shortfall: String::new(),
            },
        });
        // W4.
        v.push(match &self.w4 {
            Some(r) => {
                let once = r.completed == r.instances && r.twice == 0;
                let stall = r.stall.unwrap_or(f64::NAN);
                let mut short = Vec::new();
                if !once {
                    short.push(format!(
                        "{} of {} completed, {} twice",
                        r.completed, r.instances, r.twice
                    ));
                }
                if stall.is_nan() || stall >= 5.0 {
                    short.push(format!("stall {} s over 5 s", f2(stall - 5.0)));
                }
                Verdict {
                    target: "W4: all instances complete exactly once, stall after kill < 5 s"
                        .into(),
                    measured: format!(
                        "{}/{} once, {} twice, stall {} s",
                        r.completed,
                        r.instances,
                        r.twice,
                        f2(stall)
                    ),
                    ok: Some(once && stall < 5.0 && r.errors.is_empty()),
                    shortfall: short.join("; "),
                }
            }
            None => Verdict {
                target: "W4: all complete exactly once, stall after kill < 5 s".into(),
                measured: "—".into(),
                ok: None,
                shortfall: String::new(),
            },
        });
        // In-memory W1b.
        let mem = self.memory.as_ref().and_then(Self::w1b_median);
        v.push(match &mem {
            Some(m) => {
                let sps = m.steps_per_s();
                Verdict {
                    target: "W1b in memory ≥ 100,000 steps/s".into(),
                    measured: format!("{} steps/s", int(sps)),
                    ok: Some(sps >= 100_000.0),
                    shortfall: format!(
                        "by {} steps/s; needs {:.1}× its throughput",
                        int(100_000.0 - sps),
                        100_000.0 / sps
                    ),
                }
            }
            None => Verdict {
                target: "W1b in memory ≥ 100,000 steps/s".into(),
                measured: "—".into(),
                ok: None,
                shortfall: String::new(),
            },
        });
        v.extend(self.store_verdicts());
        v
    }

    /// The table of the verdicts; returns them.
    pub(super) fn render_targets(&self, o: &mut String) -> Vec<Verdict> {
        let _ = writeln!(o, "\n## Targets\n");
        let _ = writeln!(o, "| target | measured | verdict |");
        let _ = writeln!(o, "|---|---|---|");
        let verdicts = self.verdicts();
        for v in &verdicts {
            let _ = writeln!(o, "| {} | {} | {} |", v.target, v.measured, v.cell());
        }
        verdicts
    }

    /// The evidence for each missed target.
    pub(super) fn render_missed(
        &self,
        o: &mut String,
        verdicts: &[Verdict],
        raw: &Option<RawRun>,
        mw1b: &Option<Run>,
        aw1b: &Option<Run>,
    ) {
        let missed: Vec<&Verdict> = verdicts.iter().filter(|v| v.ok == Some(false)).collect();
        if !missed.is_empty() {
            let _ = writeln!(
                o,
                "\n## What limits the missed targets (from this run's counters)\n"
            );
            for v in missed {
                let _ = writeln!(
                    o,
                    "- **{}** — {}. {}",
                    v.target,
                    v.shortfall,
                    // Each row is explained by its own run's counters.
                    if v.target.contains("every step a delivery") {
                        let call0 = self.amqp.as_ref().and_then(Self::w1b_call0_median);
                        self.limits(v, raw, &call0, mw1b)
                    } else if v.target.starts_with("W2") {
                        let w2 = self.amqp.as_ref().and_then(|s| s.w2.clone());
                        self.limits(v, raw, &w2, mw1b)
                    } else if v.target.contains("Client::call") {
                        let call = self.amqp.as_ref().and_then(Self::w1b_call_median);
                        self.limits(v, raw, &call, mw1b)
                    } else {
                        self.limits(v, raw, aw1b, mw1b)
                    }
                );
            }
        }
    }

    /// Evidence of what limits a missed target, from the counters of this run.
    fn limits(
        &self,
        v: &Verdict,
        raw: &Option<RawRun>,
        aw1b: &Option<Run>,
        mw1b: &Option<Run>,
    ) -> String {
        let t = &v.target;
        if t.starts_with("W1b on RabbitMQ") || t.starts_with("W2 on RabbitMQ") {
            if let (Some(a), Some(r)) = (aw1b, raw) {
                let st = a.steps as f64;
                let rs = r.steps as f64;
                let bench = a.cpu.bench / st * 1e3;
                let rbench = r.cpu.bench / rs * 1e3;
                let broker = a.cpu.broker.map(|b| b / st * 1e3);
                let rbroker = r.cpu.broker.map(|b| b / rs * 1e3);
                let why = if t.contains("every step a delivery") {
                    " Each step is two hand-offs (the child's start, its result back to the parent, each carrying the parent's state): 0.5 of raw with one AMQP message per hand-off, as raw publishes; the hand-offs a worker publishes to one DTask at about the same time share task packs (bench/README.md, \"Task messages in packs\"); the rest is CPU per hand-off above lapin alone, in this process (the worker's step, lapin's I/O thread and its wake-ups) and in the broker (bodies about twice raw's; bench/README.md, \"Durable steps\")."
                } else if t.starts_with("W2") {
                    " A step is one child: its start (published with its 99 siblings, 16 to a task pack), its share of the pack's delivery and ack, and its result written to the parent's mailbox (several results of one worker in one pack) with a doorbell, then drained and merged; the doorbells, drains and merged states of the parents come on top (bench/README.md, \"Fan-in\")."
                } else {
                    ""
                };
                return format!(
                    "Per child step dtasks published {} messages in {} confirm waits and handled {} deliveries, where the raw hand-off publishes 1 and handles {}; {} B published per step vs {} B. CPU per step: this process {} ms vs {} ms raw, broker {} ms vs {} ms raw; {} of {} cores were busy.{why}",
                    f2(a.counts.total_msgs() as f64 / st),
                    f2(a.counts.batches as f64 / st),
                    f2(a.deliveries as f64 / st),
                    f2((r.steps + r.chains as u64) as f64 / rs),
                    int(a.counts.total_bytes() as f64 / st),
                    r.body_len,
                    f2(bench),
                    f2(rbench),
                    broker.map_or("—".into(), f2),
                    rbroker.map_or("—".into(), f2),
                    f2((a.cpu.bench + a.cpu.broker.unwrap_or(0.0)) / a.cpu.wall),
                    self.cores
                );
            }
        }
        if t.starts_with("W1a") {
            if let Some(r) = self.amqp.as_ref().and_then(|x| x.w1a.as_ref()) {
                let p50 = pct(&r.samples_ms, 0.5);
                let hops = 2 * self.settings.steps + 1;
                return format!(
                    "A {}-step chain is {} sequential hand-offs (root start, then per step a child start and a parent resume), each a publish-confirm on a quorum queue before the ack, plus the client's start and result wait: {} ms per hand-off at the p50; {} publishes per instance.",
                    self.settings.steps,
                    hops,
                    f2(p50 / f64::from(hops)),
                    f2(r.counts.total_msgs() as f64 / r.instances as f64)
                );
            }
        }
        if t.starts_with("W3") {
            if let Some(r) = self.amqp.as_ref().and_then(|x| x.w3.as_ref()) {
                return format!(
                    "The timers pass through binary delay levels (quorum TTL queues, one confirmed re-publish per level); lateness p50 {} ms, p99 {} ms; the core published {} messages per timer; {} of {} cores were busy.",
                    f1(pct(&r.samples_ms, 0.5)),
                    f1(pct(&r.samples_ms, 0.99)),
                    f2(r.counts.total_msgs() as f64 / r.instances as f64),
                    f2((r.cpu.bench + r.cpu.broker.unwrap_or(0.0)) / r.cpu.wall),
                    self.cores
                );
            }
        }
        if t.starts_with("W1b in memory") {
            if let Some(m) = mw1b {
                let st = m.steps as f64;
                return format!(
                    "No broker: the cost is this process's CPU, {} µs per step ({} publishes and {} deliveries per step, every step a full replay of the chain's function from the top with its journal), {} of {} cores busy. See bench/README.md for the profile.",
                    f1(m.cpu.bench / st * 1e6),
                    f2(m.counts.total_msgs() as f64 / st),
                    f2(m.deliveries as f64 / st),
                    f2(m.cpu.bench / m.cpu.wall),
                    self.cores
                );
            }
        }
        if t.starts_with("W4") {
            if let Some(r) = &self.w4 {
                return format!(
                    "Kill at {} s; {} completions after it; the surviving worker refused {} duplicate results.",
                    r.kill_at.map_or("—".into(), f2),
                    r.done_at.iter().filter(|x| Some(**x) >= r.kill_at).count(),
                    r.duplicate_results
                );
            }
        }
        String::new()
    }
}

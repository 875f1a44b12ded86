//! The table: figures, ratios to the raw baseline, target verdicts, and the evidence of
//! what limits a missed target.

use std::fmt::Write as _;

use crate::counting::{Counts, KINDS};
use crate::env::Settings;
use crate::long::{M1Run, Model};
use crate::raw::RawRun;
use crate::recovery::Recovery;
use crate::workloads::Run;

/// How big each workload is.
#[derive(Clone, Debug)]
pub(crate) struct Sizes {
    pub(crate) w1a: usize,
    pub(crate) w1b: usize,
    pub(crate) w2_parents: usize,
    pub(crate) w2_width: u32,
    pub(crate) w3: usize,
    pub(crate) w3_delay_ms: u64,
    pub(crate) w4: usize,
    pub(crate) raw_chains: usize,
    /// M1: awaits of the loop on the engine alone and in memory, and on RabbitMQ.
    pub(crate) m1: u32,
    pub(crate) m1_amqp: u32,
    /// Repetitions of W1b and of the raw baseline (medians are reported).
    pub(crate) reps: usize,
}

/// The runs of one transport.
#[derive(Debug, Default)]
pub(crate) struct Set {
    pub(crate) w1a: Option<Run>,
    pub(crate) w1b: Vec<Run>,
    /// W1b with `Client::call` (results on the client's reply queue).
    pub(crate) w1b_call: Vec<Run>,
    pub(crate) w2: Option<Run>,
    pub(crate) w3: Option<Run>,
    /// M1, one run per model (the in-memory set also holds the engine-alone runs).
    pub(crate) m1: Vec<M1Run>,
}

/// Everything one benchmark run measured.
#[derive(Debug)]
pub(crate) struct Report {
    pub(crate) quick: bool,
    pub(crate) date: String,
    pub(crate) time: String,
    pub(crate) commit: String,
    pub(crate) dirty: bool,
    pub(crate) cores: usize,
    pub(crate) broker: Option<String>,
    pub(crate) broker_cpu: bool,
    pub(crate) settings: Settings,
    pub(crate) sizes: Sizes,
    pub(crate) memory: Option<Set>,
    pub(crate) amqp: Option<Set>,
    pub(crate) raw: Vec<RawRun>,
    pub(crate) w4: Option<Recovery>,
    pub(crate) w4_control: Option<Recovery>,
    pub(crate) notes: Vec<String>,
}

/// The nearest-rank percentile `q` (0..=1) of `v`.
pub(crate) fn pct(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

/// The run with the median value of `f` (the lower middle for an even count).
fn median_by<T: Clone>(runs: &[T], f: impl Fn(&T) -> f64) -> Option<T> {
    let mut v: Vec<&T> = runs.iter().collect();
    v.sort_by(|a, b| f(a).partial_cmp(&f(b)).unwrap_or(std::cmp::Ordering::Equal));
    v.get((v.len().saturating_sub(1)) / 2).map(|r| (*r).clone())
}

/// `1234567.8` → `1,234,568`.
fn int(x: f64) -> String {
    if !x.is_finite() {
        return "—".into();
    }
    let n = x.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

fn f1(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.1}")
    } else {
        "—".into()
    }
}

fn f2(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}")
    } else {
        "—".into()
    }
}

fn pc(x: f64) -> String {
    if x.is_finite() {
        format!("{:.1}%", x * 100.0)
    } else {
        "—".into()
    }
}

/// A verdict: `PASS`, or `MISSED` and by how much.
struct Verdict {
    target: String,
    measured: String,
    ok: Option<bool>,
    shortfall: String,
}

impl Verdict {
    fn cell(&self) -> String {
        match self.ok {
            Some(true) => "PASS".into(),
            Some(false) => format!("MISSED — {}", self.shortfall),
            None => format!("not measured{}", self.shortfall),
        }
    }
}

impl Report {
    pub(crate) fn raw_median(&self) -> Option<RawRun> {
        median_by(&self.raw, RawRun::steps_per_s)
    }

    fn w1b_median(set: &Set) -> Option<Run> {
        median_by(&set.w1b, Run::steps_per_s)
    }

    fn w1b_call_median(set: &Set) -> Option<Run> {
        median_by(&set.w1b_call, Run::steps_per_s)
    }

    /// Every verification failure of the run.
    pub(crate) fn errors(&self) -> Vec<String> {
        let mut e = Vec::new();
        for (label, set) in [("in-memory", &self.memory), ("RabbitMQ", &self.amqp)] {
            let Some(set) = set else { continue };
            let named = [
                ("W1a", set.w1a.iter().collect::<Vec<_>>()),
                ("W1b", set.w1b.iter().collect()),
                ("W1b (call)", set.w1b_call.iter().collect()),
                ("W2", set.w2.iter().collect()),
                ("W3", set.w3.iter().collect()),
            ];
            for (id, runs) in named {
                for r in runs {
                    e.extend(r.errors.iter().map(|x| format!("{label} {id}: {x}")));
                }
            }
            for r in &set.m1 {
                e.extend(r.errors.iter().map(|x| format!("M1: {x}")));
            }
        }
        for r in &self.raw {
            e.extend(r.errors.iter().map(|x| format!("raw baseline: {x}")));
        }
        for r in self.w4_control.iter().chain(self.w4.iter()) {
            e.extend(r.errors.iter().map(|x| format!("RabbitMQ {x}")));
        }
        e
    }

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
            "W1b on RabbitMQ with `Client::start` + `Handle::result` (a result register per instance) ≥ 40% of raw hand-off steps/s",
            &self.amqp.as_ref().and_then(Self::w1b_median),
        ));
        let amqp_call = self.amqp.as_ref().and_then(Self::w1b_call_median);
        if amqp_call.is_some() {
            v.push(ratio_verdict(
                "W1b on RabbitMQ with `Client::call` ≥ 40% of raw hand-off steps/s",
                &amqp_call,
            ));
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
        v
    }

    /// The markdown document: the table, the verdicts, the evidence, the settings.
    pub(crate) fn render(&self) -> String {
        let mut o = String::new();
        let s = &self.settings;
        let z = &self.sizes;
        let mode = if self.quick { "quick" } else { "full" };
        let dirty = if self.dirty {
            " (with uncommitted changes)"
        } else {
            ""
        };
        let _ = writeln!(
            o,
            "# dtasks benchmark — {} {} UTC, commit `{}`{dirty}, {mode} run\n",
            self.date, self.time, self.commit
        );
        let _ = writeln!(
            o,
            "{} cores; RabbitMQ {}; {} workers × concurrency {}, prefetch {}, inline steps {}; payload {} B per step; chains of {} steps; W1b and raw repeated {}× (medians).\n",
            self.cores,
            self.broker.as_deref().unwrap_or("(not used)"),
            s.workers,
            s.concurrency,
            s.prefetch,
            s.inline_steps,
            s.payload,
            s.steps,
            z.reps
        );
        let raw = self.raw_median();
        let raw_sps = raw.as_ref().map_or(f64::NAN, RawRun::steps_per_s);
        let m = self.memory.as_ref();
        let a = self.amqp.as_ref();
        let mw1b = m.and_then(Self::w1b_median);
        let aw1b = a.and_then(Self::w1b_median);

        let _ = writeln!(o, "| id | figure | in-memory | RabbitMQ | RabbitMQ ÷ raw |");
        let _ = writeln!(o, "|---|---|---:|---:|---:|");
        let _ = writeln!(
            o,
            "| raw | hand-off steps/s ({} chains × {}, lapin alone) | — | {} | 1.00 |",
            z.raw_chains,
            s.steps,
            int(raw_sps)
        );
        // W1a
        let lat = |set: Option<&Set>| {
            set.and_then(|x| x.w1a.as_ref()).map_or("—".into(), |r| {
                format!(
                    "{} / {}",
                    f2(pct(&r.samples_ms, 0.5)),
                    f2(pct(&r.samples_ms, 0.99))
                )
            })
        };
        let _ = writeln!(
            o,
            "| W1a | p50 / p99 ms per instance ({} sequential) | {} | {} | |",
            z.w1a,
            lat(m),
            lat(a)
        );
        // W1b
        let ips = |r: &Option<Run>| r.as_ref().map_or(f64::NAN, Run::instances_per_s);
        let sps = |r: &Option<Run>| r.as_ref().map_or(f64::NAN, Run::steps_per_s);
        let _ = writeln!(
            o,
            "| W1b | instances/s ({} at once) | {} | {} | |",
            z.w1b,
            int(ips(&mw1b)),
            int(ips(&aw1b))
        );
        let _ = writeln!(
            o,
            "| W1b | steps/s | {} | {} | **{}** |",
            int(sps(&mw1b)),
            int(sps(&aw1b)),
            f2(sps(&aw1b) / raw_sps)
        );
        let mcall = m.and_then(Self::w1b_call_median);
        let acall = a.and_then(Self::w1b_call_median);
        if mcall.is_some() || acall.is_some() {
            let _ = writeln!(
                o,
                "| W1b (call) | instances/s ({} at once, `Client::call`: results on the client's reply queue, no register per instance) | {} | {} | |",
                z.w1b,
                int(ips(&mcall)),
                int(ips(&acall))
            );
            let _ = writeln!(
                o,
                "| W1b (call) | steps/s | {} | {} | **{}** |",
                int(sps(&mcall)),
                int(sps(&acall)),
                f2(sps(&acall) / raw_sps)
            );
        }
        // W2
        let w2 = |set: Option<&Set>| set.and_then(|x| x.w2.clone());
        let (mw2, aw2) = (w2(m), w2(a));
        let wall = |r: &Option<Run>| r.as_ref().map_or(f64::NAN, |r| r.cpu.wall);
        let _ = writeln!(
            o,
            "| W2 | wall s ({} × when_all of {}) | {} | {} | |",
            z.w2_parents,
            z.w2_width,
            f2(wall(&mw2)),
            f2(wall(&aw2))
        );
        let _ = writeln!(
            o,
            "| W2 | steps/s | {} | {} | {} |",
            int(sps(&mw2)),
            int(sps(&aw2)),
            f2(sps(&aw2) / raw_sps)
        );
        // W3
        let w3 = |set: Option<&Set>| set.and_then(|x| x.w3.clone());
        let (mw3, aw3) = (w3(m), w3(a));
        let _ = writeln!(
            o,
            "| W3 | wall s ({} timers of {} s at once) | {} | {} | |",
            z.w3,
            z.w3_delay_ms as f64 / 1000.0,
            f2(wall(&mw3)),
            f2(wall(&aw3))
        );
        let late = |r: &Option<Run>| {
            r.as_ref().map_or("—".into(), |r| {
                format!(
                    "{} / {} / {}",
                    f1(pct(&r.samples_ms, 0.5)),
                    f1(pct(&r.samples_ms, 0.99)),
                    f1(pct(&r.samples_ms, 1.0))
                )
            })
        };
        let _ = writeln!(
            o,
            "| W3 | lateness p50 / p99 / max ms | {} | {} | |",
            late(&mw3),
            late(&aw3)
        );
        let fired = |r: &Option<Run>| {
            r.as_ref().map_or("—".into(), |r| {
                let early = r.samples_ms.iter().filter(|x| **x < 0.0).count();
                format!("{} / {early}", r.done_at.len())
            })
        };
        let _ = writeln!(
            o,
            "| W3 | fired / early | {} | {} | |",
            fired(&mw3),
            fired(&aw3)
        );
        // W4
        match &self.w4 {
            Some(r) => {
                let _ = writeln!(
                    o,
                    "| W4 | completed once / lost / twice ({} at once, 2 worker processes, one SIGKILLed at {} s) | n/a | {} / {} / {} | |",
                    r.instances,
                    r.kill_at.map_or("—".into(), f2),
                    r.completed,
                    r.instances - r.completed.min(r.instances),
                    r.twice
                );
                let control = self.w4_control.as_ref();
                let _ = writeln!(
                    o,
                    "| W4 | stall after the kill, s (same gap in the run without a kill) | n/a | {} ({}) | |",
                    f2(r.stall.unwrap_or(f64::NAN)),
                    f2(control.and_then(|c| c.stall).unwrap_or(f64::NAN))
                );
                let _ = writeln!(
                    o,
                    "| W4 | wall s, with kill (without) | n/a | {} ({}) | |",
                    f2(r.cpu.wall),
                    f2(control.map_or(f64::NAN, |c| c.cpu.wall))
                );
            }
            None => {
                let _ = writeln!(o, "| W4 | recovery after SIGKILL | n/a | — | |");
            }
        }

        self.render_m1(&mut o);

        // Verdicts.
        let _ = writeln!(o, "\n## Targets\n");
        let _ = writeln!(o, "| target | measured | verdict |");
        let _ = writeln!(o, "|---|---|---|");
        let verdicts = self.verdicts();
        for v in &verdicts {
            let _ = writeln!(o, "| {} | {} | {} |", v.target, v.measured, v.cell());
        }

        // Per-step cost.
        let _ = writeln!(
            o,
            "\n## Cost per step (W1b median run; raw: its median run)\n"
        );
        let _ = writeln!(
            o,
            "A step is one child DTask (raw: one hand-off). Publishes are the messages the core hands to the transport (doorbells and timer hops inside the RabbitMQ transport not included); a confirm wait is one `publish` batch. CPU is user + system time of this process (workers, client, raw code) and of the broker (`beam.smp`), divided by steps.\n"
        );
        let _ = writeln!(
            o,
            "| | steps/s | publishes / step | confirm waits / step | deliveries / step | bytes published / step | bench CPU ms / step | broker CPU ms / step | cores busy (bench + broker) |"
        );
        let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        if let Some(r) = &raw {
            let st = r.steps as f64;
            let br = r.cpu.broker.map_or(f64::NAN, |b| b / st * 1e3);
            let _ = writeln!(
                o,
                "| raw | {} | 1.00 | 1.00 | {} | {} | {} | {} | {} |",
                int(r.steps_per_s()),
                f2((r.steps + r.chains as u64) as f64 / st),
                int(r.body_len as f64),
                f2(r.cpu.bench / st * 1e3),
                f2(br),
                f2((r.cpu.bench + r.cpu.broker.unwrap_or(0.0)) / r.cpu.wall)
            );
        }
        let acall = a.and_then(Self::w1b_call_median);
        let mcall = m.and_then(Self::w1b_call_median);
        for (label, r) in [
            ("RabbitMQ", &aw1b),
            ("RabbitMQ, call", &acall),
            ("in-memory", &mw1b),
            ("in-memory, call", &mcall),
        ] {
            if let Some(r) = r {
                let st = r.steps as f64;
                let br = r.cpu.broker.map_or(f64::NAN, |b| b / st * 1e3);
                let _ = writeln!(
                    o,
                    "| {label} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    int(r.steps_per_s()),
                    f2(r.counts.total_msgs() as f64 / st),
                    f2(r.counts.batches as f64 / st),
                    f2(r.deliveries as f64 / st),
                    int(r.counts.total_bytes() as f64 / st),
                    f2(r.cpu.bench / st * 1e3),
                    f2(br),
                    f2((r.cpu.bench + r.cpu.broker.unwrap_or(0.0)) / r.cpu.wall)
                );
            }
        }
        if let Some(r) = &aw1b {
            let _ = writeln!(
                o,
                "\nMessages the core published per W1b instance on RabbitMQ, by destination (average body bytes):\n"
            );
            let _ = writeln!(o, "{}", by_kind(&r.counts, r.instances as f64));
        }
        if let Some(r) = &acall {
            let _ = writeln!(o, "\nThe same for W1b with `Client::call`:\n");
            let _ = writeln!(o, "{}", by_kind(&r.counts, r.instances as f64));
        }

        // Evidence for missed targets.
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
                    // The call row is explained by the call run's own counters.
                    if v.target.contains("Client::call") {
                        let call = self.amqp.as_ref().and_then(Self::w1b_call_median);
                        self.limits(v, &raw, &call, &mw1b)
                    } else {
                        self.limits(v, &raw, &aw1b, &mw1b)
                    }
                );
            }
        }
        if !self.notes.is_empty() {
            let _ = writeln!(o, "\n## Notes\n");
            for n in &self.notes {
                let _ = writeln!(o, "- {n}");
            }
        }

        // Verification.
        let errors = self.errors();
        let _ = writeln!(o, "\n## Verification\n");
        if errors.is_empty() {
            let _ = writeln!(
                o,
                "Every workload checked its results and passed: each chain returned start + {}, each fan-in the exact sum, every timer fired and none early, no message was dead-lettered, every W4 instance returned once with the right value, and every raw chain finished exactly once with an intact payload.",
                s.steps
            );
            if self.m1_runs().next().is_some() {
                let _ = writeln!(
                    o,
                    "\nM1: every loop returned the exact value of its order-sensitive steps (a lost, repeated or reordered step changes it), and on the transports every step ran."
                );
            }
        } else {
            let _ = writeln!(o, "**FAILED** — these figures are not valid:\n");
            for e in &errors {
                let _ = writeln!(o, "- {e}");
            }
        }
        if let (Some(r), Some(c)) = (&self.w4, &self.w4_control) {
            let _ = writeln!(
                o,
                "\nW4: the surviving worker refused {} duplicate result writes (work redone after the kill; the first result stands); the run without a kill refused {}.",
                r.duplicate_results, c.duplicate_results
            );
        }

        // Settings.
        let _ = writeln!(o, "\n## Settings\n");
        let _ = writeln!(
            o,
            "- commit `{}`{dirty}; {} cores (`available_parallelism`)",
            self.commit, self.cores
        );
        let _ = writeln!(o, "- dtasks workers: {} (RabbitMQ: each on its own connections, in this process; W4: 2 worker processes), concurrency {} each, task-queue prefetch {}, up to {} steps run inline per delivery (`WorkerBuilder::inline_steps`; 0: every step is a delivery), transport defaults otherwise (16 doorbell shards, 16 publish channels)", s.workers, s.concurrency, s.prefetch, s.inline_steps);
        let _ = writeln!(o, "- payload: {} B of user data per step (a `serde_bytes` argument of each child); raw baseline bodies {} B (8 B header + payload), persistent, quorum queue, publisher confirms, mandatory, ack after confirm, one ack per message", s.payload, 8 + s.payload);
        let _ = writeln!(o, "- raw baseline: {} consumers (own connection each, prefetch {}, one confirm channel each, every delivery handled concurrently), {} chains × {} steps", s.workers, s.prefetch, z.raw_chains, s.steps);
        let _ = writeln!(o, "- W1a {} instances one at a time; W1b {} at once × {} reps; W2 {} parents × {} children; W3 {} timers of {} ms; W4 {} at once", z.w1a, z.w1b, z.reps, z.w2_parents, z.w2_width, z.w3, z.w3_delay_ms, z.w4);
        let _ = writeln!(o, "- M1: a loop of {} awaits on the engine alone and in memory, {} on RabbitMQ; one instance at a time, twice per model and place in the order replay, snapshot, snapshot, replay; no payload", z.m1, z.m1_amqp);
        let _ = writeln!(o, "- latency and lateness percentiles are nearest-rank; broker CPU read from `/proc/<beam.smp>/stat`{}", if self.broker_cpu { "" } else { " (not available in this run)" });
        o
    }

    fn m1_runs(&self) -> impl Iterator<Item = &M1Run> {
        self.memory
            .iter()
            .chain(self.amqp.iter())
            .flat_map(|set| set.m1.iter())
    }

    /// The M1 table: replay vs snapshot on a long-lived loop.
    fn render_m1(&self, o: &mut String) {
        let runs: Vec<&M1Run> = self.m1_runs().collect();
        if runs.is_empty() {
            return;
        }
        let _ = writeln!(o, "\n## M1: a long-lived task, replay vs snapshot\n");
        let _ = writeln!(
            o,
            "One instance awaits a loop of children in sequence (`v = step(v, i).await`). Resume: engine alone, the step itself (build or restore the body, drive it, encode the state; `dtasks::harness`); on a transport, from one child's run to the next one's (the child's result, the parent's resume, the next child's start; the workers run no step inline here, so every resume goes through the transport). Each model runs twice per place (replay, snapshot, snapshot, replay); medians over the first and the last W resumes of both runs, mean wall. Message: the one carrying the suspended parent's state, at the first and at the last await (on a transport, the child's start message).\n"
        );
        let _ = writeln!(
            o,
            "| where | model | awaits | wall ms | µs / resume, first W | µs / resume, last W | last ÷ first | message B, first → last |"
        );
        let _ = writeln!(o, "|---|---|---:|---:|---:|---:|---:|---:|");
        for r in &runs {
            let (early, late) = if r.window() > 0 {
                (r.early_ms(), r.late_ms())
            } else {
                (f64::NAN, f64::NAN)
            };
            let size = |x: Option<&usize>| x.map_or("—".into(), |b| int(*b as f64));
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} | {} → {} |",
                r.place,
                r.model.label(),
                int(f64::from(r.awaits)),
                int(r.wall * 1e3),
                f1(early * 1e3),
                f1(late * 1e3),
                f2(late / early),
                size(r.sizes.first()),
                size(r.sizes.last())
            );
        }
        // W per place, e.g. "100 (engine alone, in-memory), 99 (RabbitMQ)".
        let mut groups: Vec<(usize, Vec<&str>)> = Vec::new();
        for r in &runs {
            match groups.iter_mut().find(|(w, _)| *w == r.window()) {
                Some((_, places)) if places.contains(&r.place) => {}
                Some((_, places)) => places.push(r.place),
                None => groups.push((r.window(), vec![r.place])),
            }
        }
        let groups: Vec<String> = groups
            .iter()
            .map(|(w, places)| format!("{w} resumes of each run ({})", places.join(", ")))
            .collect();
        let _ = write!(o, "\nW = {}.", groups.join(", "));
        // Late resumes, replay ÷ snapshot, per place.
        let mut ratios = Vec::new();
        for r in runs.iter().filter(|r| r.model == Model::Replay) {
            let snap = runs
                .iter()
                .find(|s| s.model == Model::Snapshot && s.place == r.place);
            if let Some(snap) = snap.filter(|s| s.window() > 0 && r.window() > 0) {
                ratios.push(format!("{} {}×", r.place, f1(r.late_ms() / snap.late_ms())));
            }
        }
        if !ratios.is_empty() {
            let _ = write!(
                o,
                " A late resume, replay ÷ snapshot: {}.",
                ratios.join(", ")
            );
        }
        let _ = writeln!(o);
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
        if t.starts_with("W1b on RabbitMQ") {
            if let (Some(a), Some(r)) = (aw1b, raw) {
                let st = a.steps as f64;
                let rs = r.steps as f64;
                let bench = a.cpu.bench / st * 1e3;
                let rbench = r.cpu.bench / rs * 1e3;
                let broker = a.cpu.broker.map(|b| b / st * 1e3);
                let rbroker = r.cpu.broker.map(|b| b / rs * 1e3);
                return format!(
                    "Per child step dtasks published {} messages in {} confirm waits and handled {} deliveries, where the raw hand-off publishes 1 and handles {}; {} B published per step vs {} B. CPU per step: this process {} ms vs {} ms raw, broker {} ms vs {} ms raw; {} of {} cores were busy. Most of the broker's work per instance is fixed, not per step: above all the creation of the instance's result register, a classic queue, which costs the broker more CPU than a whole raw 10-step chain (`--probe`: 2.5–4 ms); the `call` row gets its results without one (bench/README.md).",
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

fn by_kind(c: &Counts, per: f64) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "| destination | messages / instance | avg bytes |");
    let _ = write!(o, "|---|---:|---:|");
    for (i, k) in KINDS.iter().enumerate() {
        if c.msgs[i] == 0 {
            continue;
        }
        let _ = write!(
            o,
            "\n| {k} | {} | {} |",
            f2(c.msgs[i] as f64 / per),
            int(c.bytes[i] as f64 / c.msgs[i] as f64)
        );
    }
    o
}

//! The report of a run: figures, ratios to the raw baseline, target verdicts, and the
//! evidence of what limits a missed target. This file holds what a run measured and the
//! order of the document; the tables and the verdicts are written by its submodules.

mod cancel;
mod numbers;
mod signal;
mod stores;
mod tables;
mod verdicts;

use std::fmt::Write as _;

use crate::cancel::E2Run;
use crate::env::Settings;
use crate::long::M1Run;
use crate::raw::RawRun;
use crate::recovery::Recovery;
use crate::signal::E1Run;
use crate::stats::median_by;
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
    /// E1: measured signal round trips on each transport.
    pub(crate) e1: usize,
    /// E2: measured cancellations of a fan-out on each transport, and its width.
    pub(crate) e2: usize,
    pub(crate) e2_width: u32,
    /// S2: finished instances whose status is read by id.
    pub(crate) s2: usize,
}

/// The runs of one transport.
#[derive(Debug, Default)]
pub(crate) struct Set {
    pub(crate) w1a: Option<Run>,
    pub(crate) w1b: Vec<Run>,
    /// W1b with `Client::call` (results on the client's reply queue).
    pub(crate) w1b_call: Vec<Run>,
    /// W1b with `Client::call` on workers that run no step inline: every step a delivery
    /// (RabbitMQ only).
    pub(crate) w1b_call0: Vec<Run>,
    pub(crate) w2: Option<Run>,
    /// Restate's W2, measured right after W2 (RabbitMQ only; `bench/restate`).
    pub(crate) restate_w2: Option<crate::restate::RestateW2>,
    pub(crate) w3: Option<Run>,
    /// M1, one run per model (the in-memory set also holds the engine-alone runs).
    pub(crate) m1: Vec<M1Run>,
    /// E1, the signal round trip (on RabbitMQ with the raw request-reply it is compared to).
    pub(crate) e1: Option<E1Run>,
    /// E2, the cancellation of a fan-out.
    pub(crate) e2: Option<E2Run>,
    /// S1–S4, the instance stores (RabbitMQ only).
    pub(crate) stores: crate::stores::StoreRuns,
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

    fn w1b_call0_median(set: &Set) -> Option<Run> {
        median_by(&set.w1b_call0, Run::steps_per_s)
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
                (
                    "W1b (call, every step a delivery)",
                    set.w1b_call0.iter().collect(),
                ),
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
            e.extend(set.stores.errors());
        }
        e.extend(self.e1_errors());
        e.extend(self.e2_errors());
        for r in &self.raw {
            e.extend(r.errors.iter().map(|x| format!("raw baseline: {x}")));
        }
        for r in self.w4_control.iter().chain(self.w4.iter()) {
            e.extend(r.errors.iter().map(|x| format!("RabbitMQ {x}")));
        }
        e
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
        let mw1b = self.memory.as_ref().and_then(Self::w1b_median);
        let aw1b = self.amqp.as_ref().and_then(Self::w1b_median);
        self.render_figures(&mut o, &raw, &mw1b, &aw1b);
        self.render_m1(&mut o);
        self.render_e1(&mut o);
        self.render_e2(&mut o);
        self.render_stores(&mut o, &raw);
        let verdicts = self.render_targets(&mut o);
        self.render_costs(&mut o, &raw, &mw1b, &aw1b);
        self.render_missed(&mut o, &verdicts, &raw, &mw1b, &aw1b);

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
            let e1 = |set: &Option<Set>| set.as_ref().is_some_and(|s| s.e1.is_some());
            if e1(&self.memory) || e1(&self.amqp) {
                let _ = writeln!(
                    o,
                    "\nE1: every instance returned the event sent to it (its own tag and value), and every raw reply was its round's request."
                );
            }
            let e2 = |set: &Option<Set>| set.as_ref().is_some_and(|s| s.e2.is_some());
            if e2(&self.memory) || e2(&self.amqp) {
                let _ = writeln!(
                    o,
                    "\nE2: in every round each of the {} children ran and waited in its mailbox before the cancel, none ended before it, every one ended after it (its tombstone confirmed), the root's result was the cancellation with the reason given and its status read `Cancelled`.",
                    z.e2_width
                );
            }
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
        let _ = writeln!(o, "- dtasks workers: {} (RabbitMQ: each on its own connections, in this process; W4: 2 worker processes), concurrency {} each, task-queue prefetch {}, up to {} steps run inline per delivery (`WorkerConfig::inline_steps`; 0: every step is a delivery), transport defaults otherwise (16 doorbell shards, 2 publish channels)", s.workers, s.concurrency, s.prefetch, s.inline_steps);
        let _ = writeln!(o, "- payload: {} B of user data per step (a `serde_bytes` argument of each child); raw baseline bodies {} B (8 B header + payload), persistent, quorum queue, publisher confirms, mandatory, ack after confirm, one ack per message", s.payload, 8 + s.payload);
        let _ = writeln!(o, "- raw baseline: {} consumers (own connection each, prefetch {}, one confirm channel each, every delivery handled concurrently), {} chains × {} steps", s.workers, s.prefetch, z.raw_chains, s.steps);
        let _ = writeln!(o, "- W1a {} instances one at a time; W1b {} at once × {} reps; W2 {} parents × {} children × {} reps (medians); W3 {} timers of {} ms; W4 {} at once", z.w1a, z.w1b, z.reps, z.w2_parents, z.w2_width, z.reps, z.w3, z.w3_delay_ms, z.w4);
        let _ = writeln!(o, "- E1: {} signal round trips one at a time on each transport, after {} warm-up rounds (on RabbitMQ alternated with as many raw request-replies)", z.e1, crate::signal::WARM_UP);
        let _ = writeln!(o, "- E2: {} cancellations of a fan-out of {} children, one at a time on each transport, after {} warm-up round", z.e2, z.e2_width, crate::cancel::WARM_UP);
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
}

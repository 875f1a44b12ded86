//! The tables of the report: each workload's figures with the ratios to the raw
//! baseline, the M1 table, and the cost per step.

use std::fmt::Write as _;

use super::numbers::{f1, f2, int};
use super::{Report, Set};
use crate::counting::{Counts, KINDS};
use crate::long::{M1Run, Model};
use crate::raw::RawRun;
use crate::stats::pct;
use crate::workloads::Run;

impl Report {
    /// The table of every workload's figures.
    pub(super) fn render_figures(
        &self,
        o: &mut String,
        raw: &Option<RawRun>,
        mw1b: &Option<Run>,
        aw1b: &Option<Run>,
    ) {
        let s = &self.settings;
        let z = &self.sizes;
        let raw_sps = raw.as_ref().map_or(f64::NAN, RawRun::steps_per_s);
        let m = self.memory.as_ref();
        let a = self.amqp.as_ref();
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
            int(ips(mw1b)),
            int(ips(aw1b))
        );
        let _ = writeln!(
            o,
            "| W1b | steps/s | {} | {} | **{}** |",
            int(sps(mw1b)),
            int(sps(aw1b)),
            f2(sps(aw1b) / raw_sps)
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
        let acall0 = a.and_then(Self::w1b_call0_median);
        if acall0.is_some() {
            let _ = writeln!(
                o,
                "| W1b (call, every step a delivery) | steps/s (`--inline 0`: each child's start and its result a hand-off through the broker, durable and confirmed; 0.5 of raw with one AMQP message per hand-off, as raw publishes, where hand-offs to one DTask at about the same time share task packs) | — | {} | **{}** |",
                int(sps(&acall0)),
                f2(sps(&acall0) / raw_sps)
            );
        }
        // W2
        let w2 = |set: Option<&Set>| set.and_then(|x| x.w2.clone());
        let (mw2, aw2) = (w2(m), w2(a));
        let wall = |r: &Option<Run>| r.as_ref().map_or(f64::NAN, |r| r.cpu.wall);
        let _ = writeln!(
            o,
            "| W2 | wall s ({} × when_all of {}; the median of {} runs) | {} | {} | |",
            z.w2_parents,
            z.w2_width,
            z.reps,
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
        if let Some(r) = a.and_then(|x| x.restate_w2.as_ref()) {
            let reps: Vec<String> = r.reps.iter().map(|&x| int(x)).collect();
            let _ = writeln!(
                o,
                "| W2 on Restate | steps/s ({}, one node, the Restate Rust SDK: the same fan-out, measured right after; the median of {}: {}) | — | {} | {} |",
                r.server,
                r.reps.len(),
                reps.join(", "),
                int(r.median_steps_per_s),
                f2(r.median_steps_per_s / raw_sps)
            );
            let _ = writeln!(
                o,
                "| W2 | RabbitMQ ÷ Restate | | **{}×** | |",
                f2(sps(&aw2) / r.median_steps_per_s)
            );
        }
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
    }

    /// The cost per step of the median W1b runs and of the raw baseline, and the messages
    /// of a W1b instance by destination.
    pub(super) fn render_costs(
        &self,
        o: &mut String,
        raw: &Option<RawRun>,
        mw1b: &Option<Run>,
        aw1b: &Option<Run>,
    ) {
        let m = self.memory.as_ref();
        let a = self.amqp.as_ref();
        let _ = writeln!(
            o,
            "\n## Cost per step (W1b median run; W2; raw: its median run)\n"
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
        if let Some(r) = raw {
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
        let aw2 = a.and_then(|x| x.w2.clone());
        let mw2 = m.and_then(|x| x.w2.clone());
        let acall0 = a.and_then(Self::w1b_call0_median);
        for (label, r) in [
            ("RabbitMQ", aw1b),
            ("RabbitMQ, call", &acall),
            ("RabbitMQ, call, every step a delivery", &acall0),
            ("RabbitMQ, W2 (a step: one child of a fan-in)", &aw2),
            ("in-memory", mw1b),
            ("in-memory, call", &mcall),
            ("in-memory, W2", &mw2),
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
        if let Some(r) = &aw2 {
            let m = r.mailboxes;
            let _ = writeln!(
                o,
                "\nW2 on RabbitMQ, its parents' mailboxes (the median run; counted by the transports): {} task messages written in task packs (the children's starts and the roots'; {} children in all), {} mailbox messages written in packs (child results and parents' states; {} child results in all), {} doorbells handed to a worker (a drain and a merge each), {} acked without a drain (their messages already merged).",
                int(m.task_packed as f64),
                int(r.steps as f64),
                int(m.packed as f64),
                int(r.steps as f64),
                int(m.merges as f64),
                int(m.spent_doorbells as f64)
            );
        }
        if let Some(r) = aw1b {
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
    }

    /// The M1 table: replay vs snapshot on a long-lived loop.
    pub(super) fn render_m1(&self, o: &mut String) {
        let runs: Vec<&M1Run> = self.m1_runs().collect();
        if runs.is_empty() {
            return;
        }
        let _ = writeln!(o, "\n## M1: a long-lived task, replay vs snapshot\n");
        let _ = writeln!(
            o,
            "One instance awaits a loop of children in sequence (`v = step(v, i).await`). Resume: engine alone, the step itself (build or restore the body, drive it, encode the state; `dtasks::test_util`); on a transport, from one child's run to the next one's (the child's result, the parent's resume, the next child's start; the workers run no step inline here, so every resume goes through the transport). Each model runs twice per place (replay, snapshot, snapshot, replay); medians over the first and the last W resumes of both runs, mean wall. Message: the one carrying the suspended parent's state, at the first and at the last await (on a transport, the child's start message).\n"
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

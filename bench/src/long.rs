//! M1: a long-lived task — one instance awaiting a loop of children in sequence — in the
//! replay and in the snapshot model: what a resume costs early and late in its history,
//! and how big the message carrying its state gets. Each run checks the loop's final value.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use dtasks::test_util::{run_replay, run_snapshot, Op, World};
use dtasks::Failure;

use crate::env::Env;
use crate::stats::pct;
use crate::tasks::{
    m1_expected, m1_mix, m1_replay, m1_snapshot, M1_RAN, M1_REPLAY, M1_SNAPSHOT, M1_STEP,
};

/// How long one M1 loop may take before it counts as lost.
const LIMIT: Duration = Duration::from_secs(300);

/// The most resumes each of the early and late medians covers, per run.
pub(crate) const WINDOW: usize = 100;

/// The order of the runs at each place: replay, snapshot, snapshot, replay, so that a
/// drift of the machine's load over the runs weighs on both models alike.
pub(crate) const ORDER: [Model; 4] = [
    Model::Replay,
    Model::Snapshot,
    Model::Snapshot,
    Model::Replay,
];

/// The execution model of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Model {
    Replay,
    Snapshot,
}

impl Model {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Model::Replay => "replay",
            Model::Snapshot => "snapshot",
        }
    }
}

/// The measurements and checks of M1 loops of one model at one place (one run, or the
/// runs merged by [`merge`]).
#[derive(Clone, Debug)]
pub(crate) struct M1Run {
    /// Where it ran: the engine alone, or a transport.
    pub(crate) place: &'static str,
    pub(crate) model: Model,
    /// Child awaits in the loop.
    pub(crate) awaits: u32,
    /// How many loops this covers.
    pub(crate) runs: usize,
    /// From the start to the result, s (the mean over the runs).
    pub(crate) wall: f64,
    /// The time of each resume in order (ms). Engine alone: the resumed step itself. On
    /// a transport: from one child's run to the next child's run.
    pub(crate) resume_ms: Vec<f64>,
    /// The size of the message carrying the suspended state, at each suspension in
    /// order. Engine alone: the step message; on a transport: the child's start message
    /// (the parent's state rides along in it).
    pub(crate) sizes: Vec<usize>,
    /// The first and the last [`WINDOW`] resumes of each run (ms).
    pub(crate) early: Vec<f64>,
    pub(crate) late: Vec<f64>,
    /// Verification failures.
    pub(crate) errors: Vec<String>,
}

impl M1Run {
    fn new(place: &'static str, model: Model, awaits: u32) -> Self {
        Self {
            place,
            model,
            awaits,
            runs: 1,
            wall: f64::NAN,
            resume_ms: Vec::new(),
            sizes: Vec::new(),
            early: Vec::new(),
            late: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// Fills `early` and `late` from `resume_ms` (windows that never overlap).
    fn windows(mut self) -> Self {
        let w = (self.resume_ms.len() / 2).min(WINDOW);
        self.early = self.resume_ms[..w].to_vec();
        self.late = self.resume_ms[self.resume_ms.len() - w..].to_vec();
        self
    }

    /// How many resumes of each run the early and the late medians each cover.
    pub(crate) fn window(&self) -> usize {
        self.early.len() / self.runs.max(1)
    }

    /// The median time of the early resumes (ms).
    pub(crate) fn early_ms(&self) -> f64 {
        pct(&self.early, 0.5)
    }

    /// The median time of the late resumes (ms).
    pub(crate) fn late_ms(&self) -> f64 {
        pct(&self.late, 0.5)
    }

    /// One line for the progress log.
    pub(crate) fn summary(&self) -> String {
        format!(
            "wall {:.0} ms, resume early {:.1} µs, late {:.1} µs{}",
            self.wall * 1e3,
            self.early_ms() * 1e3,
            self.late_ms() * 1e3,
            if self.errors.is_empty() {
                ""
            } else {
                " (FAILED)"
            }
        )
    }

    fn check(&mut self, got: u64, seed: u64) {
        let want = m1_expected(seed, self.awaits);
        if got != want {
            self.errors.push(format!(
                "{} {} loop of {} returned {got}, expected {want}",
                self.place,
                self.model.label(),
                self.awaits
            ));
        }
    }
}

/// The seed of the loop tagged `tag` (distinct per run).
fn seed(tag: u64) -> u64 {
    0x5EED_0000_0000_0000 ^ tag.wrapping_mul(0x0100_0000_01B3)
}

/// Resolves each child call as the step would, in issue order.
struct Steps;

impl World for Steps {
    fn resolve(&mut self, op: &Op) -> Result<Vec<u8>, Failure> {
        // Anything but an M1 step gets an empty (undecodable) result, which fails the
        // loop and so its check.
        if op.name.as_deref() != Some(M1_STEP) {
            return Ok(Vec::new());
        }
        let Ok((_tag, i, v)) = rmp_serde::from_slice::<(u64, u32, u64)>(&op.input) else {
            return Ok(Vec::new());
        };
        Ok(rmp_serde::to_vec(&m1_mix(v, i)).unwrap_or_default())
    }

    fn pick(&mut self, _: &[u32]) -> usize {
        0
    }
}

/// The loop on the engine alone (`dtasks::test_util`): every step builds (replay) or
/// restores (snapshot) the body, drives it, and encodes and decodes the state as a task
/// message; no transport.
pub(crate) async fn engine(model: Model, awaits: u32, tag: u64) -> M1Run {
    let mut run = M1Run::new("engine alone", model, awaits);
    let seed = seed(tag);
    let input = match rmp_serde::to_vec(&(tag, awaits, seed)) {
        Ok(b) => b,
        Err(e) => {
            run.errors.push(format!("encoding the input: {e}"));
            return run;
        }
    };
    let t0 = Instant::now();
    let trace = match model {
        Model::Replay => run_replay(M1_REPLAY, input, &mut Steps).await,
        Model::Snapshot => run_snapshot(M1_SNAPSHOT, input, &mut Steps).await,
    };
    run.wall = t0.elapsed().as_secs_f64();
    match trace.result {
        Ok(bytes) => match rmp_serde::from_slice::<u64>(&bytes) {
            Ok(v) => run.check(v, seed),
            Err(e) => run.errors.push(format!("the result does not decode: {e}")),
        },
        Err(f) => run.errors.push(format!("the loop failed: {f}")),
    }
    // One suspension per await; the first step is the start, the others are resumes.
    if trace.step_times.len() != awaits as usize {
        run.errors.push(format!(
            "{} suspensions for {awaits} awaits",
            trace.step_times.len()
        ));
    }
    run.resume_ms = trace
        .step_times
        .iter()
        .skip(1)
        .map(|d| d.as_secs_f64() * 1e3)
        .collect();
    run.sizes = trace.message_sizes;
    run.windows()
}

/// The loop as one instance on `env`'s workers, started by its client.
pub(crate) async fn transport(
    env: &Env,
    place: &'static str,
    model: Model,
    awaits: u32,
    tag: u64,
) -> anyhow::Result<M1Run> {
    let mut run = M1Run::new(place, model, awaits);
    let seed = seed(tag);
    env.counters.take_m1_starts();
    let t0 = Instant::now();
    let result = tokio::time::timeout(LIMIT, async {
        let h = match model {
            Model::Replay => env.client.start(m1_replay(tag, awaits, seed)).await?,
            Model::Snapshot => env.client.start(m1_snapshot(tag, awaits, seed)).await?,
        };
        h.result().await
    })
    .await;
    run.wall = t0.elapsed().as_secs_f64();
    run.sizes = env.counters.take_m1_starts();
    match result {
        Ok(Ok(v)) => run.check(v, seed),
        Ok(Err(e)) => run.errors.push(format!("the loop failed: {e}")),
        Err(_) => run.errors.push(format!("no result within {LIMIT:?}")),
    }
    // When each step first ran (a redelivered step may run again).
    let mut first: HashMap<u32, Instant> = HashMap::new();
    {
        let mut ran = M1_RAN.lock().unwrap_or_else(|p| p.into_inner());
        for (_, i, at) in ran.iter().filter(|(t, _, _)| *t == tag) {
            first
                .entry(*i)
                .and_modify(|x| *x = (*x).min(*at))
                .or_insert(*at);
        }
        ran.retain(|(t, _, _)| *t != tag);
    }
    let mut times = Vec::with_capacity(awaits as usize);
    for i in 0..awaits {
        match first.get(&i) {
            Some(at) => times.push(*at),
            None => {
                run.errors
                    .push(format!("step {i} of the {} loop never ran", model.label()));
                break;
            }
        }
    }
    run.resume_ms = times
        .windows(2)
        .map(|w| w[1].saturating_duration_since(w[0]).as_secs_f64() * 1e3)
        .collect();
    if run.sizes.len() < awaits as usize {
        run.errors.push(format!(
            "{} child starts published for {awaits} awaits",
            run.sizes.len()
        ));
    }
    Ok(run.windows())
}

/// Merges the runs of each model at one place, in the order models first appear: pooled
/// early and late resumes, mean wall, the message sizes of the first run, every error.
pub(crate) fn merge(runs: Vec<M1Run>) -> Vec<M1Run> {
    let mut out: Vec<M1Run> = Vec::new();
    for r in runs {
        match out
            .iter_mut()
            .find(|m| m.model == r.model && m.place == r.place)
        {
            Some(m) => {
                m.wall = (m.wall * m.runs as f64 + r.wall) / (m.runs + 1) as f64;
                m.runs += 1;
                m.early.extend(r.early);
                m.late.extend(r.late);
                m.errors.extend(r.errors);
            }
            None => out.push(r),
        }
    }
    out
}

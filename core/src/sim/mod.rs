//! A deterministic simulator (feature `sim`): your DTasks on several simulated worker
//! processes and a client, on a simulated RabbitMQ, in one thread on virtual time, with
//! faults drawn from a seed — and a seed replays its run exactly.
//!
//! The simulated broker has the semantics dtasks relies on: at-least-once delivery,
//! unacked messages returned when their consumer dies, publish confirms that travel and
//! may be lost with the connection, FIFO queues, timers on the virtual clock (each passes
//! a worker at least once a virtual second, which brings it before its time when a cancel
//! record may stop its instance, as RabbitMQ's timer hops do), mailboxes
//! whose doorbells a single active consumer takes one at a time (handed over when it
//! dies). The workers are the real [`Worker`](crate::Worker)s. The seed picks the faults
//! ([`Faults`]): a worker crashes before or after any broker operation (publish, ack,
//! drain, store write…) and is replaced, messages are stored twice, confirms are lost,
//! connections drop, the broker restarts, publishes and timers arrive late, workers'
//! clocks are skewed.
//!
//! After each run the simulator checks that every root finished once the faults stopped,
//! that its result was recorded exactly once, and that it equals the result of the same
//! DTask's body run as plain async code (the reference model) or the one the plan
//! expects; that no timer checked with [`check_timer`] fired early; that no side effect
//! counted with [`effect`] ran more than the at-least-once bound (once, plus once per
//! extra delivery of the run); and every [`check`] the bodies made. A root that ended
//! dead-lettered passes too when faults alone returned one of its messages more often
//! than [`WorkerConfig::max_redeliveries`](crate::WorkerConfig::max_redeliveries) allows
//! (the budget at work, counted in [`Report::spent_by_faults`]).
//!
//! ```
//! use std::time::Duration;
//! use dtasks::sim::{Faults, Sim};
//! use dtasks::{dtask, DTask, WorkerConfig};
//!
//! #[dtask]
//! async fn charge(cents: u64) -> u64 {
//!     DTask::run(move || async move {
//!         dtasks::sim::effect(format!("charge {cents}")); // counted: at least once
//!         cents
//!     })
//!     .await
//! }
//!
//! #[dtask]
//! async fn order(items: Vec<u64>) -> u64 {
//!     let charged = DTask::when_all(items.into_iter().map(charge)).await;
//!     DTask::delay(Duration::from_secs(60)).await;
//!     charged.iter().sum()
//! }
//!
//! let sim = Sim::new(WorkerConfig::new().register(charge).register(order))
//!     .faults(Faults::default());
//! // Each seed: three workers, crashes and duplicates; the result must be the reference's.
//! let report = sim.run(0..20, |plan| {
//!     plan.start(order(vec![100, 250]));
//! });
//! assert!(report.is_ok(), "{}", report.unwrap_err());
//! ```
//!
//! A failing seed comes back as a [`SimError`] that names the seed, what was violated,
//! the run's last events, and a one-line command that runs that seed alone
//! (`DTASKS_SIM_SEED=<seed> cargo test …`), which prints the whole trace.

mod broker;
mod conn;
mod faults;
mod plan;
mod reference;
mod rng;
mod run;
mod show;
mod world;

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::time::Duration;

pub use broker::DeadLetter;
pub use faults::Faults;
pub use plan::{Plan, Root};
pub use world::{now, SimWorkers, World};

use crate::protocol::hooks::Mutation;
use crate::protocol::state::Outcome;
use crate::runtime::WorkerConfig;
use run::{Expected, Observed, Setup, OBSERVED};

/// The environment variable that makes [`Sim::run`] run one seed and print its trace.
pub const SEED_VAR: &str = "DTASKS_SIM_SEED";

/// How many of a failing run's last events a [`SimError`] shows.
const TRACE_TAIL: usize = 60;

/// A simulation: the workers' configuration, how many worker processes, which faults.
#[derive(Debug, Clone)]
pub struct Sim {
    config: WorkerConfig,
    workers: usize,
    faults: Faults,
    time_limit: Duration,
    mutations: Vec<Mutation>,
}

/// A guard the simulator's own tests break on purpose, to show that its checks find the
/// bug. Not for users.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Broken {
    /// The instance store records a second result over the first.
    DuplicateResults,
    /// A mailbox drain keeps the last state it took, whatever its version.
    MailboxVersion,
    /// Two mailbox states of one version are not ordered (the first drained wins).
    EqualVersions,
}

impl Sim {
    /// A simulation of workers configured by `config` (three processes, the default
    /// [`Faults`]).
    pub fn new(config: WorkerConfig) -> Self {
        Self {
            config,
            workers: 3,
            faults: Faults::default(),
            time_limit: Duration::from_secs(3600),
            mutations: Vec::new(),
        }
    }

    /// How many worker processes run at once (a crashed one is replaced).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n.max(1);
        self
    }

    /// The faults to inject.
    pub fn faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }

    /// How long (virtual time) after the faults stop every root has to finish (default
    /// an hour; virtual time costs nothing while nothing happens).
    pub fn time_limit(mut self, limit: Duration) -> Self {
        self.time_limit = limit;
        self
    }

    /// Breaks a guard of dtasks for this simulation (the simulator's own tests).
    #[doc(hidden)]
    pub fn break_guard(mut self, broken: Broken) -> Self {
        self.mutations.push(match broken {
            Broken::DuplicateResults => Mutation::DuplicateResults,
            Broken::MailboxVersion => Mutation::MailboxVersion,
            Broken::EqualVersions => Mutation::EqualVersions,
        });
        self
    }

    /// Runs the plan that `plan` builds for each seed of `seeds`, one after the other, and
    /// stops at the first seed that violates a check. With the environment variable
    /// [`SEED_VAR`] set, runs that seed only and prints its whole trace.
    pub fn run(&self, seeds: Range<u64>, plan: impl Fn(&mut Plan)) -> Result<Report, SimError> {
        let only = std::env::var(SEED_VAR)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        let seeds: Vec<u64> = match only {
            Some(seed) => vec![seed],
            None => seeds.collect(),
        };
        self.run_seeds(seeds, plan, only.is_some())
            .map(|(report, _)| report)
    }

    /// Runs `seed` alone and returns its trace: every event of the run, in order, with its
    /// virtual time. The same seed and plan give the same trace, event for event.
    pub fn trace(&self, seed: u64, plan: impl Fn(&mut Plan)) -> Result<Vec<String>, SimError> {
        self.run_seeds(vec![seed], plan, false)
            .map(|(_, trace)| trace)
    }

    fn run_seeds(
        &self,
        seeds: Vec<u64>,
        plan: impl Fn(&mut Plan),
        print: bool,
    ) -> Result<(Report, Vec<String>), SimError> {
        self.config.validate().map_err(|e| SimError::setup(&e))?;
        let mut last = Vec::new();
        let mut references: BTreeMap<(String, Vec<u8>), Outcome> = BTreeMap::new();
        let mut report = Report::default();
        let setup = Setup {
            config: &self.config,
            workers: self.workers,
            faults: self.faults,
            time_limit: self.time_limit,
            mutations: &self.mutations,
        };
        for seed in seeds {
            let mut p = Plan::new(seed);
            plan(&mut p);
            if let Some(problem) = p.problems.first() {
                return Err(SimError::setup(problem));
            }
            let expected: Vec<Expected> = p
                .roots
                .iter()
                .map(|r| {
                    Expected::of(&r.expect, || {
                        references
                            .entry((r.name.clone(), r.input.clone()))
                            .or_insert_with(|| {
                                reference::reference(&self.config.registry, &r.name, &r.input)
                            })
                            .clone()
                    })
                })
                .collect();
            let out = run::run(&setup, seed, &p, &expected);
            report.seeds += 1;
            report.crashes += out.crashes as u64;
            report.extra_deliveries += out.extra_deliveries;
            report.spent_by_faults += out.spent_by_faults;
            if print {
                eprintln!("dtasks sim: the trace of seed {seed}:");
                for line in &out.trace {
                    eprintln!("{line}");
                }
            }
            if !out.violations.is_empty() {
                return Err(SimError {
                    seed,
                    violations: out.violations,
                    trace: out.trace,
                    replay: replay_command(seed),
                });
            }
            last = out.trace;
        }
        Ok((report, last))
    }
}

/// What [`Sim::run`] did over its seeds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Report {
    /// Seeds run.
    pub seeds: u64,
    /// Worker crashes injected, over every seed.
    pub crashes: u64,
    /// Deliveries beyond the first of a message (redeliveries and duplicates), over every
    /// seed.
    pub extra_deliveries: u64,
    /// Roots accepted as dead-lettered, over every seed: faults alone returned one of
    /// their messages more often than the redelivery budget
    /// ([`WorkerConfig::max_redeliveries`](crate::WorkerConfig::max_redeliveries))
    /// allows, which at-least-once delivery with that budget allows.
    pub spent_by_faults: u64,
}

/// A seed whose run violated a check: which seed, what, the run's trace, and the
/// command that replays it. Its `Debug` is its `Display`, so that `unwrap()` prints it.
pub struct SimError {
    seed: u64,
    violations: Vec<String>,
    trace: Vec<String>,
    replay: String,
}

impl SimError {
    fn setup(problem: &dyn fmt::Display) -> Self {
        Self {
            seed: 0,
            violations: vec![format!("the simulation cannot run: {problem}")],
            trace: Vec::new(),
            replay: String::new(),
        }
    }

    /// The seed that failed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// What the run violated, one line each.
    pub fn violations(&self) -> &[String] {
        &self.violations
    }

    /// Every event of the run, in order, with its virtual time.
    pub fn trace(&self) -> &[String] {
        &self.trace
    }

    /// The command that runs the failing seed alone and prints its whole trace.
    pub fn replay_command(&self) -> &str {
        &self.replay
    }
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "dtasks sim: seed {} failed:", self.seed)?;
        for v in &self.violations {
            writeln!(f, "  - {v}")?;
        }
        if !self.replay.is_empty() {
            writeln!(f, "replay: {}", self.replay)?;
        }
        let skip = self.trace.len().saturating_sub(TRACE_TAIL);
        if !self.trace.is_empty() {
            writeln!(
                f,
                "the last {} of {} events:",
                self.trace.len() - skip,
                self.trace.len()
            )?;
        }
        for line in &self.trace[skip..] {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for SimError {}

/// The command that runs `seed` alone in the test that runs now.
fn replay_command(seed: u64) -> String {
    let package = std::env::var("CARGO_PKG_NAME").unwrap_or_else(|_| "<package>".into());
    let target = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .map(|stem| match stem.rsplit_once('-') {
            Some((name, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => name.to_string(),
            _ => stem,
        })
        .unwrap_or_else(|| "<test target>".into());
    let target = if target.replace('-', "_") == package.replace('-', "_") {
        "--lib".to_string()
    } else {
        format!("--test {target}")
    };
    let test = std::thread::current()
        .name()
        .filter(|n| *n != "main")
        .map(|n| format!(" -- --exact {n} --nocapture"))
        .unwrap_or_else(|| " -- --nocapture".into());
    format!("{SEED_VAR}={seed} cargo test -p {package} {target}{test}")
}

fn with_observed<R>(f: impl FnOnce(&mut Observed) -> R) -> Option<R> {
    OBSERVED.with(|o| o.borrow_mut().as_mut().map(f))
}

/// Virtual time since the simulated run began (zero outside a run, e.g. in the reference
/// model). Read it inside [`DTask::run`](crate::DTask::run) so that replays see the
/// recorded value.
pub fn elapsed() -> Duration {
    with_observed(|o| o.start.map(|s| tokio::time::Instant::now() - s))
        .flatten()
        .unwrap_or_default()
}

/// Records a violation when `ok` is false (nothing outside a simulated run).
pub fn check(ok: bool, what: &str) {
    if !ok {
        with_observed(|o| o.violations.push(format!("check failed: {what}")));
    }
}

/// Counts one run of the side effect `key`; the run's check fails when a side effect
/// ran more often than the at-least-once bound allows (once, plus once per extra
/// delivery in the run). Call it inside [`DTask::run`](crate::DTask::run).
pub fn effect(key: impl Into<String>) {
    with_observed(|o| *o.effects.entry(key.into()).or_default() += 1);
}

/// Checks, after the run, that a timer of `delay` that began at `started` did not let
/// the instance resume before `started + delay` (both read with [`elapsed`] inside
/// [`DTask::run`](crate::DTask::run)), allowing for the skew between the workers'
/// clocks.
pub fn check_timer(started: Duration, resumed: Duration, delay: Duration, what: &str) {
    if started.is_zero() && resumed.is_zero() {
        // Outside a run (the reference model reads no time).
        return;
    }
    with_observed(|o| o.timers.push((started, resumed, delay, what.to_string())));
}

//! The simulator as an [`Env`]: the simulated RabbitMQ of `dtasks::sim` ([`World`]), its
//! worker processes crashed and replaced by faults drawn from a seed, on tokio's paused
//! clock (virtual time that moves whenever every process waits).

use std::time::{Duration, SystemTime};

use dtasks::sim::{Faults, World};
use dtasks::{Client, InstanceId, WorkerConfig};

use super::{Clock, DeadLetter, Env, Outcome, Registers};
use crate::Workers;

/// The scenarios that run without faults: each checks an exact count that faults change
/// by design (at-least-once delivery runs code again).
///
/// - `run_executes_once_and_replays_the_recorded_result` and
///   `a_chosen_id_starts_once_and_later_starts_are_refused` count the runs of a
///   `DTask::run` side effect: a worker that crashes after running it and before its
///   state is confirmed runs it again (once, plus once per extra delivery, is the bound
///   the simulator's own runs check). The second also counts the duplicate starts the
///   workers dropped, which a duplicated message raises.
/// - `when_any_returns_the_first_and_leaves_the_rest_running` counts the runs of a step's
///   body code outside `DTask::run`, which a redelivered step runs again.
/// - `a_nondeterministic_dtask_is_detected` and the two retry scenarios count, in a
///   process-wide register, the times a body ran or an attempt was made: a redelivered
///   step runs its body again, and an attempt cut by a crash is made again.
pub const FAULT_FREE: &[&str] = &[
    "run_executes_once_and_replays_the_recorded_result",
    "a_chosen_id_starts_once_and_later_starts_are_refused",
    "when_any_returns_the_first_and_leaves_the_rest_running",
    "retries_wait_between_attempts_and_count_them",
    "exhausted_retries_report_the_attempts",
    "cancel_stops_a_tree_and_race_losers",
];

/// How many of a failed scenario's last events are printed.
const TRACE_TAIL: usize = 80;

/// One scenario's simulated broker.
#[derive(Debug)]
pub struct SimEnv {
    world: World,
    scenario: String,
    faulty: bool,
    cleaned: bool,
}

impl SimEnv {
    /// The simulated broker for `scenario`: with faults unless the scenario is one of
    /// [`FAULT_FREE`], drawn from the seed in `DTASKS_SIM_SEED` when set, else from one
    /// derived from the scenario's name (so that a run is the same every time). Call it on
    /// a current-thread runtime whose clock is paused.
    pub fn for_scenario(scenario: &str) -> Self {
        let seed = std::env::var(dtasks::sim::SEED_VAR)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| name_seed(scenario));
        Self::new(scenario, seed, !FAULT_FREE.contains(&scenario))
    }

    /// The simulated broker for `scenario` under `seed`, with faults or without.
    ///
    /// The faults are the simulator's defaults (crashes and their replacements, dropped
    /// connections, duplicated messages, lost confirms, a broker restart, publishes and
    /// timers that travel), for the first 3 s of virtual time, with the workers' clocks
    /// unskewed: the scenarios compare the time a body reads with a deadline the client
    /// set, which a worker whose clock runs ahead legitimately misses by its skew (the
    /// simulator's own runs check timers with that allowance).
    pub fn new(scenario: &str, seed: u64, faulty: bool) -> Self {
        crate::init_tracing();
        let faults = if faulty {
            Faults::default()
                .crashes(0.1, 3)
                .duplicates(0.1)
                .lost_confirms(0.05)
                .connection_drops(0.03, 1)
                .clock_skew(0)
        } else {
            Faults::none()
        };
        Self {
            world: World::new(seed, faults),
            scenario: scenario.to_string(),
            faulty,
            cleaned: false,
        }
    }

    /// The simulated broker, for checks beyond the suite.
    pub fn world(&self) -> &World {
        &self.world
    }
}

/// A seed from a scenario's name (FNV-1a).
fn name_seed(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Drop for SimEnv {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        // The scenario failed (it returned early or panicked): what the simulator saw.
        let trace = self.world.trace();
        let skip = trace.len().saturating_sub(TRACE_TAIL);
        eprintln!(
            "conformance on the simulator: `{}` failed with seed {} ({}; {} crashes, {} \
             extra deliveries)\nreplay: {}={} cargo test -p dtasks-integration-tests --test \
             conformance_sim -- --exact {}\nthe last {} of {} events:",
            self.scenario,
            self.world.seed(),
            if self.faulty { "faults" } else { "no faults" },
            self.world.crashes(),
            self.world.extra_deliveries(),
            dtasks::sim::SEED_VAR,
            self.world.seed(),
            self.scenario,
            trace.len() - skip,
            trace.len(),
        );
        for line in &trace[skip..] {
            eprintln!("  {line}");
        }
    }
}

impl Env for SimEnv {
    fn clock(&self) -> Clock {
        // Virtual, but moving by itself whenever every process waits; and a timer (or a
        // publish) may arrive late, so nothing happens at exactly its instant.
        Clock::Real
    }

    fn now(&self) -> SystemTime {
        self.world.now()
    }

    fn shares_deliveries(&self) -> bool {
        // Each message goes to a consumer the seed picks, not to each in turn.
        false
    }

    async fn workers(&self, n: usize, config: WorkerConfig) -> anyhow::Result<Workers> {
        Ok(Workers::simulated(self.world.workers(n, config)?))
    }

    async fn client(&self) -> anyhow::Result<Client> {
        Ok(self.world.client())
    }

    async fn advance(&self, by: Duration) {
        tokio::time::sleep(by).await;
    }

    async fn wait_idle(&self) -> bool {
        self.world.wait_idle().await;
        true
    }

    async fn inject_raw(&self, name: &str, body: Vec<u8>) -> anyhow::Result<()> {
        self.world.inject_raw(name, body);
        Ok(())
    }

    async fn dead_letters(&self) -> anyhow::Result<Vec<DeadLetter>> {
        Ok(self
            .world
            .dead_letters()
            .into_iter()
            .map(|d| DeadLetter {
                body: d.body,
                reason: d.reason,
                queue: Some(d.queue),
            })
            .collect())
    }

    fn task_queue(&self, name: &str) -> Option<String> {
        Some(self.world.task_queue(name))
    }

    async fn registers(&self, id: &InstanceId) -> anyhow::Result<Registers> {
        // Results and statuses are the instance store's; mailboxes are queues.
        Ok(Registers {
            mailbox: self.world.has_mailbox(id),
            ..Registers::default()
        })
    }

    async fn consumers(&self, name: &str) -> anyhow::Result<Option<u32>> {
        Ok(Some(self.world.consumers(name)))
    }

    async fn cleanup(mut self) -> Outcome {
        self.cleaned = true;
        println!(
            "{}: seed {}, {}, {} crashes, {} extra deliveries",
            self.scenario,
            self.world.seed(),
            if self.faulty { "faults" } else { "no faults" },
            self.world.crashes(),
            self.world.extra_deliveries()
        );
        // What the simulator checks in every run: no result recorded twice.
        let twice = self.world.recorded_twice();
        if !twice.is_empty() {
            self.cleaned = false;
            anyhow::bail!("results recorded more than once: {twice:?}");
        }
        Ok(())
    }
}

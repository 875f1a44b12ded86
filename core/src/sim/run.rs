//! One simulated run: a seed, a plan, worker processes and a client on the simulated
//! broker, in one thread on virtual time; then the checks.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::broker::{lock, Broker, Shared};
use super::conn::SimConn;
use super::plan::{Act, Expect, Plan};
use super::rng::Rng;
use crate::client::Client;
use crate::error::Error;
use crate::protocol::hooks::{self, Mutation};
use crate::protocol::state::Outcome;
use crate::protocol::InstanceId;
use crate::runtime::{Worker, WorkerConfig};

/// What the bodies of a run report through [`super::check`], [`super::effect`] and the
/// timer checks, kept on the run's thread.
#[derive(Default)]
pub(super) struct Observed {
    pub(super) start: Option<Instant>,
    pub(super) violations: Vec<String>,
    pub(super) effects: BTreeMap<String, u64>,
    /// (started, resumed, delay, what) of every timer checked.
    pub(super) timers: Vec<(Duration, Duration, Duration, String)>,
}

thread_local! {
    pub(super) static OBSERVED: RefCell<Option<Observed>> = const { RefCell::new(None) };
}

/// What a run found.
pub(super) struct RunOutcome {
    pub(super) violations: Vec<String>,
    pub(super) trace: Vec<String>,
    pub(super) crashes: u32,
    pub(super) extra_deliveries: u64,
    pub(super) spent_by_faults: u64,
}

/// The settings of a run, shared by every seed.
pub(super) struct Setup<'a> {
    pub(super) config: &'a WorkerConfig,
    pub(super) workers: usize,
    pub(super) faults: super::Faults,
    pub(super) time_limit: Duration,
    pub(super) mutations: &'a [Mutation],
}

/// Runs `plan` under `seed`; `expected` holds each root's expected outcome.
pub(super) fn run(setup: &Setup<'_>, seed: u64, plan: &Plan, expected: &[Expected]) -> RunOutcome {
    let _hooks = hooks::sim::install(seed, setup.mutations);
    OBSERVED.with(|o| *o.borrow_mut() = Some(Observed::default()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime builds");
    let (shared, results) = rt.block_on(drive(setup, seed, plan));
    // Every task (workers, timers, publishes in flight) goes with the runtime, in an
    // order of tokio's own: the broker ignores what they do meanwhile.
    lock(&shared).closed = true;
    drop(rt);
    let observed = OBSERVED.with(|o| o.borrow_mut().take()).unwrap_or_default();
    let mut b = lock(&shared);
    let mut violations = observed.violations;
    check(&mut b, setup, plan, expected, &results, &mut violations);
    let slack = skew_spread(&b) + Duration::from_millis(1);
    for (started, resumed, delay, what) in &observed.timers {
        if *resumed + slack < *started + *delay {
            violations.push(format!(
                "a timer fired early: {what} resumed {} ms after it began waiting for {} ms \
                 (clock skew between workers allows {} ms)",
                resumed.saturating_sub(*started).as_millis(),
                delay.as_millis(),
                slack.as_millis()
            ));
        }
    }
    let bound = 1 + b.extra_deliveries;
    for (key, n) in &observed.effects {
        if *n > bound {
            violations.push(format!(
                "side effect `{key}` ran {n} times, more than once plus once per extra \
                 delivery ({bound})"
            ));
        }
    }
    RunOutcome {
        violations,
        trace: std::mem::take(&mut b.trace),
        crashes: b.crashes,
        extra_deliveries: b.extra_deliveries,
        spent_by_faults: b.spent_by_faults,
    }
}

/// A root's expected outcome, resolved (the reference model run).
#[derive(Clone, Debug)]
pub(super) enum Expected {
    Outcome(Outcome),
    Cancelled,
}

impl Expected {
    pub(super) fn of(expect: &Expect, reference: impl FnOnce() -> Outcome) -> Self {
        match expect {
            Expect::Reference => Expected::Outcome(reference()),
            Expect::Value(v) => Expected::Outcome(Outcome::Ok(v.clone())),
            Expect::Cancelled => Expected::Cancelled,
        }
    }
}

type Results = Arc<Mutex<Vec<Option<(InstanceId, Result<Vec<u8>, Error>)>>>>;

fn skew_spread(b: &Broker) -> Duration {
    let skews = b.conns.values().filter(|c| c.faulty).map(|c| c.skew_ms);
    let (lo, hi) = skews.fold((0i64, 0i64), |(lo, hi), s| (lo.min(s), hi.max(s)));
    Duration::from_millis((hi - lo) as u64)
}

async fn drive(setup: &Setup<'_>, seed: u64, plan: &Plan) -> (Shared, Results) {
    OBSERVED.with(|o| {
        if let Some(o) = o.borrow_mut().as_mut() {
            o.start = Some(Instant::now());
        }
    });
    let (deaths_tx, mut deaths) = tokio::sync::mpsc::unbounded_channel();
    let shared: Shared = Arc::new(Mutex::new(Broker::new(
        seed,
        setup.faults,
        deaths_tx,
        super::conn::settler,
    )));
    let _clock = super::world::ClockGuard::set(lock(&shared).epoch);
    let mut rng = Rng::new(seed ^ 0x5eed_0fc0_ffee);
    let mut procs: BTreeMap<u32, JoinHandle<()>> = BTreeMap::new();
    let mut started = 0;
    for _ in 0..setup.workers {
        spawn_worker(&shared, setup, &mut rng, &mut started, &mut procs);
    }
    let client_conn = {
        let id = lock(&shared).connect("client".into(), false, 0);
        SimConn {
            shared: shared.clone(),
            id,
        }
    };
    let client = Client::new(client_conn)
        .with_registry(setup.config.registry.clone())
        .with_state_budget(setup.config.state_budget);
    let results: Results = Arc::new(Mutex::new((0..plan.roots.len()).map(|_| None).collect()));
    let mut script = tokio::spawn(script(
        client,
        plan.acts.clone(),
        plan.roots
            .iter()
            .map(|r| (r.name.clone(), r.input.clone()))
            .collect(),
        results.clone(),
        shared.clone(),
    ));
    let window = setup.faults.window;
    let begin = Instant::now();
    for _ in 0..setup.faults.restarts {
        let at = Duration::from_millis(rng.below(window.as_millis() as u64 + 1));
        let shared = shared.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(begin + at).await;
            let mut b = lock(&shared);
            if b.faulty {
                b.restart(&shared);
            }
        });
    }
    let faults_end = tokio::time::sleep_until(begin + window);
    let limit = tokio::time::sleep_until(begin + window + setup.time_limit);
    tokio::pin!(faults_end, limit);
    let (restart_tx, mut restarts) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut faulty = true;
    loop {
        tokio::select! {
            biased;
            Some(c) = deaths.recv() => {
                if let Some(p) = procs.remove(&c) {
                    p.abort();
                }
                let tx = restart_tx.clone();
                let pause = Duration::from_millis(1 + rng.below(50));
                tokio::spawn(async move {
                    tokio::time::sleep(pause).await;
                    let _ = tx.send(());
                });
            }
            Some(()) = restarts.recv() => {
                spawn_worker(&shared, setup, &mut rng, &mut started, &mut procs);
            }
            _ = &mut faults_end, if faulty => {
                faulty = false;
                let mut b = lock(&shared);
                b.faulty = false;
                b.log("faults stop");
            }
            _ = &mut script => break,
            _ = &mut limit => {
                lock(&shared).log("time limit reached");
                break;
            }
        }
    }
    (shared, results)
}

fn spawn_worker(
    shared: &Shared,
    setup: &Setup<'_>,
    rng: &mut Rng,
    started: &mut usize,
    procs: &mut BTreeMap<u32, JoinHandle<()>>,
) {
    *started += 1;
    let skew = setup.faults.skew_ms as i64;
    let skew = rng.below(2 * skew as u64 + 1) as i64 - skew;
    let id = lock(shared).connect(format!("w{started}"), true, skew);
    let conn = SimConn {
        shared: shared.clone(),
        id,
    };
    let worker = match Worker::new(conn, setup.config.clone()) {
        Ok(w) => w,
        Err(e) => {
            lock(shared).log(format!("the worker cannot be built: {e}"));
            return;
        }
    };
    procs.insert(
        id,
        tokio::spawn(async move {
            let _ = worker.run().await;
        }),
    );
}

/// The client's part: starts, signals and cancels at their times, then waits for every
/// root's result.
async fn script(
    client: Client,
    mut acts: Vec<(Duration, Act)>,
    roots: Vec<(String, Vec<u8>)>,
    results: Results,
    shared: Shared,
) {
    acts.sort_by_key(|(at, _)| *at);
    let begin = Instant::now();
    let mut ids: Vec<Option<InstanceId>> = vec![None; roots.len()];
    let mut waits = Vec::new();
    for (at, act) in acts {
        tokio::time::sleep_until(begin + at).await;
        let outcome = match &act {
            Act::Start(root) => {
                let (name, input) = &roots[root.0];
                match client.start_by_name(name, input.clone()).await {
                    Ok(h) => {
                        let id = h.id().clone();
                        lock(&shared).log(format!("client starts root #{} {name}: {id}", root.0));
                        ids[root.0] = Some(id.clone());
                        let results = results.clone();
                        let index = root.0;
                        waits.push(tokio::spawn(async move {
                            let r = h.result_bytes().await;
                            results.lock().unwrap_or_else(|p| p.into_inner())[index] =
                                Some((id, r));
                        }));
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            Act::Signal(root, _, send) => match &ids[root.0] {
                Some(id) => send(client.clone(), id.clone()).await,
                None => Err(Error::bad_input("the root is not started yet")),
            },
            Act::Cancel(root, reason) => match &ids[root.0] {
                Some(id) => client.cancel(id, reason.clone()).await.map(|_| ()),
                None => Err(Error::bad_input("the root is not started yet")),
            },
        };
        let mut b = lock(&shared);
        match outcome {
            Ok(()) => b.log(format!("client: {act:?}")),
            Err(e) => b.log(format!("client: {act:?} failed: {e}")),
        }
    }
    for w in waits {
        let _ = w.await;
    }
}

/// The checks on what the run left: every root finished, once, with its expected result.
fn check(
    b: &mut Broker,
    setup: &Setup<'_>,
    plan: &Plan,
    expected: &[Expected],
    results: &Results,
    violations: &mut Vec<String>,
) {
    let results = results.lock().unwrap_or_else(|p| p.into_inner());
    for (i, (spec, want)) in plan.roots.iter().zip(expected).enumerate() {
        let what = format!("root #{i} `{}`", spec.name);
        let Some((id, got)) = &results[i] else {
            violations.push(format!(
                "{what} did not finish within {} ms after the faults stopped (liveness)",
                setup.time_limit.as_millis()
            ));
            continue;
        };
        let taken = b.results_taken.get(id).copied().unwrap_or(0);
        if taken != 1 {
            violations.push(format!(
                "{what} ({id}): its result was recorded {taken} times, not once"
            ));
        }
        let ok = match (want, got) {
            (Expected::Cancelled, Err(e)) => e.is_cancelled(),
            (Expected::Outcome(Outcome::Ok(w)), Ok(g)) => w == g,
            (Expected::Outcome(Outcome::Failed(f)), Err(e)) => {
                e.failure().is_some_and(|g| g.kind() == f.kind())
            }
            _ => false,
        };
        if !ok && budget_spent_by_faults(got, id, &b.fault_returns, setup.config.max_redeliveries) {
            // After the run (the broker logs nothing more), at the end of its trace.
            b.trace.push(format!(
                "check: {what} ({id}) ended dead-lettered, accepted: faults alone returned \
                 a message of it more often than the redelivery budget allows"
            ));
            b.spent_by_faults += 1;
            continue;
        }
        if !ok {
            violations.push(format!(
                "{what} ({id}): the result is {} where {} was expected",
                describe_got(got),
                describe_want(want)
            ));
        }
    }
}

/// Whether `got`, the outcome of root `id`, is what at-least-once delivery with a
/// redelivery budget allows under the faults the run injected, whatever the expected
/// result: a worker dead-letters a task message delivered more often than
/// [`WorkerConfig::max_redeliveries`](crate::WorkerConfig::max_redeliveries) allows, and
/// fails its instance as dead-lettered, since it cannot tell a message that kills its
/// workers from workers that die under it (the broker counts every return). Faults alone
/// can spend that budget: the default [`Faults`](super::Faults) (3 crashes, 2 dropped
/// connections, a broker restart) return a message 6 times when every one of them hits
/// it while it is held, one more than the default budget of 5. The outcome is accepted
/// only with that proof: `got` is the failure of an exhausted budget (the root's own
/// message dead-lettered, or a descendant's, whose failure reached the root), and a task
/// message of the root (for the first) or of a descendant (for the second) was delivered
/// after faults alone (`fault_returns`, per message id) had returned it more often than
/// `budget`. A budget that dtasks spent (its own requeues), or a dead letter for another
/// reason, stays a violation.
fn budget_spent_by_faults(
    got: &Result<Vec<u8>, Error>,
    id: &InstanceId,
    fault_returns: &BTreeMap<String, u32>,
    budget: u32,
) -> bool {
    let Some(f) = got.as_ref().err().and_then(Error::failure) else {
        return false;
    };
    if !f.message().contains("(retry budget exhausted)") {
        return false;
    }
    let whose = if f.is_dead_lettered() {
        format!("{id}:")
    } else if f.is_child_failure() {
        format!("{id}.")
    } else {
        return false;
    };
    fault_returns
        .iter()
        .any(|(message, returns)| *returns > budget && message.starts_with(&whose))
}

fn describe_got(got: &Result<Vec<u8>, Error>) -> String {
    match got {
        Ok(bytes) => super::show::value(bytes),
        Err(e) => format!("the error `{e}`"),
    }
}

fn describe_want(want: &Expected) -> String {
    match want {
        Expected::Cancelled => "a cancellation".into(),
        Expected::Outcome(Outcome::Ok(bytes)) => super::show::value(bytes),
        Expected::Outcome(Outcome::Failed(f)) => format!("the failure `{f}`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{Failure, FailureKind};

    fn dead(reason: &str) -> Result<Vec<u8>, Error> {
        Err(Error::failed(Failure::new(
            FailureKind::DeadLettered,
            format!("a message of this instance was moved to the dead-letter queue: {reason}"),
        )))
    }

    #[test]
    fn a_dead_lettered_root_passes_only_when_faults_alone_spent_the_budget() {
        let root = InstanceId::new("r1").unwrap();
        let spent = dead("failed 6 times (retry budget exhausted)");
        let returns = |m: &str, n: u32| BTreeMap::from([(m.to_string(), n)]);
        // Its own message returned by faults past the budget of 5.
        assert!(budget_spent_by_faults(
            &spent,
            &root,
            &returns("r1:run2", 6),
            5
        ));
        // Faults returned it no more often than the budget: dtasks spent the rest.
        assert!(!budget_spent_by_faults(
            &spent,
            &root,
            &returns("r1:run2", 5),
            5
        ));
        // Another root's message, or a descendant's for the root's own dead letter.
        assert!(!budget_spent_by_faults(
            &spent,
            &root,
            &returns("r10:run2", 9),
            5
        ));
        assert!(!budget_spent_by_faults(
            &spent,
            &root,
            &returns("r1.0:start", 9),
            5
        ));
        // A descendant's dead letter reaches the root as a child's failure.
        let below = Err(Error::failed(Failure::new(
            FailureKind::ChildFailed,
            "child `leaf` (r1.0) failed: dead-lettered: a message of this instance was \
             moved to the dead-letter queue: failed 6 times (retry budget exhausted)",
        )));
        assert!(budget_spent_by_faults(
            &below,
            &root,
            &returns("r1.0:start", 6),
            5
        ));
        assert!(!budget_spent_by_faults(
            &below,
            &root,
            &returns("r1:run2", 6),
            5
        ));
        // Not a budget exhausted, or not a dead letter, or no failure at all.
        let unreadable = dead("a mailbox item could not be read (garbage)");
        assert!(!budget_spent_by_faults(
            &unreadable,
            &root,
            &returns("r1:run2", 9),
            5
        ));
        let other = Err(Error::failed(Failure::new(FailureKind::Panic, "boom")));
        assert!(!budget_spent_by_faults(
            &other,
            &root,
            &returns("r1:run2", 9),
            5
        ));
        assert!(!budget_spent_by_faults(
            &Ok(vec![1]),
            &root,
            &returns("r1:run2", 9),
            5
        ));
    }
}

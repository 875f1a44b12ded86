//! W1a, W1b, W2 and W3 on one environment. Each run checks its own results: a wrong or
//! missing result is recorded as an error, which makes the whole benchmark fail.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::counting::{Counts, KINDS};
use crate::env::{Env, Mailboxes, PgWrites, Settings};
use crate::sys::{Admin, CpuMeter, CpuUse};
use crate::tasks::{chain, fan, fan_expected, timer};

/// The measurements and checks of one workload run.
#[derive(Clone, Debug, Default)]
pub(crate) struct Run {
    /// Root instances.
    pub(crate) instances: usize,
    /// Child steps (the unit of "steps/s").
    pub(crate) steps: u64,
    pub(crate) cpu: CpuUse,
    /// What the core published during the run.
    pub(crate) counts: Counts,
    /// Deliveries the workers handled during the run.
    pub(crate) deliveries: u64,
    /// Result writes refused as duplicates during the run.
    pub(crate) duplicate_results: u64,
    /// W1a: latency per instance (ms). W3: lateness per timer (ms, negative = early). W1b
    /// with `start`: how long each `Client::start` call took (ms).
    pub(crate) samples_ms: Vec<f64>,
    /// When each instance's result arrived (s after the start), sorted.
    pub(crate) done_at: Vec<f64>,
    /// Verification failures.
    pub(crate) errors: Vec<String>,
    /// What the environment's PostgreSQL stores wrote during the run (zero without them).
    pub(crate) pg: PgWrites,
    /// What the RabbitMQ transports' mailboxes saw during the run (zero in memory).
    pub(crate) mailboxes: Mailboxes,
}

impl Run {
    pub(crate) fn steps_per_s(&self) -> f64 {
        self.steps as f64 / self.cpu.wall
    }

    pub(crate) fn instances_per_s(&self) -> f64 {
        self.instances as f64 / self.cpu.wall
    }
}

/// What a workload runs before and after its measured part.
struct Probe {
    counts: Counts,
    deliveries: u64,
    duplicates: u64,
    dead: u64,
    meter: CpuMeter,
    pg: PgWrites,
    mailboxes: Mailboxes,
}

impl Probe {
    async fn start(env: &Env, admin: Option<&Admin>) -> anyhow::Result<Self> {
        let s = env.stats();
        Ok(Self {
            counts: env.counters.snapshot(),
            deliveries: s.processed,
            duplicates: s.duplicate_results,
            dead: env.dead_letters(admin).await?,
            meter: CpuMeter::start(env.broker_pid.as_deref()),
            pg: env.pg_writes(),
            mailboxes: env.mailboxes(),
        })
    }

    async fn finish(self, env: &Env, admin: Option<&Admin>, run: &mut Run) -> anyhow::Result<()> {
        run.cpu = self.meter.stop();
        run.counts = env.counters.snapshot().since(&self.counts);
        run.pg = env.pg_writes().since(&self.pg);
        run.mailboxes = env.mailboxes().since(self.mailboxes);
        let s = env.stats();
        run.deliveries = s.processed - self.deliveries;
        run.duplicate_results = s.duplicate_results - self.duplicates;
        let dead = env.dead_letters(admin).await? - self.dead;
        if dead > 0 {
            run.errors
                .push(format!("{dead} messages were dead-lettered"));
        }
        run.done_at
            .sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        Ok(())
    }
}

/// How long a workload may take before its missing results count as lost.
const LIMIT: Duration = Duration::from_secs(300);

/// What an instance task returns: its id, its check, and when its result arrived.
type Outcome = Result<(String, Result<(), String>, f64), dtasks::Error>;

/// Collects the outcomes of a set of instance tasks.
async fn collect(set: &mut JoinSet<Outcome>, expected: usize, run: &mut Run) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    let mut ids = HashSet::new();
    loop {
        let next = tokio::select! {
            r = set.join_next() => r,
            _ = tokio::time::sleep_until(deadline) => {
                set.abort_all();
                run.errors.push(format!("results missing after {LIMIT:?}"));
                break;
            }
        };
        match next {
            None => break,
            Some(Ok(Ok((id, check, at)))) => {
                if !ids.insert(id.clone()) {
                    run.errors.push(format!("instance {id} returned twice"));
                }
                if let Err(e) = check {
                    run.errors.push(e);
                }
                run.done_at.push(at);
            }
            Some(Ok(Err(e))) => run.errors.push(format!("an instance failed: {e}")),
            Some(Err(e)) => run.errors.push(format!("an instance task failed: {e}")),
        }
    }
    if ids.len() != expected {
        run.errors.push(format!(
            "{} of {expected} instances returned a result",
            ids.len()
        ));
    }
}

/// How W1b gets each chain's result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Via {
    /// `Client::start`, then `Handle::result`: the root's facts in the instance store.
    Start,
    /// `Client::call`: the result on the client's reply queue.
    Call,
}

impl Via {
    /// Both ways in the order repetition `rep` runs them: start first in even
    /// repetitions, call first in odd ones, so that neither always runs first.
    pub(crate) fn pair(rep: usize) -> [Via; 2] {
        if rep % 2 == 0 {
            [Via::Start, Via::Call]
        } else {
            [Via::Call, Via::Start]
        }
    }
}

/// W1b (and the warm-up): `n` chains of `s.steps` started at once.
pub(crate) async fn w1b(
    env: &Env,
    admin: Option<&Admin>,
    s: &Settings,
    n: usize,
    base: u64,
) -> anyhow::Result<Run> {
    w1b_via(env, admin, s, n, base, Via::Start).await
}

/// W1b with the results got `via` start or call.
pub(crate) async fn w1b_via(
    env: &Env,
    admin: Option<&Admin>,
    s: &Settings,
    n: usize,
    base: u64,
    via: Via,
) -> anyhow::Result<Run> {
    let mut run = Run {
        instances: n,
        steps: n as u64 * u64::from(s.steps),
        ..Run::default()
    };
    let probe = Probe::start(env, admin).await?;
    let t0 = Instant::now();
    let mut set = JoinSet::new();
    // With `start`: how long each `Client::start` call took (ms).
    let (started, mut start_ms) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..n {
        let client = env.client.clone();
        let started = started.clone();
        let (steps, payload) = (s.steps, s.payload);
        let start = base + i as u64 * 1_000;
        set.spawn(async move {
            let (id, v) = match via {
                Via::Start => {
                    let t = Instant::now();
                    let h = client.start(chain(start, steps, payload)).await?;
                    let _ = started.send(t.elapsed().as_secs_f64() * 1e3);
                    (h.id().to_string(), h.result().await?)
                }
                // No id to look up: the distinct start value names the call.
                Via::Call => (
                    format!("call-{start}"),
                    client.call(chain(start, steps, payload)).await?,
                ),
            };
            let at = t0.elapsed().as_secs_f64();
            let want = start + u64::from(steps);
            let check = if v == want {
                Ok(())
            } else {
                Err(format!("chain from {start} returned {v}, expected {want}"))
            };
            Ok((id, check, at))
        });
    }
    drop(started);
    collect(&mut set, n, &mut run).await;
    while let Ok(ms) = start_ms.try_recv() {
        run.samples_ms.push(ms);
    }
    probe.finish(env, admin, &mut run).await?;
    if via == Via::Call {
        // A transport wrapper that hides the reply queue makes `call` fall back to a
        // start waiting in the instance store: that would measure `start` under another
        // name.
        let kind = |k: &str| {
            KINDS
                .iter()
                .position(|x| *x == k)
                .map_or(0, |i| run.counts.msgs[i])
        };
        let replies = kind("reply");
        if replies < n as u64 {
            run.errors.push(format!(
                "call sent {replies} replies for {n} instances: results did not come back \
                 on the reply queue"
            ));
        }
    }
    Ok(run)
}

/// W1a: `n` chains one at a time; latency of each.
pub(crate) async fn w1a(
    env: &Env,
    admin: Option<&Admin>,
    s: &Settings,
    n: usize,
) -> anyhow::Result<Run> {
    let mut run = Run {
        instances: n,
        steps: n as u64 * u64::from(s.steps),
        ..Run::default()
    };
    let probe = Probe::start(env, admin).await?;
    let t0 = Instant::now();
    let mut ids = HashSet::new();
    for i in 0..n {
        let start = 7_000_000 + i as u64 * 1_000;
        let t = Instant::now();
        let r = async {
            let h = env.client.start(chain(start, s.steps, s.payload)).await?;
            let v = h.result().await?;
            Ok::<_, dtasks::Error>((h.id().to_string(), v))
        };
        match tokio::time::timeout(LIMIT, r).await {
            Ok(Ok((id, v))) => {
                run.samples_ms.push(t.elapsed().as_secs_f64() * 1e3);
                run.done_at.push(t0.elapsed().as_secs_f64());
                ids.insert(id);
                let want = start + u64::from(s.steps);
                if v != want {
                    run.errors
                        .push(format!("chain from {start} returned {v}, expected {want}"));
                }
            }
            Ok(Err(e)) => run.errors.push(format!("an instance failed: {e}")),
            Err(_) => run.errors.push(format!("no result within {LIMIT:?}")),
        }
    }
    if ids.len() != n {
        run.errors
            .push(format!("{} of {n} instances returned a result", ids.len()));
    }
    probe.finish(env, admin, &mut run).await?;
    Ok(run)
}

/// W2: `parents` fan-outs of `width` children at once.
pub(crate) async fn w2(
    env: &Env,
    admin: Option<&Admin>,
    s: &Settings,
    parents: usize,
    width: u32,
) -> anyhow::Result<Run> {
    let mut run = Run {
        instances: parents,
        steps: parents as u64 * u64::from(width),
        ..Run::default()
    };
    let probe = Probe::start(env, admin).await?;
    let t0 = Instant::now();
    let mut set = JoinSet::new();
    for i in 0..parents {
        let client = env.client.clone();
        let payload = s.payload;
        let base = i as u64 * 1_000_000;
        set.spawn(async move {
            let h = client.start(fan(base, width, payload)).await?;
            let v = h.result().await?;
            let at = t0.elapsed().as_secs_f64();
            let want = fan_expected(base, width);
            let check = if v == want {
                Ok(())
            } else {
                Err(format!("fan from {base} summed to {v}, expected {want}"))
            };
            Ok((h.id().to_string(), check, at))
        });
    }
    collect(&mut set, parents, &mut run).await;
    probe.finish(env, admin, &mut run).await?;
    Ok(run)
}

/// W3: `n` timers of `delay_ms` at once; lateness of each.
pub(crate) async fn w3(
    env: &Env,
    admin: Option<&Admin>,
    n: usize,
    delay_ms: u64,
) -> anyhow::Result<Run> {
    let mut run = Run {
        instances: n,
        steps: 0,
        ..Run::default()
    };
    let probe = Probe::start(env, admin).await?;
    let t0 = Instant::now();
    let mut set = JoinSet::new();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..n {
        let client = env.client.clone();
        let tx = tx.clone();
        set.spawn(async move {
            let h = client.start(timer(delay_ms)).await?;
            let (due, woke) = h.result().await?;
            let at = t0.elapsed().as_secs_f64();
            let late = woke as f64 - due as f64;
            let _ = tx.send(late);
            let check = if woke >= due {
                Ok(())
            } else {
                Err(format!("a timer fired {} ms early", due - woke))
            };
            Ok((h.id().to_string(), check, at))
        });
    }
    drop(tx);
    collect(&mut set, n, &mut run).await;
    while let Ok(late) = rx.try_recv() {
        run.samples_ms.push(late);
    }
    probe.finish(env, admin, &mut run).await?;
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::Via;

    #[test]
    fn start_and_call_take_turns_going_first() {
        let firsts: Vec<Via> = (0..4).map(|rep| Via::pair(rep)[0]).collect();
        assert_eq!(firsts, [Via::Start, Via::Call, Via::Start, Via::Call]);
        for rep in 0..4 {
            let [a, b] = Via::pair(rep);
            assert_ne!(a, b, "rep {rep} runs one way twice");
        }
    }
}

//! E2: the cancellation of a fan-out. A root (`bench.e2.fan`) starts 100 children with
//! `DTask::when_all`; each child (`bench.e2.job`) records that it ran and waits in its
//! mailbox for an event that never comes, as a job waiting for an outside system does.
//! Once every child's state is durable in its mailbox, the client cancels the root
//! (`Client::cancel`), and the round measures the time until the root's result reads
//! `Cancelled` and until every child has ended (its tombstone confirmed by the broker).
//! One round at a time.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use dtasks::Status;

use crate::counting::{Counts, MailboxWrite};
use crate::env::Env;
use crate::sys::{Admin, CpuMeter, CpuUse};
use crate::tasks::{e2_fan, E2_STARTED};

/// How long one phase of a round (the start, the cancellation) may take before the round
/// counts as lost.
const LIMIT: Duration = Duration::from_secs(120);

/// Rounds run before the measured ones (not recorded).
pub(crate) const WARM_UP: usize = 1;

/// The reason every E2 cancellation gives (checked in the root's result).
const REASON: &str = "bench: cancel the fan-out";

/// The measurements and checks of E2 at one place.
#[derive(Clone, Debug, Default)]
pub(crate) struct E2Run {
    /// Measured rounds.
    pub(crate) rounds: usize,
    /// Children per root.
    pub(crate) width: u32,
    /// From `start` to the last child's state confirmed in its mailbox (ms).
    pub(crate) setup_ms: Vec<f64>,
    /// The `cancel` call alone, until it returned (ms).
    pub(crate) cancel_ms: Vec<f64>,
    /// From the start of `cancel` to the root's result read as cancelled by a result wait
    /// set up before the cancel (ms).
    pub(crate) result_ms: Vec<f64>,
    /// From the start of `cancel` to the first child's tombstone confirmed (ms).
    pub(crate) first_stop_ms: Vec<f64>,
    /// From the start of `cancel` to the median child's tombstone confirmed (ms).
    pub(crate) median_stop_ms: Vec<f64>,
    /// From the start of `cancel` to the last child's tombstone confirmed (ms).
    pub(crate) last_stop_ms: Vec<f64>,
    /// What the core published from the cancel until the workers were idle again, over
    /// the measured rounds.
    pub(crate) counts: Counts,
    /// Deliveries the workers handled over the same intervals.
    pub(crate) deliveries: u64,
    /// CPU over the same intervals, summed (wall: the intervals' sum).
    pub(crate) cpu: CpuUse,
    /// Verification failures.
    pub(crate) errors: Vec<String>,
}

impl E2Run {
    /// One line for the progress log.
    pub(crate) fn summary(&self) -> String {
        let p50 = |v: &[f64]| crate::stats::pct(v, 0.5);
        let mut s = format!(
            "{} rounds of {} children, cancel → last child stopped p50 {:.1} ms, → root's result p50 {:.1} ms",
            self.rounds,
            self.width,
            p50(&self.last_stop_ms),
            p50(&self.result_ms)
        );
        if !self.errors.is_empty() {
            s.push_str(" (FAILED)");
        }
        s
    }
}

/// One round's figures.
struct Round {
    setup_ms: f64,
    cancel_ms: f64,
    result_ms: f64,
    stops_ms: Vec<f64>,
    counts: Counts,
    deliveries: u64,
    cpu: CpuUse,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The mailbox writes of the children of `root` seen so far, by child: when its first
/// state write and its tombstone were confirmed.
#[derive(Default)]
struct Children {
    waiting: HashMap<String, Instant>,
    ended: HashMap<String, Instant>,
}

impl Children {
    fn take(&mut self, env: &Env, root: &str, others: &mut Vec<MailboxWrite>) {
        let under = format!("{root}.");
        for w in env.counters.take_e2_writes() {
            if !w.instance.starts_with(&under) {
                others.push(w);
                continue;
            }
            let map = if w.end {
                &mut self.ended
            } else {
                &mut self.waiting
            };
            map.entry(w.instance).or_insert(w.at);
        }
    }
}

/// The distinct children of round `tag` that ran their first step.
fn started(tag: u64) -> usize {
    E2_STARTED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|(t, _)| *t == tag)
        .map(|(_, i)| *i)
        .collect::<HashSet<_>>()
        .len()
}

/// Waits until the workers have handled nothing for `quiet` (at most `LIMIT`).
async fn settle(env: &Env, quiet: Duration) {
    let t0 = Instant::now();
    let mut last = env.stats();
    let mut since = Instant::now();
    while t0.elapsed() < LIMIT {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let s = env.stats();
        if s.processed != last.processed || s.in_flight > 0 {
            last = s;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return;
        }
    }
}

/// One round: start a fan-out of `width`, wait until every child waits in its mailbox,
/// cancel the root, and wait until its result reads cancelled and every child has ended.
async fn round(env: &Env, admin: Option<&Admin>, tag: u64, width: u32) -> Result<Round, String> {
    let mut others = Vec::new();
    let t_start = Instant::now();
    let h = env
        .client
        .start(e2_fan(tag, width))
        .await
        .map_err(|e| format!("start: {e}"))?;
    let root = h.id().to_string();
    // Wait for the result from now on, so that the wait is in place before the cancel.
    let waiting = env.client.handle::<u64>(h.id().clone());
    let result = tokio::spawn(async move {
        let r = waiting.result().await;
        (r, Instant::now())
    });

    // Every child has run its first step and its state is durable in its mailbox; the
    // root's state is in its own (its status reads `Suspended` after that step).
    let mut kids = Children::default();
    let mut root_waits = false;
    loop {
        kids.take(env, &root, &mut others);
        // The status read is a few broker operations: only once the children wait.
        let all = kids.waiting.len() == width as usize && started(tag) == width as usize;
        if all && !root_waits {
            match h.status().await {
                Ok(Status::Suspended) => root_waits = true,
                Ok(s) if s.is_finished() => return Err(format!("the root finished early: {s:?}")),
                Ok(_) => {}
                Err(e) => return Err(format!("status: {e}")),
            }
        }
        if all && root_waits {
            break;
        }
        if t_start.elapsed() > LIMIT {
            return Err(format!(
                "round {tag}: {} of {width} children waiting, {} started, root waiting: {root_waits}, after {LIMIT:?}",
                kids.waiting.len(),
                started(tag)
            ));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let setup = kids
        .waiting
        .values()
        .max()
        .map_or(f64::NAN, |t| ms(*t - t_start));
    if !kids.ended.is_empty() {
        return Err(format!(
            "round {tag}: {} children ended before the cancel",
            kids.ended.len()
        ));
    }

    let counts = env.counters.snapshot();
    let deliveries = env.stats().processed;
    let meter = CpuMeter::start(env.broker_pid.as_deref());
    let t0 = Instant::now();
    let cancelled = env
        .client
        .cancel(h.id(), REASON)
        .await
        .map_err(|e| format!("cancel: {e}"))?;
    let cancel_ms = ms(t0.elapsed());
    if !cancelled {
        return Err(format!("round {tag}: cancel found the root finished"));
    }
    let (got, result_at) = tokio::time::timeout(LIMIT, result)
        .await
        .map_err(|_| format!("round {tag}: no result within {LIMIT:?} of the cancel"))?
        .map_err(|e| format!("the result wait panicked: {e}"))?;
    match got {
        Err(e) if e.is_cancelled() && e.failure().is_some_and(|f| f.message() == REASON) => {}
        other => {
            return Err(format!(
                "round {tag}: the root's result is {other:?}, not cancelled with the reason given"
            ))
        }
    }
    while kids.ended.len() < width as usize {
        if t0.elapsed() > LIMIT {
            return Err(format!(
                "round {tag}: {} of {width} children ended within {LIMIT:?} of the cancel",
                kids.ended.len()
            ));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        kids.take(env, &root, &mut others);
    }
    // What the cancellation caused, to the end: the children's results reach the root's
    // tombstoned mailbox and drop out there.
    settle(env, Duration::from_millis(300)).await;
    let cpu = meter.stop();
    let counts = env.counters.snapshot().since(&counts);
    let deliveries = env.stats().processed - deliveries;
    kids.take(env, &root, &mut others);
    if kids.ended.len() != width as usize || kids.waiting.len() != width as usize {
        return Err(format!(
            "round {tag}: {} children waited and {} ended, of {width}",
            kids.waiting.len(),
            kids.ended.len()
        ));
    }
    if !others.is_empty() {
        return Err(format!(
            "round {tag}: {} mailbox writes of children of other roots",
            others.len()
        ));
    }
    match h.status().await {
        Ok(Status::Cancelled) => {}
        other => return Err(format!("round {tag}: the root's status reads {other:?}")),
    }
    if started(tag) != width as usize {
        return Err(format!(
            "round {tag}: {} distinct children ran, of {width}",
            started(tag)
        ));
    }
    let mut stops_ms: Vec<f64> = kids.ended.values().map(|t| ms(*t - t0)).collect();
    stops_ms.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    env.delete_mailboxes(admin, &root)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Round {
        setup_ms: setup,
        cancel_ms,
        result_ms: ms(result_at - t0),
        stops_ms,
        counts,
        deliveries,
        cpu,
    })
}

/// E2 on `env`: `rounds` measured rounds of a fan-out of `width` after a warm-up.
pub(crate) async fn run(
    env: &Env,
    admin: Option<&Admin>,
    rounds: usize,
    width: u32,
    base: u64,
) -> anyhow::Result<E2Run> {
    let mut run = E2Run {
        rounds,
        width,
        ..E2Run::default()
    };
    for i in 0..WARM_UP {
        if let Err(e) = round(env, admin, base + i as u64, width).await {
            run.errors.push(format!("warm-up: {e}"));
        }
    }
    let dead = env.dead_letters(admin).await?;
    for i in WARM_UP..WARM_UP + rounds {
        match round(env, admin, base + i as u64, width).await {
            Ok(r) => {
                run.setup_ms.push(r.setup_ms);
                run.cancel_ms.push(r.cancel_ms);
                run.result_ms.push(r.result_ms);
                run.first_stop_ms.push(r.stops_ms[0]);
                run.median_stop_ms
                    .push(r.stops_ms[(r.stops_ms.len() - 1) / 2]);
                run.last_stop_ms.push(r.stops_ms[r.stops_ms.len() - 1]);
                run.counts = add(&run.counts, &r.counts);
                run.deliveries += r.deliveries;
                run.cpu.wall += r.cpu.wall;
                run.cpu.bench += r.cpu.bench;
                run.cpu.broker = match (run.cpu.broker, r.cpu.broker) {
                    (Some(a), Some(b)) => Some(a + b),
                    (None, b) if run.last_stop_ms.len() == 1 => b,
                    _ => None,
                };
            }
            Err(e) => run.errors.push(e),
        }
    }
    let dead = env.dead_letters(admin).await? - dead;
    if dead > 0 {
        run.errors
            .push(format!("{dead} messages were dead-lettered"));
    }
    if run.last_stop_ms.len() != rounds {
        run.errors.push(format!(
            "{} of {rounds} rounds stopped every child",
            run.last_stop_ms.len()
        ));
    }
    Ok(run)
}

/// `a + b`, counter by counter.
fn add(a: &Counts, b: &Counts) -> Counts {
    let mut c = *a;
    c.batches += b.batches;
    for i in 0..c.msgs.len() {
        c.msgs[i] += b.msgs[i];
        c.bytes[i] += b.bytes[i];
    }
    c
}

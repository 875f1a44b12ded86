//! W4: W1b on two worker processes (this binary re-executed with `--worker-mode`), one of
//! which is killed with SIGKILL mid-run.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use dtasks::{Client, WorkerConfig};
use dtasks_amqp::{AmqpConfig, AmqpTransport};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinSet;

use crate::env::Settings;
use crate::sys::{Admin, CpuMeter, CpuUse};
use crate::tasks::{chain, step};

/// One W4 run.
#[derive(Clone, Debug, Default)]
pub(crate) struct Recovery {
    pub(crate) instances: usize,
    pub(crate) cpu: CpuUse,
    /// Distinct instances that returned the right value.
    pub(crate) completed: usize,
    /// Results seen more than once for one instance id.
    pub(crate) twice: usize,
    /// When the victim was killed (s after the start).
    pub(crate) kill_at: Option<f64>,
    /// Longest gap between consecutive completions after the kill (from the kill to the
    /// first completion included), seconds. For the control run: after `kill_at` of the
    /// killed run, when given.
    pub(crate) stall: Option<f64>,
    /// Result writes refused as duplicates, by the surviving worker.
    pub(crate) duplicate_results: u64,
    /// Deliveries handled by the surviving workers (the victim cannot report).
    pub(crate) survivor_deliveries: u64,
    pub(crate) done_at: Vec<f64>,
    pub(crate) errors: Vec<String>,
    /// Queues the client declared (for the cleanup).
    pub(crate) queues: Vec<String>,
}

/// Runs a worker in this process until its standard input closes, then prints its stats.
pub(crate) async fn worker_mode(prefix: &str, s: &Settings) -> anyhow::Result<()> {
    let t = AmqpTransport::connect(
        AmqpConfig::from_env()
            .with_prefix(prefix)
            .with_prefetch(s.prefetch),
    )
    .await?;
    let w = dtasks::Worker::new(
        t,
        WorkerConfig::new()
            .register(chain)
            .register(step)
            .concurrency(s.concurrency)
            .inline_steps(s.inline_steps),
    )?;
    let handle = w.clone();
    w.run_until(async {
        let mut sink = Vec::new();
        let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    })
    .await?;
    let st = handle.stats();
    println!(
        "stats processed={} duplicate_results={} dead_lettered={}",
        st.processed, st.duplicate_results, st.dead_lettered
    );
    Ok(())
}

fn spawn_worker(prefix: &str, s: &Settings) -> anyhow::Result<Child> {
    let exe = std::env::current_exe()?;
    Ok(Command::new(exe)
        .args([
            "--worker-mode",
            "--prefix",
            prefix,
            "--concurrency",
            &s.concurrency.to_string(),
            "--prefetch",
            &s.prefetch.to_string(),
            "--inline",
            &s.inline_steps.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?)
}

/// Parses `stats k=v ...`.
fn stats_line(line: &str) -> HashMap<String, u64> {
    line.split_whitespace()
        .skip(1)
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// Runs W4 under `prefix`: two worker processes, `n` chains at once; with `kill_after`,
/// worker 0 is SIGKILLed that long after the start. `gap_after` (control run): measure the
/// completion gap after this time instead of after a kill.
pub(crate) async fn run(
    prefix: &str,
    admin: &Admin,
    s: &Settings,
    n: usize,
    kill_after: Option<Duration>,
    gap_after: Option<f64>,
    broker: Option<&str>,
) -> anyhow::Result<Recovery> {
    let mut children = [spawn_worker(prefix, s)?, spawn_worker(prefix, s)?];
    let transport = AmqpTransport::connect(
        AmqpConfig::from_env()
            .with_prefix(prefix)
            .with_prefetch(s.prefetch),
    )
    .await?;
    let queues = vec![
        transport.task_queue("bench.chain"),
        transport.task_queue("bench.step"),
    ];
    admin
        .wait_consumers(&queues, 2, Duration::from_secs(30))
        .await?;
    let client = Client::new(transport.clone());
    let mut rec = Recovery {
        instances: n,
        ..Recovery::default()
    };
    let dead0 = admin
        .peek(&transport.dead_letter_queue())
        .await?
        .map_or(0, |(m, _)| m);

    let meter = CpuMeter::start(broker);
    let t0 = Instant::now();
    let mut set = JoinSet::new();
    for i in 0..n {
        let client = client.clone();
        let (steps, payload) = (s.steps, s.payload);
        let start = 50_000_000 + i as u64 * 1_000;
        set.spawn(async move {
            let h = client.start(chain(start, steps, payload)).await?;
            let v = h.result().await?;
            Ok::<_, dtasks::Error>((
                h.id().to_string(),
                v == start + u64::from(steps),
                t0.elapsed().as_secs_f64(),
            ))
        });
    }
    let kill_deadline = kill_after.map(|d| tokio::time::Instant::from_std(t0 + d));
    let limit = tokio::time::Instant::from_std(t0 + Duration::from_secs(180));
    let mut seen: HashMap<String, usize> = HashMap::new();
    loop {
        let next = tokio::select! {
            _ = async { tokio::time::sleep_until(kill_deadline.expect("guarded")).await },
                if kill_deadline.is_some() && rec.kill_at.is_none() =>
            {
                // `Child::start_kill` sends SIGKILL on Unix.
                children[0].start_kill()?;
                rec.kill_at = Some(t0.elapsed().as_secs_f64());
                continue;
            }
            r = set.join_next() => r,
            _ = tokio::time::sleep_until(limit) => {
                set.abort_all();
                rec.errors.push("W4: results missing after 180 s".into());
                break;
            }
        };
        match next {
            None => break,
            Some(Ok(Ok((id, right, at)))) => {
                *seen.entry(id.clone()).or_default() += 1;
                if right {
                    rec.done_at.push(at);
                } else {
                    rec.errors
                        .push(format!("W4: instance {id} returned a wrong value"));
                }
            }
            Some(Ok(Err(e))) => rec.errors.push(format!("W4: an instance failed: {e}")),
            Some(Err(e)) => rec.errors.push(format!("W4: an instance task failed: {e}")),
        }
    }
    rec.cpu = meter.stop();
    rec.done_at
        .sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    rec.completed = rec.done_at.len();
    rec.twice = seen.values().filter(|c| **c > 1).count();
    if rec.completed != n {
        rec.errors.push(format!(
            "W4: {} of {n} instances completed ({} lost)",
            rec.completed,
            n - rec.completed
        ));
    }
    if rec.twice > 0 {
        rec.errors
            .push(format!("W4: {} instances returned twice", rec.twice));
    }
    if kill_after.is_some() && rec.kill_at.is_none() {
        rec.errors
            .push("W4: the run ended before the kill; not a recovery test".into());
    }
    if let Some(from) = rec.kill_at.or(gap_after) {
        let mut prev = from;
        let mut gap: f64 = 0.0;
        for t in rec.done_at.iter().copied().filter(|t| *t >= from) {
            gap = gap.max(t - prev);
            prev = t;
        }
        rec.stall = Some(gap);
    }
    let dead = admin
        .peek(&transport.dead_letter_queue())
        .await?
        .map_or(0, |(m, _)| m)
        - dead0;
    if dead > 0 {
        rec.errors
            .push(format!("W4: {dead} messages were dead-lettered"));
    }

    rec.queues = transport.declared_queues();
    // Stop the workers still alive: closing stdin stops them gracefully.
    let start = usize::from(rec.kill_at.is_some());
    for (i, child) in children.iter_mut().enumerate() {
        if i < start {
            let _ = child.wait().await;
            continue;
        }
        drop(child.stdin.take());
        let mut out = String::new();
        if let Some(stdout) = child.stdout.take() {
            let mut lines = BufReader::new(stdout).lines();
            let read = async {
                while let Ok(Some(l)) = lines.next_line().await {
                    if l.starts_with("stats ") {
                        out = l;
                    }
                }
            };
            if tokio::time::timeout(Duration::from_secs(30), read)
                .await
                .is_err()
            {
                rec.errors
                    .push("W4: a worker did not stop within 30 s".into());
                let _ = child.start_kill();
            }
        }
        let _ = child.wait().await;
        let st = stats_line(&out);
        rec.duplicate_results += st.get("duplicate_results").copied().unwrap_or(0);
        rec.survivor_deliveries += st.get("processed").copied().unwrap_or(0);
    }
    Ok(rec)
}

//! Snapshot-model DTasks (`#[dtask(snapshot)]`) over RabbitMQ: loops of child awaits,
//! `when_all`, delays and spawned handles on two in-process workers, each on connections
//! of its own, so that an instance's saved state travels between workers in messages;
//! and a snapshot saved by one build of a function is refused by a changed one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use dtasks::{dtask, DTask, Status};
use dtasks_integration_tests::{registry, wait_for, within, Broker};
use serde::{Deserialize, Serialize};

/// How long any one instance of these tests may take.
const LIMIT: Duration = Duration::from_secs(60);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

/// A replay-model child: order-sensitive, so a lost, repeated or reordered result shows.
#[dtask]
async fn mix(v: u64, i: u64) -> u64 {
    v.rotate_left(7) ^ (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn mix_local(v: u64, i: u64) -> u64 {
    v.rotate_left(7) ^ (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// A snapshot-model child that suspends once before it answers.
#[dtask(snapshot)]
async fn tenfold(x: u64) -> u64 {
    DTask::yield_now().await;
    x * 10
}

/// How many times the code before each await of `counted_loop` ran, by seed.
static BODY_RUNS: Mutex<Option<HashMap<u64, usize>>> = Mutex::new(None);

/// A loop of `n` sequential child awaits; the code between awaits counts its runs.
#[dtask(snapshot)]
async fn counted_loop(seed: u64, n: u64) -> u64 {
    let mut v = seed;
    for i in 0..n {
        *BODY_RUNS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(HashMap::new)
            .entry(seed)
            .or_default() += 1;
        v = mix(v, i).await;
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loops_of_child_awaits_on_two_workers() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let w = b.workers(2, &registry![counted_loop, mix]).await?;
    let c = b.client().await?;
    // Twelve loops of 25 awaits at once, from distinct seeds.
    let n = 25;
    let seeds: Vec<u64> = (0..12).map(|k| 1_000 + k * 7_919).collect();
    let mut handles = Vec::new();
    for seed in &seeds {
        handles.push((*seed, c.start(counted_loop(*seed, n)).await?));
    }
    for (seed, h) in &handles {
        let got = within(LIMIT, "a loop's result", h.result()).await??;
        assert_eq!(got, (0..n).fold(*seed, mix_local), "the loop from {seed}");
        assert_eq!(h.status().await?, Status::Succeeded);
    }
    // Nothing was replayed: the code before each await ran once per iteration.
    let runs = BODY_RUNS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .unwrap_or_default();
    for seed in &seeds {
        assert_eq!(runs.get(seed), Some(&(n as usize)), "the loop from {seed}");
    }
    // Both workers took part, and nothing was dead-lettered.
    let stats = w.stats();
    assert!(stats.iter().all(|s| s.processed > 0), "{stats:?}");
    assert_eq!(b.queue_len(&format!("{}.dead", b.prefix())).await?, Some(0));
    w.stop().await?;
    b.cleanup().await
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Report {
    looped: u64,
    fanned: Vec<u64>,
    waited_ms: u64,
    spawned: u64,
    notes: Vec<String>,
}

/// Every kind of await at once: a spawned snapshot child awaited at the end, a loop of
/// children, a `when_all` of snapshot children, a delay; locals (a `Vec<String>`, a
/// timestamp read between awaits) are saved across all of them.
#[dtask(snapshot)]
async fn everything(n: u64, delay_ms: u64) -> Report {
    let handle = DTask::spawn(tenfold(7));
    let mut notes = vec!["started".to_string()];
    let mut looped = 0;
    for i in 0..n {
        looped = mix(looped, i).await;
    }
    notes.push(format!("looped {n}"));
    let fanned = DTask::when_all((1..=5).map(tenfold)).await;
    notes.push(format!("fanned {}", fanned.len()));
    // Not deterministic, which the snapshot model allows: read once, saved across the
    // delay.
    let before = now_ms();
    DTask::delay(Duration::from_millis(delay_ms)).await;
    let waited_ms = now_ms().saturating_sub(before);
    notes.push("delayed".to_string());
    let spawned = handle.await;
    Report {
        looped,
        fanned,
        waited_ms,
        spawned,
        notes,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_when_all_delay_and_spawn_in_one_instance() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let w = b.workers(2, &registry![everything, tenfold, mix]).await?;
    let c = b.client().await?;
    let delay_ms = 600;
    let hs = [
        c.start(everything(10, delay_ms)).await?,
        c.start(everything(3, delay_ms)).await?,
    ];
    for (h, n) in hs.iter().zip([10, 3]) {
        let r = within(LIMIT, "the instance's result", h.result()).await??;
        assert_eq!(r.looped, (0..n).fold(0, mix_local));
        assert_eq!(r.fanned, vec![10, 20, 30, 40, 50]);
        assert!(
            r.waited_ms >= delay_ms,
            "a {delay_ms} ms delay resumed after {} ms",
            r.waited_ms
        );
        assert_eq!(r.spawned, 70);
        assert_eq!(
            r.notes,
            vec![
                "started".to_string(),
                format!("looped {n}"),
                "fanned 5".to_string(),
                "delayed".to_string()
            ]
        );
    }
    let stats = w.stats();
    assert!(stats.iter().all(|s| s.processed > 0), "{stats:?}");
    assert_eq!(b.queue_len(&format!("{}.dead", b.prefix())).await?, Some(0));
    w.stop().await?;
    b.cleanup().await
}

/// Spawns children, awaits other work, and only then awaits the handles (in reverse).
#[dtask(snapshot)]
async fn spawn_many(k: u64) -> Vec<u64> {
    let mut handles: Vec<_> = (0..k).map(|i| DTask::spawn(tenfold(i))).collect();
    let mid = mix(1, 2).await;
    let mut out = vec![mid];
    while let Some(h) = handles.pop() {
        let v = h.await;
        out.push(v);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawned_handles_awaited_later_across_workers() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let w = b.workers(2, &registry![spawn_many, tenfold, mix]).await?;
    let c = b.client().await?;
    let h = c.start(spawn_many(6)).await?;
    let out = within(LIMIT, "the instance's result", h.result()).await??;
    assert_eq!(out, vec![mix_local(1, 2), 50, 40, 30, 20, 10, 0]);
    assert_eq!(b.queue_len(&format!("{}.dead", b.prefix())).await?, Some(0));
    w.stop().await?;
    b.cleanup().await
}

/// A child that only the workers of the second deployment run.
#[dtask]
async fn gate(x: u64) -> u64 {
    x + 5
}

/// The first build of a function...
#[dtask(snapshot, name = "it.snapshot.deployed")]
async fn deployed_v1(x: u64) -> u64 {
    let a = gate(x).await;
    a * 2
}

/// ... and a changed build under the same name (so with another fingerprint).
#[dtask(snapshot, name = "it.snapshot.deployed")]
async fn deployed_v2(x: u64) -> u64 {
    let a = gate(x).await;
    a * 3
}

/// A function both deployments run unchanged.
#[dtask(snapshot)]
async fn unchanged(x: u64) -> u64 {
    let a = gate(x).await;
    a + 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_changed_code_is_refused_after_a_redeploy() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let c = b.client().await?;
    // The first deployment runs the first step of each instance: both suspend awaiting
    // `gate`, which nobody runs yet, so their saved state waits in its start message.
    let old = b
        .workers(1, &registry![deployed_v1, unchanged])
        .await
        .context("the first deployment")?;
    let changed = c.start(deployed_v1(1)).await?;
    let same = c.start(unchanged(1)).await?;
    let gate_queue = format!("{}.task.gate", b.prefix());
    wait_for(Duration::from_secs(20), || async {
        Ok(b.queue_len(&gate_queue).await? == Some(2))
    })
    .await
    .context("both instances suspended at `gate`")?;
    // The worker records the status while it publishes the child's start, and acks the
    // step once both are durable: the status may come just after the child's start.
    wait_for(Duration::from_secs(20), || async {
        Ok(changed.status().await? == Status::Suspended)
    })
    .await
    .context("the changed instance is recorded as suspended")?;
    old.stop().await?;
    // The second deployment: `it.snapshot.deployed` changed, `unchanged` did not.
    let new = b
        .workers(2, &registry![deployed_v2, unchanged, gate])
        .await
        .context("the second deployment")?;
    // The unchanged function resumes from the old deployment's snapshot...
    assert_eq!(
        within(LIMIT, "the unchanged instance", same.result()).await??,
        7
    );
    // ... the changed one is refused, naming the fingerprints, and does not run.
    let err = within(LIMIT, "the changed instance", changed.result())
        .await?
        .expect_err("resumed under changed code");
    let f = err.failure().context("the instance failed")?;
    assert!(f.is_code_changed(), "{f}");
    assert!(f.message().contains("fingerprint"), "{f}");
    assert!(f.message().contains("accepts"), "{f}");
    assert_eq!(changed.status().await?, Status::Failed);
    assert_eq!(b.queue_len(&format!("{}.dead", b.prefix())).await?, Some(0));
    new.stop().await?;
    b.cleanup().await
}

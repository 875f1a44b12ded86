//! `#[dtask(snapshot)]` functions on the in-memory runtime, and the semantics that differ
//! from plain async.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use dtasks::test_util::{run_replay, run_snapshot, Op, World};
use dtasks::{dtask, DTask, Failure, Runtime, Status, WorkerConfig};
use serde::{Deserialize, Serialize};

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[dtask]
async fn add_one(x: u64) -> u64 {
    x + 1
}

static BEFORE: AtomicUsize = AtomicUsize::new(0);

#[dtask(snapshot)]
async fn sum_loop(n: u64) -> u64 {
    let mut total = 0;
    for i in 0..n {
        BEFORE.fetch_add(1, Ordering::SeqCst);
        let v = add_one(i).await;
        total += v;
    }
    let all = DTask::when_all((10..13).map(add_one)).await;
    total += all.iter().sum::<u64>();
    DTask::delay(Duration::from_secs(60)).await;
    total
}

#[tokio::test]
async fn a_loop_of_child_awaits_resumes_from_its_snapshot() -> TestResult {
    let rt = Runtime::builder(WorkerConfig::new().register(sum_loop).register(add_one))
        .virtual_time()
        .build()?;
    let h = rt.client().start(sum_loop(4)).await?;
    rt.wait_idle().await;
    assert_eq!(h.status().await?, Status::Suspended);
    rt.advance(Duration::from_secs(60));
    assert_eq!(h.result().await?, (1..=4).sum::<u64>() + 11 + 12 + 13);
    // The code before the await ran once per iteration: nothing was replayed.
    assert_eq!(BEFORE.load(Ordering::SeqCst), 4);
    Ok(())
}

#[dtask(snapshot)]
async fn snap_child(x: u64) -> u64 {
    let a = add_one(x).await;
    DTask::yield_now().await;
    a * 10
}

#[dtask(snapshot)]
async fn snap_parent(x: u64) -> (u64, u64, usize) {
    let handle = DTask::spawn(snap_child(x + 100));
    let direct = snap_child(x).await;
    let (i, _) = DTask::when_any([add_one(1), add_one(2)]).await;
    tokio::time::sleep(Duration::from_millis(2)).await;
    let spawned = handle.await;
    (direct, spawned, i)
}

#[tokio::test]
async fn snapshot_parents_and_children_on_several_workers_with_duplicates() -> TestResult {
    let rt = Runtime::builder(
        WorkerConfig::new()
            .register(snap_parent)
            .register(snap_child)
            .register(add_one),
    )
    .workers(3)
    .duplicate_delivery()
    .build()?;
    let (direct, spawned, i) = rt.client().start(snap_parent(5)).await?.result().await?;
    assert_eq!((direct, spawned), (60, 1060));
    assert!(i < 2);
    rt.wait_idle().await;
    assert!(rt.transport().dead_letters().is_empty());
    Ok(())
}

static CLOCK: AtomicU64 = AtomicU64::new(0);

#[dtask(snapshot)]
async fn reads_changing_state() -> Vec<u64> {
    let mut seen = Vec::new();
    for _ in 0..3 {
        // Non-deterministic between awaits: fine in the snapshot model.
        let now = CLOCK.fetch_add(1, Ordering::SeqCst);
        if now % 2 == 0 {
            seen.push(add_one(now).await);
        } else {
            DTask::yield_now().await;
            seen.push(now);
        }
    }
    seen
}

#[tokio::test]
async fn code_between_awaits_need_not_be_deterministic() -> TestResult {
    let rt = Runtime::new(
        WorkerConfig::new()
            .register(reads_changing_state)
            .register(add_one),
    )?;
    let seen = rt
        .client()
        .start(reads_changing_state())
        .await?
        .result()
        .await?;
    assert_eq!(seen, vec![1, 1, 3]);
    Ok(())
}

static DROPS: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[derive(Serialize, Deserialize)]
struct Noisy(String);

impl Drop for Noisy {
    fn drop(&mut self) {
        DROPS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(self.0.clone());
    }
}

#[dtask(snapshot)]
async fn drops_at_suspension() -> String {
    let unused = Noisy("dead".into());
    let kept = Noisy("kept".into());
    let _ = &unused;
    DTask::yield_now().await;
    DROPS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push("resumed".into());
    kept.0.clone()
}

#[tokio::test]
async fn locals_are_dropped_at_suspension_and_saved_ones_are_restored_copies() -> TestResult {
    let rt = Runtime::new(WorkerConfig::new().register(drops_at_suspension))?;
    let out = rt
        .client()
        .start(drops_at_suspension())
        .await?
        .result()
        .await?;
    assert_eq!(out, "kept");
    let drops = DROPS.lock().unwrap_or_else(|p| p.into_inner()).clone();
    // At the suspension the step's future is dropped with every local in it, the dead
    // one and the original of the saved one; the restored copy is dropped at the end.
    assert_eq!(drops, vec!["kept", "dead", "resumed", "kept"]);
    Ok(())
}

async fn helper_awaiting_a_dtask(x: u64) -> u64 {
    add_one(x).await + 1
}

#[dtask(snapshot)]
async fn awaits_a_dtask_through_a_local_future() -> u64 {
    helper_awaiting_a_dtask(1).await
}

#[dtask(snapshot)]
async fn holds_a_map_across_a_suspension() -> String {
    let (_, s) = DTask::when_any([add_one(1).map(|v| v.to_string())]).await;
    s
}

#[tokio::test]
async fn awaits_that_cannot_be_saved_fail_with_a_clear_message() -> TestResult {
    let rt = Runtime::new(
        WorkerConfig::new()
            .register(awaits_a_dtask_through_a_local_future)
            .register(holds_a_map_across_a_suspension)
            .register(add_one),
    )?;
    let c = rt.client();
    let err = c
        .start(awaits_a_dtask_through_a_local_future())
        .await?
        .result()
        .await
        .unwrap_err();
    let f = err.failure().expect("failed");
    assert!(f.is_misuse(), "{f}");
    assert!(f.message().contains("local future"), "{f}");
    assert!(f.message().contains("snapshot.rs:"), "{f}");
    let err = c
        .start(holds_a_map_across_a_suspension())
        .await?
        .result()
        .await
        .unwrap_err();
    let f = err.failure().expect("failed");
    assert!(f.is_misuse(), "{f}");
    assert!(f.message().contains("DTask::map"), "{f}");
    Ok(())
}

/// Completes every operation in issue order.
struct InOrder;

impl World for InOrder {
    fn resolve(&mut self, op: &Op) -> Result<Vec<u8>, Failure> {
        Ok(match &op.name {
            Some(_) => {
                let (x,): (u64,) = rmp_serde::from_slice(&op.input).expect("a u64");
                rmp_serde::to_vec(&(x + 1))
            }
            None => rmp_serde::to_vec(&()),
        }
        .expect("encodes"))
    }
    fn pick(&mut self, _: &[u32]) -> usize {
        0
    }
}

#[dtask(snapshot)]
async fn long_lived(n: u64) -> u64 {
    let mut acc = 0;
    let spawned = DTask::spawn(add_one(0));
    for i in 0..n {
        acc += add_one(i).await;
    }
    acc + spawned.await
}

#[tokio::test]
async fn the_state_does_not_grow_with_history() {
    let short = run_snapshot(
        "long_lived",
        rmp_serde::to_vec(&(10u64,)).unwrap(),
        &mut InOrder,
    )
    .await;
    let long = run_snapshot(
        "long_lived",
        rmp_serde::to_vec(&(1000u64,)).unwrap(),
        &mut InOrder,
    )
    .await;
    let expect = |n: u64| (1..=n).sum::<u64>() + 1;
    assert_eq!(short.result, Ok(rmp_serde::to_vec(&expect(10)).unwrap()));
    assert_eq!(long.result, Ok(rmp_serde::to_vec(&expect(1000)).unwrap()));
    assert_eq!(long.steps, 1002);
    // Consumed journal entries are compacted: the largest message of a 1,000-step history
    // is within a few bytes of a 10-step one (only the numbers in it grow wider).
    assert!(
        long.max_message <= short.max_message + 32,
        "{} vs {}",
        long.max_message,
        short.max_message
    );
}

#[dtask]
async fn long_lived_replay(n: u64) -> u64 {
    let mut acc = 0;
    let spawned = DTask::spawn(add_one(0));
    for i in 0..n {
        acc += add_one(i).await;
    }
    acc + spawned.await
}

#[tokio::test]
async fn replay_and_snapshot_agree_and_only_the_replay_state_grows() {
    let input = rmp_serde::to_vec(&(200u64,)).unwrap();
    let replay = run_replay("long_lived_replay", input.clone(), &mut InOrder).await;
    let snap = run_snapshot("long_lived", input, &mut InOrder).await;
    assert_eq!(replay.result, snap.result);
    assert_eq!(replay.steps, snap.steps);
    assert_eq!(replay.message_sizes.len(), snap.message_sizes.len());
    // The replay journal holds every step; the snapshot holds the pending await.
    let (r_last, s_last) = (replay.message_sizes[199], snap.message_sizes[199]);
    assert!(
        r_last > 10 * s_last,
        "replay {r_last} B, snapshot {s_last} B"
    );
}

#[dtask(snapshot)]
async fn no_awaits(x: u64) -> u64 {
    x * 3
}

#[dtask(snapshot)]
async fn unit_output(x: u64) {
    DTask::yield_now().await;
    assert_eq!(x, 4);
}

#[dtask(snapshot)]
async fn odds_and_ends(x: u64) -> String {
    #[derive(Serialize, Deserialize)]
    struct Acc {
        parts: Vec<String>,
    }
    let mut acc = Acc { parts: Vec::new() };
    let later;
    if x > 2 {
        later = add_one(x).await;
    } else {
        later = 0;
    }
    match add_one(later).await {
        0 => acc.parts.push("zero".into()),
        v => acc.parts.push(v.to_string()),
    }
    if add_one(x).await % 2 == 0 {
        acc.parts.push("even".into());
    }
    let r#type = add_one(1).await;
    acc.parts.push(r#type.to_string());
    acc.parts.join(" ")
}

#[tokio::test]
async fn small_shapes_compile_and_run() -> TestResult {
    let rt = Runtime::new(
        WorkerConfig::new()
            .register(no_awaits)
            .register(unit_output)
            .register(odds_and_ends)
            .register(add_one),
    )?;
    let c = rt.client();
    assert_eq!(c.start(no_awaits(2)).await?.result().await?, 6);
    c.start(unit_output(4)).await?.result().await?;
    assert_eq!(c.start(odds_and_ends(3)).await?.result().await?, "5 even 2");
    assert_eq!(c.start(odds_and_ends(1)).await?.result().await?, "1 even 2");
    Ok(())
}

//! A finished instance leaves nothing behind on the in-memory transport: once the replies
//! it still awaited are in (a `when_any` loser, a race's cancelled loser, a timer that lost
//! a timeout) and its mailbox's grace is over, its mailbox is deleted, and no keep-alive is
//! left parked. `MemoryTransport::mailboxes` and `pending_timers` see both. The late
//! replies are dropped: the instance's last step runs once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use dtasks::{dtask, DTask, InstanceId, Runtime, Transport, WorkerConfig};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const SECOND: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);

/// How often each test's fan-in ran its last step, by tag.
static ENDS: Mutex<Option<HashMap<String, u32>>> = Mutex::new(None);

fn ended(tag: &str) {
    let mut ends = ENDS.lock().unwrap_or_else(|p| p.into_inner());
    *ends
        .get_or_insert_with(HashMap::new)
        .entry(tag.to_string())
        .or_default() += 1;
}

fn ends(tag: &str) -> u32 {
    let ends = ENDS.lock().unwrap_or_else(|p| p.into_inner());
    ends.as_ref().and_then(|e| e.get(tag).copied()).unwrap_or(0)
}

/// A child whose state rides in its timer.
#[dtask(name = "leftovers.nap")]
async fn nap(secs: u64) -> u64 {
    DTask::delay(SECOND * secs as u32).await;
    secs
}

#[dtask(name = "leftovers.quick")]
async fn quick(x: u64) -> u64 {
    x
}

/// Fan-ins of every kind, each leaving something that comes after the end: a `when_any`
/// loser still running, a race's loser cancelled while its timer runs, a timeout's timer.
#[dtask(name = "leftovers.fan_in")]
async fn fan_in(tag: String, n: u64) -> u64 {
    let naps: u64 = DTask::when_all((1..=n).map(nap)).await.iter().sum();
    let (_, first) = DTask::when_any([quick(7), nap(60)]).await;
    let (_, raced) = DTask::race([quick(8), nap(120)]).await;
    let ((), q) = DTask::join((DTask::delay(5 * SECOND), quick(9))).await;
    let t = DTask::timeout(30 * SECOND, quick(10)).await.unwrap_or(0);
    DTask::run(move || async move { ended(&tag) }).await;
    naps + first + raced + q + t
}

/// The same in the snapshot model: the positions of the losers are compacted away, their
/// replies still come.
#[dtask(snapshot, name = "leftovers.fan_in_s")]
async fn fan_in_s(tag: String, n: u64) -> u64 {
    let naps: u64 = DTask::when_all((1..=n).map(nap)).await.iter().sum();
    let (_, first) = DTask::when_any([quick(7), nap(60)]).await;
    let (_, raced) = DTask::race([quick(8), nap(120)]).await;
    let ((), q) = DTask::join((DTask::delay(5 * SECOND), quick(9))).await;
    let t = DTask::timeout(30 * SECOND, quick(10)).await.unwrap_or(0);
    DTask::run(move || async move { ended(&tag) }).await;
    naps + first + raced + q + t
}

/// Waits `hours` on two timers at once, in its mailbox.
#[dtask(name = "leftovers.long_wait")]
async fn long_wait(hours: u64) -> u64 {
    let ((), ()) = DTask::join((
        DTask::delay(HOUR * hours as u32),
        DTask::delay(HOUR * hours as u32 + SECOND),
    ))
    .await;
    hours
}

fn config() -> WorkerConfig {
    WorkerConfig::new()
        .register(nap)
        .register(quick)
        .register(fan_in)
        .register(fan_in_s)
        .register(long_wait)
}

/// Moves virtual time on by `total`, `step` at a time, letting the workers finish what
/// each step made due.
async fn pass(rt: &Runtime, total: Duration, step: Duration) {
    let mut passed = Duration::ZERO;
    while passed < total {
        rt.advance(step);
        rt.wait_idle().await;
        passed += step;
    }
}

async fn nothing_left(rt: &Runtime) -> TestResult {
    let t = rt.transport();
    assert_eq!(t.mailboxes(), Vec::<InstanceId>::new(), "mailboxes left");
    assert_eq!(t.pending_timers().await?, Some(0), "timers left");
    assert!(t.dead_letters().is_empty(), "{:?}", t.dead_letters());
    Ok(())
}

/// Runs ten fan-ins of both models to their end, then past their losers and graces.
async fn fan_ins_leave_nothing(rt: Runtime, tag: &str) -> TestResult {
    let c = rt.client();
    let mut handles = Vec::new();
    for i in 0..5 {
        handles.push(c.start(fan_in(format!("{tag}-{i}"), 3)).await?);
        handles.push(c.start(fan_in_s(format!("{tag}-s{i}"), 3)).await?);
    }
    rt.wait_idle().await;
    // Every fan-in ends within 10 s; the losers come back up to two minutes later.
    pass(&rt, 15 * SECOND, SECOND).await;
    for h in &handles {
        assert_eq!(h.result().await?, 6 + 7 + 8 + 9 + 10);
    }
    assert!(
        !rt.transport().mailboxes().is_empty(),
        "the tombstones wait for the losers"
    );
    pass(&rt, 150 * SECOND, SECOND).await;
    nothing_left(&rt).await?;
    for i in 0..5 {
        assert_eq!(ends(&format!("{tag}-{i}")), 1, "replay {i}");
        assert_eq!(ends(&format!("{tag}-s{i}")), 1, "snapshot {i}");
    }
    Ok(())
}

#[tokio::test]
async fn fan_ins_leave_nothing_when_mailboxes_never_expire() -> TestResult {
    let rt = Runtime::builder(config())
        .virtual_time()
        .workers(2)
        .build()?;
    fan_ins_leave_nothing(rt, "never").await
}

#[tokio::test]
async fn fan_ins_leave_nothing_when_mailboxes_expire() -> TestResult {
    let rt = Runtime::builder(config())
        .virtual_time()
        .mailbox_retention(HOUR)
        .workers(2)
        .build()?;
    fan_ins_leave_nothing(rt, "expire").await
}

#[tokio::test]
async fn fan_ins_leave_nothing_when_every_message_comes_twice() -> TestResult {
    let rt = Runtime::builder(config())
        .virtual_time()
        .duplicate_delivery()
        .mailbox_retention(HOUR)
        .build()?;
    let c = rt.client();
    let h = c.start(fan_in("twice".to_string(), 3)).await?;
    let s = c.start(fan_in_s("twice-s".to_string(), 3)).await?;
    rt.wait_idle().await;
    pass(&rt, 165 * SECOND, SECOND).await;
    assert_eq!(h.result().await?, 40);
    assert_eq!(s.result().await?, 40);
    nothing_left(&rt).await?;
    // Steps run at least once: a duplicate of the last step may run it again, but the
    // late replies resurrect nothing.
    assert!(ends("twice") >= 1 && ends("twice-s") >= 1);
    Ok(())
}

/// A fan-in that waits ten retention periods keeps its mailbox through them (keep-alives
/// doubling from a second to a quarter of the retention) and, once finished, leaves no
/// keep-alive behind: the last one comes within a quarter of the retention.
#[tokio::test]
async fn a_long_wait_leaves_nothing_after_its_last_keepalive() -> TestResult {
    let rt = Runtime::builder(config())
        .virtual_time()
        .mailbox_retention(HOUR)
        .build()?;
    let h = rt.client().start(long_wait(10)).await?;
    rt.wait_idle().await;
    pass(&rt, 10 * HOUR + 2 * SECOND, 10 * SECOND).await;
    assert_eq!(h.result().await?, 10);
    assert_eq!(rt.transport().mailboxes().len(), 1, "the tombstone's grace");
    pass(&rt, HOUR / 4, 10 * SECOND).await;
    nothing_left(&rt).await
}

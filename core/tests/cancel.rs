//! Cancellation on the in-memory runtime under virtual time, in both execution models:
//! `Client::cancel` of a fan-out whose children and grandchildren all stop, a suspended
//! mailbox instance stopping at once, a clean-up scope running its compensation,
//! `DTask::race` losers stopping, `DTask::timeout`, and the statuses and failure kinds
//! (`Failure::is_cancelled`, `is_timeout`, `Error::is_not_found`).
//!
//! Each DTask exists twice: `name` (replay) and `name_s` (`#[dtask(snapshot)]`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use dtasks::{dtask, Call, DTask, InstanceId, Runtime, Status, Transport, WorkerConfig};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// What the DTasks did, by test tag (tests run in parallel in one process).
static LOG: Mutex<Option<HashMap<String, Vec<String>>>> = Mutex::new(None);

fn mark(tag: &str, what: String) {
    let mut log = LOG.lock().unwrap_or_else(|p| p.into_inner());
    log.get_or_insert_with(HashMap::new)
        .entry(tag.to_string())
        .or_default()
        .push(what);
}

fn log(tag: &str) -> Vec<String> {
    let log = LOG.lock().unwrap_or_else(|p| p.into_inner());
    log.as_ref()
        .and_then(|l| l.get(tag).cloned())
        .unwrap_or_default()
}

fn count(tag: &str, prefix: &str) -> usize {
    log(tag).iter().filter(|l| l.starts_with(prefix)).count()
}

const HOUR: Duration = Duration::from_secs(3600);

// ---- replay model ----

/// Waits `secs`, then awaits once more and notes that it finished.
#[dtask]
async fn sleeper(tag: String, secs: u64) -> u64 {
    DTask::delay(Duration::from_secs(secs)).await;
    DTask::yield_now().await;
    DTask::run(move || async move { mark(&tag, format!("sleeper finished {secs}")) }).await;
    secs
}

/// Waits on two sleepers (so in its mailbox); notes when it was stopped by a cancellation,
/// with the reason.
#[dtask]
async fn branch(tag: String, i: u32) -> u32 {
    let (a, b) = DTask::join((
        sleeper(tag.clone(), 3600).catch_failure(),
        sleeper(tag.clone(), 7200).catch_failure(),
    ))
    .await;
    let reason = match (a, b) {
        (Err(f), _) | (_, Err(f)) if f.is_cancelled() => Some(f.message().to_string()),
        _ => None,
    };
    if let Some(reason) = reason {
        DTask::run(move || async move { mark(&tag, format!("branch stopped {i}: {reason}")) })
            .await;
    }
    i
}

#[dtask]
async fn tree(tag: String, n: u32) -> Vec<u32> {
    DTask::when_all((0..n).map(|i| branch(tag.clone(), i))).await
}

#[dtask]
async fn quick(x: u32) -> u32 {
    x + 1
}

#[dtask]
async fn racer(tag: String) -> (usize, u32) {
    DTask::race([branch(tag, 7), quick(1)]).await
}

#[dtask]
async fn deadline(tag: String, secs: u64) -> Result<u32, String> {
    DTask::timeout(Duration::from_secs(secs), branch(tag, 9))
        .await
        .map_err(|f| {
            assert!(f.is_timeout(), "{f}");
            f.message().to_string()
        })
}

#[dtask]
async fn quick_deadline() -> Result<u32, String> {
    DTask::timeout(HOUR, quick(41))
        .await
        .map_err(|f| f.to_string())
}

#[dtask]
async fn charge(tag: String, cents: u64) -> u64 {
    DTask::run(move || async move { mark(&tag, format!("charged {cents}")) }).await;
    cents
}

/// A compensation that itself waits (a timer and a child): neither is cancelled.
#[dtask]
async fn refund(tag: String, cents: u64) -> u64 {
    DTask::delay(Duration::from_secs(1)).await;
    let back = quick(cents as u32).await as u64 - 1;
    DTask::run(move || async move { mark(&tag, format!("refunded {back}")) }).await;
    back
}

/// Charges, then waits for the shipment; cancelled meanwhile, it refunds in a clean-up
/// scope.
#[dtask]
async fn order(tag: String) -> String {
    let charged = charge(tag.clone(), 250).await;
    match sleeper(tag.clone(), 3600).catch_failure().await {
        Ok(_) => "shipped".to_string(),
        Err(f) if f.is_cancelled() => {
            DTask::cleanup(refund(tag.clone(), charged)).await;
            DTask::cleanup(DTask::delay(Duration::from_secs(5))).await;
            DTask::run(move || async move { mark(&tag, "compensated".to_string()) }).await;
            "refunded".to_string()
        }
        Err(f) => panic!("{f}"),
    }
}

/// Waits on one timer: its state rides in the timer's message.
#[dtask]
async fn one_timer(tag: String) -> u32 {
    DTask::delay(HOUR).await;
    let t = tag.clone();
    DTask::run(move || async move { mark(&t, "one_timer ran on".to_string()) }).await;
    DTask::yield_now().await;
    DTask::run(move || async move { mark(&tag, "one_timer finished".to_string()) }).await;
    1
}

/// Waits on one sleeper: its state rides in the sleeper's start, then in its timer.
#[dtask]
async fn waits_on(tag: String, secs: u64) -> u64 {
    sleeper(tag, secs).await
}

// ---- snapshot model ----

#[dtask(snapshot)]
async fn sleeper_s(tag: String, secs: u64) -> u64 {
    DTask::delay(Duration::from_secs(secs)).await;
    DTask::yield_now().await;
    DTask::run(move || async move { mark(&tag, format!("sleeper finished {secs}")) }).await;
    secs
}

#[dtask(snapshot)]
async fn waits_on_s(tag: String, secs: u64) -> u64 {
    sleeper_s(tag, secs).await
}

#[dtask(snapshot)]
async fn branch_s(tag: String, i: u32) -> u32 {
    let (a, b) = DTask::join((
        sleeper_s(tag.clone(), 3600).catch_failure(),
        sleeper_s(tag.clone(), 7200).catch_failure(),
    ))
    .await;
    let reason = match (a, b) {
        (Err(f), _) | (_, Err(f)) if f.is_cancelled() => Some(f.message().to_string()),
        _ => None,
    };
    if let Some(reason) = reason {
        DTask::run(move || async move { mark(&tag, format!("branch stopped {i}: {reason}")) })
            .await;
    }
    i
}

#[dtask(snapshot)]
async fn tree_s(tag: String, n: u32) -> Vec<u32> {
    let parts: Vec<_> = (0..n).map(|i| branch_s(tag.clone(), i)).collect();
    DTask::when_all(parts).await
}

#[dtask(snapshot)]
async fn racer_s(tag: String) -> (usize, u32) {
    DTask::race([branch_s(tag, 7), quick(1)]).await
}

#[dtask(snapshot)]
async fn deadline_s(tag: String, secs: u64) -> Result<u32, String> {
    let r = DTask::timeout(Duration::from_secs(secs), branch_s(tag, 9)).await;
    match r {
        Ok(v) => Ok(v),
        Err(f) => {
            assert!(f.is_timeout(), "{f}");
            Err(f.message().to_string())
        }
    }
}

#[dtask(snapshot)]
async fn order_s(tag: String) -> String {
    let charged = charge(tag.clone(), 250).await;
    let shipped = sleeper_s(tag.clone(), 3600).catch_failure().await;
    let cancelled = matches!(&shipped, Err(f) if f.is_cancelled());
    if !cancelled {
        return "shipped".to_string();
    }
    DTask::cleanup(refund(tag.clone(), charged)).await;
    DTask::cleanup(DTask::delay(Duration::from_secs(5))).await;
    DTask::run(move || async move { mark(&tag, "compensated".to_string()) }).await;
    "refunded".to_string()
}

/// Which model a test runs.
#[derive(Clone, Copy, Debug)]
enum Model {
    Replay,
    Snapshot,
}

impl Model {
    fn tag(self, test: &str) -> String {
        format!("{test}-{self:?}")
    }
    fn tree(self, tag: &str, n: u32) -> Call<Vec<u32>> {
        match self {
            Model::Replay => tree(tag.into(), n),
            Model::Snapshot => tree_s(tag.into(), n),
        }
    }
    fn racer(self, tag: &str) -> Call<(usize, u32)> {
        match self {
            Model::Replay => racer(tag.into()),
            Model::Snapshot => racer_s(tag.into()),
        }
    }
    fn deadline(self, tag: &str, secs: u64) -> Call<Result<u32, String>> {
        match self {
            Model::Replay => deadline(tag.into(), secs),
            Model::Snapshot => deadline_s(tag.into(), secs),
        }
    }
    fn waits_on(self, tag: &str, secs: u64) -> Call<u64> {
        match self {
            Model::Replay => waits_on(tag.into(), secs),
            Model::Snapshot => waits_on_s(tag.into(), secs),
        }
    }
    fn order(self, tag: &str) -> Call<String> {
        match self {
            Model::Replay => order(tag.into()),
            Model::Snapshot => order_s(tag.into()),
        }
    }
}

fn runtime() -> Result<Runtime, dtasks::Error> {
    let config = WorkerConfig::new()
        .register(sleeper)
        .register(branch)
        .register(tree)
        .register(quick)
        .register(racer)
        .register(deadline)
        .register(quick_deadline)
        .register(charge)
        .register(refund)
        .register(order)
        .register(one_timer)
        .register(waits_on)
        .register(waits_on_s)
        .register(sleeper_s)
        .register(branch_s)
        .register(tree_s)
        .register(racer_s)
        .register(deadline_s)
        .register(order_s);
    Runtime::builder(config).virtual_time().workers(2).build()
}

async fn a_fan_out_stops_with_its_children_and_grandchildren(model: Model) -> TestResult {
    let tag = model.tag("fan_out");
    let rt = runtime()?;
    let h = rt.client().start(model.tree(&tag, 5)).await?;
    rt.wait_idle().await;
    assert_eq!(h.status().await?, Status::Suspended);
    // 5 branches, each waiting on 2 sleepers: 10 timers.
    assert_eq!(rt.transport().pending_timers().await?, Some(10));

    assert!(rt.client().cancel(h.id(), "customer left").await?);
    // No time passes: the root and its branches wait in their mailboxes and stop at once.
    rt.wait_idle().await;
    let err = h.result().await.unwrap_err();
    assert!(err.is_cancelled(), "{err}");
    assert_eq!(err.failure().expect("failed").message(), "customer left");
    assert_eq!(h.status().await?, Status::Cancelled);
    let stopped = log(&tag);
    assert_eq!(count(&tag, "branch stopped"), 5, "{stopped:?}");
    assert!(
        stopped
            .iter()
            .all(|l| !l.starts_with("branch") || l.ends_with(": customer left")),
        "{stopped:?}"
    );

    // The sleepers' states ride in their timers: the transport brings each timer to a
    // worker before its time, and each sleep ends cancelled; none finishes, then or
    // later.
    assert_eq!(count(&tag, "sleeper finished"), 0, "{:?}", log(&tag));
    rt.advance(3 * HOUR);
    rt.wait_idle().await;
    assert_eq!(count(&tag, "sleeper finished"), 0, "{:?}", log(&tag));
    // Each stopped sleeper leaves a tombstone in the mailbox its cancel item went to, and
    // the probe that deletes that mailbox once its grace is over: then nothing is left.
    rt.advance(Duration::from_secs(1));
    rt.wait_idle().await;
    assert_eq!(rt.transport().pending_timers().await?, Some(0));
    assert_eq!(rt.transport().mailboxes(), Vec::<InstanceId>::new());
    assert!(rt.transport().dead_letters().is_empty());
    Ok(())
}

#[tokio::test]
async fn a_fan_out_stops_with_its_children_and_grandchildren_replay() -> TestResult {
    a_fan_out_stops_with_its_children_and_grandchildren(Model::Replay).await
}

#[tokio::test]
async fn a_fan_out_stops_with_its_children_and_grandchildren_snapshot() -> TestResult {
    a_fan_out_stops_with_its_children_and_grandchildren(Model::Snapshot).await
}

async fn a_clean_up_scope_runs_the_compensation(model: Model) -> TestResult {
    let tag = model.tag("cleanup");
    let rt = runtime()?;
    let h = rt.client().start(model.order(&tag)).await?;
    rt.wait_idle().await;
    assert_eq!(log(&tag), vec!["charged 250".to_string()]);
    assert!(rt.client().cancel(h.id(), "out of stock").await?);
    rt.wait_idle().await;
    // The order waits on the shipment alone (its state rides in the shipment's start,
    // which rides in its timer): the timer is brought before its time, the shipment
    // ends cancelled, and the order's clean-up begins, with no time passing.
    assert_eq!(h.status().await?, Status::Suspended);
    assert_eq!(count(&tag, "refunded"), 0, "{:?}", log(&tag));
    // The refund (a timer, a child) and the clean-up delay run despite the cancellation:
    // their sleeps, in clean-up scopes, wait their full time.
    rt.advance(Duration::from_millis(999));
    rt.wait_idle().await;
    assert_eq!(count(&tag, "refunded"), 0, "{:?}", log(&tag));
    rt.advance(Duration::from_millis(1));
    rt.wait_idle().await;
    assert_eq!(count(&tag, "refunded 250"), 1, "{:?}", log(&tag));
    rt.advance(Duration::from_millis(4_999));
    rt.wait_idle().await;
    assert_eq!(count(&tag, "compensated"), 0);
    assert_eq!(h.try_result().await?, None);
    rt.advance(Duration::from_millis(1));
    let err = h.result().await.unwrap_err();
    assert!(err.is_cancelled(), "{err}");
    assert_eq!(err.failure().expect("failed").message(), "out of stock");
    assert_eq!(count(&tag, "compensated"), 1, "{:?}", log(&tag));
    assert_eq!(count(&tag, "sleeper finished"), 0);
    assert_eq!(h.status().await?, Status::Cancelled);
    Ok(())
}

#[tokio::test]
async fn a_clean_up_scope_runs_the_compensation_replay() -> TestResult {
    a_clean_up_scope_runs_the_compensation(Model::Replay).await
}

#[tokio::test]
async fn a_clean_up_scope_runs_the_compensation_snapshot() -> TestResult {
    a_clean_up_scope_runs_the_compensation(Model::Snapshot).await
}

async fn race_losers_stop(model: Model) -> TestResult {
    let tag = model.tag("race");
    let rt = runtime()?;
    let (winner, v) = rt.client().start(model.racer(&tag)).await?.result().await?;
    assert_eq!((winner, v), (1, 2));
    // The loser (a branch waiting on two sleepers in its mailbox) stops at once, told
    // who won.
    rt.wait_idle().await;
    let lines = log(&tag);
    assert_eq!(count(&tag, "branch stopped 7"), 1, "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("lost DTask::race to part 1")),
        "{lines:?}"
    );
    // Its own children stop when their timers fire (a record names their ancestor).
    rt.advance(3 * HOUR);
    rt.wait_idle().await;
    assert_eq!(count(&tag, "sleeper finished"), 0, "{:?}", log(&tag));
    Ok(())
}

#[tokio::test]
async fn race_losers_stop_replay() -> TestResult {
    race_losers_stop(Model::Replay).await
}

#[tokio::test]
async fn race_losers_stop_snapshot() -> TestResult {
    race_losers_stop(Model::Snapshot).await
}

async fn a_timeout_fails_as_a_timeout_and_cancels_the_task(model: Model) -> TestResult {
    let tag = model.tag("timeout");
    let rt = runtime()?;
    let h = rt.client().start(model.deadline(&tag, 30)).await?;
    rt.wait_idle().await;
    rt.advance(Duration::from_secs(29));
    rt.wait_idle().await;
    assert_eq!(h.try_result().await?, None);
    rt.advance(Duration::from_secs(1));
    assert_eq!(
        h.result().await?,
        Err("timed out after 30000 ms".to_string())
    );
    rt.wait_idle().await;
    assert_eq!(
        count(&tag, "branch stopped 9: timed out"),
        1,
        "{:?}",
        log(&tag)
    );
    rt.advance(3 * HOUR);
    rt.wait_idle().await;
    assert_eq!(count(&tag, "sleeper finished"), 0, "{:?}", log(&tag));

    // The task first: its value.
    let h = rt.client().start(quick_deadline()).await?;
    assert_eq!(h.result().await?, Ok(42));
    Ok(())
}

#[tokio::test]
async fn a_timeout_fails_as_a_timeout_and_cancels_the_task_replay() -> TestResult {
    a_timeout_fails_as_a_timeout_and_cancels_the_task(Model::Replay).await
}

#[tokio::test]
async fn a_timeout_fails_as_a_timeout_and_cancels_the_task_snapshot() -> TestResult {
    a_timeout_fails_as_a_timeout_and_cancels_the_task(Model::Snapshot).await
}

#[tokio::test]
async fn unknown_finished_and_twice() -> TestResult {
    let rt = runtime()?;
    let c = rt.client();
    let err = c
        .cancel(&InstanceId::new("no-such-instance")?, "why")
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");

    // Finished: nothing changes, and the caller is told.
    let done = c.start(quick(1)).await?;
    assert_eq!(done.result().await?, 2);
    assert!(!c.cancel(done.id(), "too late").await?);
    assert_eq!(done.result().await?, 2);
    assert_eq!(done.status().await?, Status::Succeeded);

    // Twice: harmless, the first reason stands.
    let tag = "twice";
    let h = c.start(tree(tag.into(), 2)).await?;
    rt.wait_idle().await;
    assert!(c.cancel(h.id(), "first").await?);
    assert!(c.cancel(h.id(), "second").await?);
    rt.wait_idle().await;
    let err = h.result().await.unwrap_err();
    assert_eq!(err.failure().expect("failed").message(), "first");
    assert!(!c.cancel(h.id(), "third").await?);
    assert_eq!(h.status().await?, Status::Cancelled);
    assert!(rt.transport().dead_letters().is_empty());
    Ok(())
}

#[tokio::test]
async fn an_instance_asleep_on_one_timer_stops_at_once() -> TestResult {
    let tag = "one_timer";
    let rt = runtime()?;
    let h = rt.client().start(one_timer(tag.into())).await?;
    rt.wait_idle().await;
    assert_eq!(rt.transport().pending_timers().await?, Some(1));
    assert!(rt.client().cancel(h.id(), "stop").await?);
    // No time passes: the timer that holds its state is brought to a worker before its
    // time, and the sleep ends cancelled.
    rt.wait_idle().await;
    let err = h.try_result().await.expect_err("ended cancelled");
    assert!(err.is_cancelled(), "{err}");
    assert_eq!(err.failure().expect("failed").message(), "stop");
    // The sleep's own await failed: nothing after it ran.
    assert_eq!(log(tag), Vec::<String>::new());
    // Nothing stays parked: the timer was taken, and the tombstone's probe deletes the
    // mailbox once its grace is over.
    rt.advance(Duration::from_secs(1));
    rt.wait_idle().await;
    assert_eq!(rt.transport().pending_timers().await?, Some(0));
    assert_eq!(rt.transport().mailboxes(), Vec::<InstanceId>::new());
    rt.advance(HOUR);
    rt.wait_idle().await;
    assert_eq!(log(tag), Vec::<String>::new());
    Ok(())
}

/// A 30-day sleep, in a child whose state carries its parent's (one operation each):
/// both end cancelled at once.
async fn a_month_long_sleep_stops_at_once(model: Model) -> TestResult {
    let tag = model.tag("month");
    let rt = runtime()?;
    let month = 30 * 24 * 3600;
    let h = rt.client().start(model.waits_on(&tag, month)).await?;
    rt.wait_idle().await;
    assert_eq!(h.status().await?, Status::Suspended);
    assert!(rt.client().cancel(h.id(), "not needed").await?);
    rt.wait_idle().await;
    let err = h.try_result().await.expect_err("ended cancelled");
    assert!(err.is_cancelled(), "{err}");
    assert_eq!(err.failure().expect("failed").message(), "not needed");
    assert_eq!(h.status().await?, Status::Cancelled);
    rt.advance(Duration::from_secs(1));
    rt.wait_idle().await;
    assert_eq!(rt.transport().pending_timers().await?, Some(0));
    assert_eq!(count(&tag, "sleeper finished"), 0, "{:?}", log(&tag));
    assert!(rt.transport().dead_letters().is_empty());
    Ok(())
}

#[tokio::test]
async fn a_month_long_sleep_stops_at_once_replay() -> TestResult {
    a_month_long_sleep_stops_at_once(Model::Replay).await
}

#[tokio::test]
async fn a_month_long_sleep_stops_at_once_snapshot() -> TestResult {
    a_month_long_sleep_stops_at_once(Model::Snapshot).await
}

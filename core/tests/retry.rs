//! Retries under virtual time, in both execution models: `DTask::run_with_retry` for
//! local side effects and `call.retry(policy)` for child calls. Attempts are counted by a
//! side effect, and each one must happen at its exact virtual instant (never early).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use dtasks::{dtask, Call, DTask, Failure, Handle, RetryPolicy, Runtime, WorkerConfig};

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Attempts made so far, by test tag.
static ATTEMPTS: Mutex<Option<HashMap<String, u32>>> = Mutex::new(None);

fn attempt(tag: &str) -> u32 {
    let mut all = ATTEMPTS.lock().unwrap();
    let n = all
        .get_or_insert_with(HashMap::new)
        .entry(tag.to_string())
        .or_insert(0);
    *n += 1;
    *n
}

fn attempts(tag: &str) -> u32 {
    let all = ATTEMPTS.lock().unwrap();
    all.as_ref().and_then(|m| m.get(tag).copied()).unwrap_or(0)
}

/// 10 s, then 20 s, then 40 s (capped at 30 s): attempts at 0, 10, 30 and 60 s.
fn policy(max_attempts: u32) -> RetryPolicy {
    RetryPolicy::new()
        .with_max_attempts(max_attempts)
        .with_initial_delay(Duration::from_secs(10))
        .with_backoff_factor(2.0)
        .with_max_delay(Duration::from_secs(30))
}

/// The side effect: fails with `"attempt n"` (or `"fatal n"` when `fatal`) until attempt
/// `fails + 1`.
async fn effect(tag: String, fails: u32, fatal: bool) -> Result<u32, String> {
    let n = attempt(&tag);
    if n <= fails {
        let what = if fatal { "fatal" } else { "attempt" };
        Err(format!("{what} {n}"))
    } else {
        Ok(n)
    }
}

/// Whether an error of [`effect`] is worth another attempt.
#[allow(clippy::ptr_arg)] // the predicate's argument is `&E`, and `E` is `String`
fn transient(e: &String) -> bool {
    !e.starts_with("fatal")
}

#[dtask(name = "retry.run_replay")]
async fn run_replay(tag: String, fails: u32, max: u32, fatal: bool) -> Result<u32, String> {
    DTask::yield_now().await;
    let v = DTask::run_with_retry_if(policy(max), transient, move || {
        effect(tag.clone(), fails, fatal)
    })
    .await?;
    Ok(v * 10)
}

#[dtask(name = "retry.run_snapshot", snapshot)]
async fn run_snapshot(tag: String, fails: u32, max: u32, fatal: bool) -> Result<u32, String> {
    DTask::yield_now().await;
    let label = format!("{tag}!");
    let v = DTask::run_with_retry_if(policy(max), transient, move || {
        effect(tag.clone(), fails, fatal)
    })
    .await?;
    // A local saved across the retry's waits.
    assert!(label.ends_with('!'));
    Ok(v * 10)
}

/// A child that panics until attempt `fails + 1` (or fails with bad input when `bad`).
#[dtask(name = "retry.flaky")]
async fn flaky(tag: String, fails: u32) -> u32 {
    let n = attempt(&tag);
    if n <= fails {
        panic!("flaky attempt {n}");
    }
    n
}

#[dtask(name = "retry.call_replay")]
async fn call_replay(tag: String, fails: u32, max: u32, panics_only: bool) -> Result<u32, String> {
    let call = flaky(tag, fails).retry(policy(max));
    let call = if panics_only {
        call.retry_if(|f: &Failure| !f.is_panic())
    } else {
        call
    };
    call.catch_failure().await.map_err(|f| f.to_string())
}

#[dtask(name = "retry.call_snapshot", snapshot)]
async fn call_snapshot(
    tag: String,
    fails: u32,
    max: u32,
    panics_only: bool,
) -> Result<u32, String> {
    let before = tag.len();
    let r = flaky(tag.clone(), fails)
        .retry(policy(max))
        .retry_if(move |f: &Failure| !(panics_only && f.is_panic()))
        .catch_failure()
        .await
        .map_err(|f| f.to_string());
    assert_eq!(before, tag.len());
    r
}

/// A child failure that is not caught fails the awaiting instance.
#[dtask(name = "retry.uncaught_replay")]
async fn uncaught_replay(tag: String) -> u32 {
    flaky(tag, 99).retry(policy(2)).await
}

#[dtask(name = "retry.uncaught_snapshot", snapshot)]
async fn uncaught_snapshot(tag: String) -> u32 {
    flaky(tag, 99).retry(policy(2)).await
}

/// A retry built before the await that waits for it: a resume could not build it again.
#[dtask(name = "retry.through_a_local", snapshot)]
async fn through_a_local(tag: String) -> Result<u32, String> {
    let retried = DTask::run_with_retry(policy(3), move || effect(tag.clone(), 99, false));
    retried.await
}

fn runtime() -> Runtime {
    let config = WorkerConfig::new()
        .register(through_a_local)
        .register(run_replay)
        .register(run_snapshot)
        .register(flaky)
        .register(call_replay)
        .register(call_snapshot)
        .register(uncaught_replay)
        .register(uncaught_snapshot);
    Runtime::builder(config)
        .virtual_time()
        .build()
        .expect("runtime")
}

/// Steps virtual time through `instants` (seconds from now): just before each, the count
/// of attempts must still be the one before; at it, one more.
async fn expect_attempts_at<T>(rt: &Runtime, tag: &str, instants: &[u64], h: &Handle<T>)
where
    T: serde::de::DeserializeOwned,
{
    rt.wait_idle().await;
    assert_eq!(attempts(tag), 1, "{tag}: the first attempt runs at once");
    let mut now = 0;
    for (i, at) in instants.iter().enumerate() {
        let before = i as u32 + 1;
        rt.advance(Duration::from_millis((at - now) * 1000 - 1));
        rt.wait_idle().await;
        assert_eq!(attempts(tag), before, "{tag}: an attempt ran before {at} s");
        assert!(h.try_result().await.expect("read").is_none());
        rt.advance(Duration::from_millis(1));
        rt.wait_idle().await;
        assert_eq!(attempts(tag), before + 1, "{tag}: no attempt at {at} s");
        now = *at;
    }
}

async fn run_case<T>(rt: &Runtime, call: Call<T>, tag: &str, instants: &[u64]) -> T
where
    T: serde::de::DeserializeOwned + Send + 'static,
{
    let h = rt.client().start(call).await.expect("start");
    expect_attempts_at(rt, tag, instants, &h).await;
    let r = tokio::time::timeout(Duration::from_secs(10), h.result()).await;
    r.expect("finished").expect("result")
}

#[tokio::test]
async fn run_with_retry_succeeds_on_the_third_attempt_at_the_backoff_instants() -> TestResult {
    let rt = runtime();
    let r = run_case(&rt, run_replay("r3".into(), 2, 5, false), "r3", &[10, 30]).await;
    assert_eq!(r, Ok(30));
    assert_eq!(attempts("r3"), 3);
    let r = run_case(&rt, run_snapshot("s3".into(), 2, 5, false), "s3", &[10, 30]).await;
    assert_eq!(r, Ok(30));
    assert_eq!(attempts("s3"), 3);
    Ok(())
}

#[tokio::test]
async fn run_with_retry_returns_the_last_error_when_the_attempts_run_out() -> TestResult {
    let rt = runtime();
    // Four attempts: waits of 10, 20 and 30 s (40 capped).
    let r = run_case(
        &rt,
        run_replay("rx".into(), 99, 4, false),
        "rx",
        &[10, 30, 60],
    )
    .await;
    assert_eq!(r, Err("attempt 4".to_string()));
    let r = run_case(
        &rt,
        run_snapshot("sx".into(), 99, 4, false),
        "sx",
        &[10, 30, 60],
    )
    .await;
    assert_eq!(r, Err("attempt 4".to_string()));
    // No fifth attempt, however long we wait.
    rt.advance(Duration::from_secs(3600));
    rt.wait_idle().await;
    assert_eq!((attempts("rx"), attempts("sx")), (4, 4));
    Ok(())
}

#[tokio::test]
async fn an_error_the_predicate_rejects_is_not_retried() -> TestResult {
    let rt = runtime();
    let r = run_case(&rt, run_replay("rf".into(), 99, 5, true), "rf", &[]).await;
    assert_eq!(r, Err("fatal 1".to_string()));
    let r = run_case(&rt, run_snapshot("sf".into(), 99, 5, true), "sf", &[]).await;
    assert_eq!(r, Err("fatal 1".to_string()));
    rt.advance(Duration::from_secs(3600));
    rt.wait_idle().await;
    assert_eq!((attempts("rf"), attempts("sf")), (1, 1));
    Ok(())
}

#[tokio::test]
async fn a_failing_child_is_retried_with_a_new_child_at_the_backoff_instants() -> TestResult {
    let rt = runtime();
    let r = run_case(&rt, call_replay("rc".into(), 2, 3, false), "rc", &[10, 30]).await;
    assert_eq!(r, Ok(3));
    let r = run_case(
        &rt,
        call_snapshot("sc".into(), 2, 3, false),
        "sc",
        &[10, 30],
    )
    .await;
    assert_eq!(r, Ok(3));
    assert_eq!((attempts("rc"), attempts("sc")), (3, 3));
    Ok(())
}

#[tokio::test]
async fn an_exhausted_child_retry_names_the_attempts_and_quotes_the_last_failure() -> TestResult {
    let rt = runtime();
    for (tag, call) in [
        ("rcx", call_replay("rcx".into(), 99, 3, false)),
        ("scx", call_snapshot("scx".into(), 99, 3, false)),
    ] {
        let r = run_case(&rt, call, tag, &[10, 30]).await;
        let msg = r.expect_err("the attempts ran out");
        assert!(msg.contains("failed 3 attempts"), "{msg}");
        assert!(msg.contains("flaky attempt 3"), "{msg}");
        assert!(msg.contains("retry.flaky"), "{msg}");
        assert_eq!(attempts(tag), 3);
    }
    // Uncaught: the awaiting instance fails with a child failure.
    for (tag, call) in [
        ("ru", uncaught_replay("ru".into())),
        ("su", uncaught_snapshot("su".into())),
    ] {
        let h = rt.client().start(call).await?;
        expect_attempts_at(&rt, tag, &[10], &h).await;
        let err = h.result().await.expect_err("failed");
        let f = err.failure().expect("a failure");
        assert!(f.is_child_failure(), "{f}");
        assert!(f.message().contains("failed 2 attempts"), "{f}");
        assert!(f.message().contains("flaky attempt 2"), "{f}");
    }
    Ok(())
}

#[tokio::test]
async fn a_child_failure_the_predicate_rejects_is_not_retried() -> TestResult {
    let rt = runtime();
    for (tag, call) in [
        ("rcp", call_replay("rcp".into(), 99, 5, true)),
        ("scp", call_snapshot("scp".into(), 99, 5, true)),
    ] {
        let r = run_case(&rt, call, tag, &[]).await;
        let msg = r.expect_err("not retried");
        assert!(msg.contains("at attempt 1"), "{msg}");
        assert!(msg.contains("flaky attempt 1"), "{msg}");
        rt.advance(Duration::from_secs(3600));
        rt.wait_idle().await;
        assert_eq!(attempts(tag), 1);
    }
    Ok(())
}

#[test]
fn invalid_policy_values_are_clamped() {
    let p = RetryPolicy::new()
        .with_max_attempts(0)
        .with_backoff_factor(f64::NAN)
        .with_initial_delay(Duration::from_secs(5))
        .with_max_delay(Duration::from_secs(2));
    assert_eq!(p.max_attempts(), 1);
    assert_eq!(p.backoff_factor(), 1.0);
    assert_eq!(p.delay_after(1), Duration::from_secs(2));
    assert_eq!(
        RetryPolicy::new().with_backoff_factor(0.1).backoff_factor(),
        1.0
    );
    let d = RetryPolicy::default();
    assert_eq!(
        (
            d.max_attempts(),
            d.initial_delay(),
            d.backoff_factor(),
            d.max_delay()
        ),
        (3, Duration::from_secs(1), 2.0, Duration::from_secs(60))
    );
    let huge = RetryPolicy::new().with_backoff_factor(f64::INFINITY);
    assert_eq!(huge.delay_after(1), Duration::from_secs(1));
    assert_eq!(huge.delay_after(2), Duration::from_secs(60));
    assert_eq!(huge.delay_after(u32::MAX), Duration::from_secs(60));
}

#[tokio::test]
async fn a_snapshot_retry_not_written_in_its_await_fails_clearly_when_it_must_wait() -> TestResult {
    let rt = runtime();
    let h = rt.client().start(through_a_local("local".into())).await?;
    rt.wait_idle().await;
    let err = h.result().await.expect_err("it cannot be saved");
    let f = err.failure().expect("a failure");
    assert!(f.is_misuse(), "{f}");
    assert!(
        f.message().contains("DTask::run_with_retry(..).await"),
        "{f}"
    );
    assert_eq!(attempts("local"), 1);
    Ok(())
}

//! The DTask API on the embedded in-memory runtime.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use dtasks::{dtask, Call, DTask, Failure, InstanceId, Runtime, Status, Transport, WorkerConfig};
use serde::{Deserialize, Serialize};

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[dtask]
async fn add_one(x: u64) -> u64 {
    x + 1
}

#[dtask]
async fn chain3(x: u64) -> u64 {
    middle(x).await + 100
}

#[dtask]
async fn middle(x: u64) -> u64 {
    add_one(x).await * 2
}

#[tokio::test]
async fn a_call_returns_its_result() -> TestResult {
    let rt = Runtime::new(WorkerConfig::new().register(add_one))?;
    let h = rt.client().start(add_one(41)).await?;
    assert_eq!(h.result().await?, 42);
    assert_eq!(h.status().await?, Status::Succeeded);
    Ok(())
}

#[tokio::test]
async fn a_three_deep_chain_of_children() -> TestResult {
    let rt = Runtime::new(
        WorkerConfig::new()
            .register(chain3)
            .register(middle)
            .register(add_one),
    )?;
    let h = rt.client().start(chain3(4)).await?;
    assert_eq!(h.result().await?, (4 + 1) * 2 + 100);
    Ok(())
}

#[dtask]
async fn fan_out(n: u64) -> u64 {
    let all = DTask::when_all((0..n).map(add_one)).await;
    assert_eq!(all.len() as u64, n);
    // Order is preserved.
    assert!(all.windows(2).all(|w| w[0] + 1 == w[1]));
    all.iter().sum()
}

#[tokio::test]
async fn when_all_of_100_children() -> TestResult {
    let rt = Runtime::builder(WorkerConfig::new().register(fan_out).register(add_one))
        .workers(3)
        .build()?;
    let h = rt.client().start(fan_out(100)).await?;
    assert_eq!(h.result().await?, (1..=100).sum::<u64>());
    Ok(())
}

#[tokio::test]
async fn when_all_of_nothing_is_empty() -> TestResult {
    let rt = Runtime::new(WorkerConfig::new().register(fan_out).register(add_one))?;
    assert_eq!(rt.client().start(fan_out(0)).await?.result().await?, 0);
    Ok(())
}

#[dtask]
async fn sleep_then(ms: u64, value: String) -> String {
    DTask::delay(Duration::from_millis(ms)).await;
    value
}

static LOSER_DONE: AtomicUsize = AtomicUsize::new(0);

#[dtask]
async fn slow_loser(ms: u64) -> String {
    DTask::delay(Duration::from_millis(ms)).await;
    LOSER_DONE.fetch_add(1, Ordering::SeqCst);
    "slow".to_string()
}

#[dtask]
async fn race() -> (usize, String) {
    DTask::when_any([slow_loser(3_600_000), sleep_then(1_000, "fast".into())]).await
}

#[tokio::test]
async fn when_any_returns_the_first_and_leaves_the_rest_running() -> TestResult {
    let rt = Runtime::builder(
        WorkerConfig::new()
            .register(race)
            .register(sleep_then)
            .register(slow_loser),
    )
    .virtual_time()
    .build()?;
    let h = rt.client().start(race()).await?;
    rt.wait_idle().await;
    assert_eq!(h.status().await?, Status::Suspended);
    rt.advance(Duration::from_secs(1));
    assert_eq!(h.result().await?, (1, "fast".to_string()));
    // The loser was not cancelled: it finishes later, and its result is dropped.
    assert_eq!(LOSER_DONE.load(Ordering::SeqCst), 0);
    rt.wait_idle().await;
    rt.advance(Duration::from_secs(3600));
    rt.wait_idle().await;
    assert_eq!(LOSER_DONE.load(Ordering::SeqCst), 1);
    assert!(rt.transport().dead_letters().is_empty());
    Ok(())
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Parcel {
    id: u32,
}

#[dtask]
async fn ship(p: Parcel) -> Parcel {
    p
}

#[dtask]
async fn mixed() -> (u64, String, Parcel) {
    DTask::join((
        add_one(1),
        sleep_then(5, "x".into()),
        ship(Parcel { id: 7 }),
    ))
    .await
}

#[tokio::test]
async fn join_of_mixed_types() -> TestResult {
    let rt = Runtime::new(
        WorkerConfig::new()
            .register(mixed)
            .register(add_one)
            .register(sleep_then)
            .register(ship),
    )?;
    let h = rt.client().start(mixed()).await?;
    assert_eq!(h.result().await?, (2, "x".to_string(), Parcel { id: 7 }));
    Ok(())
}

#[dtask]
async fn spawn_then_delay() -> u64 {
    let handle = DTask::spawn(add_one(9));
    DTask::delay(Duration::from_secs(3600)).await;
    let again = handle.clone();
    handle.await + again.await
}

#[tokio::test]
async fn a_spawned_handle_is_awaited_after_a_delay() -> TestResult {
    let rt = Runtime::builder(
        WorkerConfig::new()
            .register(spawn_then_delay)
            .register(add_one),
    )
    .virtual_time()
    .build()?;
    let h = rt.client().start(spawn_then_delay()).await?;
    rt.wait_idle().await;
    rt.advance(Duration::from_secs(3600));
    assert_eq!(h.result().await?, 20);
    Ok(())
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
enum PayError {
    Declined(String),
}

#[dtask]
async fn charge(cents: u64) -> Result<u64, PayError> {
    if cents > 1000 {
        Err(PayError::Declined(format!("{cents} is over the limit")))
    } else {
        Ok(cents)
    }
}

#[dtask]
async fn checkout(cents: u64) -> Result<String, PayError> {
    let paid = charge(cents).await?;
    Ok(format!("paid {paid}"))
}

#[tokio::test]
async fn a_child_error_reaches_the_parent_as_a_value() -> TestResult {
    let rt = Runtime::new(WorkerConfig::new().register(checkout).register(charge))?;
    let c = rt.client();
    assert_eq!(
        c.start(checkout(5)).await?.result().await?,
        Ok("paid 5".into())
    );
    assert_eq!(
        c.start(checkout(5000)).await?.result().await?,
        Err(PayError::Declined("5000 is over the limit".into()))
    );
    Ok(())
}

#[dtask]
async fn explode(x: u64) -> u64 {
    if x > 0 {
        panic!("boom at {x}");
    }
    x
}

#[dtask]
async fn awaits_explosion() -> u64 {
    explode(3).await + 1
}

#[dtask]
async fn catches_explosion() -> String {
    match explode(4).catch_failure().await {
        Ok(v) => format!("ok {v}"),
        Err(f) => format!("caught: {}", f.is_child_failure()),
    }
}

#[tokio::test]
async fn a_child_panic_fails_the_parent_instead_of_hanging() -> TestResult {
    let rt = Runtime::new(
        WorkerConfig::new()
            .register(awaits_explosion)
            .register(catches_explosion)
            .register(explode),
    )?;
    let err = rt
        .client()
        .start(awaits_explosion())
        .await?
        .result()
        .await
        .unwrap_err();
    let failure = err.failure().expect("the instance failed");
    assert!(failure.is_child_failure(), "{failure}");
    assert!(failure.message().contains("boom at 3"), "{failure}");
    let caught = rt
        .client()
        .start(catches_explosion())
        .await?
        .result()
        .await?;
    assert_eq!(caught, "caught: true");
    // The panicking instance itself, started directly, fails as a panic.
    let err = rt
        .client()
        .start(explode(1))
        .await?
        .result()
        .await
        .unwrap_err();
    assert!(err.failure().is_some_and(Failure::is_panic));
    Ok(())
}

#[dtask]
async fn thirty_days() -> String {
    DTask::delay(Duration::from_secs(30 * 86_400)).await;
    "a month later".to_string()
}

#[tokio::test]
async fn a_30_day_delay_under_virtual_time() -> TestResult {
    let rt = Runtime::builder(WorkerConfig::new().register(thirty_days))
        .virtual_time()
        .build()?;
    let h = rt.client().start(thirty_days()).await?;
    rt.wait_idle().await;
    assert_eq!(h.status().await?, Status::Suspended);
    assert_eq!(rt.transport().pending_timers().await?, Some(1));
    // Not early: a second short of 30 days, nothing happens.
    rt.advance(Duration::from_secs(30 * 86_400 - 1));
    rt.wait_idle().await;
    assert_eq!(h.try_result().await?, None);
    rt.advance(Duration::from_secs(1));
    assert_eq!(h.result().await?, "a month later");
    Ok(())
}

#[dtask]
async fn until_deadline(at_ms: u64) -> u64 {
    DTask::delay_until(std::time::UNIX_EPOCH + Duration::from_millis(at_ms)).await;
    at_ms
}

#[tokio::test]
async fn delay_until_a_deadline() -> TestResult {
    let rt = Runtime::builder(WorkerConfig::new().register(until_deadline))
        .virtual_time()
        .build()?;
    let now = rt
        .transport()
        .now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let h = rt.client().start(until_deadline(now + 5_000)).await?;
    rt.wait_idle().await;
    rt.advance(Duration::from_millis(4_999));
    rt.wait_idle().await;
    assert_eq!(h.try_result().await?, None);
    rt.advance(Duration::from_millis(1));
    assert_eq!(h.result().await?, now + 5_000);
    // A deadline in the past fires at once.
    assert_eq!(
        rt.client().start(until_deadline(1)).await?.result().await?,
        1
    );
    Ok(())
}

static RUNS: AtomicUsize = AtomicUsize::new(0);

#[dtask]
async fn side_effect_once() -> u64 {
    let v = DTask::run(|| async {
        RUNS.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(5)).await;
        7u64
    })
    .await;
    // Three suspensions: each resume replays, and the run is not executed again.
    DTask::yield_now().await;
    DTask::delay(Duration::from_millis(5)).await;
    DTask::yield_now().await;
    v * 6
}

#[tokio::test]
async fn run_executes_once_and_replays_the_recorded_result() -> TestResult {
    let rt = Runtime::new(WorkerConfig::new().register(side_effect_once))?;
    let h = rt.client().start(side_effect_once()).await?;
    assert_eq!(h.result().await?, 42);
    assert_eq!(RUNS.load(Ordering::SeqCst), 1);
    Ok(())
}

#[dtask]
async fn local_futures() -> u64 {
    tokio::time::sleep(Duration::from_millis(10)).await;
    let j = tokio::spawn(async { 20u64 });
    let from_task = j.await.expect("task ran");
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let _ = tx.send(2u64);
    });
    let child = add_one(19).await;
    from_task + rx.await.expect("sent") + child
}

#[tokio::test]
async fn ordinary_futures_work_inside_a_dtask() -> TestResult {
    let rt = Runtime::new(
        WorkerConfig::new()
            .register(local_futures)
            .register(add_one),
    )?;
    assert_eq!(
        rt.client().start(local_futures()).await?.result().await?,
        42
    );
    Ok(())
}

static FLIP: AtomicBool = AtomicBool::new(false);

#[dtask]
async fn nondeterministic() -> u64 {
    // Branches on process state that changes between steps: a determinism violation.
    let v = if FLIP.load(Ordering::SeqCst) {
        ship(Parcel { id: 1 }).await.id as u64
    } else {
        add_one(1).await
    };
    DTask::delay(Duration::from_secs(60)).await;
    v
}

#[tokio::test]
async fn a_nondeterministic_dtask_is_detected() -> TestResult {
    let rt = Runtime::builder(
        WorkerConfig::new()
            .register(nondeterministic)
            .register(add_one)
            .register(ship),
    )
    .virtual_time()
    .build()?;
    let h = rt.client().start(nondeterministic()).await?;
    rt.wait_idle().await;
    assert_eq!(h.status().await?, Status::Suspended);
    FLIP.store(true, Ordering::SeqCst);
    rt.advance(Duration::from_secs(60));
    let err = h.result().await.unwrap_err();
    let f = err.failure().expect("failed");
    assert!(f.is_nondeterminism(), "{f}");
    assert!(f.message().contains("position 0"), "{f}");
    assert!(f.message().contains("call `add_one`"), "{f}");
    assert!(f.message().contains("call `ship`"), "{f}");
    Ok(())
}

#[dtask]
async fn never_wakes() -> u64 {
    std::future::pending::<()>().await;
    1
}

#[tokio::test]
async fn a_future_that_can_never_wake_fails_as_stuck() -> TestResult {
    let rt = Runtime::new(WorkerConfig::new().register(never_wakes))?;
    let err = rt
        .client()
        .start(never_wakes())
        .await?
        .result()
        .await
        .unwrap_err();
    assert!(err.failure().is_some_and(Failure::is_stuck), "{err}");
    Ok(())
}

#[tokio::test]
async fn unknown_names_and_bad_input_are_clear_errors() -> TestResult {
    let rt = Runtime::new(WorkerConfig::new().register(add_one))?;
    let c = rt.client();
    let err = c
        .start_by_name("no_such_dtask", vec![0x90])
        .await
        .unwrap_err();
    assert!(err.is_unknown_dtask(), "{err}");
    assert!(err.to_string().contains("no_such_dtask"));
    // `add_one` takes one u64; a string is bad input.
    let input = rmp_serde::to_vec(&("forty-one",))?;
    let err = c.start_by_name("add_one", input).await.unwrap_err();
    assert!(err.is_bad_input(), "{err}");
    // By name, with the right input.
    let input = rmp_serde::to_vec(&(41u64,))?;
    let h = c.start_by_name("add_one", input).await?;
    let bytes = h.result_bytes().await?;
    assert_eq!(rmp_serde::from_slice::<u64>(&bytes)?, 42);
    // Only calls can be started: `c.start(DTask::delay(..))` does not compile
    // (tests/ui/start_a_delay.rs). Registering a plain function that returns a call is
    // refused, with every other problem of the configuration.
    fn not_a_dtask(x: u64) -> Call<u64> {
        add_one(x)
    }
    fn nor_this(x: u64) -> Call<u64> {
        add_one(x + 1)
    }
    let err = Runtime::new(
        WorkerConfig::new()
            .register(add_one)
            .register(not_a_dtask)
            .register(nor_this),
    )
    .unwrap_err();
    assert!(err.is_config(), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("2 problems"), "{msg}");
    assert!(
        msg.contains("not_a_dtask") && msg.contains("nor_this"),
        "{msg}"
    );
    Ok(())
}

#[dtask]
async fn grows(n: u64) -> u64 {
    let mut total = 0;
    for i in 0..n {
        total += DTask::run(move || async move { vec![i as u8; 1024] })
            .await
            .len() as u64;
        DTask::yield_now().await;
    }
    total
}

#[tokio::test]
async fn a_state_past_the_budget_fails_clearly() -> TestResult {
    let rt = Runtime::new(WorkerConfig::new().register(grows).state_budget(16 * 1024))?;
    assert_eq!(rt.client().start(grows(3)).await?.result().await?, 3 * 1024);
    let err = rt
        .client()
        .start(grows(100))
        .await?
        .result()
        .await
        .unwrap_err();
    let f = err.failure().expect("failed");
    assert!(f.is_state_too_large(), "{f}");
    assert!(f.message().contains("16384"), "{f}");
    Ok(())
}

#[tokio::test]
async fn results_by_id_later_and_status() -> TestResult {
    let rt = Runtime::builder(WorkerConfig::new().register(thirty_days))
        .virtual_time()
        .build()?;
    let c = rt.client();
    let id = InstanceId::new("order-17")?;
    let h = c.start_with_id(id.clone(), thirty_days()).await?;
    assert_eq!(h.id(), &id);
    rt.wait_idle().await;
    assert_eq!(c.status(&id).await?, Status::Suspended);
    let unknown = InstanceId::new("nobody")?;
    assert!(c.status(&unknown).await.unwrap_err().is_not_found());
    rt.advance(Duration::from_secs(30 * 86_400));
    // Another handle, made from the id alone.
    let later = c.handle::<String>(id.clone());
    assert_eq!(later.result().await?, "a month later");
    assert_eq!(c.status(&id).await?, Status::Succeeded);
    assert!(InstanceId::new("bad id with spaces").is_err());
    Ok(())
}

#[tokio::test]
async fn poison_messages_are_dead_lettered_and_the_worker_keeps_serving() -> TestResult {
    let rt = Runtime::new(WorkerConfig::new().register(add_one))?;
    rt.transport()
        .inject_raw("add_one", b"not an envelope".to_vec());
    rt.transport()
        .inject_raw("add_one", vec![b'D', b'T', 99, 1, 0]);
    rt.transport()
        .inject_raw("add_one", vec![b'D', b'T', 1, 1, 0xc1, 0xff]);
    let h = rt.client().start(add_one(1)).await?;
    assert_eq!(h.result().await?, 2);
    rt.wait_idle().await;
    let dead = rt.transport().dead_letters();
    assert_eq!(dead.len(), 3, "{dead:?}");
    assert!(dead[0].reason.contains("magic"), "{}", dead[0].reason);
    assert!(dead[1].reason.contains("version 99"), "{}", dead[1].reason);
    Ok(())
}

#[tokio::test]
async fn shutdown_stops_the_workers() -> TestResult {
    let rt = Runtime::new(WorkerConfig::new().register(add_one))?;
    assert_eq!(rt.client().start(add_one(1)).await?.result().await?, 2);
    rt.shutdown().await?;
    Ok(())
}

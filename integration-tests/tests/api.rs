//! The DTask API over RabbitMQ: the scenarios of the core's in-memory tests, with
//! in-process workers on their own connections and short real delays.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use dtasks::{dtask, Client, DTask, Failure, InstanceId, Status};
use dtasks_integration_tests::{registry, wait_for, Broker};
use serde::{Deserialize, Serialize};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_returns_its_result() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let w = b.workers(1, &registry![add_one]).await?;
    let c = b.client().await?;
    let h = c.start(add_one(41)).await?;
    assert_eq!(h.result().await?, 42);
    assert_eq!(h.status().await?, Status::Succeeded);
    w.stop().await?;
    b.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_deep_chain_of_children() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let w = b.workers(1, &registry![chain3, middle, add_one]).await?;
    let h = b.client().await?.start(chain3(4)).await?;
    assert_eq!(h.result().await?, (4 + 1) * 2 + 100);
    w.stop().await?;
    b.cleanup().await
}

#[dtask]
async fn fan_out(n: u64) -> u64 {
    let all = DTask::when_all((0..n).map(add_one)).await;
    assert_eq!(all.len() as u64, n);
    // Order is preserved.
    assert!(all.windows(2).all(|w| w[0] + 1 == w[1]));
    all.iter().sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_all_of_100_children_on_two_workers() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let w = b.workers(2, &registry![fan_out, add_one]).await?;
    let h = b.client().await?.start(fan_out(100)).await?;
    assert_eq!(h.result().await?, (1..=100).sum::<u64>());
    // Both workers took part.
    let stats = w.stats();
    assert!(stats.iter().all(|s| s.processed > 0), "{stats:?}");
    assert_eq!(b.queue_len(&format!("{}.dead", b.prefix())).await?, Some(0));
    w.stop().await?;
    b.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_all_of_nothing_is_empty() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let w = b.workers(1, &registry![fan_out, add_one]).await?;
    assert_eq!(
        b.client().await?.start(fan_out(0)).await?.result().await?,
        0
    );
    w.stop().await?;
    b.cleanup().await
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
    DTask::when_any([slow_loser(2_500), sleep_then(300, "fast".into())]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_any_returns_the_first_and_leaves_the_rest_running() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let w = b
        .workers(1, &registry![race, sleep_then, slow_loser])
        .await?;
    let c = b.client().await?;
    let h = c.start(race()).await?;
    wait_for(Duration::from_secs(5), || async {
        Ok(h.status().await? == Status::Suspended)
    })
    .await?;
    assert_eq!(h.result().await?, (1, "fast".to_string()));
    // The loser was not cancelled: it finishes later, and its result is dropped.
    assert_eq!(LOSER_DONE.load(Ordering::SeqCst), 0);
    wait_for(Duration::from_secs(15), || async {
        Ok(LOSER_DONE.load(Ordering::SeqCst) == 1)
    })
    .await?;
    // The loser's late result went to the finished parent's mailbox and was dropped
    // there, not dead-lettered.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(b.queue_len(&format!("{}.dead", b.prefix())).await?, Some(0));
    assert_eq!(h.result().await?, (1, "fast".to_string()));
    w.stop().await?;
    b.cleanup().await
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
        sleep_then(200, "x".into()),
        ship(Parcel { id: 7 }),
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_of_mixed_types() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let w = b
        .workers(1, &registry![mixed, add_one, sleep_then, ship])
        .await?;
    let h = b.client().await?.start(mixed()).await?;
    assert_eq!(h.result().await?, (2, "x".to_string(), Parcel { id: 7 }));
    w.stop().await?;
    b.cleanup().await
}

#[dtask]
async fn spawn_then_delay() -> u64 {
    let handle = DTask::spawn(add_one(9));
    DTask::delay(Duration::from_millis(800)).await;
    let again = handle.clone();
    handle.await + again.await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawned_handle_is_awaited_after_a_delay() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let w = b.workers(1, &registry![spawn_then_delay, add_one]).await?;
    let started = Instant::now();
    let h = b.client().await?.start(spawn_then_delay()).await?;
    assert_eq!(h.result().await?, 20);
    assert!(started.elapsed() >= Duration::from_millis(800));
    w.stop().await?;
    b.cleanup().await
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_error_reaches_the_parent_as_a_value() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let w = b.workers(1, &registry![checkout, charge]).await?;
    let c = b.client().await?;
    assert_eq!(
        c.start(checkout(5)).await?.result().await?,
        Ok("paid 5".into())
    );
    assert_eq!(
        c.start(checkout(5000)).await?.result().await?,
        Err(PayError::Declined("5000 is over the limit".into()))
    );
    w.stop().await?;
    b.cleanup().await
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_panic_fails_the_parent_instead_of_hanging() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let w = b
        .workers(1, &registry![awaits_explosion, catches_explosion, explode])
        .await?;
    let c = b.client().await?;
    let err = c
        .start(awaits_explosion())
        .await?
        .result()
        .await
        .unwrap_err();
    let failure = err.failure().context("the instance failed")?;
    assert!(failure.is_child_failure(), "{failure}");
    assert!(failure.message().contains("boom at 3"), "{failure}");
    let caught = c.start(catches_explosion()).await?.result().await?;
    assert_eq!(caught, "caught: true");
    let err = c.start(explode(1)).await?.result().await.unwrap_err();
    assert!(err.failure().is_some_and(Failure::is_panic), "{err}");
    assert!(w.running());
    w.stop().await?;
    b.cleanup().await
}

/// Records when it started (once, in the journal), waits, and records when it resumed.
#[dtask]
async fn timed_delay(ms: u64) -> (u64, u64) {
    let start = DTask::run(|| async { now_ms() }).await;
    DTask::delay(Duration::from_millis(ms)).await;
    let end = DTask::run(|| async { now_ms() }).await;
    (start, end)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delay_is_never_early() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let w = b.workers(1, &registry![timed_delay]).await?;
    let c = b.client().await?;
    let mut handles = Vec::new();
    for ms in [1u64, 37, 250, 1_000, 1_900] {
        handles.push((ms, c.start(timed_delay(ms)).await?));
    }
    for (ms, h) in handles {
        let (start, end) = h.result().await?;
        assert!(
            end >= start + ms,
            "a {ms} ms delay resumed after {} ms",
            end - start
        );
        println!("delay {ms} ms: resumed after {} ms", end - start);
    }
    w.stop().await?;
    b.cleanup().await
}

#[dtask]
async fn until_deadline(at_ms: u64) -> (u64, u64) {
    DTask::delay_until(UNIX_EPOCH + Duration::from_millis(at_ms)).await;
    let seen = DTask::run(|| async { now_ms() }).await;
    (at_ms, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_until_a_deadline() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let w = b.workers(1, &registry![until_deadline]).await?;
    let c = b.client().await?;
    let at = now_ms() + 1_500;
    let h = c.start(until_deadline(at)).await?;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(h.try_result().await?, None);
    let (due, seen) = h.result().await?;
    assert_eq!(due, at);
    assert!(seen >= at, "resumed {} ms early", at - seen);
    // A deadline in the past fires at once.
    let (_, seen) = c.start(until_deadline(1)).await?.result().await?;
    assert!(seen > 1);
    w.stop().await?;
    b.cleanup().await
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
    DTask::delay(Duration::from_millis(50)).await;
    DTask::yield_now().await;
    v * 6
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_executes_once_and_replays_the_recorded_result() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let w = b.workers(1, &registry![side_effect_once]).await?;
    let h = b.client().await?.start(side_effect_once()).await?;
    assert_eq!(h.result().await?, 42);
    assert_eq!(RUNS.load(Ordering::SeqCst), 1);
    w.stop().await?;
    b.cleanup().await
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordinary_futures_work_inside_a_dtask() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let w = b.workers(1, &registry![local_futures, add_one]).await?;
    assert_eq!(
        b.client()
            .await?
            .start(local_futures())
            .await?
            .result()
            .await?,
        42
    );
    w.stop().await?;
    b.cleanup().await
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
    DTask::delay(Duration::from_millis(1_500)).await;
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nondeterministic_dtask_is_detected() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let w = b
        .workers(1, &registry![nondeterministic, add_one, ship])
        .await?;
    let h = b.client().await?.start(nondeterministic()).await?;
    // Flip once the first branch is recorded and the instance waits on its timer.
    let journaled = Instant::now();
    wait_for(Duration::from_secs(5), || async {
        Ok(h.status().await? == Status::Suspended
            && journaled.elapsed() > Duration::from_millis(300))
    })
    .await?;
    FLIP.store(true, Ordering::SeqCst);
    let err = h.result().await.unwrap_err();
    let f = err.failure().context("failed")?;
    assert!(f.is_nondeterminism(), "{f}");
    assert!(f.message().contains("position 0"), "{f}");
    assert!(f.message().contains("call `add_one`"), "{f}");
    assert!(f.message().contains("call `ship`"), "{f}");
    w.stop().await?;
    b.cleanup().await
}

#[dtask]
async fn never_wakes() -> u64 {
    std::future::pending::<()>().await;
    1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_future_that_can_never_wake_fails_as_stuck() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let w = b.workers(1, &registry![never_wakes]).await?;
    let err = b
        .client()
        .await?
        .start(never_wakes())
        .await?
        .result()
        .await
        .unwrap_err();
    assert!(err.failure().is_some_and(Failure::is_stuck), "{err}");
    w.stop().await?;
    b.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_names_and_bad_input_are_clear_errors() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let reg = registry![add_one];
    let w = b.workers(1, &reg).await?;
    let c = b.client().await?.with_registry(reg);
    let err = c
        .start_by_name("no_such_dtask", vec![0x90])
        .await
        .unwrap_err();
    assert!(err.is_unknown_dtask(), "{err}");
    assert!(err.to_string().contains("no_such_dtask"));
    let input = rmp_serde::to_vec(&("forty-one",))?;
    let err = c.start_by_name("add_one", input).await.unwrap_err();
    assert!(err.is_bad_input(), "{err}");
    let input = rmp_serde::to_vec(&(41u64,))?;
    let h = c.start_by_name("add_one", input).await?;
    let bytes = h.result_bytes().await?;
    assert_eq!(rmp_serde::from_slice::<u64>(&bytes)?, 42);
    let err = c
        .start(DTask::delay(Duration::from_secs(1)))
        .await
        .unwrap_err();
    assert!(err.is_bad_input(), "{err}");
    w.stop().await?;
    b.cleanup().await
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_past_the_budget_fails_clearly() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let w = b
        .workers_with(1, &registry![grows], |w| w.state_budget(16 * 1024))
        .await?;
    let c = b.client().await?;
    assert_eq!(c.start(grows(3)).await?.result().await?, 3 * 1024);
    let err = c.start(grows(100)).await?.result().await.unwrap_err();
    let f = err.failure().context("failed")?;
    assert!(f.is_state_too_large(), "{f}");
    assert!(f.message().contains("16384"), "{f}");
    w.stop().await?;
    b.cleanup().await
}

#[dtask]
async fn later(ms: u64) -> String {
    DTask::delay(Duration::from_millis(ms)).await;
    "later".to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_by_id_from_a_second_client_and_status() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let w = b.workers(1, &registry![later]).await?;
    let c = b.client().await?;
    let id = InstanceId::new(format!("order-{}", b.prefix()))?;
    let h = c.start_with_id(id.clone(), later(1_500)).await?;
    assert_eq!(h.id(), &id);
    wait_for(Duration::from_secs(5), || async {
        Ok(c.status(&id).await? == Status::Suspended)
    })
    .await?;
    let unknown = InstanceId::new(format!("nobody-{}", b.prefix()))?;
    assert!(c.status(&unknown).await.unwrap_err().is_not_found());
    // Asking creates nothing: the id stays unknown, also after reading its result.
    assert_eq!(
        c.handle::<String>(unknown.clone()).try_result().await?,
        None
    );
    assert!(c.status(&unknown).await.unwrap_err().is_not_found());
    for register in ["result", "status"] {
        assert_eq!(
            b.queue_len(&format!("{}.{register}.{unknown}", b.prefix()))
                .await?,
            None
        );
    }
    // A start no worker serves yet is pending, with no status written; reading its
    // status leaves no status register behind.
    let waiting = c.start_by_name("nobody.serves.this", vec![0x90]).await?;
    assert_eq!(waiting.status().await?, Status::Pending);
    assert_eq!(waiting.status().await?, Status::Pending);
    let written = b
        .queue_len(&format!("{}.status.{}", b.prefix(), waiting.id()))
        .await?;
    assert_eq!(written, None);
    // Another process, knowing only the id.
    let other: Client = b.client().await?;
    let handle = other.handle::<String>(id.clone());
    assert_eq!(handle.try_result().await?, None);
    assert_eq!(handle.result().await?, "later");
    assert_eq!(other.status(&id).await?, Status::Succeeded);
    // Reading does not consume: again, from the first client.
    assert_eq!(h.result().await?, "later");
    assert_eq!(c.status(&id).await?, Status::Succeeded);
    // Starting the same id again: one result for both.
    let again = c.start_with_id(id.clone(), later(1)).await?;
    assert_eq!(again.result().await?, "later");
    w.stop().await?;
    b.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_and_the_worker_keeps_serving() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let w = b.workers(1, &registry![add_one]).await?;
    let queue = format!("{}.task.add_one", b.prefix());
    let ch = b.channel().await?;
    for body in [
        b"not an envelope".to_vec(),
        vec![b'D', b'T', 99, 1, 0],
        vec![b'D', b'T', 1, 1, 0xc1, 0xff],
    ] {
        ch.basic_publish(
            "".into(),
            queue.as_str().into(),
            Default::default(),
            &body,
            lapin::BasicProperties::default().with_delivery_mode(2),
        )
        .await?
        .await?;
    }
    let h = b.client().await?.start(add_one(1)).await?;
    assert_eq!(h.result().await?, 2);
    let dead_queue = format!("{}.dead", b.prefix());
    wait_for(Duration::from_secs(5), || async {
        Ok(b.queue_len(&dead_queue).await? == Some(3))
    })
    .await?;
    let dead = b.take_all(&dead_queue).await?;
    // The worker handles deliveries concurrently: dead letters come in any order.
    let reason_of = |body: &[u8]| -> anyhow::Result<String> {
        let d = dead
            .iter()
            .find(|d| d.data == body)
            .with_context(|| format!("{body:?} was not dead-lettered"))?;
        let headers = d.properties.headers().clone().unwrap_or_default();
        let origin = match headers.inner().get("x-dtasks-queue") {
            Some(lapin::types::AMQPValue::LongString(s)) => s.as_bytes().to_vec(),
            other => anyhow::bail!("no origin header: {other:?}"),
        };
        assert_eq!(origin, queue.as_bytes());
        match headers.inner().get("x-dtasks-reason") {
            Some(lapin::types::AMQPValue::LongString(s)) => {
                Ok(String::from_utf8_lossy(s.as_bytes()).into_owned())
            }
            other => anyhow::bail!("no reason header: {other:?}"),
        }
    };
    let magic = reason_of(b"not an envelope")?;
    assert!(magic.contains("magic"), "{magic}");
    let version = reason_of(&[b'D', b'T', 99, 1, 0])?;
    assert!(version.contains("version 99"), "{version}");
    let garbage = reason_of(&[b'D', b'T', 1, 1, 0xc1, 0xff])?;
    assert!(garbage.contains("decode"), "{garbage}");
    // Still serving.
    let h = b.client().await?.start(add_one(2)).await?;
    assert_eq!(h.result().await?, 3);
    assert!(w.running());
    w.stop().await?;
    b.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_the_workers_and_leaves_no_consumer() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let w = b.workers(2, &registry![add_one]).await?;
    assert_eq!(
        b.client().await?.start(add_one(1)).await?.result().await?,
        2
    );
    w.stop().await?;
    let queue = format!("{}.task.add_one", b.prefix());
    wait_for(Duration::from_secs(5), || async {
        Ok(b.consumers(&queue).await? == 0)
    })
    .await?;
    b.cleanup().await
}

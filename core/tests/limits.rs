//! Inputs at and past dtasks' limits: each ends in a result or in a typed failure or
//! error, never in a crash, a dead letter nobody hears of, or a root pending for good.
//! These run in debug builds, whose stack frames are the largest.

use std::time::Duration;

use dtasks::store::MemoryStore;
use dtasks::test_util::RefuseStatus;
use dtasks::{
    dtask, Client, DTask, InstanceId, MemoryTransport, Runtime, Status, Worker, WorkerConfig,
};

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// A recursion of child awaits `d` levels deep: each level its own instance.
#[dtask(name = "limits.nest")]
async fn nest(d: u64) -> u64 {
    if d == 0 {
        0
    } else {
        nest(d - 1).await + 1
    }
}

#[dtask(name = "limits.one")]
async fn one() -> u64 {
    1
}

/// A fan-in at every level, `d` levels deep: each level waits in its mailbox.
#[dtask(name = "limits.fan")]
async fn fan(d: u64) -> u64 {
    if d == 0 {
        return 0;
    }
    let (below, leaf) = DTask::join((fan(d - 1), one())).await;
    below + leaf
}

#[dtask(name = "limits.sleep_forever")]
async fn sleep_forever() -> u64 {
    DTask::delay(Duration::MAX).await;
    1
}

#[dtask(name = "limits.within_forever")]
async fn within_forever() -> Option<u64> {
    one().within(Duration::MAX).await
}

/// A first step long enough that its `Running` status is written before its outputs.
#[dtask(name = "limits.slow")]
async fn slow() -> u64 {
    // Far longer than the 50 ms after which a first step reports `Running`, so that the
    // report comes first even on a loaded machine.
    tokio::time::sleep(Duration::from_millis(600)).await;
    1
}

#[dtask(name = "limits.length")]
async fn length(data: Vec<u8>) -> usize {
    data.len()
}

#[dtask(name = "limits.wait")]
async fn wait() -> Vec<u8> {
    DTask::event::<Vec<u8>>("data").await
}

fn config() -> WorkerConfig {
    WorkerConfig::new()
        .register(nest)
        .register(one)
        .register(fan)
        .register(sleep_forever)
        .register(within_forever)
        .register(length)
        .register(wait)
        .register(slow)
}

#[tokio::test]
async fn a_recursion_of_child_awaits_150_and_1000_deep_finishes() -> TestResult {
    let rt = Runtime::new(config())?;
    // 150 levels overflowed a debug worker's stack (decoding the chain of states riding
    // in one message), and 1000 passed the decoder's depth limit in a release build.
    for depth in [150, 1000] {
        let h = rt.client().start(nest(depth)).await?;
        assert_eq!(h.result().await?, depth);
        assert_eq!(h.status().await?, Status::Succeeded);
    }
    assert!(rt.transport().dead_letters().is_empty());
    Ok(())
}

#[tokio::test]
async fn a_fan_in_nested_100_deep_finishes() -> TestResult {
    let rt = Runtime::new(config())?;
    let h = rt.client().start(fan(100)).await?;
    assert_eq!(h.result().await?, 100);
    assert!(rt.transport().dead_letters().is_empty());
    Ok(())
}

#[tokio::test]
async fn a_delay_past_the_longest_fails_the_instance_as_a_limit() -> TestResult {
    let rt = Runtime::new(config())?;
    let h = rt.client().start(sleep_forever()).await?;
    let e = h.result().await.expect_err("too long a delay");
    let f = e.failure().expect("a failure of the instance");
    assert!(f.is_limit_exceeded(), "{f}");
    assert!(!f.is_panic(), "{f}");
    assert!(f.message().contains("MAX_DELAY"), "{f}");
    assert_eq!(h.status().await?, Status::Failed);
    // A bound on a wait is a delay too.
    let e = rt
        .client()
        .call(within_forever())
        .await
        .expect_err("too long");
    assert!(e.failure().is_some_and(|f| f.is_limit_exceeded()), "{e}");
    // The longest is fine: the instance waits.
    assert!(DTask::MAX_DELAY >= Duration::from_secs(100 * 365 * 86_400));
    Ok(())
}

#[tokio::test]
async fn arguments_and_events_over_the_budget_are_refused_where_they_are_sent() -> TestResult {
    // Every value inline: none is stored out of band (`core/tests/payloads.rs`).
    let rt = Runtime::new(config().payload_threshold(usize::MAX))?;
    let c = rt.client();
    let big = vec![7u8; 10 * 1024 * 1024];
    for e in [
        c.start(length(big.clone()))
            .await
            .map(|_| ())
            .expect_err("10 MB"),
        c.call(length(big.clone()))
            .await
            .map(|_| ())
            .expect_err("10 MB"),
        c.start_with_id(InstanceId::new("big-1")?, length(big.clone()))
            .await
            .map(|_| ())
            .expect_err("10 MB"),
    ] {
        assert!(e.is_limit_exceeded(), "{e}");
    }
    // Nothing was started: the chosen id is unknown.
    let e = c
        .status(&InstanceId::new("big-1")?)
        .await
        .expect_err("unknown");
    assert!(e.is_not_found(), "{e}");
    // An event is kept in the state until a wait takes it: the same budget.
    let h = c.start(wait()).await?;
    let e = c.signal(h.id(), "data", &big).await.expect_err("10 MB");
    assert!(e.is_limit_exceeded(), "{e}");
    c.signal(h.id(), "data", &vec![1u8; 1000]).await?;
    assert_eq!(h.result().await?.len(), 1000);
    // Up to the budget is accepted.
    assert_eq!(c.call(length(vec![0u8; 1024 * 1024])).await?, 1024 * 1024);
    Ok(())
}

#[tokio::test]
async fn the_client_of_a_runtime_has_its_workers_budget() -> TestResult {
    let rt = Runtime::new(config().state_budget(4096))?;
    let e = rt
        .client()
        .call(length(vec![0u8; 5000]))
        .await
        .expect_err("over 4 KiB");
    assert!(e.is_limit_exceeded(), "{e}");
    assert_eq!(rt.client().call(length(vec![0u8; 100])).await?, 100);
    // A client of its own takes the budget it is given.
    let c = Client::new(rt.transport().clone()).with_state_budget(50);
    assert!(c
        .start(length(vec![0u8; 100]))
        .await
        .err()
        .is_some_and(|e| e.is_limit_exceeded()));
    Ok(())
}

#[tokio::test]
async fn a_message_that_fails_at_every_delivery_fails_its_instance() -> TestResult {
    let t = MemoryTransport::new();
    let store = RefuseStatus(std::sync::Arc::new(MemoryStore::new()));
    let client = Client::new(t.clone()).with_store(store.clone());
    // Its first step reports `Running` before its outputs: that write fails every time.
    let h = client.start(slow()).await?;
    let worker = Worker::new(t.clone(), config().store(store.clone()).max_redeliveries(2))?;
    let waiter = h.clone();
    let stats = worker.clone();
    tokio::time::timeout(
        Duration::from_secs(30),
        worker.run_until(async move {
            let _ = waiter.result().await;
        }),
    )
    .await??;
    let e = h.result().await.expect_err("failed");
    let f = e.failure().expect("a failure of the instance");
    assert!(f.is_dead_lettered(), "{f}");
    assert!(f.message().contains("retry budget exhausted"), "{f}");
    assert_eq!(h.status().await?, Status::Failed);
    let dead = t.dead_letters();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        dead[0].reason.contains("retry budget exhausted"),
        "{}",
        dead[0].reason
    );
    assert_eq!(stats.stats().dead_lettered, 1);
    Ok(())
}

#[tokio::test]
async fn an_unreadable_mailbox_item_fails_its_instance() -> TestResult {
    let rt = Runtime::new(config())?;
    let h = rt.client().start(wait()).await?;
    // Once it waits in its mailbox, garbage arrives there (with its doorbell).
    while h.status().await? != Status::Suspended {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    rt.transport()
        .inject_raw_mailbox(h.id(), b"garbage".to_vec());
    let e = h.result().await.expect_err("failed");
    assert!(e.failure().is_some_and(|f| f.is_dead_lettered()), "{e}");
    assert_eq!(rt.transport().dead_letters().len(), 1);
    Ok(())
}

#[tokio::test]
async fn dead_letters_are_bounded() -> TestResult {
    use dtasks::Transport;
    let t = MemoryTransport::builder().max_redeliveries(0).build();
    let big = vec![1u8; 3 * dtasks::transport::DEAD_LETTER_BODY];
    t.inject_raw("limits.nobody", big.clone());
    let mut stream = t.consume(vec!["limits.nobody".into()]).await?;
    use futures::StreamExt;
    let d = stream.next().await.expect("delivery")?;
    drop(d);
    let dead = t.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body.len(), dtasks::transport::DEAD_LETTER_BODY);
    assert_eq!(dead[0].truncated, Some(big.len()));
    Ok(())
}

//! Values over the payload threshold stored out of band on the embedded runtime: a 50 MB
//! result and a 50 MB argument go through a 4 MiB state budget, an event value over the
//! threshold is received, a value gone from the payload store fails its reader clearly,
//! a purge takes the values of what it removes, a payload retention bounds the values
//! calls leave, and a payload store out of reach delays steps without failing any
//! instance.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dtasks::store::{Filter, MemoryPayloads, PayloadRef, PayloadStore};
use dtasks::{dtask, DTask, Runtime, Status, WorkerConfig};
use futures::future::BoxFuture;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

const BIG: usize = 50 * 1024 * 1024;

/// A text of `n` bytes (a string encodes as one MessagePack str: cheap to make and copy).
#[dtask(name = "payloads.make")]
async fn make(n: usize) -> String {
    "x".repeat(n)
}

#[dtask(name = "payloads.measure")]
async fn measure(text: String) -> usize {
    text.len()
}

/// A child's 50 MB result, awaited, then passed as a child's argument: both out of band.
#[dtask(name = "payloads.relay")]
async fn relay(n: usize) -> usize {
    let text = make(n).await;
    let half = text.len() / 2;
    measure(text).await + half
}

#[dtask(name = "payloads.event")]
async fn event() -> usize {
    let text: String = DTask::event("text").await;
    DTask::event::<()>("go").await;
    text.len()
}

fn config() -> WorkerConfig {
    WorkerConfig::new()
        .register(make)
        .register(measure)
        .register(relay)
        .register(event)
}

#[tokio::test]
async fn a_50_mb_result_and_argument_go_through_a_4_mib_budget() -> TestResult {
    let rt = Runtime::new(config())?;
    let c = rt.client();
    // A result: through the store and the reply queue.
    let h = c.start(make(BIG)).await?;
    assert_eq!(h.result().await?.len(), BIG);
    assert_eq!(c.call(make(BIG)).await?.len(), BIG);
    // An argument from the client.
    let text = "y".repeat(BIG);
    assert_eq!(c.call(measure(text)).await?, BIG);
    // A child's result and a child's argument, inside an instance.
    assert_eq!(c.call(relay(BIG)).await?, BIG + BIG / 2);
    // Each stored once per instance and content: the 50 MB texts of `make` (two roots and
    // one child), the client's argument, and the child's argument in `relay`.
    assert_eq!(rt.transport().memory_payloads().len(), 5);
    Ok(())
}

#[tokio::test]
async fn values_over_the_threshold_do_not_count_against_the_budget() -> TestResult {
    // A budget of 64 KiB and a threshold of 16 KiB: a 1 MiB event or result fits only
    // out of band.
    let rt = Runtime::new(
        config()
            .state_budget(64 * 1024)
            .payload_threshold(16 * 1024),
    )?;
    let c = rt.client();
    let h = c.start(event()).await?;
    c.signal(h.id(), "text", &"e".repeat(1024 * 1024)).await?;
    c.signal(h.id(), "go", &()).await?;
    assert_eq!(h.result().await?, 1024 * 1024);
    assert_eq!(c.call(relay(1024 * 1024)).await?, 1024 * 1024 + 512 * 1024);
    // Past the threshold but inline (no payload store in the way): the budget holds.
    let inline = Runtime::new(
        config()
            .state_budget(64 * 1024)
            .payload_threshold(usize::MAX),
    )?;
    let f = inline
        .client()
        .start(make(100 * 1024))
        .await?
        .result()
        .await
        .expect_err("over the budget inline");
    assert!(f.failure().is_some_and(|f| f.is_state_too_large()), "{f}");
    Ok(())
}

#[tokio::test]
async fn a_value_gone_from_the_payload_store_fails_its_reader_clearly() -> TestResult {
    let rt = Runtime::new(config().payload_threshold(1024))?;
    let c = rt.client();
    // A result whose value is gone: the read fails, saying why.
    let h = c.start(make(4096)).await?;
    assert_eq!(h.result().await?.len(), 4096);
    let info = h.info().await?;
    let bytes = info.result_bytes().expect("finished")?;
    let r = PayloadRef::decode(&bytes).expect("a reference");
    assert_eq!(r.len() as usize, 4096 + 3);
    assert_eq!(r.instance(), h.id().as_str());
    assert_eq!(rt.transport().memory_payloads().remove_instance(h.id()), 1);
    let e = h.result().await.expect_err("gone");
    assert!(e.is_payload_missing(), "{e}");
    assert!(e.to_string().contains(r.key()), "{e}");
    // An event value gone while the instance waits: the instance fails at its next step,
    // naming the value, rather than hanging or reading a wrong value.
    let h = c.start(event()).await?;
    c.signal(h.id(), "text", &"e".repeat(4096)).await?;
    let waiting = async {
        loop {
            let waits = c.waiting_for(h.id()).await?;
            if format!("{waits:?}").contains("go") {
                return Ok::<_, dtasks::Error>(());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), waiting).await??;
    assert_eq!(rt.transport().memory_payloads().remove_instance(h.id()), 1);
    c.signal(h.id(), "go", &()).await?;
    let e = tokio::time::timeout(Duration::from_secs(10), h.result())
        .await?
        .expect_err("failed");
    let f = e.failure().expect("a failure of the instance");
    assert!(f.message().contains("gone from the payload store"), "{f}");
    assert_eq!(h.status().await?, Status::Failed);
    Ok(())
}

#[tokio::test]
async fn a_purge_takes_the_values_of_what_it_removes_and_no_other() -> TestResult {
    let rt = Runtime::new(config().payload_threshold(1024))?;
    let c = rt.client();
    let values = rt.transport().memory_payloads();
    // `relay` stores two values: its child's 4 KiB result (written by the child) and the
    // same text as its other child's argument (written by `relay` itself).
    let relayed = c.start(relay(4096)).await?;
    assert_eq!(relayed.result().await?, 4096 + 2048);
    let kept = c.start(make(4096)).await?;
    assert_eq!(kept.result().await?.len(), 4096);
    assert_eq!(values.len(), 3);
    // Purging the root removes its values and its children's, and nothing else.
    assert_eq!(c.purge(&Filter::new().name("payloads.relay")).await?, 1);
    assert_eq!(values.len(), 1);
    assert_eq!(kept.result().await?.len(), 4096);
    // A purge that removes nothing removes no value.
    assert_eq!(c.purge(&Filter::new().name("payloads.relay")).await?, 0);
    assert_eq!(values.len(), 1);
    assert_eq!(c.purge(&Filter::new()).await?, 1);
    assert!(values.is_empty());
    Ok(())
}

#[tokio::test]
async fn a_payload_retention_bounds_the_values_calls_leave() -> TestResult {
    // A call records nothing, so no purge reaches its values: only the retention does.
    let rt = Runtime::builder(config().payload_threshold(1024))
        .payload_retention(Duration::from_secs(1))
        .build()?;
    let c = rt.client();
    let values = rt.transport().memory_payloads();
    assert_eq!(c.call(make(4096)).await?.len(), 4096);
    assert_eq!(c.call(make(4096)).await?.len(), 4096);
    assert_eq!(values.len(), 2);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The next value stored takes the two older ones away.
    assert_eq!(c.call(make(4096)).await?.len(), 4096);
    assert_eq!(values.len(), 1);
    // Without a retention they stay.
    let kept = Runtime::new(config().payload_threshold(1024))?;
    kept.client().call(make(4096)).await?;
    assert_eq!(kept.transport().memory_payloads().len(), 1);
    // A zero retention is refused.
    let zero = Runtime::builder(config())
        .payload_retention(Duration::ZERO)
        .build()
        .unwrap_err();
    assert!(zero.is_bad_input(), "{zero}");
    Ok(())
}

/// A payload store whose next puts and gets fail, as a store out of reach would.
#[derive(Clone, Default)]
struct Flaky {
    inner: MemoryPayloads,
    fail_puts: Arc<AtomicUsize>,
    fail_gets: Arc<AtomicUsize>,
}

fn take_one(n: &AtomicUsize) -> bool {
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
        .is_ok()
}

impl PayloadStore for Flaky {
    fn put<'a>(
        &'a self,
        r: &'a PayloadRef,
        value: &'a [u8],
    ) -> BoxFuture<'a, Result<u64, dtasks::Error>> {
        if take_one(&self.fail_puts) {
            return Box::pin(async { Err(dtasks::Error::store("the payload store is down")) });
        }
        self.inner.put(r, value)
    }

    fn get<'a>(
        &'a self,
        r: &'a PayloadRef,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, dtasks::Error>> {
        if take_one(&self.fail_gets) {
            return Box::pin(async { Err(dtasks::Error::store("the payload store is down")) });
        }
        self.inner.get(r)
    }
}

#[tokio::test]
async fn a_payload_store_out_of_reach_delays_steps_and_fails_no_instance() -> TestResult {
    let flaky = Flaky::default();
    let rt = Runtime::new(config().payload_threshold(1024).payloads(flaky.clone()))?;
    let c = rt.client();
    let text = "z".repeat(8192);
    // The client's write fails: the call fails with the store's error, nothing is sent.
    flaky.fail_puts.store(1, Ordering::SeqCst);
    let e = c.call(measure(text.clone())).await.expect_err("store down");
    assert!(e.is_store(), "{e}");
    assert!(flaky.inner.is_empty());
    // The worker's read fails: its step runs again from the requeued message.
    flaky.fail_gets.store(2, Ordering::SeqCst);
    assert_eq!(c.call(measure(text.clone())).await?, 8192);
    assert_eq!(flaky.fail_gets.load(Ordering::SeqCst), 0);
    // The worker's write of a result fails: the step runs again, and its result is
    // published only once the value is stored.
    flaky.fail_puts.store(2, Ordering::SeqCst);
    assert_eq!(c.call(make(8192)).await?.len(), 8192);
    assert_eq!(flaky.fail_puts.load(Ordering::SeqCst), 0);
    // The worker's read in a mailbox merge fails: the merge runs again.
    let h = c.start(event()).await?;
    c.signal(h.id(), "text", &text).await?;
    flaky.fail_gets.store(1, Ordering::SeqCst);
    c.signal(h.id(), "go", &()).await?;
    assert_eq!(h.result().await?, 8192);
    assert_eq!(flaky.fail_gets.load(Ordering::SeqCst), 0);
    Ok(())
}

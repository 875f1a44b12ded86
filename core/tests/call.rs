//! `Client::call`: a root's result comes back on the client's reply queue, with no result
//! register and no status.

use std::time::Duration;

use dtasks::transport::{
    Cancels, Delivery, Destination, MailboxMessage, Outgoing, Published, ReplyQueues,
};
use dtasks::{dtask, DTask, Error, InstanceId, MemoryTransport, Runtime, Transport, WorkerConfig};
use futures::future::BoxFuture;
use futures::stream::BoxStream;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

#[dtask(name = "call.inc")]
async fn inc(x: u64) -> u64 {
    x + 1
}

#[dtask(name = "call.chain")]
async fn chain(n: u64) -> u64 {
    let mut v = 0;
    for _ in 0..n {
        v = inc(v).await;
    }
    v
}

#[dtask(name = "call.fan")]
async fn fan(n: u64) -> u64 {
    DTask::when_all((0..n).map(inc)).await.iter().sum()
}

#[dtask(name = "call.nap")]
async fn nap(ms: u64) -> u64 {
    DTask::delay(Duration::from_millis(ms)).await;
    ms
}

#[dtask(name = "call.boom")]
async fn boom(x: u64) -> u64 {
    if x > 0 {
        panic!("boom {x}");
    }
    x
}

fn runtime(duplicate: bool) -> Result<Runtime, dtasks::Error> {
    let b = Runtime::builder(
        WorkerConfig::new()
            .register(inc)
            .register(chain)
            .register(fan)
            .register(nap)
            .register(boom),
    );
    if duplicate {
        b.duplicate_delivery().build()
    } else {
        b.build()
    }
}

#[tokio::test]
async fn a_call_returns_the_value_of_chains_fan_outs_and_timers() -> TestResult {
    let rt = runtime(false)?;
    let c = rt.client();
    assert_eq!(c.call(inc(41)).await?, 42);
    assert_eq!(c.call(chain(10)).await?, 10);
    assert_eq!(c.call(fan(20)).await?, (1..=20).sum::<u64>());
    assert_eq!(c.call(nap(20)).await?, 20);
    Ok(())
}

#[tokio::test]
async fn a_failure_comes_back_as_an_error() -> TestResult {
    let rt = runtime(false)?;
    let err = rt.client().call(boom(3)).await.unwrap_err();
    let f = err.failure().expect("a failure");
    assert!(f.is_panic(), "{f}");
    assert!(f.message().contains("boom 3"), "{f}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_calls_at_once_each_get_their_own_result() -> TestResult {
    let rt = runtime(false)?;
    let c = rt.client();
    let calls = (0..300u64).map(|i| {
        let c = c.clone();
        async move { c.call(inc(i * 7)).await.map(|v| (i, v)) }
    });
    for r in futures::future::join_all(calls).await {
        let (i, v) = r?;
        assert_eq!(v, i * 7 + 1);
    }
    Ok(())
}

#[tokio::test]
async fn every_message_delivered_twice_still_gives_one_right_result() -> TestResult {
    let rt = runtime(true)?;
    let c = rt.client();
    for n in [1u64, 5, 12] {
        assert_eq!(c.call(chain(n)).await?, n);
    }
    assert_eq!(c.call(fan(8)).await?, (1..=8).sum::<u64>());
    Ok(())
}

#[tokio::test]
async fn a_dropped_call_leaves_later_calls_working() -> TestResult {
    let rt = runtime(false)?;
    let c = rt.client();
    // Gives up before the timer fires; its result arrives later and is dropped.
    let gave_up = tokio::time::timeout(Duration::from_millis(5), c.call(nap(100))).await;
    assert!(gave_up.is_err());
    assert_eq!(c.call(nap(150)).await?, 150);
    assert_eq!(c.call(inc(1)).await?, 2);
    Ok(())
}

#[tokio::test]
async fn without_reply_queues_a_call_starts_with_a_register() -> TestResult {
    // A transport that hides its reply queues: `call` falls back to start + result.
    #[derive(Clone)]
    struct NoReplies(MemoryTransport);
    impl Transport for NoReplies {
        fn now(&self) -> std::time::SystemTime {
            self.0.now()
        }
        fn publish(&self, batch: Vec<Outgoing>) -> BoxFuture<'_, Result<Vec<Published>, Error>> {
            assert!(
                !batch
                    .iter()
                    .any(|o| matches!(o.destination, Destination::Reply { .. })),
                "a reply on a transport without reply queues"
            );
            self.0.publish(batch)
        }
        fn consume(
            &self,
            names: Vec<String>,
        ) -> BoxFuture<'_, Result<BoxStream<'static, Result<Delivery, Error>>, Error>> {
            self.0.consume(names)
        }
        fn drain_for_doorbell(
            &self,
            instance: &InstanceId,
            tag: u64,
        ) -> BoxFuture<'_, Result<Vec<MailboxMessage>, Error>> {
            self.0.drain_for_doorbell(instance, tag)
        }
        fn drain_mailbox(
            &self,
            instance: &InstanceId,
        ) -> BoxFuture<'_, Result<Vec<MailboxMessage>, Error>> {
            self.0.drain_mailbox(instance)
        }
        fn mailbox_retention(&self) -> Option<std::time::Duration> {
            self.0.mailbox_retention()
        }
        fn pending_timers(&self) -> BoxFuture<'_, Result<Option<u64>, Error>> {
            self.0.pending_timers()
        }
        fn store(&self) -> Option<std::sync::Arc<dyn dtasks::store::InstanceStore>> {
            self.0.store()
        }
        fn payloads(&self) -> Option<std::sync::Arc<dyn dtasks::store::PayloadStore>> {
            self.0.payloads()
        }
        // What this test is about.
        fn replies(&self) -> Option<&dyn ReplyQueues> {
            None
        }
        fn cancels(&self) -> Option<&dyn Cancels> {
            self.0.cancels()
        }

        fn delete_mailbox(&self, instance: &InstanceId) -> BoxFuture<'_, Result<(), Error>> {
            self.0.delete_mailbox(instance)
        }
    }
    let t = NoReplies(MemoryTransport::new());
    let worker = dtasks::Worker::new(t.clone(), WorkerConfig::new().register(chain).register(inc))?;
    let client = dtasks::Client::new(t);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run_until(async move {
        let _ = stopped.await;
    }));
    assert_eq!(client.call(chain(4)).await?, 4);
    let _ = stop.send(());
    running.await??;
    Ok(())
}

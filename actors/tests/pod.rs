//! Supervision and graceful shutdown of worker pods.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dtasks::transport::{Cancels, Delivery, MailboxMessage, Outgoing, Published, ReplyQueues};
use dtasks::{dtask, Client, DTask, Error, InstanceId, MemoryTransport, Transport, WorkerConfig};
use dtasks_actors::WorkerPod;
use futures::future::BoxFuture;
use futures::stream::BoxStream;

#[dtask]
async fn slow_double(x: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(300)).await;
    DTask::yield_now().await;
    x * 2
}

/// The in-memory transport, except that the first `consume` calls fail, as when a broker
/// is unreachable at start.
#[derive(Clone)]
struct FlakyConsume {
    inner: MemoryTransport,
    failures_left: Arc<AtomicUsize>,
}

impl Transport for FlakyConsume {
    fn publish(&self, batch: Vec<Outgoing>) -> BoxFuture<'_, Result<Vec<Published>, Error>> {
        self.inner.publish(batch)
    }
    fn consume(
        &self,
        names: Vec<String>,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Result<Delivery, Error>>, Error>> {
        let left = self.failures_left.load(Ordering::SeqCst);
        if left > 0 {
            self.failures_left.store(left - 1, Ordering::SeqCst);
            return Box::pin(async { Err(Error::transport("connection refused (simulated)")) });
        }
        self.inner.consume(names)
    }
    fn drain_for_doorbell(
        &self,
        instance: &InstanceId,
        tag: u64,
    ) -> BoxFuture<'_, Result<Vec<MailboxMessage>, Error>> {
        self.inner.drain_for_doorbell(instance, tag)
    }
    fn drain_mailbox(&self, i: &InstanceId) -> BoxFuture<'_, Result<Vec<MailboxMessage>, Error>> {
        self.inner.drain_mailbox(i)
    }
    fn now(&self) -> std::time::SystemTime {
        self.inner.now()
    }
    fn mailbox_retention(&self) -> Option<Duration> {
        self.inner.mailbox_retention()
    }
    fn pending_timers(&self) -> BoxFuture<'_, Result<Option<u64>, Error>> {
        self.inner.pending_timers()
    }
    fn store(&self) -> Option<std::sync::Arc<dyn dtasks::store::InstanceStore>> {
        self.inner.store()
    }
    fn payloads(&self) -> Option<std::sync::Arc<dyn dtasks::store::PayloadStore>> {
        self.inner.payloads()
    }
    fn replies(&self) -> Option<&dyn ReplyQueues> {
        self.inner.replies()
    }

    fn cancels(&self) -> Option<&dyn Cancels> {
        self.inner.cancels()
    }

    fn delete_mailbox(&self, instance: &InstanceId) -> BoxFuture<'_, Result<(), Error>> {
        self.inner.delete_mailbox(instance)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_consumer_is_restarted() -> Result<(), Box<dyn std::error::Error>> {
    let t = FlakyConsume {
        inner: MemoryTransport::new(),
        failures_left: Arc::new(AtomicUsize::new(2)),
    };
    let client = Client::new(t.clone());
    let pod = WorkerPod::new(t.clone(), WorkerConfig::new().register(slow_double))?;
    let h = client.start(slow_double(21)).await?;
    let report = pod
        .run_until(async move {
            assert_eq!(h.result().await.expect("result"), 42);
        })
        .await?;
    assert_eq!(report.restarts, 2);
    assert_eq!(t.failures_left.load(Ordering::SeqCst), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_work() -> Result<(), Box<dyn std::error::Error>> {
    let t = MemoryTransport::new();
    let client = Client::new(t.clone());
    let pod = WorkerPod::builder(t.clone(), WorkerConfig::new().register(slow_double))
        .consumers(2)
        .build()?;
    let mut handles = Vec::new();
    for i in 0..10 {
        handles.push(client.start(slow_double(i)).await?);
    }
    // Stop while the first steps sleep: they finish and are acked, nothing is lost.
    let report = pod
        .run_until(tokio::time::sleep(Duration::from_millis(100)))
        .await?;
    assert_eq!(report.stats.in_flight, 0);
    assert!(report.stats.processed >= 10, "{report:?}");
    let pod = WorkerPod::new(t.clone(), WorkerConfig::new().register(slow_double))?;
    let report = pod
        .run_until(async move {
            for (i, h) in handles.into_iter().enumerate() {
                assert_eq!(h.result().await.expect("result"), i as u64 * 2);
            }
        })
        .await?;
    assert!(report.stats.processed >= 10);
    Ok(())
}

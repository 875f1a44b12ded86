//! A worker's concurrency slots bound the steps that run, not the publishes they wait
//! for: a step whose messages wait for the transport gives its slot to the next delivery.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dtasks::transport::{
    Cancels, Delivery, Destination, MailboxMessage, Outgoing, Published, ReplyQueues,
};
use dtasks::{dtask, Client, Error, InstanceId, MemoryTransport, Transport, Worker, WorkerConfig};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::FutureExt;
use tokio::sync::watch;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Steps that ran so far.
static RAN: AtomicUsize = AtomicUsize::new(0);

#[dtask(name = "slots.bump")]
async fn bump(x: u64) -> u64 {
    RAN.fetch_add(1, Ordering::SeqCst);
    x + 1
}

/// The in-memory transport, except that results sent to clients wait until the gate opens.
#[derive(Clone)]
struct Gated {
    inner: MemoryTransport,
    open: watch::Receiver<bool>,
    /// Publishes waiting at the gate now.
    held: std::sync::Arc<AtomicUsize>,
}

impl Transport for Gated {
    fn publish(&self, batch: Vec<Outgoing>) -> BoxFuture<'_, Result<Vec<Published>, Error>> {
        let gated = batch
            .iter()
            .any(|o| matches!(o.destination, Destination::Reply { .. }));
        let mut open = self.open.clone();
        async move {
            if gated {
                self.held.fetch_add(1, Ordering::SeqCst);
                open.wait_for(|o| *o).await.expect("the gate stays");
                self.held.fetch_sub(1, Ordering::SeqCst);
            }
            self.inner.publish(batch).await
        }
        .boxed()
    }

    fn consume(
        &self,
        names: Vec<String>,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Result<Delivery, Error>>, Error>> {
        self.inner.consume(names)
    }

    fn drain_for_doorbell(
        &self,
        instance: &InstanceId,
        tag: u64,
    ) -> BoxFuture<'_, Result<Vec<MailboxMessage>, Error>> {
        self.inner.drain_for_doorbell(instance, tag)
    }
    fn drain_mailbox(
        &self,
        instance: &InstanceId,
    ) -> BoxFuture<'_, Result<Vec<MailboxMessage>, Error>> {
        self.inner.drain_mailbox(instance)
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
async fn a_step_waiting_for_its_publish_holds_no_slot() -> TestResult {
    let (gate, open) = watch::channel(false);
    let t = Gated {
        inner: MemoryTransport::new(),
        open,
        held: Default::default(),
    };
    let client = Client::new(t.clone());
    let handles = [client.start(bump(1)).await?, client.start(bump(10)).await?];
    let worker = Worker::new(t.clone(), WorkerConfig::new().register(bump).concurrency(1))?;
    let (stop, stopped) = watch::channel(false);
    let running = tokio::spawn(worker.run_until(async move {
        let mut stopped = stopped;
        let _ = stopped.wait_for(|s| *s).await;
    }));

    // One slot, and the first step's result to its client is held back: the second step runs
    // all the same.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while RAN.load(Ordering::SeqCst) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of 2 steps ran while a publish waited",
            RAN.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Both steps' results wait at the gate.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while t.held.load(Ordering::SeqCst) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of 2 results wait at the gate",
            t.held.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    gate.send(true)?;
    let results = vec![handles[0].result().await?, handles[1].result().await?];
    assert_eq!(results, vec![2, 11]);
    stop.send(true)?;
    running.await??;
    Ok(())
}

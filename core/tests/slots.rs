//! A worker's concurrency slots bound the steps that run, not the publishes they wait
//! for: a step whose messages wait for the transport gives its slot to the next delivery.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dtasks::transport::{
    Cancels, Delivery, Destination, MailboxMessage, Outgoing, Published, Registers, ReplyQueues,
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

/// The in-memory transport, except that result writes wait until the gate opens.
#[derive(Clone)]
struct Gated {
    inner: MemoryTransport,
    open: watch::Receiver<bool>,
}

impl Transport for Gated {
    fn publish(&self, batch: Vec<Outgoing>) -> BoxFuture<'_, Result<Vec<Published>, Error>> {
        let gated = batch
            .iter()
            .any(|o| matches!(o.destination, Destination::Result { .. }));
        let mut open = self.open.clone();
        async move {
            if gated {
                open.wait_for(|o| *o).await.expect("the gate stays");
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

    fn registers(&self) -> Option<&dyn Registers> {
        self.inner.registers()
    }

    fn replies(&self) -> Option<&dyn ReplyQueues> {
        self.inner.replies()
    }

    fn cancels(&self) -> Option<&dyn Cancels> {
        self.inner.cancels()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_waiting_for_its_publish_holds_no_slot() -> TestResult {
    let (gate, open) = watch::channel(false);
    let t = Gated {
        inner: MemoryTransport::new(),
        open,
    };
    let client = Client::new(t.clone());
    let handles = vec![client.start(bump(1)).await?, client.start(bump(10)).await?];
    let worker = Worker::new(t.clone(), WorkerConfig::new().register(bump).concurrency(1))?;
    let (stop, stopped) = watch::channel(false);
    let running = tokio::spawn(worker.run_until(async move {
        let mut stopped = stopped;
        let _ = stopped.wait_for(|s| *s).await;
    }));

    // One slot, and the first step's result write is held back: the second step runs
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
    for h in &handles {
        assert_eq!(
            h.try_result().await?,
            None,
            "a result passed the closed gate"
        );
    }

    gate.send(true)?;
    let results = vec![handles[0].result().await?, handles[1].result().await?];
    assert_eq!(results, vec![2, 11]);
    stop.send(true)?;
    running.await??;
    Ok(())
}

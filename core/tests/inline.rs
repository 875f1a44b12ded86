//! Steps run inline: a sequential child's start, and the parent's resume with the child's
//! result, run within the delivery that handed them on, when the worker runs that DTask.

use std::time::Duration;

use dtasks::store::{
    Fact, FactKind, Filter, InstanceInfo, InstanceStore, Listing, MemoryStore, Query,
};
use dtasks::{
    dtask, Call, Client, DTask, InstanceId, MemoryTransport, Status, Worker, WorkerConfig,
    WorkerStats,
};
use futures::future::BoxFuture;
use std::sync::{Arc, Mutex};

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

#[dtask(name = "inline.inc")]
async fn inc(x: u64) -> u64 {
    x + 1
}

#[dtask(name = "inline.chain")]
async fn chain(n: u64) -> u64 {
    let mut v = 0;
    for _ in 0..n {
        v = inc(v).await;
    }
    v
}

#[dtask(name = "inline.fan")]
async fn fan(n: u64) -> u64 {
    DTask::when_all((0..n).map(inc)).await.iter().sum()
}

/// Yields twice, between two children.
#[dtask(name = "inline.yielder")]
async fn yielder() -> u64 {
    let a = inc(1).await;
    DTask::yield_now().await;
    DTask::yield_now().await;
    a + inc(2).await
}

fn config() -> WorkerConfig {
    WorkerConfig::new()
        .register(inc)
        .register(chain)
        .register(fan)
        .register(yielder)
        // No time bound in these tests: the counts below must not depend on the machine.
        .inline_time(Duration::from_secs(3_600))
}

/// Runs `start` on `worker` until its result is in; returns the result and the counters.
async fn run<T: serde::de::DeserializeOwned + Send + 'static>(
    t: &MemoryTransport,
    worker: Worker,
    start: Call<T>,
) -> Result<(T, WorkerStats, Status), Box<dyn std::error::Error + Send + Sync>> {
    let client = Client::new(t.clone());
    let h = client.start(start).await?;
    let stats = worker.clone();
    let waiter = h.clone();
    tokio::spawn(worker.run_until(async move {
        let _ = waiter.result().await;
    }))
    .await??;
    let value = h.result().await?;
    Ok((value, stats.stats(), h.status().await?))
}

#[tokio::test]
async fn a_chain_runs_in_the_delivery_of_its_start() -> TestResult {
    let t = MemoryTransport::new();
    let (v, s, status) = run(&t, Worker::new(t.clone(), config())?, chain(10)).await?;
    assert_eq!(v, 10);
    assert_eq!(status, Status::Succeeded);
    // One delivery (the root's start); 10 child starts and 10 resumes ran inline.
    assert_eq!((s.processed, s.inlined), (1, 20));
    Ok(())
}

/// A memory store that keeps every fact recorded in it.
#[derive(Clone, Default)]
struct Recording {
    store: MemoryStore,
    facts: Arc<Mutex<Vec<Fact>>>,
}

impl InstanceStore for Recording {
    fn record(&self, facts: Vec<Fact>) -> BoxFuture<'_, Result<u64, dtasks::Error>> {
        self.facts.lock().unwrap().extend(facts.iter().cloned());
        self.store.record(facts)
    }
    fn get<'a>(
        &'a self,
        id: &'a InstanceId,
    ) -> BoxFuture<'a, Result<Option<InstanceInfo>, dtasks::Error>> {
        self.store.get(id)
    }
    fn list<'a>(&'a self, q: &'a Query) -> BoxFuture<'a, Result<Listing, dtasks::Error>> {
        self.store.list(q)
    }
    fn purge<'a>(&'a self, f: &'a Filter) -> BoxFuture<'a, Result<u64, dtasks::Error>> {
        self.store.purge(f)
    }
    fn claim<'a>(
        &'a self,
        id: &'a InstanceId,
        nonce: u64,
    ) -> BoxFuture<'a, Result<bool, dtasks::Error>> {
        self.store.claim(id, nonce)
    }
}

#[tokio::test]
async fn a_root_finished_inline_writes_no_stale_status() -> TestResult {
    let t = MemoryTransport::new();
    let store = Recording::default();
    let client = Client::new(t.clone()).with_store(store.clone());
    let h = client.start(chain(3)).await?;
    // Started: known, and `Pending` until a worker reports on it.
    assert_eq!(h.status().await?, Status::Pending);
    let waiter = h.clone();
    let worker = Worker::new(t.clone(), config().store(store.clone()))?;
    tokio::spawn(worker.run_until(async move {
        let _ = waiter.result().await;
    }))
    .await??;
    assert_eq!(h.result().await?, 3);
    assert_eq!(h.status().await?, Status::Succeeded);
    // The root suspended and finished in one run: its `Suspended` write was dropped, not
    // recorded; only its start and its finish were.
    let kinds: Vec<&'static str> = store
        .facts
        .lock()
        .unwrap()
        .iter()
        .filter(|f| &f.instance == h.id())
        .map(|f| match f.kind {
            FactKind::Started { .. } => "started",
            FactKind::Status { .. } => "status",
            FactKind::Finished { .. } => "finished",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["started", "finished"]);
    Ok(())
}

#[tokio::test]
async fn the_step_budget_bounds_one_delivery() -> TestResult {
    let t = MemoryTransport::new();
    let (v, s, _) = run(
        &t,
        Worker::new(t.clone(), config().inline_steps(4))?,
        chain(10),
    )
    .await?;
    assert_eq!(v, 10);
    // 21 steps, at most 1 + 4 per delivery: 5 deliveries.
    assert_eq!((s.processed, s.inlined), (5, 16));
    Ok(())
}

#[tokio::test]
async fn turned_off_every_step_is_a_delivery() -> TestResult {
    let t = MemoryTransport::new();
    let (v, s, _) = run(
        &t,
        Worker::new(t.clone(), config().inline_steps(0))?,
        chain(10),
    )
    .await?;
    assert_eq!(v, 10);
    assert_eq!((s.processed, s.inlined), (21, 0));
    Ok(())
}

#[tokio::test]
async fn a_fan_out_is_published_not_inlined() -> TestResult {
    let t = MemoryTransport::new();
    let (v, s, _) = run(&t, Worker::new(t.clone(), config())?, fan(10)).await?;
    assert_eq!(v, (1..=10).sum::<u64>());
    assert_eq!(s.inlined, 0);
    // The root, its 10 children, and at least one mailbox merge.
    assert!(s.processed >= 12, "{s:?}");
    Ok(())
}

#[tokio::test]
async fn a_yield_stays_a_durable_checkpoint() -> TestResult {
    let t = MemoryTransport::new();
    let (v, s, _) = run(&t, Worker::new(t.clone(), config())?, yielder()).await?;
    assert_eq!(v, 2 + 3);
    // The start runs the first child and its resume inline, then yields (published); the
    // first yield's delivery yields again (published); the second one's delivery runs the
    // last child and the resume inline.
    assert_eq!((s.processed, s.inlined), (3, 4));
    Ok(())
}

#[tokio::test]
async fn a_dtask_this_worker_does_not_run_is_handed_on() -> TestResult {
    let t = MemoryTransport::new();
    let parents = Worker::new(t.clone(), WorkerConfig::new().register(chain))?;
    let children = Worker::new(t.clone(), WorkerConfig::new().register(inc))?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let child_stats = children.clone();
    let other = tokio::spawn(children.run_until(async move {
        let _ = stopped.await;
    }));
    let (v, s, _) = run(&t, parents, chain(3)).await?;
    let _ = stop.send(());
    other.await??;
    assert_eq!(v, 3);
    assert_eq!((s.processed, s.inlined), (4, 0));
    let c = child_stats.stats();
    assert_eq!((c.processed, c.inlined), (3, 0));
    Ok(())
}

#[tokio::test]
async fn duplicate_deliveries_still_complete_once() -> TestResult {
    let t = MemoryTransport::builder().duplicate_delivery().build();
    let client = Client::new(t.clone());
    let w = Worker::new(t.clone(), config())?;
    let handles = futures::future::try_join_all((0..20).map(|_| client.start(chain(5)))).await?;
    let hs = handles.clone();
    tokio::spawn(w.run_until(async move {
        for h in hs {
            let _ = h.result().await;
        }
    }))
    .await??;
    for h in handles {
        assert_eq!(h.result().await?, 5);
    }
    Ok(())
}

//! When the worker replies to the client that started a root, against the write of the
//! root's finish: after it by default, so that the client's one read finds the result;
//! while it is under way for a store that says so
//! ([`InstanceStore::replies_while_recording`]), whose reads wait for the finish to show.
//! After it, a store that counts duplicates at once
//! ([`InstanceStore::reports_duplicates`]) lets the reply say that its result is the one
//! recorded, and the client reads nothing. Whichever way, the client's `Handle::result`
//! returns the result the store recorded first.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dtasks::store::{
    Fact, FactKind, Filter, InstanceInfo, InstanceStore, Listing, MemoryStore, Query,
};
use dtasks::{dtask, Error, InstanceId, Runtime, WorkerConfig};
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::watch;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

#[dtask(name = "reply_order.add_one")]
async fn add_one(x: u64) -> u64 {
    x + 1
}

/// A memory store whose writes of finishes wait until the gate opens, and which counts
/// the reads of handles that had their reply (`read_finished`).
#[derive(Clone)]
struct Held {
    inner: MemoryStore,
    while_recording: bool,
    /// What it answers for `reports_duplicates` (the memory store's `true`, or `false`).
    reports: bool,
    open: watch::Receiver<bool>,
    /// Finishes waiting at the gate now.
    held: Arc<AtomicUsize>,
    /// `read_finished` calls so far.
    reads: Arc<AtomicUsize>,
}

impl InstanceStore for Held {
    fn record(&self, facts: Vec<Fact>) -> BoxFuture<'_, Result<u64, Error>> {
        let finish = facts
            .iter()
            .any(|f| matches!(f.kind, FactKind::Finished { .. }));
        let mut open = self.open.clone();
        async move {
            if finish {
                self.held.fetch_add(1, Ordering::SeqCst);
                open.wait_for(|o| *o).await.expect("the gate stays");
                self.held.fetch_sub(1, Ordering::SeqCst);
            }
            self.inner.record(facts).await
        }
        .boxed()
    }

    fn get<'a>(&'a self, id: &'a InstanceId) -> BoxFuture<'a, Result<Option<InstanceInfo>, Error>> {
        self.inner.get(id)
    }

    fn list<'a>(&'a self, query: &'a Query) -> BoxFuture<'a, Result<Listing, Error>> {
        self.inner.list(query)
    }

    fn purge<'a>(&'a self, filter: &'a Filter) -> BoxFuture<'a, Result<u64, Error>> {
        self.inner.purge(filter)
    }

    fn claim<'a>(&'a self, id: &'a InstanceId, nonce: u64) -> BoxFuture<'a, Result<bool, Error>> {
        self.inner.claim(id, nonce)
    }

    fn wait_finished<'a>(
        &'a self,
        id: &'a InstanceId,
    ) -> BoxFuture<'a, Result<InstanceInfo, Error>> {
        self.inner.wait_finished(id)
    }

    fn read_finished<'a>(
        &'a self,
        id: &'a InstanceId,
    ) -> BoxFuture<'a, Result<InstanceInfo, Error>> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.read_finished(id)
    }

    fn replies_while_recording(&self) -> bool {
        self.while_recording
    }

    fn reports_duplicates(&self) -> bool {
        self.reports
    }
}

/// A runtime whose workers and client use a [`Held`] store, and the gate's sender.
fn runtime(
    while_recording: bool,
    reports: bool,
) -> Result<(Runtime, Held, watch::Sender<bool>), Error> {
    let (gate, open) = watch::channel(false);
    let store = Held {
        inner: MemoryStore::new(),
        while_recording,
        reports,
        open,
        held: Arc::default(),
        reads: Arc::default(),
    };
    let rt = Runtime::new(WorkerConfig::new().store(store.clone()).register(add_one))?;
    Ok((rt, store, gate))
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what} did not happen within 10 s"));
}

#[tokio::test]
async fn a_store_that_allows_it_gets_the_reply_while_the_finish_is_written() -> TestResult {
    let (rt, store, gate) = runtime(true, true)?;
    let h = rt.client().start(add_one(41)).await?;
    let result = tokio::spawn(async move { h.result().await });
    // The reply came while the finish waits at the gate: the handle reads the store...
    until("the handle's read", || {
        store.reads.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(store.held.load(Ordering::SeqCst), 1);
    // ...and waits there for the finish, whatever the reply carried.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !result.is_finished(),
        "a result before its finish was recorded"
    );
    gate.send(true)?;
    assert_eq!(result.await??, 42);
    Ok(())
}

/// The reply waits at the gate with the finish; once both are out, how many times the
/// handle read the store.
async fn reads_after_the_gate(
    rt: &Runtime,
    store: &Held,
    gate: &watch::Sender<bool>,
    x: u64,
    earlier: Option<FactKind>,
) -> Result<(u64, usize), Box<dyn std::error::Error + Send + Sync>> {
    let h = rt.client().start(add_one(x)).await?;
    let id = h.id().clone();
    let result = tokio::spawn(async move { h.result().await });
    until("the finish's write", || {
        store.held.load(Ordering::SeqCst) == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        store.reads.load(Ordering::SeqCst),
        0,
        "the reply went out before the finish was recorded"
    );
    assert!(
        !result.is_finished(),
        "a result before its finish was recorded"
    );
    if let Some(kind) = earlier {
        // A finish of an earlier run of the same step, recorded while this one waits.
        let fact = Fact::new(
            id,
            "reply_order.add_one",
            std::time::SystemTime::now(),
            kind,
        );
        store.inner.record(vec![fact]).await?;
    }
    gate.send(true)?;
    let v = result.await??;
    Ok((v, store.reads.load(Ordering::SeqCst)))
}

#[tokio::test]
async fn by_default_the_reply_waits_for_the_finish_and_says_that_it_carries_it() -> TestResult {
    let (rt, store, gate) = runtime(false, true)?;
    // The memory store counts duplicates: the reply carries the recorded result, and
    // the handle takes it from there.
    assert_eq!(
        reads_after_the_gate(&rt, &store, &gate, 1, None).await?,
        (2, 0)
    );
    Ok(())
}

#[tokio::test]
async fn a_store_that_cannot_tell_duplicates_is_read_after_the_reply() -> TestResult {
    let (rt, store, gate) = runtime(false, false)?;
    assert_eq!(
        reads_after_the_gate(&rt, &store, &gate, 1, None).await?,
        (2, 1)
    );
    Ok(())
}

#[tokio::test]
async fn a_reply_whose_finish_came_second_sends_the_client_to_the_first() -> TestResult {
    // The encoding of a finish with 99, as a worker writes it.
    let other = Runtime::new(WorkerConfig::new().register(add_one))?;
    let h = other.client().start(add_one(98)).await?;
    h.result().await?;
    let info = other.client().instance(h.id()).await?;
    let earlier = FactKind::Finished {
        status: info.status,
        result: info.result.expect("a finished instance has its result"),
    };
    let (rt, store, gate) = runtime(false, true)?;
    // The worker's finish (2) is a duplicate: its reply does not say it carries the
    // recorded result, and the handle reads the one recorded first.
    let (v, reads) = reads_after_the_gate(&rt, &store, &gate, 1, Some(earlier)).await?;
    assert_eq!((v, reads), (99, 1));
    Ok(())
}

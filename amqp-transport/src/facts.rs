//! The RabbitMQ-only instance store: every fact is appended to one stream, `P.facts`, and
//! each process that reads facts follows the stream into a
//! [`MemoryStore`](dtasks::store::MemoryStore), its index. No database and no queue per
//! root; claims of chosen ids are claim queues (`registers.rs`).
//!
//! A read first syncs the index with the stream (a marker published after every fact
//! confirmed so far, read back), so it sees every fact confirmed before it began, from any
//! process. Only a handle that learnt of a finish on its reply queue reads without a sync
//! (`read_finished`): the finish is in the stream already, and its result never changes.

use std::sync::{Arc, OnceLock};

use dtasks::store::{
    Fact, FactKind, Filter, InstanceInfo, InstanceStore, Listing, MemoryStore, Query,
};
use dtasks::InstanceId;
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::{mpsc, oneshot, OnceCell};
use tracing::warn;

use crate::error::{AmqpError, Result};
use crate::follow::Follower;
use crate::headers::properties;
use crate::publish::RawItem;
use crate::shared::Shared;
use crate::topology::Kind;

/// The RabbitMQ-only instance store of an [`AmqpTransport`](crate::AmqpTransport) (what
/// its [`Transport::store`](dtasks::Transport::store) hands out). Cheap to clone.
///
/// Costs, for choosing a store: a write is a confirmed publish to the stream, shared by
/// the writes of the process made meanwhile (one message carries the facts of every write
/// that waited while the previous message was being confirmed); the first read in a process reads
/// the whole stream (the facts of the result retention) into memory, and the process
/// keeps every instance of that window in memory from then on; each later read costs
/// one marker round trip. For many millions of instances, or reads from many short-lived
/// processes, use the PostgreSQL store (`dtasks-postgres`).
#[derive(Clone)]
pub struct StreamStore {
    shared: Arc<Shared>,
    facts: Arc<FactIndex>,
}

impl std::fmt::Debug for StreamStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamStore")
            .field("stream", &self.shared.topo.facts())
            .finish_non_exhaustive()
    }
}

/// What a process has read of the stream (shared by every clone of the transport), and
/// its writer.
#[derive(Default)]
pub(crate) struct FactIndex {
    index: MemoryStore,
    follower: OnceCell<Follower>,
    writer: OnceLock<mpsc::UnboundedSender<Write>>,
}

/// Facts to append, and who waits until they are confirmed.
struct Write {
    facts: Vec<Fact>,
    done: oneshot::Sender<Result<(), Arc<AmqpError>>>,
}

/// A wait on the index probes the stream when nothing was read for this long.
const PROBE_IDLE: std::time::Duration = std::time::Duration::from_secs(10);

/// At most this many facts in one stream message.
const BATCH_FACTS: usize = 4096;
/// A message takes more writes while its facts are smaller than this, about (one write's
/// facts always go together, however large).
const BATCH_BYTES: usize = 1 << 20;

/// About the encoded size of `f`.
fn size(f: &Fact) -> usize {
    let result = match &f.kind {
        FactKind::Finished { result, .. } => result.len(),
        _ => 0,
    };
    64 + f.instance.as_str().len() + f.name.len() + result + 32 * f.steps.len()
}

/// Appends the facts of every write waiting when the previous message was confirmed in
/// one message (group commit): under load, one confirmed publish serves many steps and
/// starts, and each follower receives one delivery for them; alone, a write goes at once.
async fn write_batches(shared: Arc<Shared>, mut writes: mpsc::UnboundedReceiver<Write>) {
    let queue = shared.topo.facts();
    while let Some(first) = writes.recv().await {
        let mut bytes: usize = first.facts.iter().map(size).sum();
        let mut count = first.facts.len();
        let mut batch = vec![first];
        while bytes < BATCH_BYTES && count < BATCH_FACTS {
            let Ok(next) = writes.try_recv() else { break };
            bytes += next.facts.iter().map(size).sum::<usize>();
            count += next.facts.len();
            batch.push(next);
        }
        let mut facts = Vec::with_capacity(count);
        let mut waiting = Vec::with_capacity(batch.len());
        for w in batch {
            facts.extend(w.facts);
            waiting.push(w.done);
        }
        let body = Fact::batch_to_bytes(&facts);
        let mut items = [RawItem::to_queue(
            queue.clone(),
            Kind::Facts,
            body,
            properties("", "", ""),
        )];
        let res = shared.publish_raw(&mut items).await.map_err(Arc::new);
        for w in waiting {
            let _ = w.send(res.clone());
        }
    }
}

impl StreamStore {
    pub(crate) fn new(shared: Arc<Shared>, facts: Arc<FactIndex>) -> Self {
        Self { shared, facts }
    }

    /// The index, following the stream from the first call on, and synced with it.
    async fn synced(&self) -> Result<&MemoryStore> {
        self.following(true).await
    }

    /// The index, following the stream from the first call on; synced with it when
    /// `sync` (a follower just started always is).
    async fn following(&self, sync: bool) -> Result<&MemoryStore> {
        let facts = &*self.facts;
        let mut fresh = false;
        let follower = facts
            .follower
            .get_or_try_init(|| async {
                fresh = true;
                let index = facts.index.clone();
                Follower::start(
                    self.shared.clone(),
                    self.shared.topo.facts(),
                    Kind::Facts,
                    "instance facts",
                    Arc::new(move |record: &[u8]| match Fact::all_from_bytes(record) {
                        Ok(facts) => {
                            index.apply(&facts);
                        }
                        Err(e) => {
                            warn!(error = %e, "a record of facts that does not decode is skipped")
                        }
                    }),
                )
                .await
            })
            .await?;
        // A follower just started is synced.
        if sync && !fresh {
            follower.sync().await?;
        }
        Ok(&facts.index)
    }

    /// Waits for `wait` (a wait on the index), probing the stream while nothing is read
    /// ([`Follower::probe_if_idle`]): a follower that stopped reading would otherwise
    /// keep a finish from the waiter until the next write to the stream. A failed probe
    /// is logged, not returned: the follower reconnects on its own.
    async fn probing<T>(&self, wait: impl std::future::Future<Output = T>) -> T {
        let mut wait = std::pin::pin!(wait);
        loop {
            let follower = self.facts.follower.get();
            // Until the follower will have read nothing for `PROBE_IDLE` (at least a
            // moment: another waiter's probe may be under way).
            let nap = follower.map_or(PROBE_IDLE, |f| {
                PROBE_IDLE
                    .saturating_sub(f.idle_for())
                    .max(std::time::Duration::from_secs(1))
            });
            if let Ok(done) = tokio::time::timeout(nap, &mut wait).await {
                return done;
            }
            if let Some(follower) = follower {
                tokio::select! {
                    done = &mut wait => return done,
                    probed = follower.probe_if_idle(PROBE_IDLE) => {
                        if let Err(e) = probed {
                            warn!(error = %e, "probing the instance facts failed");
                        }
                    }
                }
            }
        }
    }

    /// Appends `facts` to the stream (with the facts of concurrent calls: see
    /// [`write_batches`]); resolves once the broker confirmed them.
    async fn append(&self, facts: Vec<Fact>) -> Result<()> {
        if facts.is_empty() {
            return Ok(());
        }
        let writer = self.facts.writer.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(write_batches(self.shared.clone(), rx));
            tx
        });
        let (done, confirmed) = oneshot::channel();
        writer
            .send(Write { facts, done })
            .map_err(|_| AmqpError::Connect("the instance facts' writer ended".into()))?;
        confirmed
            .await
            .map_err(|_| AmqpError::Connect("the instance facts' writer ended".into()))?
            .map_err(AmqpError::Shared)
    }
}

impl InstanceStore for StreamStore {
    fn record(&self, facts: Vec<Fact>) -> BoxFuture<'_, std::result::Result<u64, dtasks::Error>> {
        async move {
            self.append(facts).await?;
            Ok(0)
        }
        .boxed()
    }

    fn get<'a>(
        &'a self,
        id: &'a InstanceId,
    ) -> BoxFuture<'a, std::result::Result<Option<InstanceInfo>, dtasks::Error>> {
        // Always synced, a finished instance too: a later duplicate result or a purge
        // changes what a read must show.
        async move { Ok(self.synced().await?.instance(id)) }.boxed()
    }

    fn list<'a>(
        &'a self,
        query: &'a Query,
    ) -> BoxFuture<'a, std::result::Result<Listing, dtasks::Error>> {
        async move { Ok(self.synced().await?.page(query)) }.boxed()
    }

    fn purge<'a>(
        &'a self,
        filter: &'a Filter,
    ) -> BoxFuture<'a, std::result::Result<u64, dtasks::Error>> {
        async move {
            // A purge is a fact of its own per instance: every follower forgets them.
            let index = self.synced().await?;
            let now = std::time::SystemTime::now();
            let gone: Vec<Fact> = index
                .page_all(filter)
                .into_iter()
                .filter(|i| i.status.is_finished())
                .map(|i| Fact::new(i.id, i.name, now, FactKind::Purged))
                .collect();
            let n = gone.len() as u64;
            let ids: Vec<InstanceId> = gone.iter().map(|f| f.instance.clone()).collect();
            for chunk in gone.chunks(1000) {
                self.append(chunk.to_vec()).await?;
            }
            // Their claims go too: a purged id is unknown, and may be started again.
            self.shared.delete_claims(&ids).await?;
            Ok(n)
        }
        .boxed()
    }

    fn claim<'a>(
        &'a self,
        id: &'a InstanceId,
        nonce: u64,
    ) -> BoxFuture<'a, std::result::Result<bool, dtasks::Error>> {
        let queue = self.shared.topo.claim(id.as_str());
        async move { Ok(self.shared.claim(&queue, nonce).await?) }.boxed()
    }

    fn read_finished<'a>(
        &'a self,
        id: &'a InstanceId,
    ) -> BoxFuture<'a, std::result::Result<InstanceInfo, dtasks::Error>> {
        async move {
            // The finish is in the stream, or on its way (the worker replies while it
            // appends): the follower reads it without a marker, whenever it comes.
            let index = self.following(false).await?;
            Ok(self.probing(index.until_finished(id)).await)
        }
        .boxed()
    }

    /// `true`: [`read_finished`](InstanceStore::read_finished) waits for the finish to
    /// come down the stream, so the reply need not wait for its append.
    fn replies_while_recording(&self) -> bool {
        true
    }

    fn wait_finished<'a>(
        &'a self,
        id: &'a InstanceId,
    ) -> BoxFuture<'a, std::result::Result<InstanceInfo, dtasks::Error>> {
        async move {
            let index = self.synced().await?;
            self.probing(index.wait_finished(id)).await
        }
        .boxed()
    }
}

//! [`MemoryStore`]: the facts of instances in this process's memory.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::oneshot;

use crate::error::Error;
use crate::protocol::InstanceId;
use crate::store::MemoryPayloads;

use super::query::millis;
use super::{Applied, Fact, FactKind, Filter, InstanceInfo, InstanceStore, Listing, Query};

/// The facts of instances in this process's memory: the embedded runtime's store (what
/// [`MemoryTransport`](crate::MemoryTransport) hands out), and the fold that stores
/// keeping a log of facts read into. Cheap to clone; clones share the facts.
///
/// Facts are applied by [`InstanceInfo::apply`]; finished instances are dropped once they
/// are older than the retention ([`MemoryStore::with_retention`]; by default they are
/// kept until purged). With [`MemoryStore::with_payloads`], the values an instance stored
/// out of band go with it.
///
/// ```
/// use dtasks::store::{Fact, FactKind, InstanceStore, MemoryStore};
/// use dtasks::{InstanceId, Status};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), dtasks::Error> {
/// let store = MemoryStore::new();
/// let id = InstanceId::new("order-1")?;
/// let started = Fact::new(id.clone(), "order", std::time::SystemTime::now(),
///     FactKind::Started { parent: None });
/// store.record(vec![started]).await?;
/// assert_eq!(store.get(&id).await?.unwrap().status, Status::Pending);
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    book: Mutex<Book>,
}

#[derive(Default)]
struct Book {
    instances: HashMap<InstanceId, InstanceInfo>,
    /// Every instance by (start time, id), for pages newest first.
    by_start: BTreeSet<(u64, InstanceId)>,
    claims: HashMap<InstanceId, u64>,
    retention: Option<Duration>,
    /// When the retention was last applied.
    swept: Option<SystemTime>,
    /// Where the instances' values stored out of band are, removed with their instance.
    payloads: Option<MemoryPayloads>,
    /// Who waits for the finish of each instance: woken when it finishes or is removed,
    /// and only then (a finish wakes its own waiters, not every waiter of the store).
    waiters: HashMap<InstanceId, Vec<oneshot::Sender<()>>>,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("instances", &self.len())
            .finish()
    }
}

impl MemoryStore {
    /// An empty store that keeps finished instances until purged.
    pub fn new() -> Self {
        Self::default()
    }

    /// Drops finished instances (and claims) once they finished longer than `retention`
    /// ago.
    pub fn with_retention(self, retention: Duration) -> Self {
        self.book().retention = Some(retention);
        self
    }

    /// Removes the values that an instance and its children (ids `<instance>.<n>…`) stored
    /// in `payloads` when the instance goes: purged, or dropped by the retention. This is
    /// what the PostgreSQL store does with the values it keeps, and what the embedded
    /// runtime's store does with its transport's values
    /// ([`MemoryTransport::memory_payloads`](crate::MemoryTransport::memory_payloads)),
    /// so that a process that purges what finished does not keep its values for good.
    ///
    /// ```
    /// use std::time::SystemTime;
    /// use dtasks::store::{
    ///     Fact, FactKind, Filter, InstanceStore, MemoryPayloads, MemoryStore, PayloadRef,
    ///     PayloadStore,
    /// };
    /// use dtasks::{InstanceId, Status};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), dtasks::Error> {
    /// let payloads = MemoryPayloads::new();
    /// let store = MemoryStore::new().with_payloads(payloads.clone());
    /// let id = InstanceId::new("order-1")?;
    /// // A large value that the instance stored out of band.
    /// let value = vec![7u8; 1 << 20];
    /// payloads.put(&PayloadRef::of(&id, &value), &value).await?;
    /// let now = SystemTime::now();
    /// let done = FactKind::Finished { status: Status::Succeeded, result: vec![0xc0] };
    /// store
    ///     .record(vec![
    ///         Fact::new(id.clone(), "order", now, FactKind::Started { parent: None }),
    ///         Fact::new(id.clone(), "order", now, done),
    ///     ])
    ///     .await?;
    /// assert_eq!(store.purge(&Filter::new()).await?, 1);
    /// assert!(payloads.is_empty());
    /// # Ok(()) }
    /// ```
    pub fn with_payloads(self, payloads: MemoryPayloads) -> Self {
        self.book().payloads = Some(payloads);
        self
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        self.inner.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `facts` in order (what [`InstanceStore::record`] does, without waiting):
    /// for stores that fold a log of facts into this one.
    pub fn apply(&self, facts: &[Fact]) -> Vec<Applied> {
        let mut book = self.book();
        let applied: Vec<Applied> = facts
            .iter()
            .map(|fact| {
                let a = book.apply(fact);
                if a == Applied::Changed && matches!(fact.kind, FactKind::Finished { .. }) {
                    book.wake(&fact.instance);
                }
                a
            })
            .collect();
        if let Some(last) = facts.last() {
            book.sweep(last.at);
        }
        applied
    }

    /// How many instances it holds.
    pub fn len(&self) -> usize {
        self.book().instances.len()
    }

    /// Whether it holds no instance.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The instance `id` (what [`InstanceStore::get`] answers, without waiting).
    pub fn instance(&self, id: &InstanceId) -> Option<InstanceInfo> {
        self.book().instances.get(id).cloned()
    }

    /// A page of the instances `query` selects (what [`InstanceStore::list`] answers).
    pub fn page(&self, query: &Query) -> Listing {
        let book = self.book();
        let mut out = Vec::new();
        for (_, id) in book.by_start.iter().rev() {
            let Some(info) = book.instances.get(id) else {
                continue;
            };
            if query.is_after_cursor(info) && query.filter().matches(info) {
                out.push(info.clone());
                if out.len() > query.page_size() {
                    break;
                }
            }
        }
        Listing::page(out, query)
    }

    /// Every instance `filter` selects, newest start first.
    pub fn page_all(&self, filter: &Filter) -> Vec<InstanceInfo> {
        let book = self.book();
        book.by_start
            .iter()
            .rev()
            .filter_map(|(_, id)| book.instances.get(id))
            .filter(|i| filter.matches(i))
            .cloned()
            .collect()
    }

    /// Removes the finished instances `filter` selects; returns how many.
    pub fn remove(&self, filter: &Filter) -> u64 {
        let mut book = self.book();
        let gone: Vec<InstanceId> = book
            .instances
            .values()
            .filter(|i| i.status.is_finished() && filter.matches(i))
            .map(|i| i.id.clone())
            .collect();
        for id in &gone {
            book.forget(id);
        }
        book.drop_values(&gone);
        gone.len() as u64
    }

    /// Waits until the instance `id` is here and finished (an unknown id is waited for,
    /// not refused): for stores that fold a log of facts into this one and know that a
    /// finish was recorded.
    pub async fn until_finished(&self, id: &InstanceId) -> InstanceInfo {
        loop {
            if let Some(info) = self.finish_of(id, Unknown::Wait).await {
                return info;
            }
        }
    }

    /// Waits until the instance `id` is finished and returns it; `None` when it is not
    /// here (at once with [`Unknown::Refuse`], else once it was removed).
    async fn finish_of(&self, id: &InstanceId, unknown: Unknown) -> Option<InstanceInfo> {
        loop {
            let woken = {
                let mut book = self.book();
                match book.instances.get(id) {
                    Some(info) if info.status.is_finished() => return Some(info.clone()),
                    None if unknown == Unknown::Refuse => return None,
                    _ => {}
                }
                let (tx, rx) = oneshot::channel();
                let waiting = book.waiters.entry(id.clone()).or_default();
                // Waits given up (a timeout around them) are dropped here, by the next
                // wait for the same instance, or by its finish: at most one stays.
                waiting.retain(|w| !w.is_closed());
                waiting.push(tx);
                rx
            };
            // Woken by a finish or by a removal: either way, read again.
            let _ = woken.await;
        }
    }

    /// Claims `id` for `nonce` (what [`InstanceStore::claim`] does).
    pub fn claim_now(&self, id: &InstanceId, nonce: u64) -> bool {
        *self.book().claims.entry(id.clone()).or_insert(nonce) == nonce
    }
}

/// What a wait for a finish does with an instance that is not here.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Unknown {
    /// Waits for it to come.
    Wait,
    /// Returns `None`.
    Refuse,
}

impl Book {
    fn apply(&mut self, fact: &Fact) -> Applied {
        if fact.kind == FactKind::Purged {
            let finished = self
                .instances
                .get(&fact.instance)
                .is_some_and(|i| i.status.is_finished());
            if finished {
                self.forget(&fact.instance);
                self.drop_values(std::slice::from_ref(&fact.instance));
                return Applied::Changed;
            }
            return Applied::Stale;
        }
        match self.instances.get_mut(&fact.instance) {
            Some(info) => {
                let before = millis(info.created_at);
                let applied = info.apply(fact);
                let after = millis(info.created_at);
                if before != after {
                    let id = fact.instance.clone();
                    self.by_start.remove(&(before, id.clone()));
                    self.by_start.insert((after, id));
                }
                applied
            }
            None => {
                let info = InstanceInfo::from_fact(fact);
                self.by_start
                    .insert((millis(info.created_at), info.id.clone()));
                self.instances.insert(info.id.clone(), info);
                Applied::Changed
            }
        }
    }

    fn forget(&mut self, id: &InstanceId) {
        if let Some(info) = self.instances.remove(id) {
            self.by_start.remove(&(millis(info.created_at), id.clone()));
        }
        self.claims.remove(id);
        self.wake(id);
    }

    /// Wakes whoever waits for the finish of `id`.
    fn wake(&mut self, id: &InstanceId) {
        for w in self.waiters.remove(id).into_iter().flatten() {
            let _ = w.send(());
        }
    }

    /// Drops what finished longer than the retention before `now`, at most once a
    /// second.
    fn sweep(&mut self, now: SystemTime) {
        let Some(retention) = self.retention else {
            return;
        };
        if self
            .swept
            .is_some_and(|t| now.duration_since(t).unwrap_or_default() < Duration::from_secs(1))
        {
            return;
        }
        self.swept = Some(now);
        let Some(cutoff) = now.checked_sub(retention) else {
            return;
        };
        let gone: Vec<InstanceId> = self
            .instances
            .values()
            .filter(|i| i.finished_at().is_some_and(|t| t < cutoff))
            .map(|i| i.id.clone())
            .collect();
        for id in &gone {
            self.forget(id);
        }
        self.drop_values(&gone);
    }

    /// Removes the values of the instances `gone` and of their children from the payload
    /// store, if the store has one (in one pass over its values).
    fn drop_values(&self, gone: &[InstanceId]) {
        if let (Some(payloads), false) = (&self.payloads, gone.is_empty()) {
            payloads.remove_instances(gone.iter().map(InstanceId::as_str));
        }
    }
}

impl InstanceStore for MemoryStore {
    /// `true`: a write applies its facts at once and counts each duplicate result.
    fn reports_duplicates(&self) -> bool {
        true
    }

    fn record(&self, facts: Vec<Fact>) -> BoxFuture<'_, Result<u64, Error>> {
        let applied = self.apply(&facts);
        let duplicates = applied.iter().filter(|a| **a == Applied::Duplicate).count();
        futures::future::ready(Ok(duplicates as u64)).boxed()
    }

    fn get<'a>(&'a self, id: &'a InstanceId) -> BoxFuture<'a, Result<Option<InstanceInfo>, Error>> {
        futures::future::ready(Ok(self.instance(id))).boxed()
    }

    fn list<'a>(&'a self, query: &'a Query) -> BoxFuture<'a, Result<Listing, Error>> {
        futures::future::ready(Ok(self.page(query))).boxed()
    }

    fn purge<'a>(&'a self, filter: &'a Filter) -> BoxFuture<'a, Result<u64, Error>> {
        futures::future::ready(Ok(self.remove(filter))).boxed()
    }

    fn claim<'a>(&'a self, id: &'a InstanceId, nonce: u64) -> BoxFuture<'a, Result<bool, Error>> {
        futures::future::ready(Ok(self.claim_now(id, nonce))).boxed()
    }

    fn wait_finished<'a>(
        &'a self,
        id: &'a InstanceId,
    ) -> BoxFuture<'a, Result<InstanceInfo, Error>> {
        async move {
            self.finish_of(id, Unknown::Refuse)
                .await
                .ok_or_else(|| Error::not_found(id.as_str()))
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::protocol::Status;

    fn fact(id: &InstanceId, kind: FactKind) -> Fact {
        Fact::new(id.clone(), "work", SystemTime::now(), kind)
    }

    fn finished(id: &InstanceId) -> Fact {
        fact(
            id,
            FactKind::Finished {
                status: Status::Succeeded,
                result: vec![0x91, 0x00],
            },
        )
    }

    fn started(id: &InstanceId) -> Fact {
        fact(id, FactKind::Started { parent: None })
    }

    fn waiting(store: &MemoryStore, id: &InstanceId) -> usize {
        store.book().waiters.get(id).map_or(0, Vec::len)
    }

    #[tokio::test]
    async fn a_finish_wakes_the_waiters_of_its_instance_and_no_other() {
        let store = MemoryStore::new();
        let (a, b) = (InstanceId::new("a").unwrap(), InstanceId::new("b").unwrap());
        store.apply(&[started(&a), started(&b)]);
        let wait_a = tokio::spawn({
            let (store, a) = (store.clone(), a.clone());
            async move { store.wait_finished(&a).await }
        });
        let wait_b = tokio::spawn({
            let (store, b) = (store.clone(), b.clone());
            async move { store.until_finished(&b).await }
        });
        while waiting(&store, &a) == 0 || waiting(&store, &b) == 0 {
            tokio::task::yield_now().await;
        }
        store.apply(&[finished(&b)]);
        let info = wait_b.await.unwrap();
        assert_eq!(info.status, Status::Succeeded);
        // `a`'s waiter was not woken: it still waits, registered once.
        assert_eq!(waiting(&store, &a), 1);
        assert!(!wait_a.is_finished());
        store.apply(&[finished(&a)]);
        assert_eq!(wait_a.await.unwrap().unwrap().status, Status::Succeeded);
        assert!(store.book().waiters.is_empty());
    }

    #[tokio::test]
    async fn a_removed_instance_ends_its_waits_with_not_found_and_unknown_ids_are_refused() {
        let store = MemoryStore::new();
        let id = InstanceId::new("gone").unwrap();
        let e = store.wait_finished(&id).await.unwrap_err();
        assert!(e.is_not_found());
        store.apply(&[started(&id)]);
        let wait = tokio::spawn({
            let (store, id) = (store.clone(), id.clone());
            async move { store.wait_finished(&id).await }
        });
        while waiting(&store, &id) == 0 {
            tokio::task::yield_now().await;
        }
        // Purges and the retention remove finished instances only, whose waiters the
        // finish woke; a removal of any other still ends its waits rather than leaving
        // them parked for good.
        store.book().forget(&id);
        assert!(wait.await.unwrap().unwrap_err().is_not_found());
    }

    #[tokio::test]
    async fn waits_given_up_do_not_pile_up() {
        let store = MemoryStore::new();
        let id = InstanceId::new("slow").unwrap();
        store.apply(&[started(&id)]);
        for _ in 0..100 {
            let gave_up =
                tokio::time::timeout(Duration::from_millis(1), store.wait_finished(&id)).await;
            assert!(gave_up.is_err());
        }
        // Each new wait drops those given up before registering itself.
        assert_eq!(waiting(&store, &id), 1);
    }

    #[tokio::test]
    async fn values_go_with_their_instance_when_purged_or_past_the_retention() {
        use crate::store::{PayloadRef, PayloadStore};

        let payloads = MemoryPayloads::new();
        let store = MemoryStore::new()
            .with_retention(Duration::from_secs(3600))
            .with_payloads(payloads.clone());
        let put = |id: &str| {
            let payloads = payloads.clone();
            let id = InstanceId::new(id).unwrap();
            async move {
                let r = PayloadRef::of(&id, id.as_str().as_bytes());
                payloads.put(&r, id.as_str().as_bytes()).await.unwrap();
            }
        };
        for id in ["old", "old.1", "purged", "purged.2", "running", "kept"] {
            put(id).await;
        }
        let t0 = SystemTime::now() - Duration::from_secs(7200);
        let at = |id: &str, t: SystemTime, kind: FactKind| {
            Fact::new(InstanceId::new(id).unwrap(), "work", t, kind)
        };
        let done = || FactKind::Finished {
            status: Status::Succeeded,
            result: vec![0xc0],
        };
        let started = || FactKind::Started { parent: None };
        let now = SystemTime::now();
        store.apply(&[
            at("old", t0, started()),
            at("old", t0, done()),
            at("running", t0, started()),
            at("purged", now, started()),
            at("purged", now, done()),
            at("kept", now, started()),
            at("kept", now, done()),
        ]);
        // The retention dropped `old` (finished two hours ago), with its child's value;
        // `running` started as long ago but is not finished.
        assert!(store.instance(&InstanceId::new("old").unwrap()).is_none());
        assert_eq!(payloads.len(), 4);
        let purged = store.remove(&Filter::new().id_prefix("purged"));
        assert_eq!(purged, 1);
        assert_eq!(payloads.len(), 2);
        // A store without a payload store leaves values alone.
        let other = MemoryStore::new();
        other.apply(&[at("kept", now, started()), at("kept", now, done())]);
        assert_eq!(other.remove(&Filter::new()), 1);
        assert_eq!(payloads.len(), 2);
        // A purge written as a fact (what stores that fold a log apply) takes them too.
        store.apply(&[at("kept", now, FactKind::Purged)]);
        assert_eq!(payloads.len(), 1);
    }
}

//! The payload store: where values over the payload threshold are kept out of band.
//!
//! An argument tuple, a result or an event value whose encoding is larger than the
//! threshold ([`WorkerConfig::payload_threshold`](crate::WorkerConfig::payload_threshold),
//! [`Client::with_payload_threshold`](crate::Client::with_payload_threshold); default
//! [`DEFAULT_PAYLOAD_THRESHOLD`]) is put in a [`PayloadStore`], and the messages carry a
//! [`PayloadRef`] in its place: the state budget counts the reference (about 100 bytes),
//! not the value. The writer's put is durable before the message that references it is
//! published, so a crash at any point loses nothing.
//!
//! The project ships three stores: [`MemoryPayloads`] (the in-memory transport's), the
//! PostgreSQL store of `dtasks-postgres` (a table, purged with the instances), and the
//! RabbitMQ-only store of `dtasks-amqp` (a stream, kept for its retention). Workers and
//! clients must use the same one, as they do the instance store.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

pub use crate::protocol::payload::{PayloadRef, PAYLOAD_EXT_TYPE};

use crate::error::Error;
use crate::protocol::payload::Fetched;
use crate::protocol::InstanceId;

/// The default payload threshold: values encoded in more bytes are stored out of band.
pub const DEFAULT_PAYLOAD_THRESHOLD: usize = 256 * 1024;

/// Where values stored out of band are kept.
///
/// A store must keep a value at least as long as the instance that references it may
/// still read it (until the instance finished and its result was read), or say in its
/// documentation how long it keeps them; a value it no longer has is `Ok(None)` from
/// [`PayloadStore::get`], which fails the reader with a clear error, never a hang.
pub trait PayloadStore: Send + Sync + 'static {
    /// Stores `value` under `r.key()` (the same key always comes with the same value:
    /// storing it again is harmless). Resolves when the value is durable, with where it
    /// is (the reference's [`PayloadRef::locator`]: 0 for a store that reads by key).
    fn put<'a>(&'a self, r: &'a PayloadRef, value: &'a [u8]) -> BoxFuture<'a, Result<u64, Error>>;

    /// The value `r` stands for, or `None` when the store does not have it (past its
    /// retention, purged). The caller checks its size and hash.
    fn get<'a>(&'a self, r: &'a PayloadRef) -> BoxFuture<'a, Result<Option<Vec<u8>>, Error>>;
}

/// What [`WorkerConfig::payloads`](crate::WorkerConfig::payloads) and
/// [`Client::with_payloads`](crate::Client::with_payloads) take: any [`PayloadStore`] by
/// value, or one already shared as an `Arc`.
pub trait IntoPayloads {
    /// The store, shared.
    fn into_payloads(self) -> Arc<dyn PayloadStore>;
}

impl<S: PayloadStore> IntoPayloads for S {
    fn into_payloads(self) -> Arc<dyn PayloadStore> {
        Arc::new(self)
    }
}

impl<S: PayloadStore> IntoPayloads for Arc<S> {
    fn into_payloads(self) -> Arc<dyn PayloadStore> {
        self
    }
}

impl IntoPayloads for Arc<dyn PayloadStore> {
    fn into_payloads(self) -> Arc<dyn PayloadStore> {
        self
    }
}

/// Values stored out of band in this process's memory: the in-memory transport's payload
/// store. Cheap to clone; clones share the values. Values are kept until
/// [`MemoryPayloads::remove_instance`] (which the embedded runtime's store calls when it
/// purges an instance, see [`MemoryStore::with_payloads`](crate::store::MemoryStore::with_payloads)),
/// until they are older than the retention ([`MemoryPayloads::with_retention`]), or until
/// the process ends.
#[derive(Clone, Default)]
pub struct MemoryPayloads {
    held: Arc<Mutex<Held>>,
}

#[derive(Default)]
struct Held {
    /// Each value by key, with when it was last stored.
    values: HashMap<String, (Arc<Vec<u8>>, Instant)>,
    retention: Option<Duration>,
    /// When values past the retention were last removed.
    swept: Option<Instant>,
}

impl Held {
    /// Removes the values stored longer ago than the retention, at most once every tenth
    /// of it.
    fn sweep(&mut self, now: Instant) {
        let Some(retention) = self.retention else {
            return;
        };
        if self
            .swept
            .is_some_and(|t| now.duration_since(t) < retention / 10)
        {
            return;
        }
        self.swept = Some(now);
        self.values
            .retain(|_, (_, at)| now.duration_since(*at) < retention);
    }
}

impl std::fmt::Debug for MemoryPayloads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryPayloads")
            .field("values", &self.len())
            .finish()
    }
}

impl MemoryPayloads {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Removes the values stored longer ago than `retention`, whatever their instance, as
    /// the RabbitMQ stream of values does (`AmqpConfig::with_payload_retention`): a bound
    /// on the memory that values take, those of `Client::call` roots included (a call
    /// records nothing in the instance store, so no purge reaches its values). Applied
    /// when a value is stored, at most once every tenth of the retention, on the process's
    /// clock (also under a transport's virtual time); storing a value again restarts its
    /// time. **An instance that waits longer than `retention` loses
    /// its values** (its next step that reads one fails it, as with a value gone).
    /// `Duration::ZERO` keeps each value only until the next one is stored.
    pub fn with_retention(self, retention: Duration) -> Self {
        self.lock().retention = Some(retention);
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many values it holds.
    pub fn len(&self) -> usize {
        self.lock().values.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes the values written by `instance` and by its children (ids
    /// `<instance>.<n>…`); returns how many were removed.
    pub fn remove_instance(&self, instance: &InstanceId) -> usize {
        self.remove_instances([instance.as_str()])
    }

    /// Removes the values written by each of `instances` and by their children, in one
    /// pass over the values; returns how many were removed.
    pub(crate) fn remove_instances<'a>(
        &self,
        instances: impl IntoIterator<Item = &'a str>,
    ) -> usize {
        let roots: HashSet<&str> = instances.into_iter().collect();
        let values = &mut self.lock().values;
        let before = values.len();
        values.retain(|key, _| {
            let owner = key.rsplit_once('/').map_or("", |(i, _)| i);
            !written_under_any(owner, &roots)
        });
        before - values.len()
    }
}

/// Whether the instance `owner` is one of `roots` or a descendant of one.
fn written_under_any(owner: &str, roots: &HashSet<&str>) -> bool {
    lineage(owner).any(|id| roots.contains(id))
}

/// The instance `id` and the instances it descends from, nearest first: `id`, then `id`
/// without its last `.<n>` part, and so on. A child's id is its parent's followed by
/// `.<position>`, so these are the ids whose purge removes the values `id` stored (a
/// store that keeps values out of band decides by them which instance owns a value).
///
/// ```
/// use dtasks::store::lineage;
/// assert_eq!(lineage("order-7.1.20").collect::<Vec<_>>(), ["order-7.1.20", "order-7.1", "order-7"]);
/// // Only numbered parts are positions: `v2` is part of the root's own id.
/// assert_eq!(lineage("order.v2.3").collect::<Vec<_>>(), ["order.v2.3", "order.v2"]);
/// ```
pub fn lineage(id: &str) -> impl Iterator<Item = &str> {
    std::iter::successors(Some(id), |at| match at.rsplit_once('.') {
        Some((parent, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => Some(parent),
        _ => None,
    })
}

impl PayloadStore for MemoryPayloads {
    fn put<'a>(&'a self, r: &'a PayloadRef, value: &'a [u8]) -> BoxFuture<'a, Result<u64, Error>> {
        Box::pin(async move {
            let now = Instant::now();
            let mut held = self.lock();
            held.sweep(now);
            held.values
                .entry(r.key().to_string())
                .and_modify(|(_, at)| *at = now)
                .or_insert_with(|| (Arc::new(value.to_vec()), now));
            Ok(0)
        })
    }

    fn get<'a>(&'a self, r: &'a PayloadRef) -> BoxFuture<'a, Result<Option<Vec<u8>>, Error>> {
        Box::pin(async move {
            Ok(self
                .lock()
                .values
                .get(r.key())
                .map(|(v, _)| v.as_ref().clone()))
        })
    }
}

/// Where a process keeps values out of band: its store and its threshold.
#[derive(Clone)]
pub(crate) struct Payloads {
    pub(crate) store: Option<Arc<dyn PayloadStore>>,
    pub(crate) threshold: usize,
}

impl Default for Payloads {
    fn default() -> Self {
        Self {
            store: None,
            threshold: DEFAULT_PAYLOAD_THRESHOLD,
        }
    }
}

impl Payloads {
    /// `value` as it travels: itself when it is at most the threshold (or there is no
    /// store, or it is a reference already), else stored under `instance` (durable when
    /// this resolves) and replaced by its reference.
    pub(crate) async fn externalize(
        &self,
        instance: &InstanceId,
        value: Vec<u8>,
    ) -> Result<Vec<u8>, Error> {
        let Some(store) = &self.store else {
            return Ok(value);
        };
        if value.len() <= self.threshold || PayloadRef::decode(&value).is_some() {
            return Ok(value);
        }
        let r = PayloadRef::of(instance, &value);
        let at = store.put(&r, &value).await?;
        tracing::debug!(key = r.key(), len = value.len(), "value stored out of band");
        Ok(r.at(at).encode())
    }

    /// Reads what `r` stands for: a transient failure of the store is an error (the
    /// reader tries again later), a value the store does not have or that is not the one
    /// written is [`Fetched::Missing`] with the reason.
    pub(crate) async fn fetch(&self, r: &PayloadRef) -> Result<Fetched, Error> {
        let Some(store) = &self.store else {
            return Ok(Fetched::Missing(format!(
                "the value under `{}` ({} bytes) is stored out of band, and this process has \
                 no payload store",
                r.key(),
                r.len()
            )));
        };
        Ok(match store.get(r).await? {
            Some(v) if r.matches(&v) => Fetched::Value(Arc::new(v)),
            Some(v) => Fetched::Missing(format!(
                "the value under `{}` is not the one written ({} bytes read, {} written, or \
                 another hash)",
                r.key(),
                v.len(),
                r.len()
            )),
            None => Fetched::Missing(format!(
                "the value under `{}` ({} bytes) is gone from the payload store (past its \
                 retention, or purged)",
                r.key(),
                r.len()
            )),
        })
    }

    /// `bytes` as the user reads them: the value a reference stands for, or themselves.
    pub(crate) async fn resolve(&self, bytes: Vec<u8>) -> Result<Vec<u8>, Error> {
        let Some(r) = PayloadRef::decode(&bytes) else {
            return Ok(bytes);
        };
        match self.fetch(&r).await? {
            Fetched::Value(v) => Ok(Arc::try_unwrap(v).unwrap_or_else(|v| v.as_ref().clone())),
            Fetched::Missing(why) => Err(Error::payload_missing(why)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_are_written_under_their_root_and_other_roots_are_not() {
        let under = |owner: &str, roots: &[&str]| {
            written_under_any(owner, &roots.iter().copied().collect::<HashSet<_>>())
        };
        assert!(under("a", &["a"]));
        assert!(under("a.1", &["a"]));
        assert!(under("a.1.20", &["a"]));
        assert!(under("a.1.20", &["a.1"]));
        assert!(!under("a.1", &["a.1.20"]));
        assert!(!under("a.b", &["a"]));
        assert!(under("a.b", &["a.b"]));
        assert!(under("a.b.3", &["x", "a.b"]));
        assert!(!under("ab", &["a"]));
        assert!(!under("a.", &["a"]));
        assert!(!under("a..1", &["a"]));
        assert!(!under("b.1", &["a"]));
        assert!(!under("a", &[]));
    }

    #[test]
    fn the_values_of_several_instances_go_in_one_pass_and_others_stay() {
        let store = MemoryPayloads::new();
        let mut held = store.lock();
        for owner in ["a", "a.1", "a.1.2", "b", "b.1", "c", "ab"] {
            held.values
                .insert(format!("{owner}/k"), (Arc::new(vec![1]), Instant::now()));
        }
        drop(held);
        assert_eq!(store.remove_instances(["a", "b.1"]), 4);
        let mut left: Vec<String> = store.lock().values.keys().cloned().collect();
        left.sort();
        assert_eq!(left, ["ab/k", "b/k", "c/k"]);
    }

    #[tokio::test]
    async fn values_past_the_retention_go_when_a_value_is_stored() {
        let store = MemoryPayloads::new().with_retention(Duration::from_secs(1));
        let put = |id: &str| {
            let store = store.clone();
            let r = PayloadRef::of(&InstanceId::new(id).unwrap(), id.as_bytes());
            async move {
                store.put(&r, r.key().as_bytes()).await.unwrap();
                r
            }
        };
        let old = put("old").await;
        let again = put("again").await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        // Stored again: its time starts over.
        put("again").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        // `old` is at least 1.1 s old, `again` about 0.5 s: storing a value removes `old`
        // only.
        let young = put("young").await;
        assert_eq!(store.len(), 2);
        assert_eq!(store.get(&old).await.unwrap(), None);
        assert!(store.get(&again).await.unwrap().is_some());
        assert!(store.get(&young).await.unwrap().is_some());
        // Without a retention, nothing goes by age.
        let kept = MemoryPayloads::new();
        kept.put(&old, b"x").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        kept.put(&young, b"y").await.unwrap();
        assert_eq!(kept.len(), 2);
    }

    #[tokio::test]
    async fn a_value_over_the_threshold_is_stored_and_read_back() {
        let store = MemoryPayloads::new();
        let payloads = Payloads {
            store: Some(Arc::new(store.clone())),
            threshold: 8,
        };
        let id = InstanceId::new("x").unwrap();
        let small = payloads
            .externalize(&id, b"12345678".to_vec())
            .await
            .unwrap();
        assert_eq!(small, b"12345678");
        let big = payloads
            .externalize(&id, b"123456789".to_vec())
            .await
            .unwrap();
        assert!(PayloadRef::decode(&big).is_some());
        assert_eq!(store.len(), 1);
        assert_eq!(payloads.resolve(big.clone()).await.unwrap(), b"123456789");
        assert_eq!(store.remove_instance(&id), 1);
        let gone = payloads.resolve(big).await.unwrap_err();
        assert!(gone.is_payload_missing(), "{gone}");
    }
}

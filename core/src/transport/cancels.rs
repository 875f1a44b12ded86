//! The cancel records: a capability of a [`Transport`](super::Transport) that keeps one
//! durable record per cancelled instance, visible to every worker.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use futures::future::BoxFuture;

use crate::error::Error;
use crate::protocol::codec::decode;
use crate::protocol::message::CancelRecord;
use crate::protocol::state::InstanceState;
use crate::protocol::InstanceId;

/// The cancel records of a transport: a capability handed out by
/// [`Transport::cancels`](super::Transport::cancels).
///
/// A record is published like any message, to [`Destination::Cancel`](super::Destination::Cancel)
/// (durable once the publish resolves); every process that follows the records keeps them
/// in its [`CancelBook`]. Records are kept at least as long as results are, so a worker
/// started later still sees every cancellation of the instances that may still run.
pub trait Cancels: Send + Sync {
    /// The book this process keeps the records in (one per transport; clones share it).
    fn book(&self) -> CancelBook;

    /// Starts following every record, the earliest kept first, into [`Cancels::book`];
    /// resolves once the book holds every record published before the call. Records
    /// published later are added as they arrive, for as long as the returned
    /// [`Following`] is held.
    fn follow(&self) -> BoxFuture<'_, Result<Following, Error>>;
}

/// Keeps a process following the cancel records ([`Cancels::follow`]) while held; dropped,
/// the following stops.
pub struct Following {
    _guard: Box<dyn Send + Sync>,
}

impl fmt::Debug for Following {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Following").finish_non_exhaustive()
    }
}

impl Following {
    /// Following that lasts as long as `guard` lives (a transport's subscription, or
    /// `()` when the records need no following).
    pub fn new(guard: impl Send + Sync + 'static) -> Self {
        Self {
            _guard: Box::new(guard),
        }
    }
}

/// The cancel records a process has seen: instance id → reason. Cheap to clone; clones
/// share the records.
///
/// ```
/// use dtasks::transport::CancelBook;
/// let book = CancelBook::new();
/// assert!(book.is_empty());
/// ```
#[derive(Clone, Default)]
pub struct CancelBook {
    records: Arc<RwLock<HashMap<InstanceId, String>>>,
}

impl fmt::Debug for CancelBook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelBook")
            .field("records", &self.len())
            .finish()
    }
}

impl CancelBook {
    /// An empty book.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the record in `body`, the body of a message published to
    /// [`Destination::Cancel`](super::Destination::Cancel); fails with
    /// [`Error::is_decode`] when it is not one. A second record for an instance keeps
    /// the first reason.
    pub fn insert_encoded(&self, body: &[u8]) -> Result<(), Error> {
        let rec: CancelRecord = decode(body)?;
        let mut records = self.records.write().unwrap_or_else(|p| p.into_inner());
        records.entry(rec.instance).or_insert(rec.reason);
        Ok(())
    }

    /// The reason `instance` was cancelled with, if a record says it was (its ancestors'
    /// records are not looked at here).
    pub fn reason(&self, instance: &InstanceId) -> Option<String> {
        let records = self.records.read().unwrap_or_else(|p| p.into_inner());
        records.get(instance).cloned()
    }

    /// Whether a record may cancel the instance `instance`: one names it, or an id it
    /// may descend from (each prefix of it that ends before a `.`). A transport that
    /// holds a timer it cannot read asks this to bring the timer to a worker before its
    /// time; the worker's engine then decides from the state, which knows the instance's
    /// cancel scope, so a `true` for an instance the records do not cancel costs only
    /// that early delivery.
    ///
    /// ```
    /// use dtasks::transport::CancelBook;
    /// let book = CancelBook::new();
    /// assert!(!book.may_cancel("order-7.3"));
    /// ```
    pub fn may_cancel(&self, instance: &str) -> bool {
        let records = self.records.read().unwrap_or_else(|p| p.into_inner());
        if records.is_empty() {
            return false;
        }
        let named = |id: &str| records.contains_key(&InstanceId::from_trusted(id));
        named(instance)
            || instance
                .match_indices('.')
                .any(|(i, _)| named(&instance[..i]))
    }

    /// How many records the book holds.
    pub fn len(&self) -> usize {
        self.records.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether the book holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The reason `state`'s instance is cancelled with: the record of its own id or of an
    /// ancestor in its cancel scope, the outermost first.
    pub(crate) fn find(&self, state: &InstanceState) -> Option<String> {
        let records = self.records.read().unwrap_or_else(|p| p.into_inner());
        if records.is_empty() {
            return None;
        }
        state.cancel_ids().into_iter().find_map(|id| {
            // A lookup by `&str` would need `Borrow<str>` on `InstanceId`.
            records.get(&InstanceId::from_trusted(id)).cloned()
        })
    }
}

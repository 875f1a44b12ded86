//! The instance store: the facts of root instances — when each started, its status with
//! what it waits for, its result — and the reads an operator needs: by id, a filtered
//! page (by status, name, id prefix, start time, parent), a purge.
//!
//! Each instance also keeps its timeline: the status changes workers reported
//! ([`InstanceInfo::history`], the latest [`InstanceInfo::MAX_HISTORY`]) and its journal
//! as the latest of them summarised it ([`InstanceInfo::steps`], from [`Fact::steps`]).
//! Both ride on the status writes a root makes anyway (its first suspension, a long wait
//! beginning or ending, its finish): no step writes more. Children are recorded, with
//! their parent, only under roots started by a client made with
//! [`Client::recording_children`](crate::Client::recording_children).
//!
//! Workers write facts; clients read them. Implement [`InstanceStore`] to keep them
//! anywhere; the project ships three:
//!
//! - [`MemoryStore`], the embedded default (the in-memory transport's store);
//! - the RabbitMQ-only store of `dtasks-amqp`: facts appended to one stream, which each
//!   reading process folds into a [`MemoryStore`] (no database, no queue per root);
//! - the PostgreSQL store of `dtasks-postgres`.
//!
//! Every store gives the same semantics, which [`InstanceInfo::apply`] defines:
//!
//! - **A result is recorded once.** The first [`FactKind::Finished`] of an instance wins;
//!   later ones (a step redone after a crash) change nothing and are counted in
//!   [`InstanceInfo::duplicate_results`].
//! - **A status never goes backwards.** A status fact carries the version of the state
//!   that wrote it: an older version than the one recorded changes nothing, and nothing
//!   changes a finished instance.
//! - **Durable before acked.** [`InstanceStore::record`] resolves only when the facts are
//!   durable; a worker records a step's facts before it acks the message that ran the
//!   step, so a crash at any point loses none (a redone step writes them again, which
//!   the two rules above make harmless).
//! - **Reads see confirmed writes.** Once `record` has resolved in any process, a read
//!   by id from any process sees the facts.

mod memory;
mod payloads;
mod query;

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::protocol::codec::{decode, decode_value};
use crate::protocol::hooks::{mutated, Mutation};
use crate::protocol::message::ResultRecord;
use crate::protocol::state::Outcome;
use crate::protocol::{InstanceId, Status, Wait};

pub use crate::protocol::fact::{Fact, FactKind, StepKind, Steps};

pub use memory::MemoryStore;
pub(crate) use payloads::Payloads;
pub use payloads::{
    lineage, IntoPayloads, MemoryPayloads, PayloadRef, PayloadStore, DEFAULT_PAYLOAD_THRESHOLD,
    PAYLOAD_EXT_TYPE,
};
pub use query::{
    from_millis, millis, sort_newest_first, Cursor, Filter, Listing, Parent, Query, MAX_PAGE,
};

/// Where the facts of root instances are kept. See the [module docs](self) for the
/// semantics every store gives.
pub trait InstanceStore: Send + Sync + 'static {
    /// Records `facts`, in order; resolves when every one is durable, with the number of
    /// results refused as duplicates when the store can tell at once (a store that keeps
    /// a log of facts counts them when it reads the log, and answers 0).
    fn record(&self, facts: Vec<Fact>) -> BoxFuture<'_, Result<u64, Error>>;

    /// The instance `id`, or `None` when the store holds nothing of it.
    fn get<'a>(&'a self, id: &'a InstanceId) -> BoxFuture<'a, Result<Option<InstanceInfo>, Error>>;

    /// A page of the instances `query` selects, newest start first.
    fn list<'a>(&'a self, query: &'a Query) -> BoxFuture<'a, Result<Listing, Error>>;

    /// Removes the *finished* instances `filter` selects (running ones are never
    /// removed: cancel them first); returns how many were removed.
    fn purge<'a>(&'a self, filter: &'a Filter) -> BoxFuture<'a, Result<u64, Error>>;

    /// Claims the id `id` for the start that carries `nonce` (a random number in
    /// `1..2^62`): an unclaimed id takes `nonce`; a claimed one is compared with it.
    /// Returns `true` when the id holds `nonce` (claimed by this call or by an earlier
    /// claim with the same nonce), `false` when another start's nonce holds it.
    ///
    /// A compare-and-set: of concurrent claims with different nonces, from any processes,
    /// exactly one gets `true`, and every later claim sees the same winner for as long as
    /// the store keeps the claim (at least the result retention). The client that starts
    /// an id under a chosen name claims it after publishing the start, and a worker claims
    /// it with the start's nonce before running it (for a client that died in between),
    /// so a claim may come twice with the same nonce.
    fn claim<'a>(&'a self, id: &'a InstanceId, nonce: u64) -> BoxFuture<'a, Result<bool, Error>>;

    /// Waits until the instance `id` has finished and returns it; [`Error::is_not_found`]
    /// when the store holds nothing of it. The default reads [`InstanceStore::get`] with
    /// a growing pause (10 ms up to 500 ms); a store that can be told of writes does
    /// better.
    fn wait_finished<'a>(
        &'a self,
        id: &'a InstanceId,
    ) -> BoxFuture<'a, Result<InstanceInfo, Error>> {
        Box::pin(async move {
            let mut pause = std::time::Duration::from_millis(10);
            loop {
                match self.get(id).await? {
                    None => return Err(Error::not_found(id.as_str())),
                    Some(info) if info.status.is_finished() => return Ok(info),
                    Some(_) => {}
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_millis(500));
            }
        })
    }

    /// The instance `id`, which is known to have finished: the reply to the client that
    /// started it came, which a worker sends once the finish is recorded, or while it is
    /// being recorded when [`InstanceStore::replies_while_recording`] says so. Returns the
    /// result that stands, the first recorded (a reply of redone work may carry another).
    /// The default is [`InstanceStore::wait_finished`]; a store whose reads lag its writes
    /// waits for the finish to show rather than syncing first. A store that wraps another
    /// (to count or log its calls) must forward this method too, or it falls back to the
    /// default.
    fn read_finished<'a>(
        &'a self,
        id: &'a InstanceId,
    ) -> BoxFuture<'a, Result<InstanceInfo, Error>> {
        self.wait_finished(id)
    }

    /// Whether a worker may send the reply to the client that started an instance while
    /// the instance's finish is still being recorded, instead of once it is recorded.
    ///
    /// `true` suits a store whose [`InstanceStore::read_finished`] waits for the finish
    /// to show whenever it was written (the reply then only wakes the reader, and the
    /// client's `Handle::result` still returns the result recorded first): the reply no
    /// longer waits for the write. Either way the worker acks the step only once both
    /// are done. The default, `false`, records first, so that the client's one read
    /// after the reply finds the finish. A store that wraps another must forward this.
    fn replies_while_recording(&self) -> bool {
        false
    }

    /// Whether [`InstanceStore::record`] counts every result it refused as a duplicate:
    /// when it does, a count of 0 says that each finish it recorded was the first of its
    /// instance, the result that stands. A worker then marks its reply to the client
    /// that started the instance (the `recorded` of the transport's `Destination::Reply`),
    /// and the client returns the result from the reply instead of reading the store. The
    /// default,
    /// `false`, suits a store that answers 0 because it cannot tell (one that keeps a
    /// log of facts); saying `true` wrongly would hand a client a result other than the
    /// one recorded. A store that wraps another must forward this.
    fn reports_duplicates(&self) -> bool {
        false
    }

    /// The payload store this instance store keeps (values over the payload threshold,
    /// [`PayloadStore`]), when it keeps one: workers and clients given this instance
    /// store keep payloads there unless they are given another
    /// ([`WorkerConfig::payloads`](crate::WorkerConfig::payloads)). The default keeps
    /// none, and the transport's is used; a store that wraps another must forward it.
    fn payloads(&self) -> Option<Arc<dyn PayloadStore>> {
        None
    }
}

/// What [`WorkerConfig::store`](crate::WorkerConfig::store) and
/// [`Client::with_store`](crate::Client::with_store) take: any [`InstanceStore`] by
/// value, or one already shared as an `Arc`.
pub trait IntoStore {
    /// The store, shared.
    fn into_store(self) -> Arc<dyn InstanceStore>;
}

impl<S: InstanceStore> IntoStore for S {
    fn into_store(self) -> Arc<dyn InstanceStore> {
        Arc::new(self)
    }
}

impl<S: InstanceStore> IntoStore for Arc<S> {
    fn into_store(self) -> Arc<dyn InstanceStore> {
        self
    }
}

impl IntoStore for Arc<dyn InstanceStore> {
    fn into_store(self) -> Arc<dyn InstanceStore> {
        self
    }
}

/// A payload store shared by a configuration (shows in `Debug` without its contents).
#[derive(Clone)]
pub(crate) struct SharedPayloads(pub(crate) Arc<dyn PayloadStore>);

impl fmt::Debug for SharedPayloads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PayloadStore")
    }
}

/// A store shared by a configuration (shows in `Debug` without its contents).
#[derive(Clone)]
pub(crate) struct SharedStore(pub(crate) Arc<dyn InstanceStore>);

impl fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InstanceStore")
    }
}

/// What a store knows of a root instance. Built by stores; read by everyone else.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct InstanceInfo {
    /// The instance.
    pub id: InstanceId,
    /// Its DTask name.
    pub name: String,
    /// The instance that started it, when it is not a client.
    pub parent: Option<InstanceId>,
    /// Its status.
    pub status: Status,
    /// What it waits for, while suspended.
    pub waits: Vec<Wait>,
    /// When it was started.
    pub created_at: SystemTime,
    /// When a fact last changed it.
    pub updated_at: SystemTime,
    /// The version of the state that wrote its status.
    pub version: u64,
    /// The encoded outcome, once finished.
    #[serde(with = "serde_bytes")]
    pub result: Option<Vec<u8>>,
    /// How many results came after the first (redone steps); they changed nothing.
    pub duplicate_results: u32,
    /// The statuses workers reported, oldest first (the start, `Pending`, is
    /// `created_at`): at most [`InstanceInfo::MAX_HISTORY`], the latest.
    #[serde(default)]
    pub history: Vec<Transition>,
    /// How many older transitions were dropped from `history` to keep it bounded.
    #[serde(default)]
    pub history_dropped: u32,
    /// The journal as the latest status or finish that carried it summarised it (empty
    /// for the snapshot model and before a worker reported one).
    #[serde(default)]
    pub steps: Vec<Steps>,
    /// The runs it has begun: 1, plus one per
    /// [`DTask::continue_as_new`](crate::DTask::continue_as_new), as far as its last
    /// status or its finish told (a run that continues before it suspends writes no
    /// status of its own).
    #[serde(default = "one")]
    pub runs: u32,
    /// While it is suspended in the snapshot model: the fingerprint of the code that
    /// saved its machine (from its last status), which only that code, or code that
    /// accepts or migrates from it, can resume. `None` for the replay model and once it
    /// finished. [`Client::fingerprints`](crate::Client::fingerprints) counts them, to
    /// tell when old code can go.
    #[serde(default)]
    pub fingerprint: Option<u64>,
    /// Whether its children are in the store (from its start): it is a root started by a
    /// client made with [`Client::recording_children`](crate::Client::recording_children),
    /// or a descendant of one. When `false`, its descendants write nothing: they are not
    /// listed, and the code their suspended snapshot machines hold is not counted by
    /// [`Client::fingerprints`](crate::Client::fingerprints). Instances recorded before
    /// the store kept this read as `false`.
    #[serde(default)]
    pub records_children: bool,
}

fn one() -> u32 {
    1
}

/// Code that suspended snapshot-model instances still need
/// ([`Client::fingerprints`](crate::Client::fingerprints)): the DTask, the fingerprint
/// of the code that saved their machines, and how many hold it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct HeldCode {
    /// The DTask name.
    pub name: String,
    /// The fingerprint of the code that saved the machines (as `accepts` and `migrate`
    /// take it, in hexadecimal: `format!("{:016x}", fingerprint)`).
    pub fingerprint: u64,
    /// How many unfinished instances in the store (roots, and the children of roots
    /// that record them) hold a machine saved by it.
    pub instances: u64,
}

/// The fingerprints in use, as [`Client::fingerprints`](crate::Client::fingerprints)
/// found them, and whether they can be complete.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct HeldCodes {
    /// For each DTask and fingerprint, how many unfinished instances in the store hold
    /// it; sorted by name, then by count (most first).
    pub held: Vec<HeldCode>,
    /// How many unfinished roots do not record their children
    /// ([`InstanceInfo::records_children`]): a suspended snapshot child under one of
    /// them is not in the store, so the code it holds is missing from
    /// [`HeldCodes::held`]. While it is not 0, code that only children run may still be
    /// held; see [`HeldCodes::counts_children`].
    pub unrecorded_roots: u64,
}

impl HeldCodes {
    /// Whether every unfinished root records its children, so that
    /// [`HeldCodes::held`] counts the suspended children too (as far as the store
    /// can see: instances started with [`Client::call`](crate::Client::call) record
    /// nothing).
    pub fn counts_children(&self) -> bool {
        self.unrecorded_roots == 0
    }
}

/// A status change a worker reported, as [`InstanceInfo::history`] keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Transition {
    /// When the writer made the fact, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The status it reported.
    pub status: Status,
    /// What the instance waited for then.
    pub waits: Vec<Wait>,
    /// How many journal positions the instance had issued by then ([`Steps::end`] of the
    /// fact's steps; the previous transition's when the fact carried none): the steps
    /// before this position happened before this transition.
    pub steps: u32,
}

impl fmt::Debug for InstanceInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstanceInfo")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("status", &self.status)
            .field("waits", &self.waits)
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .field("runs", &self.runs)
            .finish_non_exhaustive()
    }
}

/// What [`InstanceInfo::apply`] did with a fact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Applied {
    /// The fact changed the instance.
    Changed,
    /// The fact was older than what is recorded, or the instance had finished: nothing
    /// changed.
    Stale,
    /// A second result: nothing changed but the count of duplicates.
    Duplicate,
}

impl InstanceInfo {
    /// An instance known from its first fact `fact` (its start, or a later fact when the
    /// start was not recorded).
    pub fn from_fact(fact: &Fact) -> Self {
        let mut info = Self {
            id: fact.instance.clone(),
            name: fact.name.clone(),
            parent: None,
            status: Status::Pending,
            waits: Vec::new(),
            created_at: fact.at,
            updated_at: fact.at,
            version: 0,
            result: None,
            duplicate_results: 0,
            history: Vec::new(),
            history_dropped: 0,
            steps: Vec::new(),
            runs: 1,
            fingerprint: None,
            records_children: false,
        };
        info.apply(fact);
        info
    }

    /// The most transitions [`InstanceInfo::history`] keeps.
    pub const MAX_HISTORY: usize = 50;

    /// Adds the transition of `fact` (which changed the instance to `status`) to the
    /// history, unless it repeats the last one (a step redone after a crash writes its
    /// status again), and takes its steps.
    fn note(&mut self, fact: &Fact, status: Status) {
        let steps = if fact.steps.is_empty() {
            self.history.last().map_or(0, |t| t.steps)
        } else {
            Steps::end(&fact.steps)
        };
        let t = Transition {
            at_ms: query::millis(fact.at),
            status,
            waits: self.waits.clone(),
            steps,
        };
        if !fact.steps.is_empty() {
            self.steps.clone_from(&fact.steps);
        }
        let repeat = self
            .history
            .last()
            .is_some_and(|l| l.status == t.status && l.waits == t.waits && l.steps == t.steps);
        if repeat {
            return;
        }
        if self.history.len() >= Self::MAX_HISTORY {
            self.history.remove(0);
            self.history_dropped = self.history_dropped.saturating_add(1);
        }
        self.history.push(t);
    }

    /// Applies `fact` by the store's rules (see the [module docs](self)): the one
    /// definition of them, which stores that fold facts use as it is, and which others
    /// (the PostgreSQL store's SQL) follow.
    pub fn apply(&mut self, fact: &Fact) -> Applied {
        match &fact.kind {
            FactKind::Started { parent } => {
                if self.parent.is_none() && parent.is_some() {
                    self.parent.clone_from(parent);
                }
                if fact.at < self.created_at {
                    self.created_at = fact.at;
                }
                self.records_children |= fact.records_children;
                Applied::Stale
            }
            FactKind::Status {
                status,
                waits,
                version,
            } => {
                if self.status.is_finished() || *version < self.version {
                    return Applied::Stale;
                }
                self.status = *status;
                self.waits.clone_from(waits);
                self.version = *version;
                self.runs = self.runs.max(fact.runs);
                if *status == Status::Suspended || fact.fingerprint.is_some() {
                    self.fingerprint = fact.fingerprint;
                }
                self.updated_at = self.updated_at.max(fact.at);
                self.note(fact, *status);
                Applied::Changed
            }
            FactKind::Finished { status, result } => {
                if self.result.is_some() && !mutated(Mutation::DuplicateResults) {
                    self.duplicate_results += 1;
                    return Applied::Duplicate;
                }
                self.status = *status;
                self.waits.clear();
                self.runs = self.runs.max(fact.runs);
                self.fingerprint = None;
                self.result = Some(result.clone());
                self.updated_at = self.updated_at.max(fact.at);
                self.note(fact, *status);
                Applied::Changed
            }
            // The store removes the instance (a finished one); nothing to change here.
            FactKind::Purged => Applied::Stale,
        }
    }

    /// When it finished, once finished.
    pub fn finished_at(&self) -> Option<SystemTime> {
        self.result.as_ref().map(|_| self.updated_at)
    }

    /// Its result as MessagePack bytes: `None` while it runs, `Some(Err)` with
    /// [`Error::is_failed`] when it failed or was cancelled.
    pub fn result_bytes(&self) -> Option<Result<Vec<u8>, Error>> {
        let bytes = self.result.as_ref()?;
        Some(
            decode::<ResultRecord>(bytes).and_then(|rec| match rec.outcome {
                Outcome::Ok(b) => Ok(b),
                Outcome::Failed(f) => Err(Error::failed(f)),
            }),
        )
    }

    /// Its result decoded as `T`: `None` while it runs.
    pub fn result<T: serde::de::DeserializeOwned>(&self) -> Option<Result<T, Error>> {
        let bytes = self.result_bytes()?;
        Some(bytes.and_then(|b| decode_value(&b).map_err(Error::decode)))
    }
}

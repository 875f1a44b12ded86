//! A transport wrapper that counts what the core publishes: messages and bytes by
//! destination, and publish batches (each is one wait for the broker's confirms); and an
//! instance store wrapper that counts what is recorded: `record` calls and facts by kind.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use dtasks::store::{Fact, FactKind, Filter, InstanceInfo, InstanceStore, Listing, Query};
use dtasks::transport::{
    Cancels, Delivery, Destination, MailboxMessage, Outgoing, Published, ReplyQueues, Transport,
};
use dtasks::{Error, InstanceId};
use futures::future::BoxFuture;
use futures::stream::BoxStream;

use crate::tasks::{E2_JOB, M1_STEP};

/// Destination kinds, in the order of [`KINDS`].
pub(crate) const KINDS: [&str; 7] = [
    "task", "delayed", "mailbox", "store", "touch", "reply", "other",
];

fn kind_of(d: &Destination) -> usize {
    match d {
        Destination::Task { .. } => 0,
        Destination::Delayed { .. } => 1,
        Destination::Mailbox { .. } => 2,
        Destination::Store { .. } => 3,
        Destination::Touch { .. } => 4,
        Destination::Reply { .. } => 5,
        _ => 6,
    }
}

/// Counters shared by the wrappers of one environment.
#[derive(Default)]
pub(crate) struct Counters {
    batches: AtomicU64,
    msgs: [AtomicU64; KINDS.len()],
    bytes: [AtomicU64; KINDS.len()],
    /// Body sizes of the messages to the task queue of the M1 step, in publish order: each
    /// starts a child and carries the state of its suspended parent.
    m1_starts: Mutex<Vec<usize>>,
    /// E2: the writes of an E2 child to its own mailbox, when the broker confirmed them.
    e2_writes: Mutex<Vec<MailboxWrite>>,
    /// `InstanceStore::record` calls, through [`CountingStore`].
    records: AtomicU64,
    /// Facts recorded, by kind (in the order of [`FACT_KINDS`]).
    facts: [AtomicU64; FACT_KINDS.len()],
    /// `record` calls and the µs they took until durable, by the kind of their first fact
    /// (a client's start records a Started fact; a worker's step a status or a finish).
    record_calls: [AtomicU64; FACT_KINDS.len()],
    record_us: [AtomicU64; FACT_KINDS.len()],
}

/// Fact kinds, in the order of [`Counts::facts`].
pub(crate) const FACT_KINDS: [&str; 4] = ["started", "status", "finished", "purged"];

fn fact_kind(f: &Fact) -> usize {
    match f.kind {
        FactKind::Started { .. } => 0,
        FactKind::Status { .. } => 1,
        FactKind::Finished { .. } => 2,
        _ => 3,
    }
}

/// A confirmed write of an instance to its own mailbox (E2 children only).
#[derive(Clone, Debug)]
pub(crate) struct MailboxWrite {
    /// The instance.
    pub(crate) instance: String,
    /// Its tombstone (the instance ended), else a state write (it waits there).
    pub(crate) end: bool,
    /// When the publish batch that carried it was confirmed.
    pub(crate) at: Instant,
}

/// A copy of the counters at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Counts {
    pub(crate) batches: u64,
    pub(crate) msgs: [u64; KINDS.len()],
    pub(crate) bytes: [u64; KINDS.len()],
    /// `InstanceStore::record` calls.
    pub(crate) records: u64,
    /// Facts recorded, by kind ([`FACT_KINDS`]).
    pub(crate) facts: [u64; FACT_KINDS.len()],
    /// `record` calls, and the µs they took, by the kind of their first fact.
    pub(crate) record_calls: [u64; FACT_KINDS.len()],
    pub(crate) record_us: [u64; FACT_KINDS.len()],
}

impl Counters {
    pub(crate) fn snapshot(&self) -> Counts {
        let mut c = Counts {
            batches: self.batches.load(Ordering::Relaxed),
            ..Counts::default()
        };
        for i in 0..KINDS.len() {
            c.msgs[i] = self.msgs[i].load(Ordering::Relaxed);
            c.bytes[i] = self.bytes[i].load(Ordering::Relaxed);
        }
        c.records = self.records.load(Ordering::Relaxed);
        for i in 0..FACT_KINDS.len() {
            c.facts[i] = self.facts[i].load(Ordering::Relaxed);
            c.record_calls[i] = self.record_calls[i].load(Ordering::Relaxed);
            c.record_us[i] = self.record_us[i].load(Ordering::Relaxed);
        }
        c
    }

    /// Takes the recorded M1 start sizes, leaving none.
    pub(crate) fn take_m1_starts(&self) -> Vec<usize> {
        std::mem::take(&mut *self.m1_starts.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Takes the recorded mailbox writes of E2 children, leaving none.
    pub(crate) fn take_e2_writes(&self) -> Vec<MailboxWrite> {
        std::mem::take(&mut *self.e2_writes.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The E2 child's write to its own mailbox that `o` is, if it is one: `(instance, end)`.
/// A tombstone is the message `<instance>:end` (`MessageId::End`), a state write
/// `<instance>:v<version>` (`MessageId::State`); other items are not recorded.
fn e2_write(o: &Outgoing) -> Option<(String, bool)> {
    match &o.destination {
        Destination::Mailbox { instance } if o.dtask == E2_JOB && *instance == o.instance => {
            let id = instance.to_string();
            let rest = o.message_id.strip_prefix(id.as_str())?;
            if rest == ":end" {
                Some((id, true))
            } else if rest.starts_with(":v") {
                Some((id, false))
            } else {
                None
            }
        }
        _ => None,
    }
}

impl Counts {
    /// What happened between `earlier` and `self`.
    pub(crate) fn since(&self, earlier: &Counts) -> Counts {
        let mut c = Counts {
            batches: self.batches - earlier.batches,
            ..Counts::default()
        };
        for i in 0..KINDS.len() {
            c.msgs[i] = self.msgs[i] - earlier.msgs[i];
            c.bytes[i] = self.bytes[i] - earlier.bytes[i];
        }
        c.records = self.records - earlier.records;
        for i in 0..FACT_KINDS.len() {
            c.facts[i] = self.facts[i] - earlier.facts[i];
            c.record_calls[i] = self.record_calls[i] - earlier.record_calls[i];
            c.record_us[i] = self.record_us[i] - earlier.record_us[i];
        }
        c
    }

    pub(crate) fn total_facts(&self) -> u64 {
        self.facts.iter().sum()
    }

    pub(crate) fn total_msgs(&self) -> u64 {
        self.msgs.iter().sum()
    }

    pub(crate) fn total_bytes(&self) -> u64 {
        self.bytes.iter().sum()
    }
}

/// Wraps a transport and counts its publishes.
pub(crate) struct Counting {
    inner: Arc<dyn Transport>,
    counters: Arc<Counters>,
}

impl Counting {
    pub(crate) fn new(inner: Arc<dyn Transport>, counters: Arc<Counters>) -> Self {
        Self { inner, counters }
    }
}

impl Transport for Counting {
    fn now(&self) -> SystemTime {
        self.inner.now()
    }

    fn publish(&self, batch: Vec<Outgoing>) -> BoxFuture<'_, Result<Vec<Published>, Error>> {
        let e2: Vec<(String, bool)> = batch.iter().filter_map(e2_write).collect();
        if !batch.is_empty() {
            let c = &self.counters;
            c.batches.fetch_add(1, Ordering::Relaxed);
            for o in &batch {
                let k = kind_of(&o.destination);
                c.msgs[k].fetch_add(1, Ordering::Relaxed);
                c.bytes[k].fetch_add(o.body.len() as u64, Ordering::Relaxed);
                if matches!(&o.destination, Destination::Task { name } if name == M1_STEP) {
                    c.m1_starts
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(o.body.len());
                }
            }
        }
        if e2.is_empty() {
            return self.inner.publish(batch);
        }
        Box::pin(async move {
            let r = self.inner.publish(batch).await;
            if r.is_ok() {
                let at = Instant::now();
                self.counters
                    .e2_writes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(e2.into_iter().map(|(instance, end)| MailboxWrite {
                        instance,
                        end,
                        at,
                    }));
            }
            r
        })
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

    fn pending_timers(&self) -> BoxFuture<'_, Result<Option<u64>, Error>> {
        self.inner.pending_timers()
    }

    fn mailbox_retention(&self) -> Option<std::time::Duration> {
        self.inner.mailbox_retention()
    }

    fn store(&self) -> Option<Arc<dyn InstanceStore>> {
        let inner = self.inner.store()?;
        Some(Arc::new(CountingStore::new(inner, self.counters.clone())))
    }

    fn payloads(&self) -> Option<Arc<dyn dtasks::store::PayloadStore>> {
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

/// Wraps an instance store and counts what is recorded through it: each `record` call (a
/// write the caller waits for) and its facts by kind.
pub(crate) struct CountingStore {
    inner: Arc<dyn InstanceStore>,
    counters: Arc<Counters>,
}

impl CountingStore {
    pub(crate) fn new(inner: Arc<dyn InstanceStore>, counters: Arc<Counters>) -> Self {
        Self { inner, counters }
    }
}

impl InstanceStore for CountingStore {
    fn record(&self, facts: Vec<Fact>) -> BoxFuture<'_, Result<u64, Error>> {
        let c = &self.counters;
        c.records.fetch_add(1, Ordering::Relaxed);
        for f in &facts {
            c.facts[fact_kind(f)].fetch_add(1, Ordering::Relaxed);
        }
        let first = facts.first().map_or(FACT_KINDS.len() - 1, fact_kind);
        Box::pin(async move {
            let t = Instant::now();
            let r = self.inner.record(facts).await;
            let c = &self.counters;
            c.record_calls[first].fetch_add(1, Ordering::Relaxed);
            c.record_us[first].fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
            r
        })
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

    fn payloads(&self) -> Option<Arc<dyn dtasks::store::PayloadStore>> {
        self.inner.payloads()
    }

    fn wait_finished<'a>(
        &'a self,
        id: &'a InstanceId,
    ) -> BoxFuture<'a, Result<InstanceInfo, Error>> {
        self.inner.wait_finished(id)
    }

    // Forwarded too: the default would wait as `wait_finished` does, which on the stream
    // store is a marker round trip per result (the wrapper would measure that instead).
    fn read_finished<'a>(
        &'a self,
        id: &'a InstanceId,
    ) -> BoxFuture<'a, Result<InstanceInfo, Error>> {
        self.inner.read_finished(id)
    }

    fn replies_while_recording(&self) -> bool {
        self.inner.replies_while_recording()
    }

    fn reports_duplicates(&self) -> bool {
        self.inner.reports_duplicates()
    }
}

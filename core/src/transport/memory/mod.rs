//! The in-memory transport: the embedded default, and the transport for users' tests.
//!
//! It gives the same semantics as a broker (see [the contract](super)): at-least-once
//! delivery (an unsettled delivery is delivered again), durable-until-acked messages,
//! delays, mailboxes with serialized doorbells, and set-once result registers. Two test
//! modes make the hard cases easy to reach: **virtual time** (timers fire when the test
//! advances the clock, so a 30-day delay takes milliseconds) and **duplicate delivery**
//! (every message is delivered twice).
//!
//! Here the model of the broker and the test helpers; the contract's methods in `io.rs`;
//! the settling of deliveries (ack, requeue, dead letter, requeue on drop) in `settle.rs`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

mod io;
mod settle;

use tokio::sync::Notify;

use super::{CancelBook, Destination, Outgoing, Published};
use crate::protocol::InstanceId;
use crate::store::{Applied, Fact, MemoryPayloads, MemoryStore};
use crate::trace::TraceContext;

/// The in-process transport. Cheap to clone; clones share the same queues.
///
/// ```
/// use dtasks::MemoryTransport;
/// let t = MemoryTransport::builder().virtual_time().build();
/// assert!(t.dead_letters().is_empty());
/// ```
#[derive(Clone)]
pub struct MemoryTransport {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for MemoryTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryTransport").finish_non_exhaustive()
    }
}

/// Configures a [`MemoryTransport`].
#[derive(Debug, Default)]
pub struct MemoryTransportBuilder {
    virtual_time: bool,
    duplicate: bool,
    max_redeliveries: Option<u32>,
    mailbox_retention: Option<Duration>,
    /// Read by `RuntimeBuilder::build`, which refuses a zero retention.
    pub(crate) payload_retention: Option<Duration>,
}

impl MemoryTransportBuilder {
    /// Timers fire only when [`MemoryTransport::advance`] moves the clock past them.
    pub fn virtual_time(mut self) -> Self {
        self.virtual_time = true;
        self
    }

    /// Delivers every published message twice (a test of at-least-once handling).
    pub fn duplicate_delivery(mut self) -> Self {
        self.duplicate = true;
        self
    }

    /// How often a task message may be requeued before the transport itself moves it to
    /// the dead letters, as a broker's delivery limit does (default: no limit). A worker
    /// has a budget of its own ([`WorkerConfig::max_redeliveries`]), past which it
    /// dead-letters the message *and* fails its instance; a limit here at or below the
    /// worker's dead-letters without failing anything.
    ///
    /// [`WorkerConfig::max_redeliveries`]: crate::WorkerConfig::max_redeliveries
    pub fn max_redeliveries(mut self, n: u32) -> Self {
        self.max_redeliveries = Some(n);
        self
    }

    /// Deletes a mailbox that nobody drained for `retention`, as a broker's queue expiry
    /// does (default: mailboxes never expire; applied when virtual time advances). Workers
    /// keep the mailboxes of waiting instances alive.
    pub fn mailbox_retention(mut self, retention: Duration) -> Self {
        self.mailbox_retention = Some(retention);
        self
    }

    /// Removes values stored out of band longer ago than `retention`, whatever their
    /// instance (default: a value stays until its instance is purged, or the process
    /// ends): see [`MemoryPayloads::with_retention`], and its warning about instances that
    /// wait longer than that.
    pub fn payload_retention(mut self, retention: Duration) -> Self {
        self.payload_retention = Some(retention);
        self
    }

    /// Builds the transport.
    pub fn build(self) -> MemoryTransport {
        let clock = if self.virtual_time {
            Some(SystemTime::now())
        } else {
            None
        };
        let mut payloads = MemoryPayloads::new();
        if let Some(retention) = self.payload_retention {
            payloads = payloads.with_retention(retention);
        }
        MemoryTransport {
            shared: Arc::new(Shared {
                mem: Mutex::new(Mem {
                    clock,
                    ..Mem::default()
                }),
                changed: Notify::new(),
                duplicate: self.duplicate,
                max_redeliveries: self.max_redeliveries.unwrap_or(u32::MAX),
                mailbox_retention: self.mailbox_retention,
                cancels: CancelBook::new(),
                // A purge takes the values of what it removes with it.
                store: MemoryStore::new().with_payloads(payloads.clone()),
                payloads,
            }),
        }
    }
}

/// How many dead letters the in-memory transport keeps: past it, the oldest goes.
pub const DEAD_LETTERS_KEPT: usize = 10_000;

/// The most bytes of a dead letter's body that are kept; the rest is cut off (see
/// [`DeadLetter::truncated`]).
pub const DEAD_LETTER_BODY: usize = 64 * 1024;

/// A message moved to the dead letters, with the reason. The dead letters are bounded
/// ([`DEAD_LETTERS_KEPT`], [`DEAD_LETTER_BODY`]), like the RabbitMQ transport's queue, so
/// that garbage cannot fill memory.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The message's body, or its first [`DEAD_LETTER_BODY`] bytes.
    pub body: Vec<u8>,
    /// The length of the body when it was cut (`None`: `body` is whole).
    pub truncated: Option<usize>,
    /// Why it was dead-lettered.
    pub reason: String,
}

/// A reply waiting in a client's reply queue.
#[derive(Clone)]
pub(super) struct StoredReply {
    pub(super) instance: InstanceId,
    pub(super) body: Vec<u8>,
    /// What its [`Destination::Reply`] said.
    pub(super) recorded: bool,
}

struct Shared {
    mem: Mutex<Mem>,
    changed: Notify,
    duplicate: bool,
    max_redeliveries: u32,
    mailbox_retention: Option<Duration>,
    /// The cancel records: shared by every clone, so every worker sees each at once.
    cancels: CancelBook,
    /// The instance store: shared by every clone.
    store: MemoryStore,
    /// The values stored out of band: shared by every clone.
    payloads: MemoryPayloads,
}

#[derive(Clone)]
struct Msg {
    body: Vec<u8>,
    message_id: Option<String>,
    redeliveries: u32,
    trace: Option<TraceContext>,
}

/// A message in a mailbox: its arrival number, its body, its trace context.
type Mailed = (u64, Vec<u8>, Option<TraceContext>);

#[derive(Default)]
struct Mem {
    /// `Some` under virtual time.
    clock: Option<SystemTime>,
    tasks: HashMap<String, VecDeque<Msg>>,
    /// Timers by due time: the DTask whose task queue each goes to, the instance it is
    /// about, the message.
    timers: BTreeMap<(SystemTime, u64), (String, InstanceId, Msg)>,
    timer_seq: u64,
    doorbells: VecDeque<InstanceId>,
    busy: HashSet<InstanceId>,
    /// Each mailbox's messages with their arrival number: a requeued message goes back to
    /// its place, as in a RabbitMQ classic queue.
    mailboxes: HashMap<InstanceId, VecDeque<Mailed>>,
    mailbox_seq: u64,
    /// When each mailbox was created or last drained.
    mailbox_used: HashMap<InstanceId, SystemTime>,
    /// Client reply queues: the instance each result is for, and the result.
    replies: HashMap<String, VecDeque<StoredReply>>,
    dead: VecDeque<DeadLetter>,
    /// Deliveries and mailbox messages handed out and not yet settled.
    unsettled: usize,
}

impl Mem {
    /// Keeps a dead letter, within the bounds.
    fn bury(&mut self, mut body: Vec<u8>, reason: String) {
        let truncated = (body.len() > DEAD_LETTER_BODY).then_some(body.len());
        body.truncate(DEAD_LETTER_BODY);
        if self.dead.len() >= DEAD_LETTERS_KEPT {
            self.dead.pop_front();
        }
        self.dead.push_back(DeadLetter {
            body,
            truncated,
            reason,
        });
    }

    fn now(&self) -> SystemTime {
        self.clock.unwrap_or_else(SystemTime::now)
    }

    /// Moves due timers to their task queues.
    fn fire_due(&mut self) -> bool {
        let now = self.now();
        let mut fired = false;
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let (name, _, msg) = entry.remove();
            self.tasks.entry(name).or_default().push_back(msg);
            fired = true;
        }
        fired
    }

    /// Moves the timers of the instances `cancels` may cancel to their task queues before
    /// their time, as a RabbitMQ timer's next hop through a worker does: the engine ends
    /// each sleep cancelled, or puts the timer back (a clean-up scope's sleep, an
    /// instance the record does not cancel).
    fn wake_cancelled(&mut self, cancels: &CancelBook) {
        let woken: Vec<(SystemTime, u64)> = self
            .timers
            .iter()
            .filter(|(_, (_, about, _))| cancels.may_cancel(about.as_str()))
            .map(|(k, _)| *k)
            .collect();
        for key in woken {
            if let Some((name, _, msg)) = self.timers.remove(&key) {
                self.tasks.entry(name).or_default().push_back(msg);
            }
        }
    }

    /// Deletes the mailboxes unused for `retention`.
    fn expire_mailboxes(&mut self, retention: Duration) {
        let now = self.now();
        let expired: Vec<InstanceId> = self
            .mailbox_used
            .iter()
            .filter(|(_, used)| **used + retention <= now)
            .map(|(i, _)| i.clone())
            .collect();
        for i in expired {
            self.mailbox_used.remove(&i);
            self.mailboxes.remove(&i);
        }
    }

    fn next_timer(&self) -> Option<SystemTime> {
        self.timers.keys().next().map(|(t, _)| *t)
    }

    /// Puts `body` at the end of the mailbox of `instance` (with its arrival number) and
    /// rings its doorbell.
    fn deliver_to_mailbox(
        &mut self,
        instance: &InstanceId,
        body: Vec<u8>,
        trace: Option<TraceContext>,
    ) {
        self.mailbox_seq += 1;
        let n = self.mailbox_seq;
        self.mailboxes
            .entry(instance.clone())
            .or_default()
            .push_back((n, body, trace));
        self.ring(instance);
    }

    fn ring(&mut self, instance: &InstanceId) {
        // A doorbell already waiting will drain the new message too.
        if !self.doorbells.contains(instance) {
            self.doorbells.push_back(instance.clone());
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Mem> {
        self.mem.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl MemoryTransport {
    /// A transport on real time.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// The values its workers and clients stored out of band (shared by every clone): to
    /// look at them, or remove an instance's ([`MemoryPayloads::remove_instance`]). Its
    /// instance store removes the values of the instances it purges
    /// ([`MemoryStore::with_payloads`]).
    pub fn memory_payloads(&self) -> MemoryPayloads {
        self.shared.payloads.clone()
    }

    /// Configures a transport.
    pub fn builder() -> MemoryTransportBuilder {
        MemoryTransportBuilder::default()
    }

    /// Under virtual time, moves the clock forward by `by` and fires the timers that are
    /// due. Without virtual time it does nothing.
    pub fn advance(&self, by: Duration) {
        let mut mem = self.shared.lock();
        if let Some(now) = mem.clock.as_mut() {
            *now += by;
            if let Some(r) = self.shared.mailbox_retention {
                mem.expire_mailboxes(r);
            }
            mem.fire_due();
            drop(mem);
            self.shared.changed.notify_waiters();
        }
    }

    /// Waits until no message is queued or being handled (timers may still wait).
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut mem = self.shared.lock();
                mem.fire_due();
                let idle = mem.unsettled == 0
                    && mem.doorbells.is_empty()
                    && mem.tasks.values().all(VecDeque::is_empty);
                if idle {
                    return;
                }
            }
            // Real-time timers are fired by consumers; poll again now and then.
            let _ = tokio::time::timeout(Duration::from_millis(20), notified).await;
        }
    }

    /// The instances whose mailbox exists now, sorted: created by the first message for
    /// it, removed when deleted ([`Transport::delete_mailbox`](super::Transport)) or
    /// expired. A finished instance's mailbox is deleted once the replies it awaited are in.
    pub fn mailboxes(&self) -> Vec<InstanceId> {
        let mut ids: Vec<InstanceId> = self.shared.lock().mailboxes.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// The messages moved to the dead letters so far.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.shared.lock().dead.iter().cloned().collect()
    }

    /// Puts raw bytes on the task queue of `name`, as a broken or hostile publisher might.
    pub fn inject_raw(&self, name: &str, body: Vec<u8>) {
        let mut mem = self.shared.lock();
        mem.tasks
            .entry(name.to_string())
            .or_default()
            .push_back(Msg {
                body,
                message_id: None,
                redeliveries: 0,
                trace: None,
            });
        drop(mem);
        self.shared.changed.notify_waiters();
    }

    /// Takes the first message off the task queue of `name`, as raw bytes.
    #[cfg(test)]
    pub(crate) fn take_raw(&self, name: &str) -> Option<Vec<u8>> {
        let mut mem = self.shared.lock();
        mem.tasks.get_mut(name)?.pop_front().map(|m| m.body)
    }

    /// Puts raw bytes in the mailbox of `instance` and rings its doorbell, as a broken or
    /// hostile publisher might.
    pub fn inject_raw_mailbox(&self, instance: &InstanceId, body: Vec<u8>) {
        let mut mem = self.shared.lock();
        mem.deliver_to_mailbox(instance, body, None);
        drop(mem);
        self.shared.changed.notify_waiters();
    }

    fn put(&self, mem: &mut Mem, o: Outgoing) -> Published {
        let Outgoing {
            destination,
            body,
            message_id,
            instance: about,
            trace,
            ..
        } = o;
        let msg = Msg {
            body,
            message_id: Some(message_id),
            redeliveries: 0,
            trace,
        };
        match &destination {
            Destination::Task { name } => {
                mem.tasks.entry(name.clone()).or_default().push_back(msg);
            }
            Destination::Delayed { name, at } => {
                if *at <= mem.now() {
                    mem.tasks.entry(name.clone()).or_default().push_back(msg);
                } else {
                    mem.timer_seq += 1;
                    let key = (*at, mem.timer_seq);
                    mem.timers.insert(key, (name.clone(), about, msg));
                }
            }
            Destination::Mailbox { instance } => {
                if !mem.mailboxes.contains_key(instance) {
                    let now = mem.now();
                    mem.mailbox_used.insert(instance.clone(), now);
                }
                mem.deliver_to_mailbox(instance, msg.body, msg.trace);
            }
            Destination::Store { .. } => {
                // Workers record facts in the store; one published here goes there too.
                match Fact::from_bytes(&msg.body) {
                    Ok(fact) => {
                        let applied = self.shared.store.apply(&[fact]);
                        if applied.first() == Some(&Applied::Duplicate) {
                            return Published::Duplicate;
                        }
                    }
                    Err(e) => mem.bury(msg.body, e.to_string()),
                }
            }
            Destination::Touch { instance } => {
                // A keep-alive never creates a mailbox.
                if !mem.mailboxes.contains_key(instance) {
                    return Published::Dropped;
                }
                mem.deliver_to_mailbox(instance, msg.body, msg.trace);
            }
            Destination::Reply { client, recorded } => {
                mem.replies
                    .entry(client.clone())
                    .or_default()
                    .push_back(StoredReply {
                        instance: about,
                        body: msg.body,
                        recorded: *recorded,
                    });
            }
            Destination::Cancel { .. } => match self.shared.cancels.insert_encoded(&msg.body) {
                Ok(()) => mem.wake_cancelled(&self.shared.cancels),
                Err(e) => mem.bury(msg.body, e.to_string()),
            },
        }
        Published::Stored
    }
}

impl Default for MemoryTransport {
    fn default() -> Self {
        Self::new()
    }
}

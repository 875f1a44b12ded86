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

    /// How often a message may be requeued before it goes to the dead letters (default 5).
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

    /// Builds the transport.
    pub fn build(self) -> MemoryTransport {
        let clock = if self.virtual_time {
            Some(SystemTime::now())
        } else {
            None
        };
        MemoryTransport {
            shared: Arc::new(Shared {
                mem: Mutex::new(Mem {
                    clock,
                    ..Mem::default()
                }),
                changed: Notify::new(),
                duplicate: self.duplicate,
                max_redeliveries: self.max_redeliveries.unwrap_or(5),
                mailbox_retention: self.mailbox_retention,
                cancels: CancelBook::new(),
            }),
        }
    }
}

/// A message moved to the dead letters, with the reason.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    /// The message's body.
    pub body: Vec<u8>,
    /// Why it was dead-lettered.
    pub reason: String,
}

struct Shared {
    mem: Mutex<Mem>,
    changed: Notify,
    duplicate: bool,
    max_redeliveries: u32,
    mailbox_retention: Option<Duration>,
    /// The cancel records: shared by every clone, so every worker sees each at once.
    cancels: CancelBook,
}

#[derive(Clone)]
struct Msg {
    body: Vec<u8>,
    message_id: Option<String>,
    redeliveries: u32,
}

#[derive(Default)]
struct Mem {
    /// `Some` under virtual time.
    clock: Option<SystemTime>,
    tasks: HashMap<String, VecDeque<Msg>>,
    timers: BTreeMap<(SystemTime, u64), (String, Msg)>,
    timer_seq: u64,
    doorbells: VecDeque<InstanceId>,
    busy: HashSet<InstanceId>,
    /// Each mailbox's messages with their arrival number: a requeued message goes back to
    /// its place, as in a RabbitMQ classic queue.
    mailboxes: HashMap<InstanceId, VecDeque<(u64, Vec<u8>)>>,
    mailbox_seq: u64,
    /// When each mailbox was created or last drained.
    mailbox_used: HashMap<InstanceId, SystemTime>,
    results: HashMap<InstanceId, Vec<u8>>,
    /// Result registers created empty (`create_register`).
    registers: HashSet<InstanceId>,
    statuses: HashMap<InstanceId, Vec<u8>>,
    /// Claim registers: the nonce of the start that claimed each id.
    claims: HashMap<InstanceId, u64>,
    result_waiters: HashMap<InstanceId, Arc<Notify>>,
    /// Client reply queues: the instance each result is for, and the result.
    replies: HashMap<String, VecDeque<(InstanceId, Vec<u8>)>>,
    dead: Vec<DeadLetter>,
    /// Deliveries and mailbox messages handed out and not yet settled.
    unsettled: usize,
}

impl Mem {
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
            let (name, msg) = entry.remove();
            self.tasks.entry(name).or_default().push_back(msg);
            fired = true;
        }
        fired
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

    /// The messages moved to the dead letters so far.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.shared.lock().dead.clone()
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
            });
        drop(mem);
        self.shared.changed.notify_waiters();
    }

    fn put(&self, mem: &mut Mem, o: Outgoing) -> Published {
        let Outgoing {
            destination,
            body,
            message_id,
            instance: about,
            ..
        } = o;
        let msg = Msg {
            body,
            message_id: Some(message_id),
            redeliveries: 0,
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
                    mem.timers.insert(key, (name.clone(), msg));
                }
            }
            Destination::Mailbox { instance } => {
                if !mem.mailboxes.contains_key(instance) {
                    let now = mem.now();
                    mem.mailbox_used.insert(instance.clone(), now);
                }
                mem.mailbox_seq += 1;
                let n = mem.mailbox_seq;
                mem.mailboxes
                    .entry(instance.clone())
                    .or_default()
                    .push_back((n, msg.body));
                mem.ring(instance);
            }
            Destination::Result { instance } => {
                if mem.results.contains_key(instance) {
                    return Published::Duplicate;
                }
                mem.results.insert(instance.clone(), msg.body);
                if let Some(w) = mem.result_waiters.remove(instance) {
                    w.notify_waiters();
                }
            }
            Destination::Status { instance } => {
                mem.statuses.insert(instance.clone(), msg.body);
            }
            Destination::Reply { client } => {
                mem.replies
                    .entry(client.clone())
                    .or_default()
                    .push_back((about, msg.body));
            }
            Destination::Cancel { .. } => {
                if let Err(e) = self.shared.cancels.insert_encoded(&msg.body) {
                    mem.dead.push(DeadLetter {
                        body: msg.body,
                        reason: e.to_string(),
                    });
                }
            }
        }
        Published::Stored
    }
}

impl Default for MemoryTransport {
    fn default() -> Self {
        Self::new()
    }
}

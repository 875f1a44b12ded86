//! The in-memory transport: the embedded default, and the transport for users' tests.
//!
//! It gives the same semantics as a broker (see [the contract](super)): at-least-once
//! delivery (an unsettled delivery is delivered again), durable-until-acked messages,
//! delays, mailboxes with serialized doorbells, and set-once result registers. Two test
//! modes make the hard cases easy to reach: **virtual time** (timers fire when the test
//! advances the clock, so a 30-day delay takes milliseconds) and **duplicate delivery**
//! (every message is delivered twice).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use tokio::sync::Notify;

use super::{
    Delivery, DeliveryKind, Destination, MailboxMessage, Outgoing, Published, Registers, Reply,
    ReplyQueues, Settle, Transport,
};
use crate::error::Error;
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
    mailboxes: HashMap<InstanceId, VecDeque<Vec<u8>>>,
    /// When each mailbox was created or last drained.
    mailbox_used: HashMap<InstanceId, SystemTime>,
    results: HashMap<InstanceId, Vec<u8>>,
    /// Result registers created empty (`create_register`).
    registers: HashSet<InstanceId>,
    statuses: HashMap<InstanceId, Vec<u8>>,
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
                mem.mailboxes
                    .entry(instance.clone())
                    .or_default()
                    .push_back(msg.body);
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
        }
        Published::Stored
    }
}

impl Default for MemoryTransport {
    fn default() -> Self {
        Self::new()
    }
}

enum Token {
    Task {
        name: String,
        msg: Msg,
    },
    Doorbell(InstanceId),
    Mailbox {
        instance: InstanceId,
        body: Vec<u8>,
    },
    Reply {
        client: String,
        instance: InstanceId,
        body: Vec<u8>,
    },
}

struct MemSettle {
    shared: Arc<Shared>,
    token: Option<Token>,
}

enum How {
    Ack,
    Requeue,
    Dead(String),
}

impl MemSettle {
    fn settle(&mut self, how: How) {
        let Some(token) = self.token.take() else {
            return;
        };
        let mut mem = self.shared.lock();
        mem.unsettled -= 1;
        match (token, how) {
            (Token::Task { .. }, How::Ack) => {}
            (Token::Task { name, mut msg }, How::Requeue) => {
                msg.redeliveries += 1;
                if msg.redeliveries > self.shared.max_redeliveries {
                    let reason = format!(
                        "delivered {} times without success (retry budget exhausted)",
                        msg.redeliveries
                    );
                    mem.dead.push(DeadLetter {
                        body: msg.body,
                        reason,
                    });
                } else {
                    mem.tasks.entry(name).or_default().push_front(msg);
                }
            }
            (Token::Task { msg, .. }, How::Dead(reason)) => {
                mem.dead.push(DeadLetter {
                    body: msg.body,
                    reason,
                });
            }
            (Token::Doorbell(instance), How::Requeue) => {
                mem.busy.remove(&instance);
                mem.ring(&instance);
            }
            (Token::Doorbell(instance), _) => {
                mem.busy.remove(&instance);
            }
            (Token::Mailbox { .. }, How::Ack) => {}
            (Token::Mailbox { instance, body }, How::Requeue) => {
                mem.mailboxes.entry(instance).or_default().push_front(body);
            }
            (Token::Mailbox { body, .. }, How::Dead(reason)) => {
                mem.dead.push(DeadLetter { body, reason });
            }
            (Token::Reply { .. }, How::Ack) => {}
            (
                Token::Reply {
                    client,
                    instance,
                    body,
                },
                How::Requeue,
            ) => {
                mem.replies
                    .entry(client)
                    .or_default()
                    .push_front((instance, body));
            }
            (Token::Reply { body, .. }, How::Dead(reason)) => {
                mem.dead.push(DeadLetter { body, reason });
            }
        }
        drop(mem);
        self.shared.changed.notify_waiters();
    }
}

impl Drop for MemSettle {
    fn drop(&mut self) {
        // Unsettled means redelivered, as when a broker loses a consumer.
        self.settle(How::Requeue);
    }
}

impl Settle for MemSettle {
    fn ack(mut self: Box<Self>) -> BoxFuture<'static, Result<(), Error>> {
        self.settle(How::Ack);
        futures::future::ready(Ok(())).boxed()
    }

    fn requeue(mut self: Box<Self>) -> BoxFuture<'static, Result<(), Error>> {
        self.settle(How::Requeue);
        futures::future::ready(Ok(())).boxed()
    }

    fn dead_letter(mut self: Box<Self>, reason: String) -> BoxFuture<'static, Result<(), Error>> {
        self.settle(How::Dead(reason));
        futures::future::ready(Ok(())).boxed()
    }
}

impl Transport for MemoryTransport {
    fn now(&self) -> SystemTime {
        self.shared.lock().now()
    }

    fn publish(&self, batch: Vec<Outgoing>) -> BoxFuture<'_, Result<Vec<Published>, Error>> {
        let mut mem = self.shared.lock();
        let mut report = Vec::with_capacity(batch.len());
        for o in batch {
            if self.shared.duplicate {
                report.push(self.put(&mut mem, o.clone()));
                match &o.destination {
                    Destination::Task { .. }
                    | Destination::Delayed { .. }
                    | Destination::Mailbox { .. }
                    | Destination::Reply { .. } => {
                        self.put(&mut mem, o.clone());
                    }
                    _ => {}
                }
                if let Destination::Mailbox { instance } = &o.destination {
                    // A second doorbell too, even when one waits already.
                    mem.doorbells.push_back(instance.clone());
                }
            } else {
                report.push(self.put(&mut mem, o));
            }
        }
        drop(mem);
        self.shared.changed.notify_waiters();
        futures::future::ready(Ok(report)).boxed()
    }

    fn consume(
        &self,
        names: Vec<String>,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Result<Delivery, Error>>, Error>> {
        let shared = self.shared.clone();
        let stream = futures::stream::unfold((shared, names), |(shared, names)| async move {
            loop {
                let waiter = shared.clone();
                let notified = waiter.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let wait = {
                    let mut mem = shared.lock();
                    if mem.fire_due() {
                        shared.changed.notify_waiters();
                    }
                    let ready = mem.doorbells.iter().position(|i| !mem.busy.contains(i));
                    if let Some(pos) = ready {
                        let instance = mem.doorbells.remove(pos).expect("position is valid");
                        mem.busy.insert(instance.clone());
                        mem.unsettled += 1;
                        let d = Delivery {
                            kind: DeliveryKind::Doorbell {
                                instance: instance.clone(),
                            },
                            redeliveries: 0,
                            settle: Box::new(MemSettle {
                                shared: shared.clone(),
                                token: Some(Token::Doorbell(instance)),
                            }),
                        };
                        drop(mem);
                        return Some((Ok(d), (shared, names)));
                    }
                    let mut found = None;
                    for name in &names {
                        if let Some(msg) = mem.tasks.get_mut(name).and_then(VecDeque::pop_front) {
                            found = Some((name.clone(), msg));
                            break;
                        }
                    }
                    if let Some((name, msg)) = found {
                        mem.unsettled += 1;
                        let d = Delivery {
                            kind: DeliveryKind::Task {
                                body: msg.body.clone(),
                                message_id: msg.message_id.clone(),
                            },
                            redeliveries: msg.redeliveries,
                            settle: Box::new(MemSettle {
                                shared: shared.clone(),
                                token: Some(Token::Task { name, msg }),
                            }),
                        };
                        drop(mem);
                        return Some((Ok(d), (shared, names)));
                    }
                    match (mem.clock, mem.next_timer()) {
                        (None, Some(at)) => Some(
                            at.duration_since(SystemTime::now())
                                .unwrap_or(Duration::ZERO),
                        ),
                        _ => None,
                    }
                };
                match wait {
                    Some(d) => {
                        let _ = tokio::time::timeout(d, notified).await;
                    }
                    None => notified.await,
                }
            }
        });
        futures::future::ready(Ok(stream.boxed())).boxed()
    }

    fn drain_mailbox(
        &self,
        instance: &InstanceId,
    ) -> BoxFuture<'_, Result<Vec<MailboxMessage>, Error>> {
        let mut mem = self.shared.lock();
        let now = mem.now();
        mem.mailbox_used.insert(instance.clone(), now);
        let items: Vec<Vec<u8>> = mem
            .mailboxes
            .get_mut(instance)
            .map(|q| q.drain(..).collect())
            .unwrap_or_default();
        mem.unsettled += items.len();
        drop(mem);
        let out = items
            .into_iter()
            .map(|body| MailboxMessage {
                body: body.clone(),
                settle: Box::new(MemSettle {
                    shared: self.shared.clone(),
                    token: Some(Token::Mailbox {
                        instance: instance.clone(),
                        body,
                    }),
                }),
            })
            .collect();
        futures::future::ready(Ok(out)).boxed()
    }

    fn mailbox_retention(&self) -> Option<Duration> {
        self.shared.mailbox_retention
    }

    fn pending_timers(&self) -> BoxFuture<'_, Result<Option<u64>, Error>> {
        let n = self.shared.lock().timers.len() as u64;
        futures::future::ready(Ok(Some(n))).boxed()
    }

    fn registers(&self) -> Option<&dyn Registers> {
        Some(self)
    }

    fn replies(&self) -> Option<&dyn ReplyQueues> {
        Some(self)
    }
}

impl Registers for MemoryTransport {
    fn create_register(&self, instance: &InstanceId) -> BoxFuture<'_, Result<(), Error>> {
        self.shared.lock().registers.insert(instance.clone());
        futures::future::ready(Ok(())).boxed()
    }

    fn register_exists(&self, instance: &InstanceId) -> BoxFuture<'_, Result<bool, Error>> {
        let mem = self.shared.lock();
        let known = mem.registers.contains(instance) || mem.results.contains_key(instance);
        futures::future::ready(Ok(known)).boxed()
    }

    fn read_result(&self, instance: &InstanceId) -> BoxFuture<'_, Result<Option<Vec<u8>>, Error>> {
        let r = self.shared.lock().results.get(instance).cloned();
        futures::future::ready(Ok(r)).boxed()
    }

    fn wait_result(&self, instance: &InstanceId) -> BoxFuture<'_, Result<Vec<u8>, Error>> {
        let instance = instance.clone();
        async move {
            // One notifier per awaited instance: a result wakes only its own waiters.
            let waiter = {
                let mut mem = self.shared.lock();
                if let Some(r) = mem.results.get(&instance) {
                    return Ok(r.clone());
                }
                mem.result_waiters
                    .entry(instance.clone())
                    .or_insert_with(|| Arc::new(Notify::new()))
                    .clone()
            };
            loop {
                let notified = waiter.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if let Some(r) = self.shared.lock().results.get(&instance) {
                    return Ok(r.clone());
                }
                notified.await;
            }
        }
        .boxed()
    }

    fn read_status(&self, instance: &InstanceId) -> BoxFuture<'_, Result<Option<Vec<u8>>, Error>> {
        let r = self.shared.lock().statuses.get(instance).cloned();
        futures::future::ready(Ok(r)).boxed()
    }
}

impl ReplyQueues for MemoryTransport {
    fn consume_replies(
        &self,
        client: &str,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Result<Reply, Error>>, Error>> {
        let shared = self.shared.clone();
        let client = client.to_string();
        let stream = futures::stream::unfold((shared, client), |(shared, client)| async move {
            loop {
                let waiter = shared.clone();
                let notified = waiter.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                {
                    let mut mem = shared.lock();
                    let next = mem.replies.get_mut(&client).and_then(VecDeque::pop_front);
                    if let Some((instance, body)) = next {
                        mem.unsettled += 1;
                        drop(mem);
                        let reply = Reply {
                            instance: instance.clone(),
                            body: body.clone(),
                            settle: Box::new(MemSettle {
                                shared: shared.clone(),
                                token: Some(Token::Reply {
                                    client: client.clone(),
                                    instance,
                                    body,
                                }),
                            }),
                        };
                        return Some((Ok(reply), (shared, client)));
                    }
                }
                notified.await;
            }
        });
        futures::future::ready(Ok(stream.boxed())).boxed()
    }
}

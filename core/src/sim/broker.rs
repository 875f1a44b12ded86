//! The simulated broker: RabbitMQ as dtasks relies on it, in one mutex, on virtual time.
//!
//! Queues are FIFO by arrival number, and a message put back goes back to its place.
//! Each connection holds the deliveries it was handed until it settles them; when it
//! ends (its process crashed, the connection dropped, the broker restarted) every one of
//! them goes back. A publish travels for a while before it lands (a crash meanwhile may
//! lose it, whole or its tail) and its confirm travels back (and may be lost with the
//! connection). Delayed messages wait on the virtual clock. Doorbells go to shard queues
//! whose one active consumer takes one at a time; when it goes, the next connection
//! subscribed takes over. Every fault is drawn from the run's seeded generator.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;

use super::faults::Faults;
use super::rng::Rng;
use crate::protocol::InstanceId;
use crate::store::MemoryStore;
use crate::transport::{CancelBook, Delivery, DeliveryKind, MailboxMessage, Reply, Settle};

/// Makes the settle of what connection `c` holds under `tag` in `session`.
pub(super) type Settler = fn(&Shared, u32, u64, u64, String) -> Box<dyn Settle>;

/// The broker, shared by every connection of a run.
pub(super) type Shared = Arc<Mutex<Broker>>;

pub(super) fn lock(shared: &Shared) -> MutexGuard<'_, Broker> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// A queue of the broker.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum QueueRef {
    Task(String),
    Mailbox(InstanceId),
    Shard(u32),
    Reply(String),
}

#[derive(Clone, Debug)]
pub(super) struct Msg {
    pub(super) body: Vec<u8>,
    pub(super) message_id: Option<String>,
    pub(super) redeliveries: u32,
    /// How many of its redeliveries a fault caused: its consumer's connection ended under
    /// it (a crash, a dropped connection, a broker restart), rather than a requeue by its
    /// consumer or a consumer that stopped.
    pub(super) fault_returns: u32,
}

#[derive(Default)]
struct Queue {
    /// Bumped when the queue is deleted: what a connection holds of an older one goes
    /// nowhere when put back.
    generation: u64,
    ready: BTreeMap<u64, Msg>,
}

/// A message a connection holds, unsettled.
struct Held {
    queue: QueueRef,
    generation: u64,
    n: u64,
    msg: Msg,
    /// A doorbell whose mailbox was drained under it.
    drained: bool,
}

pub(super) struct Conn {
    pub(super) name: String,
    /// Whether faults may hit this connection (workers' do, the client's do not).
    pub(super) faulty: bool,
    pub(super) skew_ms: i64,
    pub(super) alive: bool,
    pub(super) session: u64,
    held: BTreeMap<u64, Held>,
    tasks: Option<(Vec<String>, UnboundedSender<Delivery>)>,
    doorbells: bool,
    replies: Option<(String, UnboundedSender<Reply>)>,
}

/// What a fault point decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Fault {
    None,
    /// The process dies before the operation reaches the broker.
    CrashBefore,
    /// The operation reaches the broker, then the process dies.
    CrashAfter,
    /// The connection drops before the operation: what it held goes back.
    Drop,
}

pub(super) struct Broker {
    pub(super) rng: Rng,
    pub(super) faults: Faults,
    /// Faults are injected until the end of the fault window.
    pub(super) faulty: bool,
    /// The run is over: what its tasks do while they are dropped changes nothing.
    pub(super) closed: bool,
    pub(super) start: Instant,
    pub(super) epoch: SystemTime,
    next_n: u64,
    queues: BTreeMap<QueueRef, Queue>,
    pub(super) conns: BTreeMap<u32, Conn>,
    /// Connections subscribed to the doorbells, in the order they subscribed.
    doorbell_order: Vec<u32>,
    pub(super) store: MemoryStore,
    /// Per root: how many results the store took as the instance's result.
    pub(super) results_taken: BTreeMap<InstanceId, u32>,
    pub(super) cancels: CancelBook,
    pub(super) dead_letters: Vec<DeadLetter>,
    /// Per task message id: the most [`Msg::fault_returns`] it was delivered with (none
    /// for a message no fault returned). The checks tell by it a redelivery budget that
    /// faults alone spent from one that dtasks spent.
    pub(super) fault_returns: BTreeMap<String, u32>,
    /// Publishes on their way to the broker or their confirms on the way back.
    pub(super) in_flight: u64,
    pub(super) trace: Vec<String>,
    /// Deliveries beyond the first of a message: redeliveries and duplicated copies.
    pub(super) extra_deliveries: u64,
    pub(super) crashes: u32,
    /// Roots the checks accepted as dead-lettered by a budget faults alone spent.
    pub(super) spent_by_faults: u64,
    pub(super) drops: u32,
    pub(super) pending_timers: u64,
    pub(super) deaths: UnboundedSender<u32>,
    shards: u32,
    prefetch: usize,
    settler: Settler,
}

impl Broker {
    pub(super) fn new(
        seed: u64,
        faults: Faults,
        deaths: UnboundedSender<u32>,
        settler: Settler,
    ) -> Self {
        let mut rng = Rng::new(seed);
        let prefetch = 1 + rng.below(4) as usize;
        let shards = 1 + rng.below(3) as u32;
        Self {
            rng,
            faults,
            faulty: true,
            closed: false,
            start: Instant::now(),
            epoch: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            next_n: 0,
            queues: BTreeMap::new(),
            conns: BTreeMap::new(),
            doorbell_order: Vec::new(),
            store: MemoryStore::new(),
            results_taken: BTreeMap::new(),
            cancels: CancelBook::new(),
            dead_letters: Vec::new(),
            fault_returns: BTreeMap::new(),
            in_flight: 0,
            trace: Vec::new(),
            extra_deliveries: 0,
            crashes: 0,
            spent_by_faults: 0,
            drops: 0,
            pending_timers: 0,
            deaths,
            shards,
            prefetch,
            settler,
        }
    }

    /// True with probability `p` while faults are injected.
    pub(super) fn roll(&mut self, p: impl Fn(&Faults) -> f64) -> bool {
        let p = p(&self.faults);
        self.faulty && self.rng.chance(p)
    }

    /// Virtual milliseconds since the run began.
    pub(super) fn elapsed_ms(&self) -> u64 {
        (Instant::now() - self.start).as_millis() as u64
    }

    /// The true virtual time.
    pub(super) fn true_now(&self) -> SystemTime {
        self.epoch + (Instant::now() - self.start)
    }

    /// The clock of connection `c`: the true time and its skew.
    pub(super) fn now_of(&self, c: u32) -> SystemTime {
        let t = self.true_now();
        let skew = self.conns.get(&c).map_or(0, |c| c.skew_ms);
        if skew >= 0 {
            t + Duration::from_millis(skew as u64)
        } else {
            t - Duration::from_millis(skew.unsigned_abs())
        }
    }

    pub(super) fn log(&mut self, line: impl AsRef<str>) {
        if self.closed {
            return;
        }
        let t = self.elapsed_ms();
        self.trace.push(format!("{t:>7} ms  {}", line.as_ref()));
    }

    fn next_n(&mut self) -> u64 {
        self.next_n += 1;
        self.next_n
    }

    pub(super) fn connect(&mut self, name: String, faulty: bool, skew_ms: i64) -> u32 {
        let id = self.conns.len() as u32;
        self.log(format!("{name} connects (clock skew {skew_ms} ms)"));
        self.conns.insert(
            id,
            Conn {
                name,
                faulty,
                skew_ms,
                alive: true,
                session: 0,
                held: BTreeMap::new(),
                tasks: None,
                doorbells: false,
                replies: None,
            },
        );
        id
    }

    pub(super) fn conn_name(&self, c: u32) -> &str {
        self.conns.get(&c).map_or("?", |c| c.name.as_str())
    }

    /// Whether connection `c` is alive in `session`.
    pub(super) fn current(&self, c: u32, session: u64) -> bool {
        self.conns
            .get(&c)
            .is_some_and(|c| c.alive && c.session == session)
    }

    pub(super) fn session(&self, c: u32) -> Option<u64> {
        self.conns.get(&c).filter(|c| c.alive).map(|c| c.session)
    }

    /// The fault, if any, at operation `op` of connection `c`.
    pub(super) fn fault_point(&mut self, c: u32, op: &str) -> Fault {
        let Some(conn) = self.conns.get(&c) else {
            return Fault::None;
        };
        if !self.faulty || !conn.faulty || !conn.alive {
            return Fault::None;
        }
        let f = self.faults;
        if self.crashes < f.max_crashes && self.rng.chance(f.crash) {
            let fault = if self.rng.chance(0.5) {
                Fault::CrashBefore
            } else {
                Fault::CrashAfter
            };
            let name = self.conn_name(c).to_string();
            self.log(format!("FAULT {name} will crash {fault:?} {op}"));
            return fault;
        }
        if self.drops < f.max_drops && self.rng.chance(f.drop) {
            return Fault::Drop;
        }
        Fault::None
    }

    /// Kills the process of connection `c`: everything it holds goes back, its consumers
    /// go, and the run restarts a process in its place.
    pub(super) fn crash(&mut self, shared: &Shared, c: u32, why: &str) {
        let Some(conn) = self.conns.get_mut(&c) else {
            return;
        };
        if !conn.alive {
            return;
        }
        conn.alive = false;
        conn.tasks = None;
        conn.replies = None;
        let name = conn.name.clone();
        self.crashes += 1;
        self.log(format!("CRASH {name} {why}"));
        self.doorbell_order.retain(|x| *x != c);
        self.return_held(c, true);
        let _ = self.deaths.send(c);
        self.dispatch(shared);
    }

    /// Ends the session of connection `c` (its connection dropped): what it held goes
    /// back; its consumers carry on in the next session.
    pub(super) fn drop_connection(&mut self, shared: &Shared, c: u32, why: &str) {
        let Some(conn) = self.conns.get_mut(&c) else {
            return;
        };
        if !conn.alive {
            return;
        }
        conn.session += 1;
        let name = conn.name.clone();
        self.drops += 1;
        self.log(format!("FAULT {name}'s connection drops {why}"));
        self.return_held(c, true);
        self.dispatch(shared);
    }

    /// Closes connection `c` for good (its process stopped): what it held goes back, its
    /// consumers go; nothing replaces it.
    pub(super) fn disconnect(&mut self, shared: &Shared, c: u32) {
        let Some(conn) = self.conns.get_mut(&c).filter(|c| c.alive) else {
            return;
        };
        conn.alive = false;
        conn.tasks = None;
        conn.replies = None;
        let name = conn.name.clone();
        self.log(format!("{name} disconnects"));
        self.doorbell_order.retain(|x| *x != c);
        self.return_held(c, false);
        self.dispatch(shared);
    }

    /// Whether nothing is queued for a live worker or being handled: no task message or
    /// doorbell waits that a live connection consumes, no live connection holds one, no
    /// publish is on its way (timers may still wait, and messages nobody consumes).
    pub(super) fn idle(&self) -> bool {
        let doorbells = self.doorbell_order.iter().any(|c| {
            self.conns
                .get(c)
                .is_some_and(|c| c.alive && c.tasks.as_ref().is_some_and(|(_, tx)| !tx.is_closed()))
        });
        self.in_flight == 0
            && self.queues.iter().all(|(r, q)| {
                q.ready.is_empty()
                    || match r {
                        QueueRef::Task(name) => self.consumers(name) == 0,
                        QueueRef::Shard(_) => !doorbells,
                        QueueRef::Mailbox(_) | QueueRef::Reply(_) => true,
                    }
            })
            && self.conns.values().all(|c| {
                !c.alive
                    || c.held
                        .values()
                        .all(|h| matches!(h.queue, QueueRef::Reply(_)))
            })
    }

    /// How many live connections consume the task queue of `name`.
    pub(super) fn consumers(&self, name: &str) -> u32 {
        self.conns
            .values()
            .filter(|c| {
                c.alive
                    && c.tasks.as_ref().is_some_and(|(names, tx)| {
                        !tx.is_closed() && names.iter().any(|n| n == name)
                    })
            })
            .count() as u32
    }

    /// Restarts the broker: every worker's connection drops (what each held goes back);
    /// durable queues and timers stay; publishes in flight may be lost. The client is
    /// spared: it stands for the plan, which does not retry its own calls.
    pub(super) fn restart(&mut self, shared: &Shared) {
        self.log("FAULT the broker restarts");
        let ids: Vec<u32> = self.conns.keys().copied().collect();
        for c in ids {
            if let Some(conn) = self.conns.get_mut(&c).filter(|c| c.alive && c.faulty) {
                conn.session += 1;
                self.return_held(c, true);
            }
        }
        self.dispatch(shared);
    }

    /// Puts back every message connection `c` holds (mailbox messages before doorbells,
    /// so that a doorbell handed out again finds them back: the contract's pause);
    /// `fault` when a fault ended the connection.
    fn return_held(&mut self, c: u32, fault: bool) {
        let Some(conn) = self.conns.get_mut(&c) else {
            return;
        };
        let held = std::mem::take(&mut conn.held);
        let (bells, rest): (Vec<Held>, Vec<Held>) = held
            .into_values()
            .partition(|h| matches!(h.queue, QueueRef::Shard(_)));
        for h in rest.into_iter().chain(bells) {
            self.put_back(h, fault);
        }
    }

    fn put_back(&mut self, mut h: Held, fault: bool) {
        let Some(q) = self.queues.get_mut(&h.queue) else {
            return;
        };
        if q.generation != h.generation {
            return;
        }
        h.msg.redeliveries = h.msg.redeliveries.saturating_add(1);
        if fault {
            h.msg.fault_returns = h.msg.fault_returns.saturating_add(1);
        }
        q.ready.insert(h.n, h.msg);
    }

    /// Stores `msg` at the end of `queue` (creating it).
    pub(super) fn enqueue(&mut self, queue: QueueRef, msg: Msg) {
        let n = self.next_n();
        self.queue_mut(queue).ready.insert(n, msg);
    }

    fn queue_mut(&mut self, queue: QueueRef) -> &mut Queue {
        let fresh = self.next_n + 1_000_000_000;
        self.queues.entry(queue).or_insert_with(|| Queue {
            generation: fresh,
            ready: BTreeMap::new(),
        })
    }

    pub(super) fn has_queue(&self, q: &QueueRef) -> bool {
        self.queues.contains_key(q)
    }

    /// The shard of `instance`'s doorbells.
    pub(super) fn shard_of(&self, instance: &InstanceId) -> u32 {
        let h = instance
            .as_str()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
            });
        (h % self.shards as u64) as u32
    }

    /// Publishes a doorbell for `instance` to its shard.
    pub(super) fn ring(&mut self, instance: &InstanceId) {
        let shard = self.shard_of(instance);
        self.enqueue(
            QueueRef::Shard(shard),
            Msg {
                body: instance.as_str().as_bytes().to_vec(),
                message_id: None,
                redeliveries: 0,
                fault_returns: 0,
            },
        );
    }

    /// Deletes queue `q` with everything in it, what connections hold of it included.
    pub(super) fn delete(&mut self, q: &QueueRef) {
        self.queues.remove(q);
    }

    /// Subscribes connection `c` to the task queues of `names` and to the doorbells.
    pub(super) fn subscribe(
        &mut self,
        shared: &Shared,
        c: u32,
        names: Vec<String>,
        tx: UnboundedSender<Delivery>,
    ) {
        if let Some(conn) = self.conns.get_mut(&c).filter(|c| c.alive) {
            conn.tasks = Some((names, tx));
            conn.doorbells = true;
            self.doorbell_order.push(c);
        }
        self.dispatch(shared);
    }

    /// Subscribes connection `c` to the reply queue `client` (creating it).
    pub(super) fn subscribe_replies(
        &mut self,
        shared: &Shared,
        c: u32,
        client: String,
        tx: UnboundedSender<Reply>,
    ) {
        self.queue_mut(QueueRef::Reply(client.clone()));
        if let Some(conn) = self.conns.get_mut(&c).filter(|c| c.alive) {
            conn.replies = Some((client, tx));
        }
        self.dispatch(shared);
    }

    fn hold(&mut self, c: u32, queue: QueueRef, n: u64, msg: Msg) -> u64 {
        if msg.redeliveries > 0 {
            self.extra_deliveries += 1;
        }
        let generation = self.queues.get(&queue).map_or(0, |q| q.generation);
        let tag = self.next_n();
        if let Some(conn) = self.conns.get_mut(&c) {
            conn.held.insert(
                tag,
                Held {
                    queue,
                    generation,
                    n,
                    msg,
                    drained: false,
                },
            );
        }
        tag
    }

    /// Hands ready messages to the consumers that may take them: task messages to a
    /// consumer of their queue chosen by the seed, within its prefetch; each shard's head
    /// to its single active consumer, one at a time; replies to their client.
    pub(super) fn dispatch(&mut self, shared: &Shared) {
        if self.closed {
            return;
        }
        loop {
            let mut progressed = false;
            let refs: Vec<QueueRef> = self
                .queues
                .iter()
                .filter(|(_, q)| !q.ready.is_empty())
                .map(|(r, _)| r.clone())
                .collect();
            for r in refs {
                progressed |= match &r {
                    QueueRef::Task(name) => self.dispatch_task(shared, &r, name),
                    QueueRef::Shard(_) => self.dispatch_doorbell(shared, &r),
                    QueueRef::Reply(client) => self.dispatch_reply(shared, &r, client),
                    QueueRef::Mailbox(_) => false,
                };
            }
            if !progressed {
                return;
            }
        }
    }

    fn pop(&mut self, r: &QueueRef) -> Option<(u64, Msg)> {
        self.queues.get_mut(r)?.ready.pop_first()
    }

    fn dispatch_task(&mut self, shared: &Shared, r: &QueueRef, name: &str) -> bool {
        let prefetch = self.prefetch;
        let eligible: Vec<u32> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.alive
                    && c.tasks.as_ref().is_some_and(|(names, tx)| {
                        !tx.is_closed() && names.iter().any(|n| n == name)
                    })
                    && c.held
                        .values()
                        .filter(|h| matches!(h.queue, QueueRef::Task(_)))
                        .count()
                        < prefetch
            })
            .map(|(id, _)| *id)
            .collect();
        if eligible.is_empty() {
            return false;
        }
        let c = eligible[self.rng.below(eligible.len() as u64) as usize];
        let Some((n, msg)) = self.pop(r) else {
            return false;
        };
        let session = self.conns[&c].session;
        let (body, message_id, redeliveries) =
            (msg.body.clone(), msg.message_id.clone(), msg.redeliveries);
        if let (Some(id), n @ 1..) = (&message_id, msg.fault_returns) {
            let most = self.fault_returns.entry(id.clone()).or_default();
            *most = (*most).max(n);
        }
        let what = format!("task {}", message_id.as_deref().unwrap_or("?"));
        let tag = self.hold(c, r.clone(), n, msg);
        let name = self.conn_name(c).to_string();
        self.log(format!(
            "{name} <- {what}{}",
            if redeliveries > 0 {
                " (redelivered)"
            } else {
                ""
            }
        ));
        let delivery = Delivery {
            // The simulator does not carry trace contexts (its runs are one thread).
            kind: DeliveryKind::Task {
                body,
                message_id,
                trace: None,
            },
            redeliveries,
            settle: (self.settler)(shared, c, session, tag, what),
        };
        if let Some((_, tx)) = &self.conns[&c].tasks {
            let _ = tx.send(delivery);
        }
        true
    }

    fn dispatch_doorbell(&mut self, shared: &Shared, r: &QueueRef) -> bool {
        let Some(c) = self.doorbell_order.iter().copied().find(|c| {
            self.conns.get(c).is_some_and(|c| {
                c.alive && c.doorbells && c.tasks.as_ref().is_some_and(|(_, tx)| !tx.is_closed())
            })
        }) else {
            return false;
        };
        if self.conns[&c].held.values().any(|h| &h.queue == r) {
            return false;
        }
        let Some((n, msg)) = self.pop(r) else {
            return false;
        };
        let instance = InstanceId::from_trusted(&String::from_utf8_lossy(&msg.body));
        let session = self.conns[&c].session;
        let redeliveries = msg.redeliveries;
        let what = format!("doorbell {instance}");
        let tag = self.hold(c, r.clone(), n, msg);
        let name = self.conn_name(c).to_string();
        self.log(format!("{name} <- {what}"));
        let delivery = Delivery {
            kind: DeliveryKind::Doorbell { instance, tag },
            redeliveries,
            settle: (self.settler)(shared, c, session, tag, what),
        };
        if let Some((_, tx)) = &self.conns[&c].tasks {
            let _ = tx.send(delivery);
        }
        true
    }

    fn dispatch_reply(&mut self, shared: &Shared, r: &QueueRef, client: &str) -> bool {
        let Some(c) = self.conns.iter().find_map(|(id, c)| {
            (c.alive
                && c.replies
                    .as_ref()
                    .is_some_and(|(n, tx)| n == client && !tx.is_closed()))
            .then_some(*id)
        }) else {
            return false;
        };
        let Some((n, msg)) = self.pop(r) else {
            return false;
        };
        let session = self.conns[&c].session;
        let instance = InstanceId::from_trusted(msg.message_id.as_deref().unwrap_or_default());
        let body = msg.body.clone();
        let tag = self.hold(c, r.clone(), n, msg);
        let reply = Reply {
            instance,
            body,
            // The simulated broker keeps no headers: its clients always read the store.
            recorded: false,
            settle: (self.settler)(shared, c, session, tag, "reply".into()),
        };
        if let Some((_, tx)) = &self.conns[&c].replies {
            let _ = tx.send(reply);
        }
        true
    }

    /// Takes every message now in the mailbox of `instance` for connection `c`, under the
    /// doorbell delivery `tag` of `instance` (or, without a tag, any doorbell of it) that
    /// `c` holds in its current session and has not drained under yet; `None` without one
    /// (its doorbell went back with a dropped connection: another drain may be under way,
    /// and two at once would split the mailbox).
    pub(super) fn drain(
        &mut self,
        shared: &Shared,
        c: u32,
        instance: &InstanceId,
        tag: Option<u64>,
    ) -> Option<Vec<MailboxMessage>> {
        let r = QueueRef::Mailbox(instance.clone());
        let session = self.session(c)?;
        let name = self.conn_name(c).to_string();
        let bell = self.conns.get_mut(&c)?.held.iter_mut().find(|(t, h)| {
            tag.is_none_or(|tag| **t == tag)
                && matches!(h.queue, QueueRef::Shard(_))
                && !h.drained
                && h.msg.body == instance.as_str().as_bytes()
        });
        match bell {
            Some((_, bell)) => bell.drained = true,
            None => {
                self.log(format!(
                    "{name} may not drain {instance}: it holds no doorbell for it"
                ));
                return None;
            }
        }
        let mut out = Vec::new();
        let mut ids = Vec::new();
        while let Some((n, msg)) = self.pop(&r) {
            let body = msg.body.clone();
            let id = msg.message_id.as_deref().unwrap_or("?");
            ids.push(id.rsplit(':').next().unwrap_or(id).to_string());
            let tag = self.hold(c, r.clone(), n, msg);
            out.push(MailboxMessage {
                body,
                trace: None,
                settle: (self.settler)(
                    shared,
                    c,
                    session,
                    tag,
                    format!("mailbox item of {instance}"),
                ),
            });
        }
        self.log(format!(
            "{name} drains {} item(s) of {instance}: [{}]",
            out.len(),
            ids.join(", ")
        ));
        Some(out)
    }

    /// Settles what connection `c` holds under `tag`, when it still holds it.
    pub(super) fn settle(&mut self, shared: &Shared, c: u32, session: u64, tag: u64, how: How) {
        if self.closed || !self.current(c, session) {
            return;
        }
        let Some(h) = self.conns.get_mut(&c).and_then(|c| c.held.remove(&tag)) else {
            return;
        };
        match how {
            How::Ack => {}
            How::Requeue => self.put_back(h, false),
            How::Dead(reason) => {
                self.log(format!("dead letter: {reason}"));
                self.dead_letters.push(DeadLetter {
                    body: h.msg.body,
                    reason,
                    queue: h.queue.to_string(),
                });
            }
        }
        self.dispatch(shared);
    }
}

/// A message the simulated broker moved to its dead letters.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The message's body.
    pub body: Vec<u8>,
    /// Why it was dead-lettered.
    pub reason: String,
    /// The queue it came from (see [`World::task_queue`](super::World::task_queue)).
    pub queue: String,
}

impl std::fmt::Display for QueueRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueueRef::Task(name) => write!(f, "task {name}"),
            QueueRef::Mailbox(id) => write!(f, "mailbox {id}"),
            QueueRef::Shard(n) => write!(f, "doorbells {n}"),
            QueueRef::Reply(client) => write!(f, "replies {client}"),
        }
    }
}

/// How a message is settled.
pub(super) enum How {
    Ack,
    Requeue,
    Dead(String),
}

//! A process's connection to the simulated broker: the [`Transport`] its worker or client
//! uses. Every operation is a fault point: the process may crash before the operation
//! reaches the broker or right after, and its connection may drop.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use tokio::sync::{mpsc, oneshot};

use super::broker::{lock, Fault, How, Msg, QueueRef, Shared};
use crate::error::Error;
use crate::protocol::InstanceId;
use crate::store::{
    Applied, Fact, FactKind, Filter, InstanceInfo, InstanceStore, Listing, MemoryStore, Query,
};
use crate::transport::{
    CancelBook, Cancels, Delivery, Destination, Following, MailboxMessage, Outgoing, Published,
    Reply, ReplyQueues, Settle, Transport,
};

/// One process's connection.
#[derive(Clone)]
pub(super) struct SimConn {
    pub(super) shared: Shared,
    pub(super) id: u32,
}

fn lost() -> Error {
    Error::transport("simulated connection lost")
}

/// What a process that crashed at an operation sees: nothing, ever (it is dead; the
/// run aborts its tasks).
fn never<T: Send + 'static>() -> BoxFuture<'static, T> {
    std::future::pending().boxed()
}

impl SimConn {
    /// Runs the fault point of `op`: `Err(None)` means the process is dead (before the
    /// operation), `Err(Some(e))` that the connection dropped; `Ok(after)` to go on,
    /// `after` telling whether the process dies right after the operation.
    fn enter(&self, op: &str) -> Result<bool, Option<Error>> {
        let mut b = lock(&self.shared);
        if b.session(self.id).is_none() {
            return Err(None);
        }
        match b.fault_point(self.id, op) {
            Fault::None => Ok(false),
            Fault::CrashAfter => Ok(true),
            Fault::CrashBefore => {
                b.crash(&self.shared, self.id, &format!("before {op}"));
                Err(None)
            }
            Fault::Drop => {
                b.drop_connection(&self.shared, self.id, &format!("before {op}"));
                Err(Some(lost()))
            }
        }
    }

    fn die_after(&self, op: &str) {
        lock(&self.shared).crash(&self.shared, self.id, &format!("after {op}"));
    }

    /// Lands `batch`, published at `pub_now` by this connection, and reports what each
    /// message did.
    fn land(&self, batch: Vec<Outgoing>, pub_now: SystemTime) -> Vec<Published> {
        let shared = &self.shared;
        let mut b = lock(shared);
        let from = b.conn_name(self.id).to_string();
        let mut report = Vec::with_capacity(batch.len());
        for o in batch {
            let copies = if b.roll(|f| f.duplicate) {
                b.extra_deliveries += 1;
                b.log(format!("FAULT {} is stored twice", o.message_id));
                2
            } else {
                1
            };
            let mut result = Published::Stored;
            for _ in 0..copies {
                result = land_one(&mut b, shared, &o, pub_now, &from);
            }
            report.push(result);
        }
        b.dispatch(shared);
        report
    }
}

/// The longest a timer waits before it passes a worker, which looks at the cancel
/// records (`AmqpConfig::with_timer_hop` on RabbitMQ; shorter here, so that runs of a few
/// virtual minutes reach the sleeps they cancel).
const TIMER_HOP: Duration = Duration::from_secs(1);

/// A publish on its way, counted until its confirm is back (or lost).
struct InFlight(Shared);

impl Drop for InFlight {
    fn drop(&mut self) {
        // Dropped by the runtime while the broker is locked only when the run is over.
        if let Ok(mut b) = self.0.try_lock() {
            b.in_flight = b.in_flight.saturating_sub(1);
        }
    }
}

fn land_one(
    b: &mut super::broker::Broker,
    shared: &Shared,
    o: &Outgoing,
    pub_now: SystemTime,
    from: &str,
) -> Published {
    let msg = Msg {
        body: o.body.clone(),
        message_id: Some(o.message_id.clone()),
        redeliveries: 0,
        fault_returns: 0,
    };
    match &o.destination {
        Destination::Task { name } => {
            b.log(format!("{from} -> task {} ({name})", o.message_id));
            b.enqueue(QueueRef::Task(name.clone()), msg);
        }
        Destination::Delayed { name, at } => {
            let wait = at.duration_since(pub_now).unwrap_or(Duration::ZERO);
            let late = if b.faulty {
                b.rng.below(b.faults.timer_late_ms + 1)
            } else {
                0
            };
            let wait = wait + Duration::from_millis(late);
            b.log(format!(
                "{from} -> timer {} ({name}) in {} ms",
                o.message_id,
                wait.as_millis()
            ));
            b.pending_timers += 1;
            let shared = shared.clone();
            let name = name.clone();
            let about = o.instance.as_str().to_string();
            tokio::spawn(async move {
                // As on RabbitMQ, the timer passes a worker at least once a hop, which
                // brings it before its time when a cancel record may stop its instance.
                let due = tokio::time::Instant::now() + wait;
                let early = loop {
                    let now = tokio::time::Instant::now();
                    if now >= due {
                        break false;
                    }
                    tokio::time::sleep((due - now).min(TIMER_HOP)).await;
                    if tokio::time::Instant::now() < due && lock(&shared).cancels.may_cancel(&about)
                    {
                        break true;
                    }
                };
                let mut b = lock(&shared);
                b.pending_timers -= 1;
                b.log(format!(
                    "timer {} {}",
                    msg.message_id.as_deref().unwrap_or("?"),
                    if early {
                        "brought early (a cancel record)"
                    } else {
                        "fires"
                    }
                ));
                b.enqueue(QueueRef::Task(name), msg);
                b.dispatch(&shared);
            });
        }
        Destination::Mailbox { instance } => {
            b.log(format!("{from} -> mailbox of {instance}: {}", o.message_id));
            b.enqueue(QueueRef::Mailbox(instance.clone()), msg);
            b.ring(instance);
        }
        Destination::Touch { instance } => {
            if !b.has_queue(&QueueRef::Mailbox(instance.clone())) {
                return Published::Dropped;
            }
            b.enqueue(QueueRef::Mailbox(instance.clone()), msg);
            b.ring(instance);
        }
        Destination::Store { .. } => {
            if let Ok(fact) = Fact::from_bytes(&o.body) {
                if record(b, std::slice::from_ref(&fact))[0] == Applied::Duplicate {
                    return Published::Duplicate;
                }
            }
        }
        Destination::Reply { client, .. } => {
            let q = QueueRef::Reply(client.clone());
            if b.has_queue(&q) {
                let msg = Msg {
                    message_id: Some(o.instance.as_str().to_string()),
                    ..msg
                };
                b.enqueue(q, msg);
            }
        }
        Destination::Cancel { .. } => {
            let _ = b.cancels.insert_encoded(&o.body);
            b.log(format!("{from} -> cancel record {}", o.message_id));
        }
    }
    Published::Stored
}

/// Applies `facts` to the store, counting the results it takes.
fn record(b: &mut super::broker::Broker, facts: &[Fact]) -> Vec<Applied> {
    let applied = b.store.apply(facts);
    for (f, a) in facts.iter().zip(&applied) {
        if matches!(f.kind, FactKind::Finished { .. }) && *a == Applied::Changed {
            *b.results_taken.entry(f.instance.clone()).or_default() += 1;
            b.log(format!("store: result of {} recorded", f.instance));
        }
    }
    applied
}

impl Transport for SimConn {
    fn now(&self) -> SystemTime {
        lock(&self.shared).now_of(self.id)
    }

    fn publish(&self, batch: Vec<Outgoing>) -> BoxFuture<'_, Result<Vec<Published>, Error>> {
        let crash_after = match self.enter("publish") {
            Ok(after) => after,
            Err(None) => return never(),
            Err(Some(e)) => return futures::future::ready(Err(e)).boxed(),
        };
        let (tx, rx) = oneshot::channel();
        let (session, pub_now, travel, back) = {
            let mut b = lock(&self.shared);
            b.in_flight += 1;
            let max = b.faults.latency_ms;
            let travel = b.rng.below(max + 1);
            let back = b.rng.below(max + 1);
            (b.session(self.id), b.now_of(self.id), travel, back)
        };
        let conn = self.clone();
        let travelling = InFlight(self.shared.clone());
        tokio::spawn(async move {
            let _travelling = travelling;
            tokio::time::sleep(Duration::from_millis(travel)).await;
            let mut batch = batch;
            {
                let mut b = lock(&conn.shared);
                let gone = session.is_none_or(|s| !b.current(conn.id, s));
                let lose = b.faults.lose_in_flight;
                if gone && b.rng.chance(lose) {
                    // The connection went before the publish arrived: its tail is lost.
                    let keep = b.rng.below(batch.len() as u64 + 1) as usize;
                    let who = b.conn_name(conn.id).to_string();
                    let len = batch.len();
                    b.log(format!(
                        "FAULT a publish of {who} is lost in flight ({keep} of {len} land)"
                    ));
                    batch.truncate(keep);
                }
            }
            let report = conn.land(batch, pub_now);
            tokio::time::sleep(Duration::from_millis(back)).await;
            let mut b = lock(&conn.shared);
            let Some(session) = session.filter(|s| b.current(conn.id, *s)) else {
                let _ = tx.send(Err(lost()));
                return;
            };
            let faulty = b.conns.get(&conn.id).is_some_and(|c| c.faulty);
            if faulty && b.drops < b.faults.max_drops && b.roll(|f| f.lost_confirm) {
                b.drop_connection(&conn.shared, conn.id, "(a confirm is lost)");
                let _ = tx.send(Err(lost()));
                return;
            }
            let _ = session;
            let _ = tx.send(Ok(report));
        });
        if crash_after {
            self.die_after("publish");
            return never();
        }
        async move { rx.await.unwrap_or_else(|_| Err(lost())) }.boxed()
    }

    fn consume(
        &self,
        names: Vec<String>,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Result<Delivery, Error>>, Error>> {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.shared).subscribe(&self.shared, self.id, names, tx);
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            let d = rx.recv().await?;
            Some((Ok(d), rx))
        });
        futures::future::ready(Ok(stream.boxed())).boxed()
    }

    fn drain_mailbox(
        &self,
        instance: &InstanceId,
    ) -> BoxFuture<'_, Result<Vec<MailboxMessage>, Error>> {
        self.drain(instance, None)
    }

    fn drain_for_doorbell(
        &self,
        instance: &InstanceId,
        tag: u64,
    ) -> BoxFuture<'_, Result<Vec<MailboxMessage>, Error>> {
        self.drain(instance, Some(tag))
    }

    fn mailbox_retention(&self) -> Option<Duration> {
        None
    }

    fn pending_timers(&self) -> BoxFuture<'_, Result<Option<u64>, Error>> {
        let n = lock(&self.shared).pending_timers;
        futures::future::ready(Ok(Some(n))).boxed()
    }

    fn store(&self) -> Option<Arc<dyn InstanceStore>> {
        Some(Arc::new(self.clone()))
    }

    // The simulated broker keeps no values out of band: every value travels inline.
    fn payloads(&self) -> Option<Arc<dyn crate::store::PayloadStore>> {
        None
    }

    fn replies(&self) -> Option<&dyn ReplyQueues> {
        Some(self)
    }

    fn cancels(&self) -> Option<&dyn Cancels> {
        Some(self)
    }

    fn delete_mailbox(&self, instance: &InstanceId) -> BoxFuture<'_, Result<(), Error>> {
        let after = match self.enter("delete mailbox") {
            Ok(after) => after,
            Err(None) => return never(),
            Err(Some(e)) => return futures::future::ready(Err(e)).boxed(),
        };
        {
            let mut b = lock(&self.shared);
            let name = b.conn_name(self.id).to_string();
            b.log(format!("{name} deletes the mailbox of {instance}"));
            b.delete(&QueueRef::Mailbox(instance.clone()));
        }
        if after {
            self.die_after("delete mailbox");
            return never();
        }
        futures::future::ready(Ok(())).boxed()
    }
}

impl SimConn {
    /// A drain under the doorbell delivery `tag` (any doorbell of `instance` without one).
    fn drain(
        &self,
        instance: &InstanceId,
        tag: Option<u64>,
    ) -> BoxFuture<'_, Result<Vec<MailboxMessage>, Error>> {
        let after = match self.enter("drain") {
            Ok(after) => after,
            Err(None) => return never(),
            Err(Some(e)) => return futures::future::ready(Err(e)).boxed(),
        };
        let Some(items) = lock(&self.shared).drain(&self.shared, self.id, instance, tag) else {
            return futures::future::ready(Err(lost())).boxed();
        };
        if after {
            drop(items);
            self.die_after("drain");
            return never();
        }
        futures::future::ready(Ok(items)).boxed()
    }
}

impl Cancels for SimConn {
    fn book(&self) -> CancelBook {
        lock(&self.shared).cancels.clone()
    }

    fn follow(&self) -> BoxFuture<'_, Result<Following, Error>> {
        futures::future::ready(Ok(Following::new(()))).boxed()
    }
}

impl ReplyQueues for SimConn {
    fn consume_replies(
        &self,
        client: &str,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Result<Reply, Error>>, Error>> {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.shared).subscribe_replies(&self.shared, self.id, client.to_string(), tx);
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            let r = rx.recv().await?;
            Some((Ok(r), rx))
        });
        futures::future::ready(Ok(stream.boxed())).boxed()
    }
}

/// The instance store, as a database the processes reach: a write is a fault point.
impl InstanceStore for SimConn {
    fn record(&self, facts: Vec<Fact>) -> BoxFuture<'_, Result<u64, Error>> {
        let after = match self.enter("store write") {
            Ok(after) => after,
            Err(None) => return never(),
            Err(Some(e)) => return futures::future::ready(Err(e)).boxed(),
        };
        let duplicates = {
            let mut b = lock(&self.shared);
            record(&mut b, &facts)
                .iter()
                .filter(|a| **a == Applied::Duplicate)
                .count() as u64
        };
        if after {
            self.die_after("store write");
            return never();
        }
        futures::future::ready(Ok(duplicates)).boxed()
    }

    fn get<'a>(&'a self, id: &'a InstanceId) -> BoxFuture<'a, Result<Option<InstanceInfo>, Error>> {
        let store = self.memory();
        async move { store.get(id).await }.boxed()
    }

    fn list<'a>(&'a self, query: &'a Query) -> BoxFuture<'a, Result<Listing, Error>> {
        let store = self.memory();
        async move { store.list(query).await }.boxed()
    }

    fn purge<'a>(&'a self, filter: &'a Filter) -> BoxFuture<'a, Result<u64, Error>> {
        let store = self.memory();
        async move { store.purge(filter).await }.boxed()
    }

    fn claim<'a>(&'a self, id: &'a InstanceId, nonce: u64) -> BoxFuture<'a, Result<bool, Error>> {
        let store = self.memory();
        async move { store.claim(id, nonce).await }.boxed()
    }

    fn wait_finished<'a>(
        &'a self,
        id: &'a InstanceId,
    ) -> BoxFuture<'a, Result<InstanceInfo, Error>> {
        let store = self.memory();
        async move { store.wait_finished(id).await }.boxed()
    }
}

impl SimConn {
    fn memory(&self) -> MemoryStore {
        lock(&self.shared).store.clone()
    }
}

/// The settle of what connection `c` holds under `tag` in `session` (the broker's
/// [`Settler`](super::broker::Settler)).
pub(super) fn settler(
    shared: &Shared,
    c: u32,
    session: u64,
    tag: u64,
    what: String,
) -> Box<dyn Settle> {
    Box::new(SimSettle::new(shared.clone(), c, session, tag, what))
}

/// Settles a message a connection holds; settling is a fault point too. Dropped
/// unsettled, the message goes back (as when a consumer lets go of it).
pub(super) struct SimSettle {
    conn: SimConn,
    session: u64,
    tag: u64,
    what: String,
    done: bool,
}

impl SimSettle {
    pub(super) fn new(shared: Shared, c: u32, session: u64, tag: u64, what: String) -> Self {
        Self {
            conn: SimConn { shared, id: c },
            session,
            tag,
            what,
            done: false,
        }
    }

    fn settle(mut self, how: How, op: &str) -> BoxFuture<'static, Result<(), Error>> {
        self.done = true;
        let after = match self.conn.enter(op) {
            Ok(after) => after,
            Err(None) => return never(),
            Err(Some(e)) => return futures::future::ready(Err(e)).boxed(),
        };
        {
            let mut b = lock(&self.conn.shared);
            let name = b.conn_name(self.conn.id).to_string();
            if b.current(self.conn.id, self.session) {
                b.log(format!("{name} {op}s {}", self.what));
            }
            b.settle(&self.conn.shared, self.conn.id, self.session, self.tag, how);
        }
        if after {
            self.conn.die_after(op);
            return never();
        }
        futures::future::ready(Ok(())).boxed()
    }
}

impl Drop for SimSettle {
    fn drop(&mut self) {
        // Dropped by the broker itself (a delivery its consumer is gone for): what the
        // connection holds goes back when its session ends.
        let Ok(mut b) = self.conn.shared.try_lock() else {
            return;
        };
        if !self.done {
            b.settle(
                &self.conn.shared,
                self.conn.id,
                self.session,
                self.tag,
                How::Requeue,
            );
        }
    }
}

impl Settle for SimSettle {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), Error>> {
        (*self).settle(How::Ack, "ack")
    }

    fn requeue(self: Box<Self>) -> BoxFuture<'static, Result<(), Error>> {
        (*self).settle(How::Requeue, "requeue")
    }

    fn dead_letter(self: Box<Self>, reason: String) -> BoxFuture<'static, Result<(), Error>> {
        (*self).settle(How::Dead(reason), "dead-letter")
    }
}

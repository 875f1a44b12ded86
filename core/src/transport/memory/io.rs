//! The transport contract's methods on the in-memory transport: publish, consume, drain,
//! registers and reply queues.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};

use super::settle::{MemSettle, Token};
use super::MemoryTransport;
use crate::error::Error;
use crate::protocol::InstanceId;
use crate::store::{InstanceStore, PayloadStore};
use crate::trace::TraceContext;
use crate::transport::{
    CancelBook, Cancels, Delivery, DeliveryKind, Destination, Following, MailboxMessage, Outgoing,
    Published, Reply, ReplyQueues, Transport,
};

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
                    | Destination::Touch { .. }
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
                                tag: 0,
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
                                trace: msg.trace.clone(),
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

    fn drain_for_doorbell(
        &self,
        instance: &InstanceId,
        _tag: u64,
    ) -> BoxFuture<'_, Result<Vec<MailboxMessage>, Error>> {
        // A doorbell delivery here is lost only with the process that holds it.
        self.drain_mailbox(instance)
    }

    fn drain_mailbox(
        &self,
        instance: &InstanceId,
    ) -> BoxFuture<'_, Result<Vec<MailboxMessage>, Error>> {
        let mut mem = self.shared.lock();
        let now = mem.now();
        mem.mailbox_used.insert(instance.clone(), now);
        let items: Vec<(u64, Vec<u8>, Option<TraceContext>)> = mem
            .mailboxes
            .get_mut(instance)
            .map(|q| q.drain(..).collect())
            .unwrap_or_default();
        mem.unsettled += items.len();
        drop(mem);
        let out = items
            .into_iter()
            .map(|(n, body, trace)| MailboxMessage {
                body: body.clone(),
                trace: trace.clone(),
                settle: Box::new(MemSettle {
                    shared: self.shared.clone(),
                    token: Some(Token::Mailbox {
                        instance: instance.clone(),
                        n,
                        body,
                        trace,
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

    fn store(&self) -> Option<Arc<dyn InstanceStore>> {
        Some(Arc::new(self.shared.store.clone()))
    }

    fn payloads(&self) -> Option<Arc<dyn PayloadStore>> {
        Some(Arc::new(self.shared.payloads.clone()))
    }

    fn replies(&self) -> Option<&dyn ReplyQueues> {
        Some(self)
    }

    fn cancels(&self) -> Option<&dyn Cancels> {
        Some(self)
    }

    fn delete_mailbox(&self, instance: &InstanceId) -> BoxFuture<'_, Result<(), Error>> {
        let mut mem = self.shared.lock();
        mem.mailboxes.remove(instance);
        mem.mailbox_used.remove(instance);
        drop(mem);
        self.shared.changed.notify_waiters();
        futures::future::ready(Ok(())).boxed()
    }
}

/// One book shared by every clone: a record is seen by every worker as soon as it is
/// published.
impl Cancels for MemoryTransport {
    fn book(&self) -> CancelBook {
        self.shared.cancels.clone()
    }

    fn follow(&self) -> BoxFuture<'_, Result<Following, Error>> {
        futures::future::ready(Ok(Following::new(()))).boxed()
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
                    if let Some(stored) = next {
                        mem.unsettled += 1;
                        drop(mem);
                        let reply = Reply {
                            instance: stored.instance.clone(),
                            body: stored.body.clone(),
                            recorded: stored.recorded,
                            settle: Box::new(MemSettle {
                                shared: shared.clone(),
                                token: Some(Token::Reply {
                                    client: client.clone(),
                                    reply: stored,
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

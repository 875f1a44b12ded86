//! Settling the deliveries of the in-memory transport: ack removes, requeue puts back
//! (a delivery dropped unsettled is requeued, as a broker does for a lost consumer), dead
//! letter moves aside with the reason.

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;

use super::{Msg, Shared, StoredReply};
use crate::error::Error;
use crate::protocol::InstanceId;
use crate::trace::TraceContext;
use crate::transport::Settle;

pub(super) enum Token {
    Task {
        name: String,
        msg: Msg,
    },
    Doorbell(InstanceId),
    Mailbox {
        instance: InstanceId,
        /// Its arrival number, which keeps its place when it is requeued.
        n: u64,
        body: Vec<u8>,
        trace: Option<TraceContext>,
    },
    Reply {
        client: String,
        reply: StoredReply,
    },
}

pub(super) struct MemSettle {
    pub(super) shared: Arc<Shared>,
    pub(super) token: Option<Token>,
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
                msg.redeliveries = msg.redeliveries.saturating_add(1);
                if msg.redeliveries > self.shared.max_redeliveries {
                    let reason = format!(
                        "delivered {} times without success (retry budget exhausted)",
                        msg.redeliveries
                    );
                    mem.bury(msg.body, reason);
                } else {
                    mem.tasks.entry(name).or_default().push_front(msg);
                }
            }
            (Token::Task { msg, .. }, How::Dead(reason)) => {
                mem.bury(msg.body, reason);
            }
            (Token::Doorbell(instance), How::Requeue) => {
                mem.busy.remove(&instance);
                mem.ring(&instance);
            }
            (Token::Doorbell(instance), _) => {
                mem.busy.remove(&instance);
            }
            (Token::Mailbox { .. }, How::Ack) => {}
            (
                Token::Mailbox {
                    instance,
                    n,
                    body,
                    trace,
                },
                How::Requeue,
            ) => {
                // Into a deleted (or expired) mailbox it goes nowhere, as on a broker.
                if let Some(q) = mem.mailboxes.get_mut(&instance) {
                    let at = q.partition_point(|(m, _, _)| *m < n);
                    q.insert(at, (n, body, trace));
                }
            }
            (Token::Mailbox { body, .. }, How::Dead(reason)) => {
                mem.bury(body, reason);
            }
            (Token::Reply { .. }, How::Ack) => {}
            (Token::Reply { client, reply }, How::Requeue) => {
                mem.replies.entry(client).or_default().push_front(reply);
            }
            (Token::Reply { reply, .. }, How::Dead(reason)) => {
                mem.bury(reply.body, reason);
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

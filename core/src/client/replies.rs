//! A client's reply queue: the results of its calls and starts come back there, and one
//! reader task hands each to the call waiting for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::sync::oneshot;
use tracing::{debug, warn};

use crate::error::Error;
use crate::protocol::state::InstanceId;
use crate::transport::{Reply, Transport};

type Waiters = Arc<Mutex<HashMap<InstanceId, oneshot::Sender<Came>>>>;

/// A reply as it came: the encoded result, and whether it is the one the instance store
/// recorded ([`Reply::recorded`]).
pub(super) struct Came {
    pub(super) body: Vec<u8>,
    pub(super) recorded: bool,
}

/// A client's reply queue: one reader task hands each result to the call waiting for it.
pub(super) struct ReplyHub {
    /// The reply queue's name.
    pub(super) client: String,
    waiters: Waiters,
    reader: tokio::task::JoinHandle<()>,
}

impl ReplyHub {
    pub(super) async fn start(transport: Arc<dyn Transport>) -> Result<Self, Error> {
        let client = format!("c-{}", InstanceId::random());
        let queues = transport
            .replies()
            .ok_or_else(|| Error::config("this transport has no reply queues"))?;
        let replies = queues.consume_replies(&client).await?;
        let waiters: Waiters = Arc::default();
        let reader = tokio::spawn(read_replies(replies, waiters.clone()));
        Ok(Self {
            client,
            waiters,
            reader,
        })
    }

    /// Registers a call waiting for the result of `id`.
    pub(super) fn wait(&self, id: &InstanceId) -> Waiting {
        let (tx, rx) = oneshot::channel();
        lock(&self.waiters).insert(id.clone(), tx);
        Waiting {
            id: id.clone(),
            waiters: self.waiters.clone(),
            rx,
        }
    }
}

impl Drop for ReplyHub {
    fn drop(&mut self) {
        // The last clone of the client is gone: stop reading (unread replies stay queued),
        // and tell any call still waiting.
        self.reader.abort();
        lock(&self.waiters).clear();
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A call waiting for its result; dropped, it stops waiting.
pub(super) struct Waiting {
    id: InstanceId,
    waiters: Waiters,
    rx: oneshot::Receiver<Came>,
}

impl Waiting {
    /// The encoded result.
    pub(super) async fn result(self) -> Result<Vec<u8>, Error> {
        Ok(self.reply().await?.body)
    }

    /// The reply.
    pub(super) async fn reply(mut self) -> Result<Came, Error> {
        (&mut self.rx)
            .await
            .map_err(|_| Error::transport("the reply queue's reader stopped"))
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        lock(&self.waiters).remove(&self.id);
    }
}

async fn read_replies(mut replies: BoxStream<'static, Result<Reply, Error>>, waiters: Waiters) {
    while let Some(next) = replies.next().await {
        match next {
            Ok(reply) => {
                let waiting = lock(&waiters).remove(&reply.instance);
                match waiting {
                    Some(tx) => {
                        let _ = tx.send(Came {
                            body: reply.body,
                            recorded: reply.recorded,
                        });
                    }
                    // A second result of redone work, or the result of a dropped call.
                    None => debug!(instance = %reply.instance, "a reply nobody waits for"),
                }
                if let Err(e) = reply.settle.ack().await {
                    warn!(error = %e, "acking a reply failed; it may come again");
                }
            }
            Err(e) => warn!(error = %e, "reading the reply queue failed"),
        }
    }
    // The stream ended: the calls still waiting get an error.
    lock(&waiters).clear();
}

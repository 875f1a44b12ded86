//! Claim registers: claiming an id for the start that carries a nonce (the instance
//! store's claims on RabbitMQ), with one retry loop for register operations.

use std::time::{Duration, Instant};

use deadpool::managed::Object;
use dtasks::InstanceId;
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use tracing::warn;

use crate::conn::{self, Backoff, ConfirmChannels, ATTEMPT_TIMEOUT};
use crate::error::{is_inequivalent, is_not_found, AmqpError, Result};
use crate::shared::Shared;
use crate::topology::{short, Kind};

impl Shared {
    /// Runs `once` until it succeeds or fails permanently, each attempt bounded by the
    /// attempt timeout, with backoff between attempts, up to the publish timeout.
    async fn retrying<T, F, Fut>(&self, what: &str, queue: &str, mut once: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let deadline = Instant::now() + self.cfg.publish_timeout;
        let mut backoff = Backoff::new(Duration::from_millis(50), self.cfg.max_backoff);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let e = match tokio::time::timeout(ATTEMPT_TIMEOUT, once()).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => e,
                Err(_) => AmqpError::Timeout(format!("{what}: `{queue}`")),
            };
            if e.is_permanent() {
                return Err(e);
            }
            let pause = backoff.next_delay();
            if Instant::now() + pause >= deadline {
                warn!(error = %e, attempt, queue, "{what} failed; giving up");
                return Err(e);
            }
            warn!(error = %e, attempt, queue, "{what} failed; retrying");
            tokio::time::sleep(pause).await;
        }
    }

    /// Claims the claim register `queue` for `nonce`: `true` when it holds `nonce`.
    ///
    /// The claim is the queue's `x-max-length` argument (the queue never holds a
    /// message): declaring it creates a missing queue with the nonce, and the broker
    /// compares an existing queue's arguments with the declaration's, atomically, refusing
    /// another nonce with 406 PRECONDITION_FAILED ("inequivalent arg 'x-max-length'"),
    /// which closes the channel. A register that holds a message would not do: a reader
    /// takes the message and puts it back, and while it holds it the broker counts the
    /// queue as empty and takes a second claim. Retries through connection failures, with
    /// backoff, up to the publish timeout.
    pub(crate) async fn claim(&self, queue: &str, nonce: u64) -> Result<bool> {
        self.retrying("claiming an id", queue, || async {
            let ch = conn::get_channel(&self.control).await?;
            let (opts, args) = self.topo.declaration(Kind::Claim(nonce));
            match ch.queue_declare(short(queue)?, opts, args).await {
                Ok(_) => {
                    self.declared.remember(queue);
                    Ok(true)
                }
                Err(e) if is_inequivalent(&e, "x-max-length") => {
                    // The broker closed the channel: it leaves the pool.
                    drop(Object::take(ch));
                    Ok(false)
                }
                Err(e) => {
                    drop(Object::take(ch));
                    Err(AmqpError::broker(format!("claiming `{queue}`"), e))
                }
            }
        })
        .await
    }

    /// Deletes the claim registers of `ids` (missing ones too: deleting a missing queue
    /// succeeds), one after another on one channel, so that a purged id can be started
    /// again as on the other stores. Retries through connection failures like a claim.
    pub(crate) async fn delete_claims(&self, ids: &[InstanceId]) -> Result<()> {
        let queues: Vec<String> = ids.iter().map(|id| self.topo.claim(id.as_str())).collect();
        let mut done = 0;
        while done < queues.len() {
            let first = queues[done].clone();
            done += self
                .retrying("deleting claim registers", &first, || async {
                    let ch = conn::get_channel(&self.control).await?;
                    let mut deleted = 0;
                    for queue in &queues[done..] {
                        if let Err(e) = ch
                            .queue_delete(short(queue)?, QueueDeleteOptions::default())
                            .await
                        {
                            drop(Object::take(ch));
                            return if deleted > 0 {
                                // Progress: the next attempt goes on from here.
                                Ok(deleted)
                            } else {
                                Err(AmqpError::broker(format!("deleting `{queue}`"), e))
                            };
                        }
                        self.declared.forget(queue);
                        deleted += 1;
                    }
                    Ok(deleted)
                })
                .await?;
        }
        Ok(())
    }

    /// Whether `queue` exists.
    pub(crate) async fn exists(&self, queue: &str) -> Result<bool> {
        Ok(self.lookup(queue).await?.is_some())
    }

    /// Looks `queue` up without creating it; a pooled channel when it exists. A missing
    /// queue closes the channel, which leaves the pool.
    async fn lookup(&self, queue: &str) -> Result<Option<Object<ConfirmChannels>>> {
        let ch = conn::get_channel(&self.control).await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        match ch
            .queue_declare(short(queue)?, passive, FieldTable::default())
            .await
        {
            Ok(_) => Ok(Some(ch)),
            Err(e) if is_not_found(&e) => {
                drop(Object::take(ch));
                Ok(None)
            }
            Err(e) => Err(AmqpError::broker(format!("checking queue `{queue}`"), e)),
        }
    }
}

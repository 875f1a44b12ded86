//! A drained mailbox under its doorbell: merged by the engine, its step's messages
//! published, then what was drained settled (and the mailbox deleted at the end of its
//! instance).

use std::sync::atomic::Ordering;

use tokio::sync::OwnedSemaphorePermit;
use tracing::{debug, info_span, warn, Instrument};

use super::Inner;
use crate::engine::Settlement;
use crate::metrics;
use crate::protocol::codec;
use crate::protocol::{InstanceId, ENVELOPE_VERSION};
use crate::trace;
use crate::transport::{MailboxMessage, Settle};

impl Inner {
    /// Merges the messages `items` drained from the mailbox of `instance` (under the
    /// doorbell `settle`) into its state, in a span that continues the trace of the first
    /// drained message that has one, linked to the rest.
    pub(super) async fn merge(
        &self,
        instance: InstanceId,
        items: Vec<MailboxMessage>,
        settle: Box<dyn Settle>,
        slot: OwnedSemaphorePermit,
    ) {
        let span = info_span!("dtask.mailbox", instance = %instance, items = items.len());
        trace::continue_and_link(&span, items.iter().filter_map(|m| m.trace.as_ref()));
        async {
            // An item of a newer build: the drain is put back whole, for a newer worker to
            // merge once it holds the doorbell's shard; after the patience, the engine fails
            // the instance for the item it cannot read.
            let newer = items
                .iter()
                .filter_map(|m| codec::revision(&m.body))
                .any(|r| r > ENVELOPE_VERSION);
            if newer && self.newer_patient(&format!("mailbox:{instance}")) {
                debug!("a mailbox item written by a newer build; handed back for a newer worker");
                drop(slot);
                for m in items {
                    let _ = m.settle.requeue().await;
                }
                self.put_back(settle).await;
                return;
            }
            let bodies: Vec<Vec<u8>> = items.iter().map(|m| m.body.clone()).collect();
            let plan = match self.engine.handle_mailbox(&bodies, self.transport.now()).await {
                Ok(plan) => plan,
                Err(e) => {
                    warn!(error = %e, "a mailbox step's payloads failed; it will be retried");
                    drop(slot);
                    for m in items {
                        let _ = m.settle.requeue().await;
                    }
                    let _ = settle.requeue().await;
                    return;
                }
            };
            drop(slot);
            match self.emit(plan.outputs).await {
                Ok(report) => self.count_duplicates(&report),
                Err(e) => {
                    warn!(error = %e, "publishing a mailbox step failed; it will be retried");
                    for m in items {
                        let _ = m.settle.requeue().await;
                    }
                    let _ = settle.requeue().await;
                    return;
                }
            }
            // Deleted before what was drained is settled: a crash in between leaves
            // nothing (the drained messages went with the mailbox).
            if plan.delete {
                if let Err(e) = self.transport.delete_mailbox(&instance).await {
                    warn!(error = %e, "deleting a finished instance's mailbox failed; it will be retried");
                    for m in items {
                        let _ = m.settle.requeue().await;
                    }
                    let _ = settle.requeue().await;
                    return;
                }
            }
            for (m, (how, reason)) in items.into_iter().zip(plan.settle) {
                let _ = match how {
                    Settlement::Ack => m.settle.ack().await,
                    Settlement::Requeue => m.settle.requeue().await,
                    Settlement::DeadLetter => {
                        self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
::metrics::counter!(metrics::DEAD_LETTERS).increment(1);
                        m.settle.dead_letter(reason).await
                    }
                };
            }
            if plan.waiting_for_state {
                debug!("events wait for the instance's state");
            }
            let _ = settle.ack().await;
        }
        .instrument(span)
        .await;
    }
}

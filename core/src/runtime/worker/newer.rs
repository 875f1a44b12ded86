//! Messages written by a newer build: handed back for a newer worker within the patience
//! ([`WorkerConfig::newer_message_patience`]), then failed and dead-lettered.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, warn};

#[cfg(doc)]
use super::super::config::WorkerConfig;
use super::Inner;
use crate::metrics;
use crate::protocol::{probe, ENVELOPE_VERSION, OLDEST_ENVELOPE_VERSION};
use crate::trace;
use crate::transport::{Destination, Outgoing, Settle};

/// How long a message of a newer build is held before it is put back: it goes round the
/// consumers of its queue at this pace rather than in a tight loop.
const HAND_BACK_PAUSE: Duration = Duration::from_secs(1);

/// How many messages of a newer build a worker counts the patience of at once.
const NEWER_REMEMBERED: usize = 10_000;

impl Inner {
    /// Whether a message (or mailbox) `key` of a newer build is still within this worker's
    /// patience: counted from the first time this worker handed it back.
    pub(super) fn newer_patient(&self, key: &str) -> bool {
        let mut newer = self.newer.lock().unwrap_or_else(|p| p.into_inner());
        if newer.len() >= NEWER_REMEMBERED && !newer.contains_key(key) {
            let patience = self.newer_patience;
            newer.retain(|_, at| at.elapsed() < patience);
            if newer.len() >= NEWER_REMEMBERED {
                // Still full: the patience of this one starts when there is room.
                return true;
            }
        }
        let first = *newer.entry(key.to_string()).or_insert_with(Instant::now);
        if first.elapsed() < self.newer_patience {
            return true;
        }
        newer.remove(key);
        false
    }

    /// Puts a delivery of a newer build back after [`HAND_BACK_PAUSE`]: a newer worker
    /// consuming the same queue may take it (a drain, or a task message whose frozen
    /// fields cannot be read: a requeue, counted as a redelivery).
    pub(super) async fn put_back(&self, settle: Box<dyn Settle>) {
        self.stats.handed_back.fetch_add(1, Ordering::Relaxed);
        ::metrics::counter!(metrics::HANDED_BACK).increment(1);
        tokio::time::sleep(HAND_BACK_PAUSE).await;
        let _ = settle.requeue().await;
    }

    /// Hands a task message of a newer build back as a fresh copy, after
    /// [`HAND_BACK_PAUSE`]: published to the task queue of its DTask (its frozen fields
    /// name both), then the delivery acked. A requeue would count as a redelivery (a
    /// quorum queue's delivery count), and the newer worker that finally takes a message
    /// handed back more often than its retry budget would dead-letter it; a copy starts
    /// at none. A crash between the publish and the ack leaves two copies of one message
    /// id, which the worker that runs them takes once. When the publish fails, the
    /// delivery is requeued.
    async fn put_back_copy(
        &self,
        body: Vec<u8>,
        message_id: String,
        p: probe::Probe,
        trace: Option<trace::TraceContext>,
        settle: Box<dyn Settle>,
    ) {
        self.stats.handed_back.fetch_add(1, Ordering::Relaxed);
        ::metrics::counter!(metrics::HANDED_BACK).increment(1);
        tokio::time::sleep(HAND_BACK_PAUSE).await;
        let copy = Outgoing {
            destination: Destination::Task {
                name: p.name.clone(),
            },
            body,
            message_id,
            instance: p.id,
            dtask: p.name,
            trace,
        };
        match self.transport.publish(vec![copy]).await {
            Ok(_) => {
                let _ = settle.ack().await;
            }
            Err(e) => {
                debug!(error = %e, "publishing a handed-back copy failed; requeued instead");
                let _ = settle.requeue().await;
            }
        }
    }

    /// Handles a task message of the newer envelope revision `revision`: hands it back
    /// within the patience; after it, fails its instance where its frozen fields say who
    /// waits (see [`ENVELOPE_VERSION`]) and dead-letters it.
    pub(super) async fn hand_back_task(
        &self,
        body: Vec<u8>,
        revision: u8,
        message_id: Option<String>,
        trace: Option<trace::TraceContext>,
        settle: Box<dyn Settle>,
    ) {
        let key = match &message_id {
            Some(id) => id.clone(),
            None => {
                use std::hash::{Hash as _, Hasher as _};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                body.hash(&mut h);
                format!("body:{:016x}", h.finish())
            }
        };
        if self.newer_patient(&key) {
            debug!(
                message_id = %key,
                revision,
                "a message written by a newer build; handed back for a newer worker"
            );
            match probe::task(&body) {
                Some(p) => self.put_back_copy(body, key, p, trace, settle).await,
                None => self.put_back(settle).await,
            }
            return;
        }
        let mut reason = format!(
            "written by a newer build (envelope revision {revision}; this build reads \
             revisions {OLDEST_ENVELOPE_VERSION} to {ENVELOPE_VERSION}), and no worker that \
             reads it took it within {:?}",
            self.newer_patience
        );
        match probe::task(&body) {
            Some(p) => {
                let failure = self.engine.fail_newer(p, &reason, self.transport.now());
                if !failure.is_empty() {
                    if let Err(e) = self.emit(failure).await {
                        warn!(error = %e, "publishing the failure of a newer build's instance failed; it will be retried");
                        let _ = settle.requeue().await;
                        return;
                    }
                } else {
                    reason.push_str(
                        "; its instance was not failed (its parent rides in it, or nobody \
                         waits for it): replay this letter once a newer worker runs",
                    );
                }
            }
            None => reason.push_str("; its instance could not be named"),
        }
        self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
        ::metrics::counter!(metrics::DEAD_LETTERS).increment(1);
        warn!(message_id = %key, %reason, "dead-lettering a message of a newer build");
        let _ = settle.dead_letter(reason).await;
    }
}

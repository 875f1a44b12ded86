//! The message ids of recent deliveries, so that a message delivered twice runs once.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// The message ids of recent deliveries: those being handled, and those whose work is
/// done (published). A redelivery of done work is dropped. A redelivery of work still
/// being handled waits for that handling: when it ends done, the redelivery is dropped;
/// when it fails (its publish lost with the connection, say) or is put back, the
/// redelivery is handled. So a message delivered twice at once runs once, and one whose
/// first handling failed after the redelivery came still runs.
pub(super) struct Dedupe {
    cap: usize,
    /// Each id, and whether its work is done (else who waits for its handling to end).
    seen: HashMap<String, Seen>,
    order: VecDeque<String>,
}

enum Seen {
    /// Being handled: the redeliveries waiting for it are woken when it ends.
    Handling(Arc<tokio::sync::Notify>),
    Done,
}

/// What to do with a delivery, by its id.
pub(super) enum Taken {
    /// Handle it: its id is now marked as being handled.
    Fresh,
    /// Drop it: its work is done.
    Done,
    /// Wait for the handling of the same id to end, then ask again.
    Wait(Arc<tokio::sync::Notify>),
}

impl Dedupe {
    pub(super) fn new(cap: usize) -> Self {
        Self {
            cap,
            seen: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Marks `id` as being handled, unless it is done or being handled already.
    pub(super) fn take(&mut self, id: &str) -> Taken {
        if self.cap == 0 {
            return Taken::Fresh;
        }
        match self.seen.get(id) {
            Some(Seen::Done) => return Taken::Done,
            Some(Seen::Handling(n)) => return Taken::Wait(n.clone()),
            None => {}
        }
        self.seen.insert(
            id.to_string(),
            Seen::Handling(Arc::new(tokio::sync::Notify::new())),
        );
        self.order.push_back(id.to_string());
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                if let Some(Seen::Handling(n)) = self.seen.remove(&old) {
                    n.notify_waiters();
                }
            }
        }
        Taken::Fresh
    }

    /// Marks the work of `id` done: its messages are published.
    pub(super) fn done(&mut self, id: &str) {
        if let Some(seen) = self.seen.get_mut(id) {
            if let Seen::Handling(n) = std::mem::replace(seen, Seen::Done) {
                n.notify_waiters();
            }
        }
    }

    /// Forgets `id` unless its work is done: its delivery is put back.
    pub(super) fn release(&mut self, id: &str) {
        if matches!(self.seen.get(id), Some(Seen::Handling(_))) {
            if let Some(Seen::Handling(n)) = self.seen.remove(id) {
                n.notify_waiters();
            }
        }
    }

    /// Whether the handling that `notify` was handed out for has ended (its id is done,
    /// released or forgotten, or taken again by another handling).
    pub(super) fn ended(&self, id: &str, notify: &Arc<tokio::sync::Notify>) -> bool {
        !matches!(self.seen.get(id), Some(Seen::Handling(n)) if Arc::ptr_eq(n, notify))
    }
}

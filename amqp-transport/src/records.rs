//! What a process remembers between broker operations, in bounded memory: the queues it
//! declared, the doorbells its shard consumers hold, and the mailbox messages it merged.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use lapin::Channel;
use tracing::warn;

/// How many queue declarations a process remembers (see [`Declared::remember`]), and
/// how many ids of merged mailbox messages.
pub(crate) const MAX_REMEMBERED: usize = 65_536;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The queues this process declared.
#[derive(Default)]
pub(crate) struct Declared {
    /// Queues declared by this process and not found missing since.
    declared: Mutex<HashSet<String>>,
    /// Every queue this process declared (the first [`MAX_REMEMBERED`]).
    ever_declared: Mutex<BTreeSet<String>>,
    /// Set once `ever_declared` is full.
    ever_full: AtomicBool,
    /// Result registers that a write found missing: declared before the next write.
    missing: Mutex<HashSet<String>>,
}

impl Declared {
    /// Whether `queue` was declared and not found missing since: no declare before use.
    pub(crate) fn contains(&self, queue: &str) -> bool {
        lock(&self.declared).contains(queue)
    }

    /// Records that `queue` was declared. Both records are bounded: a process that starts
    /// or runs millions of instances (a queue or two each) must not grow without end.
    /// Forgetting a declaration costs one more (idempotent) declare.
    pub(crate) fn remember(&self, queue: &str) {
        let mut declared = lock(&self.declared);
        if declared.len() >= MAX_REMEMBERED {
            declared.clear();
        }
        declared.insert(queue.to_string());
        drop(declared);
        let mut ever = lock(&self.ever_declared);
        if ever.len() < MAX_REMEMBERED {
            ever.insert(queue.to_string());
        } else if !ever.contains(queue) && !self.ever_full.swap(true, Ordering::Relaxed) {
            warn!(
                limit = MAX_REMEMBERED,
                "declared_queues() lists only the first queues this process declared"
            );
        }
    }

    pub(crate) fn forget(&self, queue: &str) {
        lock(&self.declared).remove(queue);
    }

    /// Every queue this process declared, sorted (the first [`MAX_REMEMBERED`]).
    pub(crate) fn ever(&self) -> Vec<String> {
        lock(&self.ever_declared).iter().cloned().collect()
    }

    /// Records that a write found the result register `queue` missing.
    pub(crate) fn set_missing(&self, queue: &str) {
        lock(&self.missing).insert(queue.to_string());
    }

    pub(crate) fn is_missing(&self, queue: &str) -> bool {
        lock(&self.missing).contains(queue)
    }

    /// Records that the result register `queue` exists again.
    pub(crate) fn found(&self, queue: &str) {
        lock(&self.missing).remove(queue);
    }
}

/// The doorbells this process holds, and the mailbox messages it merged.
#[derive(Default)]
pub(crate) struct Doorbells {
    /// The shard channel that holds the outstanding doorbell of an instance: its mailbox
    /// is drained on the same channel.
    held: Mutex<HashMap<String, (u64, Channel)>>,
    seq: AtomicU64,
    /// Ids of mailbox messages this process drained and acked: merged into a state that
    /// was confirmed first. A doorbell that announces only such messages has nothing to
    /// report and is acked without a drain (see [`Doorbells::merged`]).
    merged: Mutex<Generations>,
    /// Doorbells acked without a drain because they were spent.
    spent: AtomicU64,
}

impl Doorbells {
    /// Records that `instance`'s doorbell is outstanding on `ch`; returns a token for
    /// [`Doorbells::done`].
    pub(crate) fn out(&self, instance: &str, ch: &Channel) -> u64 {
        let token = self.seq.fetch_add(1, Ordering::Relaxed);
        lock(&self.held).insert(instance.to_string(), (token, ch.clone()));
        token
    }

    pub(crate) fn done(&self, instance: &str, token: u64) {
        let mut map = lock(&self.held);
        if map.get(instance).is_some_and(|(t, _)| *t == token) {
            map.remove(instance);
        }
    }

    /// The channel that holds `instance`'s outstanding doorbell, if any.
    pub(crate) fn channel(&self, instance: &str) -> Option<Channel> {
        lock(&self.held).get(instance).map(|(_, ch)| ch.clone())
    }

    /// Records that the mailbox message `id` was drained and acked.
    pub(crate) fn mark_merged(&self, id: String) {
        lock(&self.merged).insert(id);
    }

    /// Whether every message a doorbell announces (`rings`, non-empty) was drained and
    /// acked by this process. Such a doorbell is spent: whatever else is in the mailbox
    /// has a doorbell of its own, or was there for the drain that acked these.
    pub(crate) fn merged(&self, rings: &[&str]) -> bool {
        let merged = lock(&self.merged);
        !rings.is_empty() && rings.iter().all(|id| merged.contains(id))
    }

    pub(crate) fn count_spent(&self) {
        self.spent.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn spent(&self) -> u64 {
        self.spent.load(Ordering::Relaxed)
    }
}

/// A bounded set in two generations: when the newer one is full, the older one is
/// dropped. A forgotten id only costs a drain that finds nothing new.
#[derive(Default)]
struct Generations {
    new: HashSet<String>,
    old: HashSet<String>,
}

impl Generations {
    fn insert(&mut self, id: String) {
        if self.new.len() >= MAX_REMEMBERED {
            self.old = std::mem::take(&mut self.new);
        }
        self.new.insert(id);
    }

    fn contains(&self, id: &str) -> bool {
        self.new.contains(id) || self.old.contains(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declarations_remembered_are_bounded() {
        let records = Declared::default();
        let n = MAX_REMEMBERED + 10;
        for i in 0..n {
            records.remember(&format!("p.result.{i}"));
        }
        let declared = lock(&records.declared).len();
        assert!(declared <= MAX_REMEMBERED, "{declared}");
        // The most recent one is still known: no declare before its next use.
        assert!(lock(&records.declared).contains(&format!("p.result.{}", n - 1)));
        assert_eq!(lock(&records.ever_declared).len(), MAX_REMEMBERED);
        assert!(records.ever_full.load(Ordering::Relaxed));
    }
}

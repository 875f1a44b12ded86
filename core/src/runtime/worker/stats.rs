//! The counters of a worker.

use std::sync::atomic::AtomicU64;

#[cfg(doc)]
use super::super::config::WorkerConfig;

#[derive(Default)]
pub(super) struct Stats {
    pub(super) processed: AtomicU64,
    pub(super) in_flight: AtomicU64,
    pub(super) dead_lettered: AtomicU64,
    pub(super) duplicate_results: AtomicU64,
    pub(super) inlined: AtomicU64,
    pub(super) duplicate_starts: AtomicU64,
    pub(super) handed_back: AtomicU64,
}

/// Counters of a worker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerStats {
    /// Deliveries handled to completion.
    pub processed: u64,
    /// Deliveries being handled now.
    pub in_flight: u64,
    /// Deliveries moved to the dead-letter queue.
    pub dead_lettered: u64,
    /// Result writes refused because the instance's result was already recorded (work
    /// redone after a redelivery; the first result stands).
    pub duplicate_results: u64,
    /// Steps run inline, within the delivery of the step before them
    /// ([`WorkerConfig::inline_steps`]); not counted in `processed`.
    pub inlined: u64,
    /// Starts dropped without running because another start holds their id: a second
    /// [`Client::start_with_id`](crate::Client::start_with_id) of an id, whose client was
    /// told [`Error::is_already_started`](crate::Error::is_already_started).
    pub duplicate_starts: u64,
    /// Deliveries of messages written by a newer build, put back for a newer worker
    /// ([`WorkerConfig::newer_message_patience`]).
    pub handed_back: u64,
}

impl std::ops::Add for WorkerStats {
    type Output = WorkerStats;

    fn add(self, o: WorkerStats) -> WorkerStats {
        WorkerStats {
            processed: self.processed + o.processed,
            in_flight: self.in_flight + o.in_flight,
            dead_lettered: self.dead_lettered + o.dead_lettered,
            duplicate_results: self.duplicate_results + o.duplicate_results,
            inlined: self.inlined + o.inlined,
            duplicate_starts: self.duplicate_starts + o.duplicate_starts,
            handed_back: self.handed_back + o.handed_back,
        }
    }
}

//! [`Faults`]: which faults a simulated run injects, and how often.

use std::time::Duration;

/// The faults a simulated run injects, each drawn from the run's seed. Faults are injected
/// during the fault window only ([`Faults::window`]); after it, every instance must finish
/// (liveness).
///
/// ```
/// use std::time::Duration;
/// use dtasks::sim::Faults;
/// let faults = Faults::default().crashes(0.05, 2).connection_drops(0.01, 1);
/// assert_eq!(faults.max_crashes(), 2);
/// let calm = Faults::none();
/// assert_eq!(calm.max_crashes(), 0);
/// # let _ = Duration::ZERO;
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Faults {
    pub(super) crash: f64,
    pub(super) max_crashes: u32,
    pub(super) drop: f64,
    pub(super) max_drops: u32,
    pub(super) duplicate: f64,
    pub(super) lost_confirm: f64,
    pub(super) lose_in_flight: f64,
    pub(super) latency_ms: u64,
    pub(super) timer_late_ms: u64,
    pub(super) restarts: u32,
    pub(super) skew_ms: u64,
    pub(super) window: Duration,
}

impl Default for Faults {
    /// Every kind of fault: crashes at any broker operation of a worker, dropped
    /// connections, duplicated messages, lost confirms, a broker restart, publishes and
    /// timers that travel for a while, and workers' clocks skewed by up to 300 ms.
    fn default() -> Self {
        Self {
            crash: 0.02,
            max_crashes: 3,
            drop: 0.005,
            max_drops: 2,
            duplicate: 0.03,
            lost_confirm: 0.02,
            lose_in_flight: 0.5,
            latency_ms: 8,
            timer_late_ms: 40,
            restarts: 1,
            skew_ms: 300,
            window: Duration::from_secs(3),
        }
    }
}

impl Faults {
    /// No faults at all: the run still interleaves workers by the seed, and publishes
    /// still travel.
    pub fn none() -> Self {
        Self {
            crash: 0.0,
            max_crashes: 0,
            drop: 0.0,
            max_drops: 0,
            duplicate: 0.0,
            lost_confirm: 0.0,
            lose_in_flight: 0.0,
            timer_late_ms: 0,
            restarts: 0,
            skew_ms: 0,
            ..Self::default()
        }
    }

    /// A worker process crashes at a broker operation (publish, confirm, ack, requeue,
    /// drain, store write, delete) with probability `p` (before or after it reaches the
    /// broker), at most `max` times per run. A crashed process is replaced by a new one.
    pub fn crashes(mut self, p: f64, max: u32) -> Self {
        self.crash = p;
        self.max_crashes = max;
        self
    }

    /// A worker's connection drops at a broker operation with probability `p`, at most
    /// `max` times per run (lost confirms included): what it held goes back to its queues,
    /// and its pending confirms fail.
    ///
    /// Every crash, drop and broker restart delivers the messages it returns once more, and
    /// a worker dead-letters a message delivered more often than its budget
    /// ([`WorkerConfig::max_redeliveries`](crate::WorkerConfig::max_redeliveries), 5), by
    /// design. The defaults (3 crashes, 2 drops, 1 restart) can exceed that budget only
    /// when one message is caught by all of them; the checks then accept its root ended
    /// dead-lettered ([`Report::spent_by_faults`](super::Report::spent_by_faults)).
    pub fn connection_drops(mut self, p: f64, max: u32) -> Self {
        self.drop = p;
        self.max_drops = max;
        self
    }

    /// Each message published is stored twice with probability `p` (as a publisher
    /// that retries after a lost confirm does).
    pub fn duplicates(mut self, p: f64) -> Self {
        self.duplicate = p;
        self
    }

    /// A publish's confirm is lost with its connection with probability `p` (the
    /// messages are stored; the publisher sees an error).
    pub fn lost_confirms(mut self, p: f64) -> Self {
        self.lost_confirm = p;
        self
    }

    /// Publishes travel up to `ms` milliseconds before they land, and confirms as long
    /// back (a crash meanwhile lands the publish after the crash, or loses it).
    pub fn latency(mut self, ms: u64) -> Self {
        self.latency_ms = ms;
        self
    }

    /// Timers fire up to `ms` milliseconds late (never early).
    pub fn late_timers(mut self, ms: u64) -> Self {
        self.timer_late_ms = ms;
        self
    }

    /// The broker restarts up to `n` times per run (every connection drops at once;
    /// queues and timers stay).
    pub fn broker_restarts(mut self, n: u32) -> Self {
        self.restarts = n;
        self
    }

    /// Each worker's clock is off the true time by up to `ms` milliseconds either way.
    pub fn clock_skew(mut self, ms: u64) -> Self {
        self.skew_ms = ms;
        self
    }

    /// How long (virtual time) faults are injected from the start of a run.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// The most crashes a run injects.
    pub fn max_crashes(&self) -> u32 {
        self.max_crashes
    }

    /// The largest clock skew of a worker, either way.
    pub fn max_skew(&self) -> Duration {
        Duration::from_millis(self.skew_ms)
    }
}

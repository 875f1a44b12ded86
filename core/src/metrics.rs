//! The names of the metrics dtasks records, through the [`metrics`](https://docs.rs/metrics)
//! facade.
//!
//! Like its `tracing` spans, the library only records: nothing is collected until the
//! process installs a recorder (`metrics-exporter-prometheus`, say; `dtasks-actors` has
//! [`serve_prometheus`](https://docs.rs/dtasks-actors) for worker pods). Every name here is
//! what a Prometheus exporter shows; counters end in `_total`, durations are in seconds.

/// Counter: steps run, labelled `dtask`, `model` (`replay` or `snapshot`) and `outcome`
/// (`suspended`, `completed` or `failed`). Inline runs included.
pub const STEPS: &str = "dtasks_steps_total";
/// Histogram: how long a step's body ran, in seconds, labelled `dtask`.
pub const STEP_DURATION: &str = "dtasks_step_duration_seconds";
/// Counter: instances that ended failed, labelled `dtask` and `kind` (`panic`,
/// `child_failed`, `timeout`, `cancelled`, `dead_lettered`, …).
pub const FAILURES: &str = "dtasks_failures_total";
/// Counter: deliveries a worker handled to completion, labelled `kind` (`task` or
/// `mailbox`).
pub const DELIVERIES: &str = "dtasks_deliveries_total";
/// Gauge: deliveries being handled now, each the step of one instance (or of one mailbox
/// merge): the instances in flight in this process.
pub const IN_FLIGHT: &str = "dtasks_instances_in_flight";
/// Counter: deliveries that came again (the broker's redelivery count above zero).
pub const REDELIVERIES: &str = "dtasks_redeliveries_total";
/// Counter: messages moved to the dead-letter queue.
pub const DEAD_LETTERS: &str = "dtasks_dead_letters_total";
/// Counter: steps run inline, within the delivery of the step before them.
pub const INLINE_STEPS: &str = "dtasks_inline_steps_total";
/// Counter: result writes refused because the instance's result was already recorded.
pub const DUPLICATE_RESULTS: &str = "dtasks_duplicate_results_total";
/// Counter: starts dropped because another start holds their chosen id.
pub const DUPLICATE_STARTS: &str = "dtasks_duplicate_starts_total";
/// Counter: messages written by a newer build, put back for a newer worker to take
/// ([`WorkerConfig::newer_message_patience`](crate::WorkerConfig::newer_message_patience)).
pub const HANDED_BACK: &str = "dtasks_handed_back_total";
/// Histogram: how long a worker took to make a step's messages durable (store writes,
/// publishes and their confirms), in seconds.
pub const PUBLISH_DURATION: &str = "dtasks_publish_duration_seconds";
/// Gauge: timers the transport holds (the summary of `dtasks-actors` sets it).
pub const TIMERS_HELD: &str = "dtasks_timers_held";

/// Seconds since `since`, as histograms take them.
pub(crate) fn seconds(since: std::time::Instant) -> f64 {
    since.elapsed().as_secs_f64()
}

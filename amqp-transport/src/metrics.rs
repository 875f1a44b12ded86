//! The names of the metrics the RabbitMQ transport records (through the `metrics` facade;
//! see [`dtasks::metrics`] for the worker's).

/// Histogram: seconds from the first publish of a batch to the broker's last confirm of
/// it (a step's messages, a doorbell batch, a store write).
pub const CONFIRM_DURATION: &str = "dtasks_amqp_confirm_duration_seconds";
/// Counter: messages published to RabbitMQ and confirmed (or returned) by the broker.
pub const PUBLISHED: &str = "dtasks_amqp_published_total";
/// Counter: mailbox messages written several to one AMQP message (a pack: the messages
/// that reached one mailbox while an earlier write to it was on its way).
pub const PACKED: &str = "dtasks_amqp_packed_total";
/// Counter: task messages written several to one AMQP message (a task pack: the messages
/// of one publish that went to the same task queue, such as a fan-out's child starts).
pub const TASK_PACKED: &str = "dtasks_amqp_task_packed_total";
/// Counter: connections to RabbitMQ opened by transports' pools (a publisher and a
/// consumer connection each, then one more each time one was lost and replaced).
pub const CONNECTIONS_OPENED: &str = "dtasks_amqp_connections_opened_total";

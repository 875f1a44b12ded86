//! # dtasks-amqp: the RabbitMQ transport for dtasks
//!
//! [`AmqpTransport`] implements [`dtasks::Transport`] on RabbitMQ (3.10 or later) with
//! nothing but stock features: no plugin, no management API.
//!
//! ```no_run
//! use dtasks::{dtask, Client, Worker, WorkerConfig};
//! use dtasks_amqp::{AmqpConfig, AmqpTransport};
//!
//! #[dtask]
//! async fn add_one(x: u64) -> u64 {
//!     x + 1
//! }
//!
//! # async fn run() -> Result<(), dtasks::Error> {
//! // AMQP_URL and DTASKS_PREFIX, or the defaults.
//! let transport = AmqpTransport::connect(AmqpConfig::from_env()).await?;
//! // A worker (any number of them, in any number of processes)...
//! let worker = Worker::new(transport.clone(), WorkerConfig::new().register(add_one))?;
//! tokio::spawn(worker.run());
//! // ...and a client, anywhere.
//! let handle = Client::new(transport).start(add_one(41)).await?;
//! assert_eq!(handle.result().await?, 42);
//! # Ok(()) }
//! ```
//!
//! ## Topology
//!
//! Every name starts with the prefix `P` ([`AmqpConfig::with_prefix`]). Queues are
//! declared when first needed, always with the same arguments; all messages are
//! persistent and every publish waits for the broker's confirm.
//!
//! | queue | type | arguments | holds |
//! |---|---|---|---|
//! | `P.task.<dtask>` | quorum | | steps of instances of one DTask (`P.task.<dtask>.<i>`, `i < k`, with [`AmqpConfig::with_task_queues`]`(k)`, by hash of the instance id) |
//! | `P.packs.<dtask>` | quorum | | task packs: several start messages of one publish for one DTask in one message ([`AmqpConfig::with_task_packs`]), consumed beside the task queue |
//! | `P.wake.<dtask>` | quorum | | due timers of instances of one DTask (consumed like the task queue, so that a timer does not wait behind every queued start) |
//! | `P.dead` | quorum | | dead letters, with `x-dtasks-reason` and `x-dtasks-queue` headers ([`AmqpTransport::dead_letters`] lists them, [`AmqpTransport::replay_dead_letter`] puts one back where it came from) |
//! | `P.delay.<k>`, k = 0..=32 | quorum | `x-message-ttl` 2^k ms, dead-letter to `P.delay.ready` (at-least-once, `x-overflow` reject-publish) | timers |
//! | `P.delay.ready` | quorum | | timers that left a level, re-routed by every consumer |
//! | `P.shard.<i>`, i < shards | quorum | `x-single-active-consumer` | doorbells, routed by FNV-1a of the instance id; every worker consumes every shard, and the shards spread over the workers ([`AmqpTransport::held_shards`]) |
//! | `P.mbox.<instance>` | classic (quorum with [`AmqpConfig::with_quorum_mailboxes`]) | `x-expires` (mailbox retention) | the mailbox of an instance |
//! | `P.result.<instance>` | classic | `x-max-length` 1, `x-overflow` reject-publish, `x-expires` | the result (written once) |
//! | `P.status.<instance>` | classic | `x-max-length` 1, `x-overflow` drop-head, `x-expires` | the last status |
//! | `P.cancels` | stream | `x-max-age` (the result retention) | cancel records, read from the first by every worker (`Client::cancel`, `DTask::race`) |
//!
//! Messages carry `message_id` and the headers `x-dtasks-instance`, `x-dtasks-dtask` and
//! `x-dtasks-envelope`; delayed ones also `x-dtasks-at` (due time, epoch ms) and
//! `x-dtasks-target` (the DTask whose queue they go to).
//!
//! ## Failures
//!
//! A lost connection (a broker restart, a network cut) does not end a worker's delivery
//! stream: the transport reconnects with exponential backoff (up to 5 s) and subscribes
//! again; deliveries in flight on the dead connection are redelivered by the broker.
//! Publishing retries on a fresh channel for up to [`AmqpConfig::with_publish_timeout`].
//! Waiting for a result survives reconnects too. An ack or reject still pending when its
//! channel closes is given up (the broker puts the message back by itself) rather than
//! waited for: lapin can lose such a settle, and the wait would never end. A broker that
//! vanishes without closing the connection is noticed by heartbeats: add `?heartbeat=10`
//! to the URL to notice it within seconds rather than the broker's default minute.
//!
//! The library emits `tracing` events and installs no subscriber.
//!
//! ## Limits worth knowing
//!
//! - A doorbell stays unacknowledged while its instance's mailbox step runs, and a task
//!   message while its step runs: a step must finish well within the broker's
//!   `consumer_timeout` (30 min by default), or the broker closes the channel and the
//!   work is redelivered.
//! - The single active consumer of each shard is the first worker that subscribed; other
//!   workers take over when it goes away. Task queues are shared by all workers.
//! - Every process of a deployment must use the same prefix, shard count and retention
//!   periods ([`AmqpConfig`]).
//! - A mailbox expires after [`AmqpConfig::with_mailbox_retention`] without use. Workers
//!   drain the mailbox of every waiting instance every quarter of that period (a
//!   keep-alive), so a long wait never loses its state; finished instances' mailboxes
//!   expire.
//! - Each waiting [`Handle::result`](dtasks::Handle::result) holds one consumer of its
//!   instance's result register, on a channel shared by every wait of the process, until
//!   the result arrives or the wait is dropped.
//! - Reading a register takes its message and puts it back, so two reads at the same
//!   instant can see it missing; a status read looks again before answering "none".
//! - After a broker restart, a timer that a delay level expires while the broker is still
//!   starting can be held by that queue's dead-letter worker (at-least-once dead-lettering)
//!   until its retry, `dead_letter_worker_publisher_confirm_timeout`: 180 s by default in
//!   RabbitMQ 3.10. The timer is late by up to that much, never lost or early; set a few
//!   seconds in the broker's configuration where timers matter to the second (the
//!   repository's `deploy/rabbitmq-advanced.config` sets 5 s).

mod acks;
mod cancels;
mod clock;
mod config;
mod conn;
mod consume;
mod dead;
mod delay;
mod delivery;
mod error;
mod facts;
mod follow;
mod headers;
mod mailbox;
pub mod metrics;
mod pack;
mod parts;
mod payloads;
mod publish;
mod records;
mod registers;
mod replies;
mod settle;
mod shared;
mod supervise;
mod topology;
mod transport;

pub use config::{
    AmqpConfig, DEAD_LETTER_BODY, DEAD_LETTER_BYTES, DEFAULT_DEAD_LETTERS, DEFAULT_PREFIX,
    DEFAULT_TASK_PACKS, DEFAULT_TIMER_HOP, DEFAULT_URL,
};
pub use dead::DeadLetter;
pub use facts::StreamStore;
pub use payloads::StreamPayloads;
pub use transport::AmqpTransport;

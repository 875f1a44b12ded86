//! Where instances run: the [`Worker`] that consumes a transport's queues, the settings
//! every worker shares ([`WorkerConfig`]), and the embedded [`Runtime`] (workers and a
//! client on the in-memory transport).

mod claim;
mod config;
mod embedded;
mod facts;
mod worker;

pub use config::{WorkerConfig, DEFAULT_INLINE_STEPS};
pub use embedded::{Runtime, RuntimeBuilder};
pub use worker::{Worker, WorkerStats};

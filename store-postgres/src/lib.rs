//! # dtasks-postgres: the instance store on PostgreSQL
//!
//! [`PgStore`] keeps the facts of root instances — when each started, its status with
//! what it waits for, its result — in one PostgreSQL table, for workers and clients of
//! any number of processes. It gives the semantics of the
//! [`InstanceStore`](dtasks::store::InstanceStore) contract, as
//! [`MemoryStore`](dtasks::store::MemoryStore) does in one process: a result is recorded
//! once, a status never goes backwards, `record` resolves only once its facts are
//! committed, and every read afterwards, from any process, sees them.
//!
//! ```no_run
//! use dtasks::store::{Fact, FactKind, Filter, InstanceStore, Query};
//! use dtasks::{InstanceId, Status, WorkerConfig};
//! use dtasks_postgres::PgStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), dtasks::Error> {
//! // DATABASE_URL=postgres://dtasks@db.internal/dtasks
//! let store = PgStore::from_env().await?;
//!
//! // Workers and clients record and read facts through it...
//! let config = WorkerConfig::new().store(store.clone());
//! # let _ = config;
//!
//! // ...and so can an operator's tool.
//! let id = InstanceId::new("order-1")?;
//! let started = Fact::new(id.clone(), "order", std::time::SystemTime::now(),
//!     FactKind::Started { parent: None });
//! store.record(vec![started]).await?;
//! assert_eq!(store.get(&id).await?.unwrap().status, Status::Pending);
//! let failed = store.list(&Query::new(Filter::new().status(Status::Failed))).await?;
//! for info in failed.instances {
//!     println!("{} failed at {:?}", info.id, info.finished_at());
//! }
//! # Ok(()) }
//! ```
//!
//! ## Tables
//!
//! In a schema of their own (default `dtasks`, [`PgStoreBuilder::schema`]), created and
//! migrated by [`PgStoreBuilder::connect`] in one transaction under an advisory lock, so
//! that workers starting together are safe; `dtasks_schema_migrations` records the
//! versions applied.
//!
//! - `dtasks_instances`: one row per instance, with the fields of
//!   [`InstanceInfo`](dtasks::store::InstanceInfo): `id` (the key), `name`, `parent`,
//!   `status` (lower-case text), `waits` (`jsonb`), `created_at`, `updated_at`,
//!   `version`, `result` (`bytea`, the encoded outcome), `duplicate_results`, `runs`,
//!   `fingerprint` (a snapshot machine's, its 64 bits as a signed `bigint`),
//!   `records_children` (whether its children are recorded too). `waits` is
//!   JSON rather than MessagePack so that an operator can read it, and query it, in SQL
//!   (`waits @> '[{"Event": "approval"}]'`); it is a few bytes, and never read on the
//!   write path. Times are kept to the millisecond: listings order instances by
//!   `(created_at, id)` and their cursors hold milliseconds. `id` and `name` sort
//!   byte-wise (`COLLATE "C"`), as instance ids do in Rust.
//! - `dtasks_claims`: the nonce that holds each claimed id.
//!
//! Listings are read newest first by keyset (`(created_at, id) < cursor`) from an index
//! per common filter — none, status, name — so a page costs the same on the first page
//! as on the thousandth, and on a million rows as on a hundred.
//!
//! ## Writes
//!
//! One writer task per store takes the facts of every concurrent `record` call and
//! writes as many as wait (up to [`PgStoreBuilder::max_batch`]) in one transaction of
//! five statements: the rows missing are inserted, every row of the batch is locked and
//! read, the facts are applied in order by the core's own
//! [`InstanceInfo::apply`](dtasks::store::InstanceInfo::apply), and the rows that changed
//! are written back in one statement. Each caller resolves when that transaction
//! commits. Up to [`PgStoreBuilder::writers`] transactions (4 by default) are in flight
//! at once, so a batch does not wait for the commit of the one before it. Facts of one
//! `record` call apply in their order, in one transaction; a call made after another
//! resolved applies after it. Calls in flight together may commit in either order, which
//! the rules make harmless: a status never goes backwards (it carries its version), and
//! the first result to commit stands. Writers of other processes, and batches of this
//! one, wait on the row locks, taken in id order.
//!
//! While the database cannot be written, `record` does not fail: the writer tries again
//! with a growing pause, up to the write timeout ([`PgStoreBuilder::write_timeout`],
//! 3 minutes by default), and only then fails with
//! [`Error::is_store`](dtasks::Error::is_store). A worker holds the step's message
//! unacked meanwhile, and requeues it on that error. Reads fail with
//! [`Error::is_store`](dtasks::Error::is_store) within the query timeout. When the
//! database is back, everything resumes: connections are opened anew as they are needed.
//!
//! A commit whose answer is lost with the connection is tried again: its facts apply a
//! second time, which the store's rules make harmless, except that a result written
//! twice this way counts as a duplicate.
//!
//! ## Waiting for a finish
//!
//! [`wait_finished`](dtasks::store::InstanceStore::wait_finished) uses
//! `LISTEN`/`NOTIFY` rather than polling: the writer's transaction notifies the id of
//! each instance it finished (delivered at commit, to every process), and one listening
//! connection per store wakes the waiters of that id. Polling would cost one query per
//! waiter every few hundred milliseconds and answer late; a notification costs one
//! message per finish and answers at once. Should a notification be lost (the listening
//! connection down), waiters are woken when it is back, and every waiter reads its
//! instance at least every 10 seconds anyway.
//!
//! ## Connections
//!
//! Through a [`deadpool_postgres`] pool of [`tokio_postgres`] connections, without TLS
//! (`NoTls`): reach the database over a trusted network, a Unix socket, or a TLS tunnel.
#![doc(test(attr(deny(warnings))))]

mod apply;
mod builder;
mod error;
mod listen;
mod retention;
mod row;
mod schema;
mod select;
mod sql;
mod store;
mod writer;

pub use builder::{PgStoreBuilder, DATABASE_URL};
pub use store::{PgStore, WriteStats};

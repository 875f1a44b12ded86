//! [`PgStoreBuilder`]: where the database is and how the store uses it.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use dtasks::Error;

use crate::schema::valid_schema;
use crate::PgStore;

/// The environment variable [`PgStore::from_env`] and [`PgStoreBuilder::from_env`] read.
pub const DATABASE_URL: &str = "DATABASE_URL";

/// How a [`PgStore`] connects and behaves. Every setting has a default; only the URL is
/// needed.
///
/// ```
/// use std::time::Duration;
/// use dtasks_postgres::PgStoreBuilder;
///
/// let builder = PgStoreBuilder::new("postgres://dtasks@db.internal/dtasks")
///     .schema("orders")
///     .pool_size(16)
///     .retention(Duration::from_secs(7 * 24 * 3600))
///     .write_timeout(Duration::from_secs(300));
/// # let _ = builder;
/// ```
#[derive(Clone)]
pub struct PgStoreBuilder {
    pub(crate) url: String,
    pub(crate) schema: String,
    pub(crate) existing_only: bool,
    pub(crate) pool_size: usize,
    pub(crate) retention: Option<Duration>,
    pub(crate) orphan_retention: Option<Duration>,
    pub(crate) write_timeout: Duration,
    pub(crate) query_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) max_batch: usize,
    pub(crate) writers: usize,
}

impl fmt::Debug for PgStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may hold a password: it is left out.
        f.debug_struct("PgStoreBuilder")
            .field("schema", &self.schema)
            .field("existing_only", &self.existing_only)
            .field("pool_size", &self.pool_size)
            .field("retention", &self.retention)
            .field("orphan_retention", &self.orphan_retention)
            .field("write_timeout", &self.write_timeout)
            .field("query_timeout", &self.query_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_batch", &self.max_batch)
            .field("writers", &self.writers)
            .finish_non_exhaustive()
    }
}

impl PgStoreBuilder {
    /// A store in the database at `url` (`postgres://user:password@host:port/database`,
    /// or the `key=value` form), with the defaults: schema `dtasks`, 10 connections,
    /// no retention, a write timeout of 3 minutes, a query timeout of 10 seconds, a
    /// connect timeout of 5 seconds, batches of up to 1000 facts, 4 write transactions in
    /// flight.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: "dtasks".to_owned(),
            existing_only: false,
            pool_size: 10,
            retention: None,
            orphan_retention: None,
            write_timeout: Duration::from_secs(180),
            query_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            max_batch: 1000,
            writers: 4,
        }
    }

    /// A builder for the database named by the environment variable `DATABASE_URL`.
    pub fn from_env() -> Result<Self, Error> {
        let url = std::env::var(DATABASE_URL)
            .map_err(|_| Error::invalid(format!("{DATABASE_URL} is not set")))?;
        Ok(Self::new(url))
    }

    /// The schema the store's tables live in (created when missing): 1 to 48 of `a-z`,
    /// `0-9` and `_`, not starting with a digit. Stores of different schemas in one
    /// database know nothing of each other.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Whether [`connect`](Self::connect) only opens a schema that exists (default
    /// `false`: it creates a missing schema and migrates an older one, which a
    /// deployment's first process must do). With `true`, a schema without the store's
    /// tables fails the connect with [`Error::is_bad_input`], instead of a new, empty
    /// store under a mistyped name: for tools that read a deployment (the `dtasks`
    /// command line), not for its workers. A schema of an older version is still
    /// migrated.
    pub fn existing_schema(mut self, only: bool) -> Self {
        self.existing_only = only;
        self
    }

    /// The most connections the store opens for reads and writes (at least 1; the
    /// writer uses up to [`writers`](Self::writers) at a time, the listening connection of
    /// [`wait_finished`](dtasks::store::InstanceStore::wait_finished) is apart).
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size;
        self
    }

    /// Removes instances that finished longer ago than `retention` (with their claims and
    /// the values they stored out of band), from a background task that runs every tenth
    /// of the retention (at most once a minute, at least every 100 ms). Values of
    /// instances that still run or wait stay, however old.
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = Some(retention);
        self
    }

    /// Removes the values stored out of band longer ago than `age` that no instance of
    /// the store owns: neither the instance that stored one nor any it descends from
    /// (`<root>.<n>…`) has a row. By default such values stay until deleted by hand.
    ///
    /// They are the values of roots started with `Client::call`, which record nothing in
    /// the store (an argument or a result over the payload threshold), and of a start
    /// whose client died between storing its argument and recording the start. **A
    /// `call` that runs longer than `age` loses its values** (its next step that reads
    /// one fails the instance, as with a value gone): pick an `age` longer than any
    /// call's run, or start long-running work with `Client::start`, whose values live as
    /// long as its instance. Runs with the retention's task, every tenth of the shorter
    /// of the two settings.
    pub fn orphan_retention(mut self, age: Duration) -> Self {
        self.orphan_retention = Some(age);
        self
    }

    /// How long a [`record`](dtasks::store::InstanceStore::record) keeps trying while the
    /// database cannot be written before it fails with
    /// [`Error::is_store`](dtasks::Error::is_store).
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = timeout;
        self
    }

    /// The bound of one read (a connection from the pool included), and of one attempt
    /// of a write.
    pub fn query_timeout(mut self, timeout: Duration) -> Self {
        self.query_timeout = timeout;
        self
    }

    /// The bound of opening one connection.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The most facts the writer puts in one transaction (at least 1; the facts of one
    /// `record` are never split, so a larger call makes a larger transaction).
    pub fn max_batch(mut self, facts: usize) -> Self {
        self.max_batch = facts;
        self
    }

    /// The most write transactions in flight at once (at least 1; default 4). Each holds
    /// a connection of the pool while it runs. Under load, facts wait for a free place
    /// and go out together; with more than one place, a batch need not wait for the
    /// commit of the one before it, which matters when a commit's latency, not the
    /// database's CPU, bounds the rate.
    pub fn writers(mut self, transactions: usize) -> Self {
        self.writers = transactions;
        self
    }

    /// Connects, creates or migrates the schema, and starts the store's background tasks
    /// (the writer, the listening connection, the retention): must be called within a
    /// Tokio runtime.
    pub async fn connect(self) -> Result<PgStore, Error> {
        PgStore::start(self).await
    }

    /// The settings checked, and the URL parsed.
    pub(crate) fn checked(&self) -> Result<tokio_postgres::Config, Error> {
        if !valid_schema(&self.schema) {
            return Err(Error::invalid(format!(
                "`{}` cannot name the store's schema (1 to 48 of a-z 0-9 _, not starting \
                 with a digit)",
                self.schema
            )));
        }
        if self.pool_size == 0 || self.max_batch == 0 || self.writers == 0 {
            return Err(Error::invalid(
                "the pool size, the batch size and the number of writers are at least 1",
            ));
        }
        let zero = [self.write_timeout, self.query_timeout, self.connect_timeout]
            .iter()
            .any(Duration::is_zero);
        if zero {
            return Err(Error::invalid("a timeout of the store cannot be zero"));
        }
        if self.retention.is_some_and(|r| r.is_zero()) {
            return Err(Error::invalid("the retention cannot be zero"));
        }
        if self.orphan_retention.is_some_and(|r| r.is_zero()) {
            return Err(Error::invalid(
                "the retention of orphan values cannot be zero",
            ));
        }
        let mut config = tokio_postgres::Config::from_str(&self.url)
            .map_err(|e| Error::invalid(format!("not a PostgreSQL URL: {e}")))?;
        config.connect_timeout(self.connect_timeout);
        if config.get_application_name().is_none() {
            config.application_name("dtasks");
        }
        Ok(config)
    }

    /// How often the retention runs.
    pub(crate) fn retention_every(retention: Duration) -> Duration {
        (retention / 10).clamp(Duration::from_millis(100), Duration::from_secs(60))
    }
}

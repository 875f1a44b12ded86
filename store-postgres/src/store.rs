//! [`PgStore`]: the [`InstanceStore`] on PostgreSQL.

use std::fmt;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use dtasks::store::{
    Fact, Filter, InstanceInfo, InstanceStore, Listing, PayloadRef, PayloadStore, Query,
};
use dtasks::{Error, InstanceId};
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::NoTls;

use crate::builder::PgStoreBuilder;
use crate::error::PgError;
use crate::listen::{listen, Finishes};
use crate::row::{checked, info_from_row};
use crate::sql::Sql;
use crate::writer::{Counts, Request, Writer};
use crate::{retention, schema, select};

/// The instance store on PostgreSQL: the facts of root instances in one table, written
/// in batches by one writer task per store, read by id or in filtered pages. Cheap to
/// clone; clones share the connections and the writer. See the [crate docs](crate).
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    sql: Arc<Sql>,
    schema: String,
    writes: mpsc::Sender<Request>,
    finishes: Arc<Finishes>,
    write_timeout: Duration,
    query_timeout: Duration,
    counts: Arc<Counts>,
    /// Dropped with the last clone: stops the listening and retention tasks (the writer
    /// stops when its queue closes, once it has written what it holds).
    _stop: watch::Sender<()>,
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore")
            .field("schema", &self.inner.schema)
            .finish_non_exhaustive()
    }
}

/// What a store's writer has done: [`PgStore::write_stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WriteStats {
    /// Transactions committed, each holding the facts of one or more `record` calls.
    pub transactions: u64,
    /// Facts committed.
    pub facts: u64,
    /// `record` calls whose facts were committed.
    pub calls: u64,
    /// Attempts that failed and were tried again (the database down, a deadlock).
    pub failed_attempts: u64,
    /// The most write transactions that were in flight at once (at most
    /// [`PgStoreBuilder::writers`]).
    pub most_in_flight: u64,
}

/// How many `record` calls may wait for the writer before callers wait to queue.
const QUEUE: usize = 4096;

impl PgStore {
    /// Connects to the database at `url` with the defaults of [`PgStoreBuilder::new`].
    pub async fn connect(url: impl Into<String>) -> Result<Self, Error> {
        PgStoreBuilder::new(url).connect().await
    }

    /// Connects to the database named by the environment variable `DATABASE_URL`, with
    /// the defaults of [`PgStoreBuilder::new`].
    pub async fn from_env() -> Result<Self, Error> {
        PgStoreBuilder::from_env()?.connect().await
    }

    /// A builder for the database at `url`.
    pub fn builder(url: impl Into<String>) -> PgStoreBuilder {
        PgStoreBuilder::new(url)
    }

    /// The schema its tables live in.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// Whether the connection that wakes [`InstanceStore::wait_finished`] is listening
    /// (a health check: while it is not, waits read their instance every half second).
    pub fn is_listening(&self) -> bool {
        self.inner.finishes.is_listening()
    }

    /// What this store's writer has done since the store was made.
    pub fn write_stats(&self) -> WriteStats {
        let c = &self.inner.counts;
        WriteStats {
            transactions: c.transactions.load(Ordering::Relaxed),
            facts: c.facts.load(Ordering::Relaxed),
            calls: c.calls.load(Ordering::Relaxed),
            failed_attempts: c.failed_attempts.load(Ordering::Relaxed),
            most_in_flight: c.most_in_flight.load(Ordering::Relaxed),
        }
    }

    pub(crate) async fn start(b: PgStoreBuilder) -> Result<Self, Error> {
        let config = b.checked()?;
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(b.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(b.query_timeout))
            .create_timeout(Some(b.connect_timeout))
            .recycle_timeout(Some(b.connect_timeout))
            .build()
            .map_err(|e| Error::invalid(format!("the connection pool: {e}")))?;
        {
            let mut client = pool
                .get()
                .await
                .map_err(|e| PgError::Pool(e).into_error())?;
            if b.existing_only
                && !schema::exists(&client, &b.schema)
                    .await
                    .map_err(PgError::into_error)?
            {
                return Err(Error::invalid(format!(
                    "no dtasks schema `{}` in this database (its workers create it): \
                     check DTASKS_PG_SCHEMA and DATABASE_URL",
                    b.schema
                )));
            }
            schema::migrate(&mut client, &b.schema)
                .await
                .map_err(PgError::into_error)?;
        }
        let sql = Arc::new(Sql::new(&b.schema));
        let (stop, stopped) = watch::channel(());
        let finishes = Arc::new(Finishes::default());
        tokio::spawn(listen(
            config,
            sql.channel.clone(),
            finishes.clone(),
            stopped.clone(),
        ));
        let keep = retention::Keep {
            finished: b.retention,
            orphans: b.orphan_retention,
        };
        if let Some(shortest) = keep.shortest() {
            tokio::spawn(retention::run(
                pool.clone(),
                sql.clone(),
                keep,
                PgStoreBuilder::retention_every(shortest),
                stopped,
            ));
        }
        let (writes, queue) = mpsc::channel(QUEUE);
        let counts = Arc::new(Counts::default());
        let writer = Writer {
            counts: counts.clone(),
            pool: pool.clone(),
            sql: sql.clone(),
            max_batch: b.max_batch,
            in_flight: b.writers,
            attempt_timeout: b.query_timeout,
            queue: tokio::sync::Mutex::new(queue),
            retry: std::sync::Mutex::default(),
        };
        tokio::spawn(Arc::new(writer).run());
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                sql,
                schema: b.schema,
                writes,
                finishes,
                write_timeout: b.write_timeout,
                query_timeout: b.query_timeout,
                counts,
                _stop: stop,
            }),
        })
    }

    /// Runs `read` on a connection of the pool, within the query timeout.
    async fn read<T, F, Fut>(&self, read: F) -> Result<T, Error>
    where
        F: FnOnce(Object) -> Fut,
        Fut: Future<Output = Result<T, PgError>>,
    {
        let timeout = self.inner.query_timeout;
        let work = async {
            let client = self.inner.pool.get().await?;
            read(client).await
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r.map_err(PgError::into_error),
            Err(_) => Err(PgError::Timeout(timeout).into_error()),
        }
    }

    async fn record_facts(&self, facts: Vec<Fact>) -> Result<u64, Error> {
        if facts.is_empty() {
            return Ok(0);
        }
        let facts = facts.into_iter().map(checked).collect::<Result<_, _>>()?;
        let (reply, answer) = oneshot::channel();
        let gone = || Error::store("the instance store's writer has stopped");
        let request = Request {
            facts,
            deadline: tokio::time::Instant::now() + self.inner.write_timeout,
            reply,
        };
        self.inner.writes.send(request).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    async fn get_info(&self, id: &InstanceId) -> Result<Option<InstanceInfo>, Error> {
        let sql = &self.inner.sql.get;
        self.read(|client| async move {
            let st = client.prepare_cached(sql).await?;
            let row = client.query_opt(&st, &[&id.as_str()]).await?;
            row.as_ref().map(info_from_row).transpose()
        })
        .await
    }

    async fn list_page(&self, query: &Query) -> Result<Listing, Error> {
        let st = select::page(&self.inner.sql.instances, query)?;
        let instances = self
            .read(|client| async move {
                let rows = client.query(&st.text, &st.params()).await?;
                rows.iter()
                    .map(info_from_row)
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?;
        Ok(Listing::page(instances, query))
    }

    async fn purge_finished(&self, filter: &Filter) -> Result<u64, Error> {
        let sql = &self.inner.sql;
        let Some(st) = select::purge(&sql.instances, &sql.claims, &sql.payloads, filter) else {
            return Ok(0);
        };
        self.read(|client| async move {
            let row = client.query_one(&st.text, &st.params()).await?;
            let n: i64 = row.try_get(0)?;
            Ok(n.max(0) as u64)
        })
        .await
    }

    async fn claim_id(&self, id: &InstanceId, nonce: u64) -> Result<bool, Error> {
        let nonce = i64::try_from(nonce)
            .map_err(|_| Error::invalid(format!("the claim nonce {nonce} is over 2^63 - 1")))?;
        let sql = &self.inner.sql;
        let held: i64 = self
            .read(|client| async move {
                let insert = client.prepare_cached(&sql.claim_insert).await?;
                client
                    .execute(&insert, &[&id.as_str(), &nonce, &SystemTime::now()])
                    .await?;
                // A statement of its own: it sees a claim committed while the insert
                // waited for it.
                let read = client.prepare_cached(&sql.claim_read).await?;
                let row = client.query_one(&read, &[&id.as_str()]).await?;
                Ok(row.try_get(0)?)
            })
            .await?;
        Ok(held == nonce)
    }

    async fn wait(&self, id: &InstanceId) -> Result<InstanceInfo, Error> {
        let subscription = self.inner.finishes.subscribe(id.as_str());
        loop {
            let notified = subscription.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.get_info(id).await? {
                None => return Err(Error::not_found(id.as_str())),
                Some(info) if info.status.is_finished() => return Ok(info),
                Some(_) => {}
            }
            let _ = tokio::time::timeout(self.inner.finishes.recheck(), notified).await;
        }
    }
}

impl InstanceStore for PgStore {
    /// Queues `facts` for the writer and resolves when the transaction that holds them
    /// has committed. While the database cannot be written, the writer keeps trying
    /// until the write timeout ([`PgStoreBuilder::write_timeout`]); then this fails with
    /// [`Error::is_store`]. A fact a row cannot hold (a NUL character in a name, a
    /// version over 2^63 - 1) fails at once with [`Error::is_bad_input`].
    fn record(&self, facts: Vec<Fact>) -> BoxFuture<'_, Result<u64, Error>> {
        self.record_facts(facts).boxed()
    }

    fn get<'a>(&'a self, id: &'a InstanceId) -> BoxFuture<'a, Result<Option<InstanceInfo>, Error>> {
        self.get_info(id).boxed()
    }

    fn list<'a>(&'a self, query: &'a Query) -> BoxFuture<'a, Result<Listing, Error>> {
        self.list_page(query).boxed()
    }

    fn purge<'a>(&'a self, filter: &'a Filter) -> BoxFuture<'a, Result<u64, Error>> {
        self.purge_finished(filter).boxed()
    }

    fn claim<'a>(&'a self, id: &'a InstanceId, nonce: u64) -> BoxFuture<'a, Result<bool, Error>> {
        self.claim_id(id, nonce).boxed()
    }

    /// Woken by the writers' notifications (see the [crate docs](crate)).
    fn wait_finished<'a>(
        &'a self,
        id: &'a InstanceId,
    ) -> BoxFuture<'a, Result<InstanceInfo, Error>> {
        self.wait(id).boxed()
    }

    /// `true`: a transaction locks the rows it writes and applies the rules to what they
    /// hold, so each result refused as a duplicate is counted for its caller (one whose
    /// commit was lost and tried again finds its own result there, and counts it: it
    /// says too little, never too much).
    fn reports_duplicates(&self) -> bool {
        true
    }

    /// This store: values over the payload threshold go to its table
    /// `dtasks_payloads`.
    fn payloads(&self) -> Option<Arc<dyn PayloadStore>> {
        Some(Arc::new(self.clone()))
    }
}

/// The most a payload read or write may take: values may be tens of megabytes.
const PAYLOAD_TIMEOUT: Duration = Duration::from_secs(120);

impl PgStore {
    /// Runs `work` on a pooled connection within [`PAYLOAD_TIMEOUT`] (or the query
    /// timeout, when longer).
    async fn with_client<T, F, Fut>(&self, work: F) -> Result<T, Error>
    where
        F: FnOnce(Object) -> Fut,
        Fut: Future<Output = Result<T, PgError>>,
    {
        let timeout = self.inner.query_timeout.max(PAYLOAD_TIMEOUT);
        let run = async {
            let client = self.inner.pool.get().await?;
            work(client).await
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(r) => r.map_err(PgError::into_error),
            Err(_) => Err(PgError::Timeout(timeout).into_error()),
        }
    }
}

/// Values stored out of band, in the table `dtasks_payloads` (schema version 4): one row
/// per value, written once (a second put of a key changes nothing). A value is deleted
/// with the purge of its root (the values of the root and of its children, ids
/// `<root>.<n>…`) and with its root's removal by the retention
/// ([`PgStoreBuilder::retention`]), never while its root runs or waits. A value that no
/// instance owns (a `Client::call`'s, which records nothing) is deleted only by
/// [`PgStoreBuilder::orphan_retention`], when set.
///
/// [`PgStoreBuilder::retention`]: crate::PgStoreBuilder::retention
/// [`PgStoreBuilder::orphan_retention`]: crate::PgStoreBuilder::orphan_retention
impl PayloadStore for PgStore {
    fn put<'a>(&'a self, r: &'a PayloadRef, value: &'a [u8]) -> BoxFuture<'a, Result<u64, Error>> {
        async move {
            let sql = &self.inner.sql;
            self.with_client(|client| async move {
                let put = client.prepare_cached(&sql.payload_put).await?;
                let len = i64::try_from(value.len()).unwrap_or(i64::MAX);
                client
                    .execute(
                        &put,
                        &[&r.key(), &r.instance(), &len, &value, &SystemTime::now()],
                    )
                    .await?;
                Ok(0)
            })
            .await
        }
        .boxed()
    }

    fn get<'a>(&'a self, r: &'a PayloadRef) -> BoxFuture<'a, Result<Option<Vec<u8>>, Error>> {
        async move {
            let sql = &self.inner.sql;
            self.with_client(|client| async move {
                let get = client.prepare_cached(&sql.payload_get).await?;
                let row = client.query_opt(&get, &[&r.key()]).await?;
                Ok(match row {
                    Some(row) => Some(row.try_get::<_, Vec<u8>>(0)?),
                    None => None,
                })
            })
            .await
        }
        .boxed()
    }
}

//! What the PostgreSQL store's tests share: a schema of each test's own, dropped at its
//! end; facts; a TCP proxy that can cut the store from the database.
#![allow(dead_code, unreachable_pub)]

pub mod cases;
pub mod proxy;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use dtasks::store::{from_millis, Fact, FactKind};
use dtasks::{InstanceId, Status, Wait};
use dtasks_postgres::{PgStore, PgStoreBuilder};

use proxy::Proxy;
use tokio_postgres::NoTls;

/// The test database: `DTASKS_TEST_DATABASE_URL`, else the local server's `test`
/// database.
pub fn url() -> String {
    std::env::var("DTASKS_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A schema of one test's own: dropped by [`TestSchema::drop_schema`] at the end of the
/// test, or when the value is dropped (a test that panicked).
pub struct TestSchema {
    pub name: String,
    dropped: bool,
}

impl TestSchema {
    /// A fresh schema name (the schema is created by the first store that connects).
    pub fn new(tag: &str) -> Self {
        let tag: String = tag.chars().take(20).collect();
        let name = format!(
            "dtasks_t_{tag}_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..10]
        );
        Self {
            name,
            dropped: false,
        }
    }

    /// A builder for a store in this schema (short timeouts for tests).
    pub fn builder(&self) -> PgStoreBuilder {
        PgStoreBuilder::new(url())
            .schema(self.name.clone())
            .query_timeout(Duration::from_secs(5))
    }

    /// A store in this schema.
    pub async fn store(&self) -> PgStore {
        self.builder()
            .connect()
            .await
            .expect("connect to PostgreSQL")
    }

    /// A plain client of the test database, for checks in SQL.
    pub async fn client(&self) -> tokio_postgres::Client {
        client().await
    }

    /// Drops the schema.
    pub async fn drop_schema(mut self) {
        drop_schema(&self.name).await;
        self.dropped = true;
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(drop_schema(&name));
        })
        .join();
    }
}

/// A plain client of the test database.
pub async fn client() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&url(), NoTls)
        .await
        .expect("connect to PostgreSQL");
    tokio::spawn(connection);
    client
}

async fn drop_schema(name: &str) {
    let c = client().await;
    c.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
        .await
        .expect("drop the test schema");
}

/// An instance id.
pub fn id(s: &str) -> InstanceId {
    InstanceId::new(s).expect("a valid id")
}

/// `ms` milliseconds after an arbitrary recent start (times the store keeps exactly).
pub fn at(ms: u64) -> SystemTime {
    from_millis(1_700_000_000_000 + ms)
}

/// The start of `id`.
pub fn started(id: &str, name: &str, ms: u64, parent: Option<&str>) -> Fact {
    Fact::new(
        self::id(id),
        name,
        at(ms),
        FactKind::Started {
            parent: parent.map(self::id),
        },
    )
}

/// A status of `id`.
pub fn status(
    id: &str,
    name: &str,
    ms: u64,
    status: Status,
    version: u64,
    waits: Vec<Wait>,
) -> Fact {
    Fact::new(
        self::id(id),
        name,
        at(ms),
        FactKind::Status {
            status,
            waits,
            version,
        },
    )
}

/// The finish of `id` with `result` (any bytes: the store keeps them as they are).
pub fn finished(id: &str, name: &str, ms: u64, status: Status, result: &[u8]) -> Fact {
    Fact::new(
        self::id(id),
        name,
        at(ms),
        FactKind::Finished {
            status,
            result: result.to_vec(),
        },
    )
}

/// The database's address, from the test URL.
pub fn database() -> SocketAddr {
    let config: tokio_postgres::Config = url().parse().unwrap();
    let host = match &config.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        #[allow(unreachable_patterns)]
        _ => panic!("the test database is reached over TCP"),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let host = if host == "localhost" {
        "127.0.0.1".to_owned()
    } else {
        host
    };
    format!("{host}:{port}").parse().unwrap()
}

/// A builder for a store in `schema` through `proxy`.
pub fn through(proxy: &Proxy, schema: &TestSchema) -> PgStoreBuilder {
    let config: tokio_postgres::Config = url().parse().unwrap();
    let user = config.get_user().unwrap_or("postgres");
    let db = config.get_dbname().unwrap_or("postgres");
    let url = format!("postgres://{user}@127.0.0.1:{}/{db}", proxy.port());
    PgStoreBuilder::new(url)
        .schema(schema.name.clone())
        .query_timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(1))
}

//! Values over the payload threshold on RabbitMQ: with the RabbitMQ-only payload store
//! (the stream `P.payloads`) and with the PostgreSQL store, a 50 MB result from a worker
//! process reaches `Handle::result` and `Client::call` through a 4 MiB state budget; a
//! value the stream does not hold is missing at once, never waited for.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dtasks::store::PayloadRef;
use dtasks::InstanceId;
use dtasks_integration_tests::tasks::{length, text};
use dtasks_integration_tests::{within, Broker};
use dtasks_postgres::PgStoreBuilder;

const BIG: usize = 50 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mb_result_from_a_worker_process_reaches_the_client() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let workers = b
        .worker_processes(env!("CARGO_BIN_EXE_it-worker"), 1)
        .await?;
    let c = b.client().await?;
    let limit = Duration::from_secs(120);
    let h = c.start(text(BIG)).await?;
    let result = within(limit, "the result", h.result()).await??;
    assert_eq!(result.len(), BIG);
    assert!(result.bytes().all(|b| b == b't'));
    drop(result);
    let called = within(limit, "the call", c.call(text(BIG))).await??;
    assert_eq!(called.len(), BIG);
    drop(called);
    // An argument over the threshold, from the client to the worker process.
    let arg = vec![1u8; 512 * 1024];
    assert_eq!(
        within(limit, "the argument", c.call(length(arg))).await??,
        512 * 1024
    );
    // The result in the store is a reference; the value is in the stream.
    let info = h.info().await?;
    let stored = info.result_bytes().expect("finished")?;
    assert!(stored.len() < 1024, "{} bytes stored", stored.len());
    assert!(PayloadRef::decode(&stored).is_some());
    workers.stop(Duration::from_secs(30)).await?;
    b.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_the_stream_does_not_hold_is_missing_at_once() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let t = b.transport().await?;
    let store = dtasks::Transport::payloads(&t).expect("a payload store");
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let id = InstanceId::new(format!("{}-gone", b.prefix()))?;
    // One value written, another never: the first is read back, the second is `None`.
    let kept = PayloadRef::of(&id, b"kept value");
    let at = store.put(&kept, b"kept value").await?;
    let kept = kept.at(at);
    let never = PayloadRef::of(&id, b"never written").at(now);
    let read = within(Duration::from_secs(30), "the read", store.get(&kept)).await??;
    assert_eq!(read.as_deref(), Some(&b"kept value"[..]));
    let gone = within(Duration::from_secs(30), "the read", store.get(&never)).await??;
    assert_eq!(gone, None);
    b.cleanup().await
}

/// The test database: `DTASKS_TEST_DATABASE_URL`, else the local server's `test` database
/// (as the PostgreSQL store's own tests).
fn database_url() -> String {
    std::env::var("DTASKS_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mb_result_from_a_worker_process_goes_through_postgres() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let url = database_url();
    let schema = format!(
        "dtasks_t_payloads_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    );
    let store = PgStoreBuilder::new(url.clone())
        .schema(schema.clone())
        .connect()
        .await?;
    let workers = b
        .worker_processes_with(
            env!("CARGO_BIN_EXE_it-worker"),
            1,
            &[("IT_PG_URL", &url), ("IT_PG_SCHEMA", &schema)],
        )
        .await?;
    let c = b.client().await?.with_store(store.clone());
    let limit = Duration::from_secs(120);
    let h = c.start(text(BIG)).await?;
    assert_eq!(within(limit, "the result", h.result()).await??.len(), BIG);
    assert_eq!(
        within(limit, "the call", c.call(text(BIG))).await??.len(),
        BIG
    );
    // The values are rows of the schema's `dtasks_payloads`, not chunks of the stream.
    let (db, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let row = db
        .query_one(
            &format!("SELECT count(*), max(len) FROM \"{schema}\".dtasks_payloads"),
            &[],
        )
        .await?;
    assert_eq!(row.get::<_, i64>(0), 2);
    assert_eq!(row.get::<_, Option<i64>>(1), Some(BIG as i64 + 5));
    workers.stop(Duration::from_secs(30)).await?;
    drop((c, store));
    db.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .await?;
    b.cleanup().await
}

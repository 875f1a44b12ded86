//! Values over the payload threshold kept in PostgreSQL (`dtasks_payloads`) when the
//! workers and the client are given the PostgreSQL store, on the real RabbitMQ: a 50 MB
//! result reaches `Handle::result` and `Client::call` through a 4 MiB state budget, a
//! purge removes the values of a root and of its children, and a value gone from the
//! table fails its reader clearly.

mod common;

use std::time::Duration;

use common::TestSchema;
use dtasks::store::Filter;
use dtasks::{dtask, Client, Worker, WorkerConfig};
use dtasks_integration_tests::{within, Broker};

const BIG: usize = 50 * 1024 * 1024;

#[dtask(name = "pg_payloads.text")]
async fn text(n: usize) -> String {
    "p".repeat(n)
}

#[dtask(name = "pg_payloads.measure")]
async fn measure(s: String) -> usize {
    s.len()
}

/// A child's large result passed on as another child's argument.
#[dtask(name = "pg_payloads.relay")]
async fn relay(n: usize) -> usize {
    let s = text(n).await;
    measure(s).await
}

/// The rows of `dtasks_payloads` and their total size, for the values of `instance` and
/// of its children.
async fn rows(schema: &TestSchema, instance: &str) -> (i64, i64) {
    let c = schema.client().await;
    let row = c
        .query_one(
            &format!(
                "SELECT count(*), COALESCE(sum(len), 0)::bigint FROM \"{}\".dtasks_payloads \
                 WHERE instance = $1 OR instance LIKE $2",
                schema.name
            ),
            &[&instance, &format!("{instance}.%")],
        )
        .await
        .expect("query");
    (row.get(0), row.get(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_are_kept_in_postgres_and_purged_with_their_root() -> anyhow::Result<()> {
    let schema = TestSchema::new("payloads");
    let store = schema.store().await;
    let b = Broker::start().await?;
    let config = WorkerConfig::new()
        .register(text)
        .register(measure)
        .register(relay)
        .store(store.clone());
    let worker = Worker::new(b.transport().await?, config)?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(worker.run_until(async move {
        let mut stopped = stopped;
        let _ = stopped.wait_for(|s| *s).await;
    }));
    let client = Client::new(b.transport().await?).with_store(store.clone());
    let limit = Duration::from_secs(120);

    let h = client.start(text(BIG)).await?;
    assert_eq!(within(limit, "the result", h.result()).await??.len(), BIG);
    assert_eq!(rows(&schema, h.id().as_str()).await, (1, BIG as i64 + 5));
    assert_eq!(
        within(limit, "the call", client.call(text(BIG)))
            .await??
            .len(),
        BIG
    );

    // A child's result and a child's argument, stored under the children's ids.
    let r = client.start(relay(1024 * 1024)).await?;
    assert_eq!(within(limit, "relay", r.result()).await??, 1024 * 1024);
    let (n, _) = rows(&schema, r.id().as_str()).await;
    assert_eq!(n, 2, "the child's result and the other child's argument");
    assert_eq!(
        client
            .purge(&Filter::new().id_prefix(r.id().as_str()))
            .await?,
        1
    );
    assert_eq!(rows(&schema, r.id().as_str()).await, (0, 0));
    // The other root's value is untouched.
    assert_eq!(rows(&schema, h.id().as_str()).await.0, 1);

    // A value gone from the table: the read fails, saying so.
    schema
        .client()
        .await
        .execute(
            &format!(
                "DELETE FROM \"{}\".dtasks_payloads WHERE instance = $1",
                schema.name
            ),
            &[&h.id().as_str()],
        )
        .await?;
    let e = h.result().await.expect_err("gone");
    assert!(e.is_payload_missing(), "{e}");

    let _ = stop.send(true);
    running.await??;
    drop((client, store));
    b.cleanup().await?;
    schema.drop_schema().await;
    Ok(())
}

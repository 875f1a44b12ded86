//! The store's life on real PostgreSQL: its schema made by many processes at once, what
//! it refuses, the retention, and waits woken by another process's writes.

mod common;

use std::time::{Duration, Instant, SystemTime};

use common::{finished, id, started, status, TestSchema};
use dtasks::store::{Fact, FactKind, Filter, InstanceStore};
use dtasks::{Status, Wait};
use dtasks_postgres::{PgStore, PgStoreBuilder};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_starting_at_once_migrate_the_schema_once() {
    let schema = TestSchema::new("migrate");
    let connects: Vec<_> = (0..8)
        .map(|_| {
            let builder = schema.builder();
            tokio::spawn(async move { builder.connect().await })
        })
        .collect();
    let mut stores = Vec::new();
    for c in connects {
        stores.push(c.await.unwrap().expect("every store connects"));
    }
    let client = schema.client().await;
    let versions: Vec<i32> = client
        .query(
            &format!(
                "SELECT version FROM \"{}\".dtasks_schema_migrations ORDER BY version",
                schema.name
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, vec![1, 2, 3, 4, 5]);
    // Every store works on the one schema.
    stores[3]
        .record(vec![started("m", "x", 0, None)])
        .await
        .unwrap();
    assert!(stores[5].get(&id("m")).await.unwrap().is_some());

    // A schema written by newer code is refused.
    client
        .execute(
            &format!(
                "INSERT INTO \"{}\".dtasks_schema_migrations (version) VALUES (99)",
                schema.name
            ),
            &[],
        )
        .await
        .unwrap();
    let err = schema.builder().connect().await.unwrap_err();
    assert!(err.is_store(), "{err}");
    assert!(err.to_string().contains("99"), "{err}");
    drop(stores);
    schema.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_schema_only_is_opened_and_a_missing_one_is_not_made() {
    let schema = TestSchema::new("existing");
    let err = schema
        .builder()
        .existing_schema(true)
        .connect()
        .await
        .unwrap_err();
    assert!(err.is_bad_input(), "{err}");
    assert!(err.to_string().contains(&schema.name), "{err}");
    let client = schema.client().await;
    let made: i64 = client
        .query_one(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name = $1",
            &[&schema.name],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(made, 0, "the refused schema was created");
    // Made by a store the usual way, then opened.
    drop(schema.store().await);
    let store = schema
        .builder()
        .existing_schema(true)
        .connect()
        .await
        .unwrap();
    store
        .record(vec![started("x", "n", 0, None)])
        .await
        .unwrap();
    drop(store);
    schema.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_cannot_be_used_is_an_error_that_says_why() {
    // The server's own words, not only the client's "db error".
    let url = common::url();
    let (server, _) = url.rsplit_once('/').unwrap();
    let err = PgStore::builder(format!("{server}/dtasks_no_such_database"))
        .connect()
        .await
        .unwrap_err();
    assert!(err.is_store(), "{err}");
    assert!(err.to_string().contains("does not exist"), "{err}");

    // A port nothing listens on: the operating system's refusal.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let err = PgStore::builder(format!("postgres://postgres@127.0.0.1:{port}/test"))
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap_err();
    assert!(err.is_store(), "{err}");
    assert!(err.to_string().to_lowercase().contains("refused"), "{err}");
}

/// A schema as the first version of the code left it, with an instance in it: a store
/// of this version migrates it (history, steps, the indexes by parent, runs,
/// fingerprints, whether children are recorded), and the instance
/// reads with an empty history that the next status starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_of_version_1_is_migrated_with_its_rows() {
    let schema = TestSchema::new("v1");
    let client = schema.client().await;
    let s = format!("\"{}\"", schema.name);
    client
        .batch_execute(&format!(
            "CREATE SCHEMA {s};
             CREATE TABLE {s}.dtasks_schema_migrations (version integer PRIMARY KEY, \
                 applied_at timestamptz NOT NULL DEFAULT now());
             INSERT INTO {s}.dtasks_schema_migrations (version) VALUES (1);
             CREATE TABLE {s}.dtasks_instances (
                 id text COLLATE \"C\" PRIMARY KEY, name text COLLATE \"C\" NOT NULL,
                 parent text COLLATE \"C\", status text NOT NULL,
                 waits jsonb NOT NULL DEFAULT '[]', created_at timestamptz NOT NULL,
                 updated_at timestamptz NOT NULL, version bigint NOT NULL DEFAULT 0,
                 result bytea, duplicate_results bigint NOT NULL DEFAULT 0);
             CREATE TABLE {s}.dtasks_claims (id text COLLATE \"C\" PRIMARY KEY, \
                 nonce bigint NOT NULL, claimed_at timestamptz NOT NULL);
             INSERT INTO {s}.dtasks_instances (id, name, parent, status, waits, created_at, \
                 updated_at, version) VALUES ('old-1', 'x', 'up', 'suspended', \
                 '[\"Resume\"]', now(), now(), 1);"
        ))
        .await
        .unwrap();
    let store = schema.store().await;
    let old = store.get(&id("old-1")).await.unwrap().expect("the old row");
    assert_eq!(old.status, Status::Suspended);
    assert_eq!(old.waits, vec![Wait::Resume]);
    assert!(old.history.is_empty() && old.steps.is_empty());
    assert_eq!((old.runs, old.fingerprint), (1, None));
    // Whether it records its children was not kept: it reads as not.
    assert!(!old.records_children);
    store
        .record(vec![finished("old-1", "x", 5, Status::Succeeded, b"ok")])
        .await
        .unwrap();
    let done = store.get(&id("old-1")).await.unwrap().expect("known");
    let seen: Vec<Status> = done.history.iter().map(|t| t.status).collect();
    assert_eq!(seen, [Status::Succeeded]);
    let of_up = store
        .list(&dtasks::store::Query::new(Filter::new().parent(id("up"))))
        .await
        .unwrap();
    assert_eq!(of_up.instances.len(), 1);
    let versions: Vec<i32> = client
        .query(
            &format!("SELECT version FROM {s}.dtasks_schema_migrations ORDER BY version"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, vec![1, 2, 3, 4, 5]);
    drop(store);
    schema.drop_schema().await;
}

#[tokio::test]
async fn settings_and_facts_a_store_cannot_use_are_refused() {
    for bad in ["Upper", "1st", "", "a-b", "quote\"d"] {
        let err = PgStoreBuilder::new(common::url())
            .schema(bad)
            .connect()
            .await
            .unwrap_err();
        assert!(err.is_bad_input(), "{bad}: {err}");
    }
    let err = PgStore::connect("postgres://nobody@/db?port=notaport")
        .await
        .unwrap_err();
    assert!(err.is_bad_input(), "{err}");
    let err = PgStoreBuilder::new(common::url())
        .pool_size(0)
        .connect()
        .await
        .unwrap_err();
    assert!(err.is_bad_input(), "{err}");
    let err = PgStoreBuilder::new(common::url())
        .writers(0)
        .connect()
        .await
        .unwrap_err();
    assert!(err.is_bad_input(), "{err}");
    let err = PgStoreBuilder::new(common::url())
        .write_timeout(Duration::ZERO)
        .connect()
        .await
        .unwrap_err();
    assert!(err.is_bad_input(), "{err}");
    for builder in [
        PgStoreBuilder::new(common::url()).retention(Duration::ZERO),
        PgStoreBuilder::new(common::url()).orphan_retention(Duration::ZERO),
    ] {
        let err = builder.connect().await.unwrap_err();
        assert!(err.is_bad_input(), "{err}");
        assert!(err.to_string().contains("cannot be zero"), "{err}");
    }

    let schema = TestSchema::new("input");
    let store = schema.store().await;
    // A bad fact fails its own call at once, and nothing of the call is written.
    let err = store
        .record(vec![
            started("ok", "x", 0, None),
            started("nul", "x\0y", 0, None),
        ])
        .await
        .unwrap_err();
    assert!(err.is_bad_input(), "{err}");
    assert!(store.get(&id("ok")).await.unwrap().is_none());
    let err = store
        .record(vec![status("v", "x", 0, Status::Running, u64::MAX, vec![])])
        .await
        .unwrap_err();
    assert!(err.is_bad_input(), "{err}");
    let err = store
        .record(vec![status(
            "e",
            "x",
            0,
            Status::Suspended,
            1,
            vec![Wait::Event("a\0b".into())],
        )])
        .await
        .unwrap_err();
    assert!(err.is_bad_input(), "{err}");
    let err = store.claim(&id("c"), u64::MAX).await.unwrap_err();
    assert!(err.is_bad_input(), "{err}");
    // The store goes on.
    store
        .record(vec![started("ok", "x", 0, None)])
        .await
        .unwrap();
    assert!(store.get(&id("ok")).await.unwrap().is_some());
    drop(store);
    schema.drop_schema().await;
}

fn fact_at(x: &str, at: SystemTime, kind: FactKind) -> Fact {
    Fact::new(id(x), "kept", at, kind)
}

/// A store of `schema` whose retention (of finished instances, of values of no instance,
/// or both) is 5 s, and runs every 500 ms.
async fn retained(schema: &TestSchema, finished: bool, orphans: bool) -> PgStore {
    let mut b = schema.builder();
    if finished {
        b = b.retention(Duration::from_secs(5));
    }
    if orphans {
        b = b.orphan_retention(Duration::from_secs(5));
    }
    b.connect().await.unwrap()
}

/// The start and the success of `x`, both at `at`.
fn done_at(x: &str, at: SystemTime) -> [Fact; 2] {
    [
        fact_at(x, at, FactKind::Started { parent: None }),
        fact_at(
            x,
            at,
            FactKind::Finished {
                status: Status::Succeeded,
                result: b"r".to_vec(),
            },
        ),
    ]
}

/// The first column, as text, of every row `query` answers.
async fn texts(client: &tokio_postgres::Client, query: &str) -> Vec<String> {
    client
        .query(query, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retention_removes_what_finished_longer_ago_and_keeps_the_rest() {
    let schema = TestSchema::new("retention");
    let store = retained(&schema, true, true).await;
    let now = SystemTime::now();
    let long_ago = now - Duration::from_secs(60);
    let done = |status| FactKind::Finished {
        status,
        result: b"r".to_vec(),
    };
    assert!(store.claim(&id("old"), 5).await.unwrap());
    assert!(store.claim(&id("orphan"), 5).await.unwrap());
    assert!(store.claim(&id("fresh-orphan"), 5).await.unwrap());
    // Claims come before the facts (so that the retention cannot remove an instance
    // before its claim is made). `orphan` is a claim made long ago whose instance was
    // never recorded, or is gone.
    let client = schema.client().await;
    client
        .execute(
            &format!(
                "UPDATE \"{}\".dtasks_claims SET claimed_at = now() - interval '1 hour' \
                 WHERE id = 'orphan'",
                schema.name
            ),
            &[],
        )
        .await
        .unwrap();

    store
        .record(vec![
            fact_at("old", long_ago, FactKind::Started { parent: None }),
            fact_at("old", long_ago, done(Status::Succeeded)),
            fact_at("old-failed", long_ago, done(Status::Failed)),
            // Started long ago, finished now: kept.
            fact_at("recent", long_ago, FactKind::Started { parent: None }),
            fact_at("recent", now, done(Status::Succeeded)),
            // Running since long ago: never removed.
            fact_at("running", long_ago, FactKind::Started { parent: None }),
            fact_at(
                "running",
                long_ago,
                FactKind::Status {
                    status: Status::Running,
                    waits: vec![],
                    version: 1,
                },
            ),
        ])
        .await
        .unwrap();
    // Values stored out of band long ago: those of a removed root and of its child go
    // with it; those of a root that still runs stay, however old, and so do those of a
    // root that finished recently. Those of a root that was never recorded (its client
    // died between storing its argument and recording its start) go once they are older
    // than the retention; a young one stays.
    for (key, instance, age) in [
        ("v1", "old", "1 hour"),
        ("v2", "old.1", "1 hour"),
        ("v3", "running", "1 hour"),
        ("v4", "running.2.1", "1 hour"),
        ("v5", "old-failed", "1 hour"),
        ("v6", "never", "1 hour"),
        ("v7", "never.3", "1 hour"),
        ("v8", "never-young", "0 seconds"),
        ("v9", "recent.1", "1 hour"),
        ("va", "runningx", "1 hour"),
    ] {
        client
            .execute(
                &format!(
                    "INSERT INTO \"{}\".dtasks_payloads (key, instance, len, value, created_at) \
                     VALUES ($1, $2, 1, 'x', now() - $3::text::interval)",
                    schema.name
                ),
                &[&key, &instance, &age],
            )
            .await
            .unwrap();
    }
    let values_sql = format!(
        "SELECT key FROM \"{}\".dtasks_payloads ORDER BY key",
        schema.name
    );
    let values = || texts(&client, &values_sql);
    let claims_sql = format!(
        "SELECT id FROM \"{}\".dtasks_claims ORDER BY id",
        schema.name
    );
    let claims = || texts(&client, &claims_sql);
    let t = Instant::now();
    // The instances finished long ago go, with their claims, and so do old claims of no
    // instance.
    while store.get(&id("old")).await.unwrap().is_some()
        || store.get(&id("old-failed")).await.unwrap().is_some()
        || claims().await != ["fresh-orphan"]
        || values().await.len() > 4
    {
        assert!(t.elapsed() < Duration::from_secs(20), "the retention runs");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(store.get(&id("recent")).await.unwrap().is_some());
    assert!(store.get(&id("running")).await.unwrap().is_some());
    // Several runs later, the rest is still there.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(store.get(&id("recent")).await.unwrap().is_some());
    assert!(store.get(&id("running")).await.unwrap().is_some());
    assert_eq!(claims().await, ["fresh-orphan"]);
    assert_eq!(values().await, ["v3", "v4", "v8", "v9"]);
    assert!(
        store.claim(&id("old"), 6).await.unwrap(),
        "the id is free again"
    );
    drop(store);
    schema.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retention_reads_old_values_of_no_instance_page_after_page() {
    // More old values than one page of the retention (10,000): those of a root that
    // still runs fill the first page and more, all stored at the same time (the pages go
    // by time, then key); those of no instance were stored after them.
    let schema = TestSchema::new("retention_pages");
    let store = retained(&schema, false, true).await;
    let long_ago = SystemTime::now() - Duration::from_secs(60);
    // Without the retention of finished instances, one that finished long ago stays, and
    // so do its values.
    let mut facts = vec![fact_at(
        "live",
        long_ago,
        FactKind::Started { parent: None },
    )];
    facts.extend(done_at("done", long_ago));
    store.record(facts).await.unwrap();
    let client = schema.client().await;
    client
        .execute(
            &format!(
                "INSERT INTO \"{}\".dtasks_payloads (key, instance, len, value, created_at) \
                 SELECT 'k' || lpad(i::text, 5, '0'), \
                 CASE WHEN i % 2 = 0 THEN 'live.' || i WHEN i = 1 THEN 'done' \
                 ELSE 'gone' || i END, \
                 1, 'x', now() - CASE WHEN i % 2 = 0 THEN interval '2 hours' \
                 ELSE interval '1 hour' END FROM generate_series(1, 20101) AS i",
                schema.name
            ),
            &[],
        )
        .await
        .unwrap();
    let count = || async {
        client
            .query_one(
                &format!("SELECT count(*) FROM \"{}\".dtasks_payloads", schema.name),
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let t = Instant::now();
    while count().await > 10_051 {
        assert!(t.elapsed() < Duration::from_secs(30), "the retention runs");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Only the values of the running root and of the finished one are left, every one.
    let left = client
        .query_one(
            &format!(
                "SELECT count(*) FILTER (WHERE instance LIKE 'live.%'), \
                 count(*) FILTER (WHERE instance = 'done') FROM \"{}\".dtasks_payloads",
                schema.name
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!((left.get::<_, i64>(0), left.get::<_, i64>(1)), (10_050, 1));
    assert_eq!(count().await, 10_051);
    assert!(store.get(&id("done")).await.unwrap().is_some());
    drop(store);
    schema.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_of_no_instance_stay_without_a_retention_of_their_own() {
    // A `call`'s values have no row to go with: only `orphan_retention` removes them.
    let schema = TestSchema::new("retention_calls");
    let store = retained(&schema, true, false).await;
    let long_ago = SystemTime::now() - Duration::from_secs(60);
    // The values first: the retention may run as soon as the instance is recorded.
    let client = schema.client().await;
    client
        .execute(
            &format!(
                "INSERT INTO \"{}\".dtasks_payloads (key, instance, len, value, created_at) \
                 VALUES ('v1', 'old', 1, 'x', now() - interval '1 hour'), \
                 ('v2', 'a-call', 1, 'x', now() - interval '1 hour')",
                schema.name
            ),
            &[],
        )
        .await
        .unwrap();
    store
        .record(done_at("old", long_ago).to_vec())
        .await
        .unwrap();

    let t = Instant::now();
    while store.get(&id("old")).await.unwrap().is_some() {
        assert!(t.elapsed() < Duration::from_secs(20), "the retention runs");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Several runs later, the value of no instance is still there.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let keys = texts(
        &client,
        &format!("SELECT key FROM \"{}\".dtasks_payloads", schema.name),
    )
    .await;
    assert_eq!(keys, ["v2"]);
    drop(store);
    schema.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_counts_what_it_removed_and_leaves_other_schemas_alone() {
    let one = TestSchema::new("purge_a");
    let two = TestSchema::new("purge_b");
    let (a, b) = (one.store().await, two.store().await);
    for store in [&a, &b] {
        let facts = (0..50u64)
            .flat_map(|i| {
                let x = format!("p{i:02}");
                let mut f = vec![started(&x, "bulk", i, None)];
                if i % 5 != 0 {
                    f.push(finished(&x, "bulk", i + 1, Status::Succeeded, b"ok"));
                }
                f
            })
            .collect();
        store.record(facts).await.unwrap();
    }
    assert_eq!(a.purge(&Filter::new().id_prefix("p1")).await.unwrap(), 8);
    assert_eq!(a.purge(&Filter::new()).await.unwrap(), 32);
    assert_eq!(a.purge(&Filter::new()).await.unwrap(), 0);
    let left = a
        .list(&dtasks::store::Query::new(Filter::new()))
        .await
        .unwrap();
    assert_eq!(left.instances.len(), 10);
    assert!(left.instances.iter().all(|i| i.status == Status::Pending));
    let other = b
        .list(&dtasks::store::Query::new(Filter::new()))
        .await
        .unwrap();
    assert_eq!(other.instances.len(), 50, "another schema is another store");
    drop((a, b));
    one.drop_schema().await;
    two.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finish_written_by_another_process_wakes_the_waits_at_once() {
    let schema = TestSchema::new("notify");
    let waiting = schema.store().await;
    let writing = schema.store().await;
    let t = Instant::now();
    while !waiting.is_listening() {
        assert!(t.elapsed() < Duration::from_secs(30), "the store listens");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ids: Vec<String> = (0..10).map(|i| format!("n{i}")).collect();
    let starts = ids.iter().map(|x| started(x, "n", 0, None)).collect();
    writing.record(starts).await.unwrap();
    let waits: Vec<_> = ids
        .iter()
        .map(|x| {
            let store = waiting.clone();
            let x = id(x);
            tokio::spawn(async move { store.wait_finished(&x).await })
        })
        .collect();
    // Every waiter has read its instance, unfinished, and waits.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(waits.iter().all(|w| !w.is_finished()));
    let finishes = ids
        .iter()
        .map(|x| finished(x, "n", 1, Status::Succeeded, x.as_bytes()))
        .collect();
    let written = Instant::now();
    writing.record(finishes).await.unwrap();
    for (w, x) in waits.into_iter().zip(&ids) {
        let info = w.await.unwrap().unwrap();
        assert_eq!(info.result.as_deref(), Some(x.as_bytes()));
    }
    // A waiter re-reads on its own only every 10 s while the store listens: the waits
    // ended on the notification of the other store's commit.
    assert!(
        written.elapsed() < Duration::from_secs(5),
        "{:?}",
        written.elapsed()
    );
    drop((waiting, writing));
    schema.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_the_database_refuses_fails_its_own_call_only() {
    let schema = TestSchema::new("poison");
    let store = schema.store().await;
    // An operator's constraint the store knows nothing of: a refusal retrying cannot
    // cure (SQLSTATE class 23).
    schema
        .client()
        .await
        .batch_execute(&format!(
            "ALTER TABLE \"{}\".dtasks_instances ADD CONSTRAINT no_poison \
             CHECK (name <> 'poison')",
            schema.name
        ))
        .await
        .unwrap();
    let calls: Vec<_> = (0..50u64)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let name = if i == 25 { "poison" } else { "fine" };
                let t = Instant::now();
                let r = store
                    .record(vec![started(&format!("q{i:02}"), name, i, None)])
                    .await;
                (i, r, t.elapsed())
            })
        })
        .collect();
    for call in calls {
        let (i, recorded, took) = call.await.unwrap();
        if i == 25 {
            let err = recorded.unwrap_err();
            assert!(err.is_store(), "{err}");
            assert!(
                took < Duration::from_secs(30),
                "failed without waiting out the timeout"
            );
            assert!(store.get(&id("q25")).await.unwrap().is_none());
        } else {
            assert_eq!(recorded.unwrap(), 0, "q{i:02}");
            assert!(store.get(&id(&format!("q{i:02}"))).await.unwrap().is_some());
        }
    }
    drop(store);
    schema.drop_schema().await;
}

//! The database out of reach: the store talks to PostgreSQL through a proxy in the test
//! that cuts every connection and refuses new ones, then forwards again (PostgreSQL
//! itself keeps running: other work uses it).

mod common;

use std::time::{Duration, Instant};

use common::proxy::Proxy;
use common::{database, finished, id, started, through, TestSchema};
use dtasks::store::InstanceStore;
use dtasks::Status;
use dtasks_postgres::PgStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_wait_out_an_outage_and_complete_when_the_database_is_back() {
    let schema = TestSchema::new("outage");
    let direct = schema.store().await;
    let proxy = Proxy::start(database()).await;
    let store: PgStore = through(&proxy, &schema)
        .write_timeout(Duration::from_secs(120))
        .connect()
        .await
        .unwrap();
    store
        .record(vec![started("before", "o", 0, None)])
        .await
        .unwrap();

    proxy.cut();
    // Reads fail, within their bound.
    let t = Instant::now();
    let err = store.get(&id("before")).await.unwrap_err();
    assert!(err.is_store(), "{err}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    let err = store.claim(&id("before"), 7).await.unwrap_err();
    assert!(err.is_store(), "{err}");

    // Records wait.
    let before = store.write_stats();
    let mut tasks = Vec::new();
    for i in 0..100u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let x = format!("during-{i:03}");
            store
                .record(vec![
                    started(&x, "o", i, None),
                    finished(&x, "o", i + 1, Status::Succeeded, x.as_bytes()),
                ])
                .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        tasks.iter().all(|t| !t.is_finished()),
        "no record resolves while the database is out of reach"
    );
    let during = store.write_stats();
    assert!(
        during.failed_attempts > before.failed_attempts,
        "{during:?}"
    );
    assert_eq!(during.transactions, before.transactions);
    assert!(proxy.refused() > 0, "the store tried to connect again");
    for i in 0..100 {
        let x = id(&format!("during-{i:03}"));
        assert!(
            direct.get(&x).await.unwrap().is_none(),
            "nothing is written yet"
        );
    }

    proxy.restore();
    for t in tasks {
        let recorded = tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("records complete once the database is back");
        assert_eq!(recorded.unwrap().unwrap(), 0);
    }
    let after = store.write_stats();
    eprintln!("writer: {before:?} -> {during:?} -> {after:?}");
    assert_eq!(after.calls - during.calls, 100);
    assert!(
        after.transactions - during.transactions <= 2,
        "what waited is written together: {during:?} -> {after:?}"
    );
    for i in 0..100 {
        let x = format!("during-{i:03}");
        let info = direct.get(&id(&x)).await.unwrap().expect("recorded");
        assert_eq!(info.status, Status::Succeeded);
        assert_eq!(info.result.as_deref(), Some(x.as_bytes()));
    }
    // Reads, claims and waits work again through the proxy.
    assert!(store.get(&id("during-042")).await.unwrap().is_some());
    assert!(store.claim(&id("during-042"), 7).await.unwrap());
    let done = store.wait_finished(&id("during-042")).await.unwrap();
    assert_eq!(done.status, Status::Succeeded);

    drop((store, direct, proxy));
    schema.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_fails_with_a_store_error_once_the_write_timeout_has_passed() {
    let schema = TestSchema::new("timeout");
    let direct = schema.store().await;
    let proxy = Proxy::start(database()).await;
    let timeout = Duration::from_secs(3);
    let store = through(&proxy, &schema)
        .write_timeout(timeout)
        .connect()
        .await
        .unwrap();

    proxy.cut();
    let t = Instant::now();
    let err = store
        .record(vec![finished("lost", "o", 0, Status::Succeeded, b"x")])
        .await
        .unwrap_err();
    let took = t.elapsed();
    assert!(err.is_store(), "{err}");
    assert!(
        took >= timeout,
        "the record kept trying for the write timeout: {took:?}"
    );
    assert!(took < timeout + Duration::from_secs(10), "{took:?}");
    assert!(direct.get(&id("lost")).await.unwrap().is_none());

    proxy.restore();
    let kept = store
        .record(vec![finished("kept", "o", 0, Status::Succeeded, b"y")])
        .await
        .unwrap();
    assert_eq!(kept, 0);
    assert!(direct.get(&id("kept")).await.unwrap().is_some());

    drop((store, direct, proxy));
    schema.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_survives_a_cut_of_the_listening_connection() {
    let schema = TestSchema::new("relisten");
    let direct = schema.store().await;
    let proxy = Proxy::start(database()).await;
    let store = through(&proxy, &schema).connect().await.unwrap();
    direct
        .record(vec![started("w", "o", 0, None)])
        .await
        .unwrap();
    wait_listening(&store).await;
    let waiter = {
        let store = store.clone();
        tokio::spawn(async move { store.wait_finished(&id("w")).await })
    };
    // The waiter has read its instance (unfinished) and waits for a notification.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished());

    proxy.cut();
    let t = Instant::now();
    while store.is_listening() {
        assert!(t.elapsed() < Duration::from_secs(10), "the cut is seen");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Finished while `store` does not listen: its notification is lost.
    direct
        .record(vec![finished("w", "o", 1, Status::Failed, b"f")])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished());
    proxy.restore();
    let restored = Instant::now();
    let waited = tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .expect("the wait ends")
        .unwrap()
        .unwrap();
    assert_eq!(waited.status, Status::Failed);
    // Woken when the listening connection is back, not by the 10 s re-read.
    assert!(
        restored.elapsed() < Duration::from_secs(8),
        "{:?}",
        restored.elapsed()
    );
    wait_listening(&store).await;

    drop((store, direct, proxy));
    schema.drop_schema().await;
}

async fn wait_listening(store: &PgStore) {
    let t = Instant::now();
    while !store.is_listening() {
        assert!(t.elapsed() < Duration::from_secs(30), "the store listens");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

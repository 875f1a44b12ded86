//! Many writers at once, in one process and in two ("two processes": two stores on one
//! schema, each with its own writer and connections), on real PostgreSQL.

mod common;

use std::collections::HashSet;

use common::{finished, id, started, status, TestSchema};
use dtasks::store::InstanceStore;
use dtasks::{Status, Wait};
use dtasks_postgres::PgStore;

/// Two stores on one fresh schema.
async fn two_stores(tag: &str) -> (TestSchema, PgStore, PgStore) {
    let schema = TestSchema::new(tag);
    let a = schema.store().await;
    let b = schema.store().await;
    (schema, a, b)
}

fn pick(a: &PgStore, b: &PgStore, i: usize) -> PgStore {
    if i % 2 == 0 {
        a.clone()
    } else {
        b.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_result_wins_among_100_concurrent_finishes_from_two_stores() {
    let (schema, a, b) = two_stores("finish").await;
    a.record(vec![started("r", "race", 0, None)]).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..100usize {
        let store = pick(&a, &b, i);
        tasks.push(tokio::spawn(async move {
            let result = format!("result-{i}");
            let st = if i % 3 == 0 {
                Status::Failed
            } else {
                Status::Succeeded
            };
            store
                .record(vec![finished(
                    "r",
                    "race",
                    10 + i as u64,
                    st,
                    result.as_bytes(),
                )])
                .await
        }));
    }
    let mut duplicates = 0;
    let mut first = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let d = t.await.unwrap().unwrap();
        if d == 0 {
            first.push(i as u64);
        }
        duplicates += d;
    }
    assert_eq!(duplicates, 99, "every result but one is refused");
    // What `reports_duplicates` promises (a worker's reply then carries its result as the
    // recorded one): the one write that reported no duplicate is the one that stands.
    assert!(a.reports_duplicates() && b.reports_duplicates());
    assert_eq!(first.len(), 1, "{first:?}");
    let info = a.get(&id("r")).await.unwrap().unwrap();
    assert_eq!(info.duplicate_results, 99);
    let result = String::from_utf8(info.result.clone().unwrap()).unwrap();
    let winner: u64 = result.strip_prefix("result-").unwrap().parse().unwrap();
    let expected = if winner % 3 == 0 {
        Status::Failed
    } else {
        Status::Succeeded
    };
    assert_eq!(info.status, expected, "the status is the winning result's");
    assert_eq!(
        first,
        [winner],
        "the write told it was first is the one that stands"
    );
    assert_eq!(info.updated_at, common::at(10 + winner));
    assert_eq!(b.get(&id("r")).await.unwrap().unwrap(), info);
    drop((a, b));
    schema.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_newest_version_wins_among_100_concurrent_statuses() {
    let (schema, a, b) = two_stores("version").await;
    let mut tasks = Vec::new();
    // Versions in a scrambled order.
    for i in 0..100usize {
        let version = ((i * 37) % 100) as u64;
        let store = pick(&a, &b, i);
        tasks.push(tokio::spawn(async move {
            let waits = vec![Wait::Children(version as u32)];
            let s = status("v", "versions", version, Status::Suspended, version, waits);
            store.record(vec![s]).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), 0);
    }
    let info = b.get(&id("v")).await.unwrap().unwrap();
    assert_eq!(info.version, 99);
    assert_eq!(info.waits, vec![Wait::Children(99)]);
    assert_eq!(info.updated_at, common::at(99));
    drop((a, b));
    schema.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_one_of_100_concurrent_claims_wins() {
    let (schema, a, b) = two_stores("claim").await;
    for round in 0..5 {
        let claimed = id(&format!("claimed-{round}"));
        let mut tasks = Vec::new();
        for nonce in 1..=100u64 {
            let store = pick(&a, &b, nonce as usize);
            let claimed = claimed.clone();
            tasks.push(tokio::spawn(async move {
                (nonce, store.claim(&claimed, nonce).await.unwrap())
            }));
        }
        let mut winners = Vec::new();
        for t in tasks {
            let (nonce, won) = t.await.unwrap();
            if won {
                winners.push(nonce);
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        let winner = winners[0];
        for store in [&a, &b] {
            assert!(store.claim(&claimed, winner).await.unwrap());
            assert!(!store.claim(&claimed, winner % 100 + 1).await.unwrap());
        }
    }
    drop((a, b));
    schema.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_callers_share_transactions_and_each_instance_keeps_its_order() {
    let (schema, a, b) = two_stores("order").await;
    let mut tasks = Vec::new();
    for i in 0..200usize {
        let store = pick(&a, &b, i);
        tasks.push(tokio::spawn(async move {
            let x = format!("inst-{i:03}");
            let x = x.as_str();
            let n = i as u64;
            store.record(vec![started(x, "chain", n, None)]).await?;
            store
                .record(vec![status(x, "chain", n + 1, Status::Running, 1, vec![])])
                .await?;
            store
                .record(vec![status(
                    x,
                    "chain",
                    n + 2,
                    Status::Suspended,
                    2,
                    vec![Wait::Resume],
                )])
                .await?;
            store
                .record(vec![finished(
                    x,
                    "chain",
                    n + 3,
                    Status::Succeeded,
                    x.as_bytes(),
                )])
                .await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), 0);
    }
    let mut seen = HashSet::new();
    for i in 0..200u64 {
        let x = format!("inst-{i:03}");
        let info = a.get(&id(&x)).await.unwrap().unwrap();
        assert_eq!(info.status, Status::Succeeded, "{x}");
        assert_eq!(info.version, 2);
        assert!(info.waits.is_empty());
        assert_eq!(info.result.as_deref(), Some(x.as_bytes()));
        assert_eq!(
            (info.created_at, info.updated_at),
            (common::at(i), common::at(i + 3))
        );
        assert_eq!(info.duplicate_results, 0);
        seen.insert(x);
    }
    assert_eq!(seen.len(), 200);
    let (sa, sb) = (a.write_stats(), b.write_stats());
    eprintln!("writers: {sa:?} {sb:?}");
    assert_eq!(sa.calls + sb.calls, 800);
    assert_eq!(sa.facts + sb.facts, 800);
    assert!(
        sa.transactions + sb.transactions < 800,
        "concurrent calls share transactions: {sa:?} {sb:?}"
    );
    drop((a, b));
    schema.drop_schema().await;
}

/// Callers of one store, each recording its own instances' chains of facts, with the
/// store's writer allowed `writers` transactions in flight: what the writer reports.
async fn chains_through(writers: usize, tag: &str) -> dtasks_postgres::WriteStats {
    let schema = TestSchema::new(tag);
    let store = schema.builder().writers(writers).connect().await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..400usize {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let x = format!("w-{i:03}");
            let n = i as u64;
            store.record(vec![started(&x, "chain", n, None)]).await?;
            store
                .record(vec![status(&x, "chain", n + 1, Status::Running, 1, vec![])])
                .await?;
            store
                .record(vec![finished(
                    &x,
                    "chain",
                    n + 2,
                    Status::Succeeded,
                    x.as_bytes(),
                )])
                .await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), 0);
    }
    for i in 0..400u64 {
        let x = format!("w-{i:03}");
        let info = store.get(&id(&x)).await.unwrap().expect("recorded");
        assert_eq!(info.status, Status::Succeeded, "{x}");
        assert_eq!(info.version, 1, "{x}");
        assert_eq!(info.result.as_deref(), Some(x.as_bytes()), "{x}");
        assert_eq!(
            (info.created_at, info.updated_at),
            (common::at(i), common::at(i + 2)),
            "{x}"
        );
    }
    let stats = store.write_stats();
    drop(store);
    schema.drop_schema().await;
    stats
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn several_transactions_are_in_flight_and_no_more_than_the_writers() {
    let one = chains_through(1, "writers1").await;
    eprintln!("one writer: {one:?}");
    assert_eq!(one.most_in_flight, 1, "{one:?}");
    assert_eq!(one.calls, 1200);
    let four = chains_through(4, "writers4").await;
    eprintln!("four writers: {four:?}");
    assert!(
        (2..=4).contains(&four.most_in_flight),
        "up to four transactions in flight: {four:?}"
    );
    assert_eq!(four.calls, 1200);
    assert!(
        four.transactions < 1200,
        "calls still share transactions: {four:?}"
    );
}

//! The database out of reach while workers run on the real RabbitMQ: a worker holds each
//! step's message unacked while the facts of its roots cannot be written, nothing is lost,
//! and everything finishes, once, when the database is back. The store reaches PostgreSQL
//! through a proxy in the test that cuts every connection and refuses new ones
//! (PostgreSQL itself keeps running: other work uses it).

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::proxy::Proxy;
use common::{database, through, TestSchema};
use dtasks::store::{Filter, InstanceStore, Query};
use dtasks::{dtask, Client, DTask, Status, Worker, WorkerConfig};
use dtasks_integration_tests::Broker;

#[dtask(name = "pg_outage.step")]
async fn step(x: u64) -> u64 {
    x + 1
}

/// A chain of `n` children with a short durable timer in the middle, so that chains are
/// in every phase when the database goes away.
#[dtask(name = "pg_outage.chain")]
async fn chain(start: u64, n: u64) -> u64 {
    let mut x = start;
    for i in 0..n {
        if i == n / 2 {
            DTask::delay(Duration::from_millis(50)).await;
        }
        x = step(x).await;
    }
    x
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_hold_their_work_while_the_database_is_cut_and_finish_it_once_when_back(
) -> anyhow::Result<()> {
    let schema = TestSchema::new("worker_outage");
    let proxy = Proxy::start(database()).await;
    let store = through(&proxy, &schema)
        .write_timeout(Duration::from_secs(120))
        .connect()
        .await?;
    let b = Broker::start().await?;
    let config = WorkerConfig::new()
        .register(step)
        .register(chain)
        .store(store.clone());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut workers = Vec::new();
    for _ in 0..2 {
        let worker = Worker::new(b.transport().await?, config.clone())?;
        let mut stopped = stopped.clone();
        workers.push(tokio::spawn(worker.run_until(async move {
            let _ = stopped.wait_for(|s| *s).await;
        })));
    }
    let client = Client::new(b.transport().await?).with_store(store.clone());

    // Twenty chains run; the database goes away while they do.
    let mut handles = Vec::new();
    for i in 0..20u64 {
        handles.push((i, client.start(chain(i * 1000, 6)).await?));
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    proxy.cut();
    // Starts made during the outage wait for the database: each for its Started fact
    // (the start itself goes out meanwhile, and its run's finish waits in turn).
    let late = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 20..30u64 {
                out.push((i, client.start(chain(i * 1000, 6)).await?));
            }
            Ok::<_, dtasks::Error>(out)
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Reads fail with a store error while it is cut; nothing was dead-lettered, the
    // starts made during the outage are still waiting.
    let read = client.status(handles[0].1.id()).await.unwrap_err();
    assert!(read.is_store(), "{read}");
    assert!(
        !late.is_finished(),
        "a start finished while the database was cut"
    );
    assert_eq!(b.queue_len(&format!("{}.dead", b.prefix())).await?, Some(0));
    assert!(
        proxy.refused() > 0,
        "nothing tried the database while it was cut"
    );

    proxy.restore();
    handles.extend(late.await??);
    for (i, h) in &handles {
        let got = tokio::time::timeout(Duration::from_secs(60), h.result()).await??;
        assert_eq!(got, i * 1000 + 6, "chain {i}");
    }
    // Each root is in the store once, succeeded, with the value its handle returned.
    let listed = store.list(&Query::new(Filter::new()).limit(1000)?).await?;
    let ids: HashSet<_> = listed.instances.iter().map(|i| i.id.clone()).collect();
    assert_eq!(ids.len(), 30);
    for (i, h) in &handles {
        let info = store.get(h.id()).await?.expect("recorded");
        assert_eq!(info.status, Status::Succeeded);
        assert_eq!(info.result::<u64>().transpose()?, Some(i * 1000 + 6));
    }
    assert_eq!(b.queue_len(&format!("{}.dead", b.prefix())).await?, Some(0));

    stop.send(true)?;
    for w in workers {
        w.await??;
    }
    drop(client);
    b.cleanup().await?;
    schema.drop_schema().await;
    Ok(())
}

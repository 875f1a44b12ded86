//! The store behind a runtime: workers record the facts of roots in PostgreSQL, and a
//! client reads them there.

mod common;

use std::time::Duration;

use common::TestSchema;
use dtasks::store::{Filter, InstanceStore, Query};
use dtasks::{dtask, DTask, Runtime, Status, WorkerConfig};

#[dtask(name = "pgstore.double_later")]
async fn double_later(x: u64) -> u64 {
    DTask::delay(Duration::from_millis(20)).await;
    x * 2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_record_roots_in_postgres_and_clients_read_them_there() {
    let schema = TestSchema::new("runtime");
    let store = schema.store().await;
    let rt = Runtime::new(
        WorkerConfig::new()
            .register(double_later)
            .store(store.clone()),
    )
    .unwrap();
    let client = rt.client().with_store(store.clone());
    let mut handles = Vec::new();
    for x in 0..10 {
        handles.push(client.start(double_later(x)).await.unwrap());
    }
    for (x, handle) in (0..10).zip(&handles) {
        assert_eq!(handle.result().await.unwrap(), x * 2);
    }
    for (x, handle) in (0..10).zip(&handles) {
        let info = store.wait_finished(handle.id()).await.unwrap();
        assert_eq!(info.status, Status::Succeeded);
        assert_eq!(info.name, "pgstore.double_later");
        assert_eq!(info.result::<u64>().unwrap().unwrap(), x * 2);
        assert_eq!(client.status(handle.id()).await.unwrap(), Status::Succeeded);
    }
    let listed = client
        .list(&Query::new(Filter::new().name("pgstore.double_later")))
        .await
        .unwrap();
    assert_eq!(listed.instances.len(), 10);
    drop((client, rt, store));
    schema.drop_schema().await;
}

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

#[dtask(snapshot, name = "pgstore.held_child")]
async fn held_child(x: u64) -> u64 {
    let go: u64 = DTask::event("go").await;
    x + go
}

#[dtask(snapshot, name = "pgstore.held_parent")]
async fn held_parent(x: u64) -> u64 {
    held_child(x).await * 2
}

/// Waits until the store shows `id` suspended with a snapshot machine, and with its
/// parent if it is a child (whose start, written with its parent's step, may be recorded
/// after its status).
async fn until_held(
    client: &dtasks::Client,
    id: &dtasks::InstanceId,
) -> dtasks::store::InstanceInfo {
    let child = id.as_str().contains('.');
    for _ in 0..1000 {
        if let Ok(info) = client.instance(id).await {
            if info.status == Status::Suspended
                && info.fingerprint.is_some()
                && info.parent.is_some() == child
            {
                return info;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{id} never showed a suspended snapshot machine");
}

/// On PostgreSQL, a suspended snapshot child under a root that records children is
/// counted under its own code by `Client::fingerprints`; under a root that does not, it
/// is not in the store, and the listing says that it cannot count children.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fingerprints_children_hold_are_counted_when_they_are_recorded() {
    let schema = TestSchema::new("held");
    let store = schema.store().await;
    let rt = Runtime::new(
        WorkerConfig::new()
            .register(held_child)
            .register(held_parent)
            .store(store.clone()),
    )
    .unwrap();
    let mut registry = dtasks::Registry::new();
    registry.register(held_child).unwrap();
    registry.register(held_parent).unwrap();
    let child_code = registry.fingerprint("pgstore.held_child").unwrap();
    let parent_code = registry.fingerprint("pgstore.held_parent").unwrap();

    let recording = rt.client().with_store(store.clone()).recording_children();
    let h = recording.start(held_parent(3)).await.unwrap();
    let child = dtasks::InstanceId::new(format!("{}.0", h.id())).unwrap();
    until_held(&recording, h.id()).await;
    let info = until_held(&recording, &child).await;
    assert_eq!(info.fingerprint, Some(child_code));
    assert_eq!(info.parent.as_ref(), Some(h.id()));
    assert!(info.records_children);
    let found = recording.fingerprints(None).await.unwrap();
    let entries: Vec<(&str, u64, u64)> = found
        .held
        .iter()
        .map(|h| (h.name.as_str(), h.fingerprint, h.instances))
        .collect();
    assert_eq!(
        entries,
        [
            ("pgstore.held_child", child_code, 1),
            ("pgstore.held_parent", parent_code, 1)
        ]
    );
    assert!(found.counts_children(), "{found:?}");

    let plain = rt.client().with_store(store.clone());
    let hidden = plain.start(held_parent(4)).await.unwrap();
    until_held(&plain, hidden.id()).await;
    assert!(!plain.instance(hidden.id()).await.unwrap().records_children);
    let found = plain
        .fingerprints(Some("pgstore.held_child"))
        .await
        .unwrap();
    assert_eq!(found.held.len(), 1, "{found:?}");
    assert_eq!((found.held[0].instances, found.unrecorded_roots), (1, 1));
    assert!(!found.counts_children());

    // The recorded child finishes: its code is no longer held by any instance in sight.
    recording.signal(&child, "go", &4u64).await.unwrap();
    assert_eq!(h.result().await.unwrap(), 14);
    // Facts of two instances may commit in either order: the root's finish can show
    // before the child's.
    let done = recording.handle::<u64>(child.clone()).result().await;
    assert_eq!(done.unwrap(), 7);
    let found = recording
        .fingerprints(Some("pgstore.held_child"))
        .await
        .unwrap();
    assert!(found.held.is_empty(), "{found:?}");
    drop((recording, plain, rt, store));
    schema.drop_schema().await;
}

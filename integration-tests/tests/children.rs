//! Children in the instance store on RabbitMQ with two worker processes: under roots
//! started by a client that records children, every child and grandchild is recorded with
//! its parent, its statuses and its finish, whichever process ran it and in whatever order
//! its facts arrived, and knows that it records its children; roots of other clients
//! record none, and the store knows that too.

use std::time::Duration;

use dtasks::store::{Filter, Query};
use dtasks::{InstanceId, Status};
use dtasks_integration_tests::tasks::{chain3, fan};
use dtasks_integration_tests::{within, Broker};

const WORKER: &str = env!("CARGO_BIN_EXE_it-worker");

#[tokio::test(flavor = "multi_thread")]
async fn recorded_children_are_listed_under_their_parents() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let w = b.worker_processes(WORKER, 2).await?;
    let plain = b.client().await?;
    let recording = plain.clone().recording_children();

    let mut fans = Vec::new();
    for _ in 0..10 {
        fans.push(recording.start(fan(8)).await?);
    }
    let mut chains = Vec::new();
    for x in 0..5u64 {
        chains.push((x, recording.start(chain3(x)).await?));
    }
    let unrecorded = plain.start(fan(3)).await?;
    for h in &fans {
        let (sum, _) = within(Duration::from_secs(60), "a fan", h.result()).await??;
        assert_eq!(sum, (1..=8).sum::<u64>());
    }
    for (x, h) in &chains {
        let v = within(Duration::from_secs(60), "a chain", h.result()).await??;
        assert_eq!(v, (x + 1) * 2 + 100);
    }
    within(Duration::from_secs(60), "a plain fan", unrecorded.result()).await??;

    let children_of = |id: &InstanceId| {
        let q = Query::new(Filter::new().parent(id.clone()));
        let plain = plain.clone();
        async move { plain.list(&q).await }
    };
    for h in &fans {
        let children = children_of(h.id()).await?.instances;
        let mut ids: Vec<String> = children.iter().map(|c| c.id.to_string()).collect();
        ids.sort();
        let mut want: Vec<String> = (0..8).map(|n| h.id().child(n).to_string()).collect();
        want.sort();
        assert_eq!(ids, want);
        for c in &children {
            assert_eq!(c.name, "it.tagged");
            assert_eq!(c.status, Status::Succeeded, "{c:?}");
            assert_eq!(c.parent.as_ref(), Some(h.id()));
            assert_eq!(c.history.last().map(|t| t.status), Some(Status::Succeeded));
            assert!(c.records_children, "{c:?}");
        }
        let root = plain.instance(h.id()).await?;
        assert!(root.records_children);
        assert_eq!(root.steps.len(), 1, "{:?}", root.steps);
        assert_eq!((root.steps[0].count, root.steps[0].done), (8, 8));
    }
    for (x, h) in &chains {
        let children = children_of(h.id()).await?.instances;
        assert_eq!(children.len(), 1);
        let middle = &children[0];
        assert_eq!(
            (middle.id.clone(), middle.name.as_str(), middle.status),
            (h.id().child(0), "it.middle", Status::Succeeded)
        );
        let grandchildren = children_of(&middle.id).await?.instances;
        assert_eq!(grandchildren.len(), 1);
        assert_eq!(grandchildren[0].id, middle.id.child(0));
        assert_eq!(grandchildren[0].status, Status::Succeeded);
        assert_eq!(grandchildren[0].parent.as_ref(), Some(&middle.id));
        assert_eq!(grandchildren[0].result::<u64>().transpose()?, Some(x + 1));
    }
    // The plain client's root records none, and the store knows it; the roots alone
    // are 16.
    assert!(children_of(unrecorded.id()).await?.instances.is_empty());
    assert!(!plain.instance(unrecorded.id()).await?.records_children);
    let roots = plain
        .list(&Query::new(Filter::new().roots()).limit(100)?)
        .await?;
    assert_eq!(roots.instances.len(), 16);
    w.stop(Duration::from_secs(20)).await?;
    b.cleanup().await
}

//! What workers tell the instance store about an instance's life: the statuses it went
//! through (its timeline), the journal's steps as the status writes summarise them, and,
//! for roots whose client records children, every descendant with its parent.

use std::time::Duration;

use dtasks::store::{Filter, InstanceInfo, Query, StepKind};
use dtasks::{dtask, Client, DTask, InstanceId, Runtime, Status, Wait, WorkerConfig};

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

#[dtask(name = "timeline.leaf")]
async fn leaf(x: u64) -> u64 {
    x * 10
}

/// A side effect, a fan-out of three children, an event, a timer, a sequential child.
#[dtask(name = "timeline.tree")]
async fn tree() -> u64 {
    let base: u64 = DTask::run(|| async { 1 }).await;
    let fan: u64 = DTask::when_all((0..3).map(leaf)).await.iter().sum();
    let go: u64 = DTask::event("go").await;
    DTask::delay(Duration::from_millis(20)).await;
    base + fan + go + leaf(4).await
}

/// A child that starts a child of its own.
#[dtask(name = "timeline.middle")]
async fn middle(x: u64) -> u64 {
    leaf(x).await + 1
}

#[dtask(name = "timeline.nested")]
async fn nested() -> u64 {
    DTask::when_all((0..2).map(middle)).await.iter().sum()
}

/// Each run spawns a child it never awaits, then continues as new until `n` is 0.
#[dtask(name = "timeline.looping")]
async fn looping(n: u64) -> u64 {
    if n == 0 {
        return 0;
    }
    let _detached = DTask::spawn(leaf(n));
    DTask::continue_as_new(looping(n - 1)).await
}

fn runtime() -> Result<Runtime, dtasks::Error> {
    Runtime::new(
        WorkerConfig::new()
            .register(leaf)
            .register(tree)
            .register(middle)
            .register(nested)
            .register(looping),
    )
}

/// Waits until `id` waits for the event `name`.
async fn until_waiting(client: &Client, id: &InstanceId, name: &str) -> TestResult {
    for _ in 0..500 {
        let waits = client.waiting_for(id).await?;
        if waits.contains(&Wait::Event(name.into())) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(format!("{id} never waited for `{name}`").into())
}

fn statuses(info: &InstanceInfo) -> Vec<Status> {
    info.history.iter().map(|t| t.status).collect()
}

#[tokio::test]
async fn a_root_keeps_its_status_changes_and_its_journal_steps() -> TestResult {
    let rt = runtime()?;
    let client = rt.client();
    let h = client.start(tree()).await?;
    until_waiting(&client, h.id(), "go").await?;
    client.signal(h.id(), "go", &100u64).await?;
    assert_eq!(h.result().await?, 1 + 30 + 100 + 40);

    let info = client.instance(h.id()).await?;
    // Suspended for the children (the first suspension), then for the event (a long
    // wait begins), then for the timer (another long wait), then out of the long waits
    // (the sequential child), then the finish.
    let s = statuses(&info);
    assert_eq!(s.first(), Some(&Status::Suspended), "{:?}", info.history);
    assert_eq!(s.last(), Some(&Status::Succeeded), "{:?}", info.history);
    let waited: Vec<&[Wait]> = info.history.iter().map(|t| t.waits.as_slice()).collect();
    assert!(
        waited.contains(&&[Wait::Event("go".into())][..]),
        "{waited:?}"
    );
    assert!(
        waited.iter().any(|w| matches!(w, [Wait::Timer { .. }])),
        "{waited:?}"
    );
    // Times never go backwards, and the steps known grow with them.
    assert!(info.history.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
    assert!(info.history.windows(2).all(|w| w[0].steps <= w[1].steps));
    assert_eq!(info.history.last().map(|t| t.steps), Some(7));
    assert_eq!(info.history_dropped, 0);

    // The journal as the finish summarised it: runs of one kind, every step done.
    let kinds: Vec<(u32, u32, StepKind)> = info
        .steps
        .iter()
        .map(|r| (r.first, r.count, r.kind.clone()))
        .collect();
    assert_eq!(kinds.len(), 5, "{kinds:?}");
    assert_eq!(kinds[0], (0, 1, StepKind::Run));
    assert_eq!(kinds[1], (1, 3, StepKind::Child("timeline.leaf".into())));
    assert_eq!(kinds[2], (4, 1, StepKind::Event("go".into())));
    assert!(matches!(kinds[3], (5, 1, StepKind::Timer(_))), "{kinds:?}");
    assert_eq!(kinds[4], (6, 1, StepKind::Child("timeline.leaf".into())));
    assert!(info
        .steps
        .iter()
        .all(|r| r.done == r.count && r.failed == 0));

    // Without recording children, none of them is in the store.
    let children = client
        .list(&Query::new(Filter::new().parent(h.id().clone())))
        .await?;
    assert!(children.instances.is_empty());
    Ok(())
}

#[tokio::test]
async fn a_client_that_records_children_records_every_descendant_with_its_parent() -> TestResult {
    let rt = runtime()?;
    let client = rt.client().recording_children();
    let h = client.start(nested()).await?;
    assert_eq!(h.result().await?, 1 + 11);
    let root = h.id().clone();

    let children = client
        .list(&Query::new(Filter::new().parent(root.clone())))
        .await?;
    let mut ids: Vec<String> = children
        .instances
        .iter()
        .map(|i| i.id.to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, [format!("{root}.0"), format!("{root}.1")]);
    for child in &children.instances {
        assert_eq!(child.name, "timeline.middle");
        assert_eq!(child.status, Status::Succeeded);
        assert_eq!(child.parent.as_ref(), Some(&root));
        assert!(child.result::<u64>().transpose()?.is_some());
        // Each child suspended on its own child, then finished.
        assert_eq!(statuses(child).last(), Some(&Status::Succeeded));
        let grandchildren = client
            .list(&Query::new(Filter::new().parent(child.id.clone())))
            .await?;
        assert_eq!(grandchildren.instances.len(), 1);
        let g = &grandchildren.instances[0];
        assert_eq!(g.id.to_string(), format!("{}.0", child.id));
        assert_eq!(g.name, "timeline.leaf");
        assert_eq!(g.status, Status::Succeeded);
    }
    // Roots alone: the children are not among them.
    let roots = client.list(&Query::new(Filter::new().roots())).await?;
    let root_ids: Vec<&InstanceId> = roots.instances.iter().map(|i| &i.id).collect();
    assert_eq!(root_ids, [&root]);
    Ok(())
}

#[dtask(name = "timeline.wide")]
async fn wide(n: u64) -> u64 {
    DTask::when_all((0..n).map(leaf)).await.iter().sum()
}

/// Seventy timers, one after the other.
#[dtask(name = "timeline.long")]
async fn long() -> u64 {
    for _ in 0..70 {
        DTask::delay(Duration::from_millis(1)).await;
    }
    70
}

#[tokio::test]
async fn the_summary_and_the_history_stay_bounded() -> TestResult {
    let rt = Runtime::new(
        WorkerConfig::new()
            .register(leaf)
            .register(wide)
            .register(long),
    )?;
    let client = rt.client();
    // A fan-out of 300 children of one DTask is one run.
    let h = client.start(wide(300)).await?;
    assert_eq!(h.result().await?, (0..300).map(|x| x * 10).sum::<u64>());
    let info = client.instance(h.id()).await?;
    assert_eq!(info.steps.len(), 1, "{:?}", info.steps);
    assert_eq!(
        (info.steps[0].first, info.steps[0].count, info.steps[0].done),
        (0, 300, 300)
    );
    // Seventy timers are seventy runs (each its own time): the latest 64 are kept; each
    // timer's wait begins and ends a long wait, so the history keeps its latest 50.
    let h = client.start(long()).await?;
    assert_eq!(h.result().await?, 70);
    let info = client.instance(h.id()).await?;
    assert_eq!(info.steps.len(), dtasks::store::Steps::MAX_RUNS);
    assert_eq!(info.steps[0].first, 70 - 64);
    assert_eq!(info.steps.last().map(|r| r.first), Some(69));
    assert!(info
        .steps
        .iter()
        .all(|r| matches!(r.kind, StepKind::Timer(_))));
    assert_eq!(info.history.len(), InstanceInfo::MAX_HISTORY);
    assert!(info.history_dropped > 0, "{:?}", info.history_dropped);
    assert_eq!(statuses(&info).last(), Some(&Status::Succeeded));
    Ok(())
}

/// The snapshot model: an event, then a timer.
#[dtask(snapshot, name = "timeline.snap")]
async fn snap() -> u64 {
    let go: u64 = DTask::event("go").await;
    DTask::delay(Duration::from_millis(5)).await;
    go + 1
}

#[tokio::test]
async fn a_snapshot_instance_shows_its_suspensions_without_steps() -> TestResult {
    let rt = Runtime::new(WorkerConfig::new().register(snap))?;
    let client = rt.client();
    let h = client.start(snap()).await?;
    until_waiting(&client, h.id(), "go").await?;
    client.signal(h.id(), "go", &41u64).await?;
    assert_eq!(h.result().await?, 42);
    let info = client.instance(h.id()).await?;
    let waited: Vec<&[Wait]> = info.history.iter().map(|t| t.waits.as_slice()).collect();
    assert_eq!(
        waited.first(),
        Some(&&[Wait::Event("go".into())][..]),
        "{waited:?}"
    );
    assert!(
        waited.iter().any(|w| matches!(w, [Wait::Timer { .. }])),
        "{waited:?}"
    );
    assert_eq!(statuses(&info).last(), Some(&Status::Succeeded));
    // Its journal is not kept: no steps, and no step counts.
    assert!(info.steps.is_empty(), "{:?}", info.steps);
    assert!(info.history.iter().all(|t| t.steps == 0));
    Ok(())
}

#[tokio::test]
async fn children_a_run_leaves_detached_when_it_continues_as_new_are_recorded() -> TestResult {
    let rt = runtime()?;
    let client = rt.client().recording_children();
    let h = client.start(looping(3)).await?;
    assert_eq!(h.result().await?, 0);
    let root = h.id().clone();
    let mut names = Vec::new();
    for _ in 0..500 {
        let children = client
            .list(&Query::new(Filter::new().parent(root.clone())))
            .await?;
        names = children
            .instances
            .iter()
            .filter(|c| c.status == Status::Succeeded)
            .map(|c| c.name.clone())
            .collect();
        if names.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // One detached child per run that continued, each recorded under the root.
    assert_eq!(names, ["timeline.leaf"; 3]);
    Ok(())
}

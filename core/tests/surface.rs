//! The rest of the public surface: registries, workers on a transport, mapping and
//! misuse errors, redelivery budgets, and Send/Sync of the public types.

use std::future::IntoFuture;
use std::time::Duration;

use dtasks::transport::DeliveryKind;
use dtasks::{
    dtask, Client, DTask, Failure, Handle, InstanceId, MemoryTransport, Registry, Runtime,
    SpawnHandle, Status, Transport, Worker, WorkerConfig,
};
use futures::StreamExt;

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[dtask(name = "surface.triple")]
async fn triple(x: u64) -> u64 {
    x * 3
}

#[dtask]
async fn wait_ms(ms: u64) -> u64 {
    DTask::delay(Duration::from_millis(ms)).await;
    ms
}

#[dtask]
async fn mapped_race() -> String {
    // Mixed result types in `when_any` through `map`.
    let (i, label) = DTask::when_any([
        wait_ms(60_000).map(|ms| format!("timer {ms}")),
        triple(5).map(|v| format!("triple {v}")),
    ])
    .await;
    format!("{i}: {label}")
}

#[tokio::test]
async fn map_and_when_any_of_mixed_types() -> TestResult {
    let rt = Runtime::builder(WorkerConfig::new().register_all())
        .virtual_time()
        .build()?;
    let h = rt.client().start(mapped_race()).await?;
    assert_eq!(h.result().await?, "1: triple 15");
    Ok(())
}

#[tokio::test]
async fn registries_find_functions_by_item_and_by_name() -> TestResult {
    let mut r = Registry::new();
    r.register(triple)?;
    assert!(r.contains("surface.triple"));
    assert!(
        !r.contains("triple"),
        "the name attribute replaces the function name"
    );
    let mut by_name = Registry::new();
    by_name.register_name("wait_ms")?;
    assert_eq!(by_name.names(), vec!["wait_ms".to_string()]);
    assert!(Registry::new()
        .register_name("nope")
        .unwrap_err()
        .is_unknown_dtask());
    r.extend(&by_name)?;
    assert_eq!(r.names(), vec!["surface.triple", "wait_ms"]);
    let all = Registry::all()?;
    for name in ["surface.triple", "wait_ms", "mapped_race", "foreign_handle"] {
        assert!(all.contains(name), "{name} missing from {all:?}");
    }
    Ok(())
}

#[tokio::test]
async fn a_worker_and_a_client_on_a_shared_transport() -> TestResult {
    let t = MemoryTransport::new();
    let worker = Worker::new(
        t.clone(),
        WorkerConfig::new()
            .register(triple)
            .concurrency(4)
            .summary_every(Duration::from_secs(60)),
    )?;
    assert_eq!(worker.dtasks(), vec!["surface.triple"]);
    let client = Client::new(t.clone());
    let h = client.start(triple(14)).await?;
    let stats = worker.clone();
    let run = tokio::spawn(worker.run_until(async move {
        let _ = h.result().await;
    }));
    run.await??;
    assert!(stats.stats().processed >= 1);
    assert_eq!(stats.stats().in_flight, 0);
    // A worker needs something to run.
    assert!(Worker::new(t, WorkerConfig::new()).unwrap_err().is_config());
    Ok(())
}

#[dtask]
async fn make_handle() -> SpawnHandle<u64> {
    let h = DTask::spawn(triple(2));
    let _ = h.child_id();
    h
}

#[dtask]
async fn foreign_handle() -> u64 {
    let h = make_handle().await;
    h.into_future().await
}

#[dtask]
async fn empty_race() -> u64 {
    DTask::when_any(Vec::<DTask<u64>>::new()).await.1
}

#[tokio::test]
async fn misuse_fails_the_instance_with_a_clear_error() -> TestResult {
    let rt = Runtime::new(WorkerConfig::new().register_all())?;
    let c = rt.client();
    // `catch_failure` of a combinator and `spawn` of one are compile errors
    // (tests/ui/catch_failure_of_a_combinator.rs, tests/ui/spawn_a_combinator.rs).
    for (what, h) in [
        (
            "a handle of another instance",
            c.start(foreign_handle()).await?,
        ),
        ("when_any of nothing", c.start(empty_race()).await?),
    ] {
        let err = h.result().await.unwrap_err();
        let f = err.failure().expect("failed");
        assert!(f.is_misuse(), "{what}: {f}");
    }
    Ok(())
}

#[dtask]
async fn slow_local(ms: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    triple(ms).await
}

#[tokio::test]
async fn status_reports_running_during_a_first_step() -> TestResult {
    let rt = Runtime::new(WorkerConfig::new().register_all())?;
    let h: Handle<u64> = rt.client().start(slow_local(300)).await?;
    let mut seen = Vec::new();
    while !h.status().await?.is_finished() {
        let s = h.status().await?;
        if seen.last() != Some(&s) {
            seen.push(s);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(seen.contains(&Status::Running), "{seen:?}");
    assert_eq!(h.result().await?, 900);
    assert_eq!(h.status().await?, Status::Succeeded);
    let failed = rt.client().start(empty_race()).await?;
    let _ = failed.result().await;
    assert_eq!(failed.status().await?, Status::Failed);
    Ok(())
}

#[tokio::test]
async fn a_delivery_redelivered_past_its_budget_is_dead_lettered() -> TestResult {
    let t = MemoryTransport::builder().max_redeliveries(3).build();
    let client = Client::new(t.clone());
    let h = client.start(triple(1)).await?;
    let mut stream = t.consume(vec!["surface.triple".into()]).await?;
    // A consumer that dies without settling, four times over.
    for expected in 0..=3 {
        let d = stream.next().await.expect("delivery")?;
        assert_eq!(d.redeliveries, expected);
        assert!(matches!(d.kind, DeliveryKind::Task { .. }));
        drop(d);
    }
    drop(stream);
    assert_eq!(t.dead_letters().len(), 1);
    assert!(t.dead_letters()[0].reason.contains("retry budget"));
    assert_eq!(h.try_result().await?, None);
    Ok(())
}

#[tokio::test]
async fn typed_and_untyped_handles_and_ids() -> TestResult {
    let rt = Runtime::new(WorkerConfig::new().register_all())?;
    let c = rt.client();
    let raw = c
        .start_by_name_with_id(
            InstanceId::new("by-name-1")?,
            "surface.triple",
            rmp_serde::to_vec(&(7u64,))?,
        )
        .await?;
    assert_eq!(raw.id().as_str(), "by-name-1");
    let typed: Handle<u64> = raw.typed();
    assert_eq!(typed.result().await?, 21);
    assert_ne!(InstanceId::random(), InstanceId::random());
    assert!(c
        .start_by_name("", vec![])
        .await
        .unwrap_err()
        .is_bad_input());
    Ok(())
}

#[test]
fn public_types_are_send_and_sync_where_it_matters() {
    fn send<T: Send>() {}
    fn send_sync<T: Send + Sync>() {}
    fn send_future<F: std::future::Future + Send>(_: &F) {}
    send::<DTask<u64>>();
    send_sync::<Client>();
    send_sync::<Handle<String>>();
    send_sync::<SpawnHandle<u64>>();
    send_sync::<Runtime>();
    send_sync::<Worker>();
    send_sync::<MemoryTransport>();
    send_sync::<Failure>();
    send_sync::<dtasks::Error>();
    let t = MemoryTransport::new();
    let c = Client::new(t.clone());
    send_future(&c.start(triple(1)));
    let h: Handle<u64> = c.handle(InstanceId::random());
    send_future(&h.result());
    send_future(&t.wait_idle());
}

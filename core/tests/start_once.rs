//! A start under a chosen id runs once: a second start of an id that is running,
//! suspended or finished is refused with `Error::is_already_started`, and its instance
//! does not run again (in memory; `integration-tests` runs the same on RabbitMQ).

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use dtasks::{dtask, Client, DTask, InstanceId, MemoryTransport, Runtime, Status, WorkerConfig};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// How many times the side effect of `counted(tag, ..)` ran, by tag (the tests of this
/// file run at once, each with tags of its own).
static RAN: LazyLock<Mutex<HashMap<String, usize>>> = LazyLock::new(Mutex::default);

fn ran(tag: &str) -> usize {
    RAN.lock().unwrap().get(tag).copied().unwrap_or(0)
}

/// Counts one run of its side effect under `tag`, waits `ms` on a durable timer, and
/// returns `tag`.
#[dtask(name = "start_once.counted")]
async fn counted(tag: String, ms: u64) -> String {
    let t = tag.clone();
    DTask::run(move || async move {
        *RAN.lock().unwrap().entry(t).or_default() += 1;
    })
    .await;
    DTask::delay(Duration::from_millis(ms)).await;
    tag
}

fn runtime() -> Result<Runtime, dtasks::Error> {
    Runtime::builder(WorkerConfig::new().register(counted))
        .virtual_time()
        .build()
}

fn id(name: &str) -> InstanceId {
    InstanceId::new(format!("{name}-{}", InstanceId::random())).expect("a valid id")
}

#[tokio::test]
async fn a_second_start_of_a_running_id_is_refused_and_it_runs_once() -> TestResult {
    let rt = runtime()?;
    let c = rt.client();
    let id = id("running");
    let tag = id.to_string();
    let h = c
        .start_with_id(id.clone(), counted(tag.clone(), 1_000))
        .await?;
    rt.wait_idle().await;
    assert_eq!(h.status().await?, Status::Suspended);
    assert_eq!(ran(&tag), 1);
    // Again, from this client and from another one, with other arguments.
    let err = c
        .start_with_id(id.clone(), counted(tag.clone(), 1))
        .await
        .unwrap_err();
    assert!(err.is_already_started(), "{err}");
    assert!(err.to_string().contains(id.as_str()), "{err}");
    let other = Client::new(rt.transport().clone());
    let err = other
        .start_with_id(id.clone(), counted(tag.clone(), 1_000))
        .await
        .unwrap_err();
    assert!(err.is_already_started(), "{err}");
    rt.wait_idle().await;
    rt.advance(Duration::from_millis(1_000));
    assert_eq!(h.result().await?, tag);
    rt.wait_idle().await;
    assert_eq!(ran(&tag), 1, "the side effect ran again");
    // Both refused starts reached a worker, which dropped them without running them.
    assert_eq!(rt.stats().duplicate_starts, 2);
    Ok(())
}

#[tokio::test]
async fn a_second_start_of_a_finished_id_is_refused_and_the_result_stays() -> TestResult {
    let rt = runtime()?;
    let c = rt.client();
    let id = id("finished");
    let tag = id.to_string();
    let h = c.start_with_id(id.clone(), counted(tag.clone(), 0)).await?;
    assert_eq!(h.result().await?, tag);
    assert_eq!(h.status().await?, Status::Succeeded);
    let err = c
        .start_with_id(id.clone(), counted("another".into(), 0))
        .await
        .unwrap_err();
    assert!(err.is_already_started(), "{err}");
    // By name too.
    let input = rmp_serde::to_vec(&("by-name", 0u64))?;
    let err = c
        .start_by_name_with_id(id.clone(), "start_once.counted", input)
        .await
        .unwrap_err();
    assert!(err.is_already_started(), "{err}");
    rt.wait_idle().await;
    assert_eq!(ran(&tag), 1);
    assert_eq!(ran("another") + ran("by-name"), 0, "a refused start ran");
    assert_eq!(c.handle::<String>(id).result().await?, tag);
    assert_eq!(rt.stats().duplicate_starts, 2);
    Ok(())
}

#[tokio::test]
async fn starts_of_one_id_from_many_clients_at_once_make_one_instance() -> TestResult {
    let rt = runtime()?;
    let id = id("racing");
    let tag = id.to_string();
    let starts = (0..8).map(|_| {
        let c = Client::new(rt.transport().clone());
        let (id, tag) = (id.clone(), tag.clone());
        tokio::spawn(async move { c.start_with_id(id, counted(tag, 10)).await })
    });
    let mut won = 0;
    for s in futures::future::join_all(starts).await {
        match s? {
            Ok(_) => won += 1,
            Err(e) => assert!(e.is_already_started(), "{e}"),
        }
    }
    assert_eq!(won, 1);
    rt.wait_idle().await;
    rt.advance(Duration::from_millis(10));
    assert_eq!(rt.client().handle::<String>(id).result().await?, tag);
    rt.wait_idle().await;
    assert_eq!(ran(&tag), 1);
    assert_eq!(rt.stats().duplicate_starts, 7);
    Ok(())
}

#[tokio::test]
async fn a_start_whose_client_died_before_claiming_runs_once_and_keeps_its_id() -> TestResult {
    let rt = runtime()?;
    let id = id("orphan");
    let tag = id.to_string();
    let h =
        dtasks::test_util::start_without_claim(&rt.client(), id.clone(), counted(tag.clone(), 0))
            .await?;
    // A worker claimed the id for it and ran it.
    assert_eq!(h.result().await?, tag);
    let err = rt
        .client()
        .start_with_id(id, counted(tag.clone(), 0))
        .await
        .unwrap_err();
    assert!(err.is_already_started(), "{err}");
    rt.wait_idle().await;
    assert_eq!(ran(&tag), 1);
    Ok(())
}

#[tokio::test]
async fn a_claimed_start_nobody_ran_yet_is_pending_and_keeps_its_id() -> TestResult {
    // No worker: the start waits in its queue.
    let t = MemoryTransport::new();
    let c = Client::new(t.clone());
    let id = id("queued");
    let h = c
        .start_with_id(id.clone(), counted("queued".into(), 0))
        .await?;
    assert_eq!(h.status().await?, Status::Pending);
    let err = c
        .start_with_id(id.clone(), counted("queued".into(), 0))
        .await
        .unwrap_err();
    assert!(err.is_already_started(), "{err}");
    assert_eq!(h.status().await?, Status::Pending);
    Ok(())
}

#[tokio::test]
async fn random_ids_need_no_claim() -> TestResult {
    let rt = runtime()?;
    let c = rt.client();
    let a = c.start(counted("random".into(), 0)).await?;
    let b = c.start(counted("random".into(), 0)).await?;
    assert_ne!(a.id(), b.id());
    assert_eq!(a.result().await?, "random");
    assert_eq!(b.result().await?, "random");
    assert_eq!(ran("random"), 2);
    assert_eq!(rt.stats().duplicate_starts, 0);
    Ok(())
}

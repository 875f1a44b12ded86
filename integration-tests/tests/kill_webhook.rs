//! A worker process is killed with SIGKILL during a completion webhook's delivery: once
//! while the delivery waits between two attempts, once while an attempt is in flight.
//! Another process, started after the kill, finishes the delivery: the wait is neither
//! lost nor early, the count of attempts does not restart, and an attempt cut short is
//! made again (at least once).

use std::time::{Duration, Instant};

use dtasks_axum::Api;
use dtasks_integration_tests::http::{app, deliveries, serve, Http, Receiver};
use dtasks_integration_tests::{wait_for, Broker};
use serde_json::json;

const WORKER: &str = env!("CARGO_BIN_EXE_it-worker");

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_between_attempts_neither_loses_the_wait_nor_repeats_an_attempt(
) -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let mut victim = b.worker_processes(WORKER, 1).await?;
    let http = Http::new(serve(app(Api::new(b.client().await?))).await?);
    let receiver = Receiver::start(1, 503).await?;
    // The first attempt is refused; the second waits 3 s on a durable timer.
    let id = http
        .start(
            "double",
            json!({ "x": 21, "callback": receiver.url, "retry_ms": 3000 }),
        )
        .await?;
    wait_for(Duration::from_secs(20), || async {
        Ok(receiver.deliveries(&id).len() == 1)
    })
    .await?;
    // Leave the worker the moment between the confirm of the step that set the timer and
    // its ack.
    tokio::time::sleep(Duration::from_millis(300)).await;
    victim.kill(0)?;
    let killed_at = Instant::now();
    assert_eq!(
        receiver.deliveries(&id).len(),
        1,
        "a second attempt before the kill"
    );

    let survivor = b.worker_processes(WORKER, 1).await?;
    let seen = deliveries(&receiver, &id, 2, Duration::from_secs(60)).await?;
    // Exactly two: the count did not restart in the new process, nor lose the wait.
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].answered, 503);
    assert_eq!(seen[1].answered, 200);
    assert!(seen[1].at > killed_at, "{seen:?}");
    assert!(
        seen[1].at - seen[0].at >= Duration::from_secs(3),
        "an early retry: {seen:?}"
    );
    let result = http
        .outcome(&id, Duration::from_secs(20))
        .await?
        .expect(200)?;
    assert_eq!(
        result.body,
        json!({ "id": id, "status": "succeeded", "value": 42 })
    );
    assert_eq!(seen[0].body, result.body);
    assert_eq!(seen[1].body, result.body);

    let reports = survivor.stop(Duration::from_secs(20)).await?;
    assert_eq!(reports[0].dead_lettered, 0);
    drop(victim);
    b.cleanup().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_during_an_attempt_leaves_it_to_another() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let mut victim = b.worker_processes(WORKER, 1).await?;
    let http = Http::new(serve(app(Api::new(b.client().await?))).await?);
    // The first POST is answered only after 30 s: the worker dies waiting for it.
    let receiver = Receiver::stalling(Duration::from_secs(30)).await?;
    let id = http
        .start("double", json!({ "x": 4, "callback": receiver.url }))
        .await?;
    wait_for(Duration::from_secs(20), || async {
        Ok(receiver.deliveries(&id).len() == 1)
    })
    .await?;
    victim.kill(0)?;
    let killed_at = Instant::now();

    let survivor = b.worker_processes(WORKER, 1).await?;
    // The attempt the victim never saw answered is made again, once, by the survivor.
    let seen = deliveries(&receiver, &id, 2, Duration::from_secs(60)).await?;
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen[1].at > killed_at, "{seen:?}");
    let result = http
        .outcome(&id, Duration::from_secs(20))
        .await?
        .expect(200)?;
    assert_eq!(
        result.body,
        json!({ "id": id, "status": "succeeded", "value": 8 })
    );
    assert_eq!(seen[0].body, result.body);
    assert_eq!(seen[1].body, result.body);

    let reports = survivor.stop(Duration::from_secs(20)).await?;
    assert_eq!(reports[0].dead_lettered, 0);
    drop(victim);
    b.cleanup().await
}

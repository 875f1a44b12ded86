//! Lost connections: workers and clients carry on. (Broker restarts: `broker_restart.rs`
//! and `broker_restart_processes.rs`, each a test binary of its own.)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dtasks::{dtask, DTask};
use dtasks_integration_tests::tasks::{pause, pauses, pauses_sum};
use dtasks_integration_tests::{cut, registry, wait_for, within, Broker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_and_clients_survive_lost_connections() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let w = b.workers(2, &registry![pauses, pause]).await?;
    let c = b.client().await?;
    let h = c.start(pauses(20, 1_000)).await?;
    // While the children wait on their timers, a client waits for the result.
    let waiting = tokio::spawn({
        let h = h.clone();
        async move { h.result().await }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let cut = b.cut_connections().await?;
    // Two workers and a client, each with a publisher and a consumer connection.
    assert!(cut >= 5, "only {cut} connections were cut");
    // A bound, so that a lost timer fails the test instead of hanging the run.
    let waited = match within(Duration::from_secs(90), "the result after the cut", waiting).await {
        Ok(waited) => waited,
        Err(e) => {
            let status = c.status(h.id()).await;
            anyhow::bail!("{e}; status {status:?}; {}", b.report().await);
        }
    };
    assert_eq!(waited??, pauses_sum(20, 1_000));
    // The workers re-subscribed and keep serving.
    assert!(w.running());
    let again = c.start(pauses(5, 10)).await?;
    let again = within(
        Duration::from_secs(60),
        "a new start after the cut",
        again.result(),
    );
    assert_eq!(again.await??, pauses_sum(5, 10));
    let queue = format!("{}.task.it.pause", b.prefix());
    wait_for(Duration::from_secs(10), || async {
        Ok(b.consumers(&queue).await? == 2)
    })
    .await?;
    assert_eq!(b.queue_len(&format!("{}.dead", b.prefix())).await?, Some(0));
    w.stop().await?;
    b.cleanup().await
}

static SLOW_RUNS: AtomicUsize = AtomicUsize::new(0);

#[dtask]
async fn add(x: u64) -> u64 {
    x + 1
}

/// Merges two results in its mailbox, then holds the doorbell with local work: the first
/// run of that work waits until the step is run again elsewhere (or 20 s pass).
#[dtask]
async fn merge_then_work() -> u64 {
    let v = DTask::when_all([add(1), add(2)]).await;
    let w = DTask::run(|| async {
        if SLOW_RUNS.fetch_add(1, Ordering::SeqCst) == 0 {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while SLOW_RUNS.load(Ordering::SeqCst) < 2 && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        10u64
    })
    .await;
    v.iter().sum::<u64>() + w
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailbox_step_cut_mid_flight_is_redone_not_lost() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let w = b.workers(2, &registry![merge_then_work, add]).await?;
    let c = b.client().await?;
    // rabbitmqctl is slow to start: list the connections before the moment comes.
    let connections = b.connections().await?;
    // Two workers, each with a publisher and a consumer connection, and the client.
    assert!(connections.len() >= 4, "{connections:?}");
    let h = c.start(merge_then_work()).await?;
    // Cut while the merged step runs its local work with the doorbell and the mailbox
    // messages unacknowledged: the broker puts both back, and the doorbell comes again
    // (after the pause for redelivered doorbells) to whichever worker is subscribed.
    wait_for(Duration::from_secs(10), || async {
        Ok(SLOW_RUNS.load(Ordering::SeqCst) >= 1)
    })
    .await?;
    cut(&connections).await?;
    assert_eq!(h.result().await?, 2 + 3 + 10);
    // The cut came in the middle of the local work: it ran again after the redelivery
    // (once more for each worker whose connection went while it ran the step).
    let runs = SLOW_RUNS.load(Ordering::SeqCst);
    assert!((2..=3).contains(&runs), "the local work ran {runs} times");
    assert!(w.running());
    assert_eq!(b.queue_len(&format!("{}.dead", b.prefix())).await?, Some(0));
    w.stop().await?;
    b.cleanup().await
}

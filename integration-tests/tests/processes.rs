//! The core scenarios over RabbitMQ with the workers in separate OS processes: two
//! `it-worker` processes per test, each with its own connections, and a client in the
//! test process.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use dtasks::Failure;
use dtasks_integration_tests::procs::WorkerProcesses;
use dtasks_integration_tests::tasks::{
    add_one, awaits_explosion, chain3, checkout, explode, fan, race, spawn_then_delay, timed_delay,
};
use dtasks_integration_tests::{wait_for, within, Broker};

const WORKER: &str = env!("CARGO_BIN_EXE_it-worker");

/// How long any one result may take before the test fails instead of hanging.
const RESULT_LIMIT: Duration = Duration::from_secs(30);

/// Checks that no worker process died on its own, stops them gracefully and cleans up.
async fn finish(b: Broker, mut w: WorkerProcesses) -> anyhow::Result<()> {
    let exits = w.unexpected_exits();
    anyhow::ensure!(exits.is_empty(), "worker processes exited: {exits:?}");
    w.stop(Duration::from_secs(30)).await?;
    b.cleanup().await
}

async fn dead_letters(b: &Broker) -> anyhow::Result<u32> {
    Ok(b.queue_len(&format!("{}.dead", b.prefix()))
        .await?
        .unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_three_deep_chain_across_processes() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let w = b.worker_processes(WORKER, 2).await?;
    let c = b.client().await?;
    let h = c.start(chain3(4)).await?;
    assert_eq!(within(RESULT_LIMIT, "chain3", h.result()).await??, 110);
    finish(b, w).await
}

#[tokio::test(flavor = "multi_thread")]
async fn when_all_of_100_children_uses_both_processes() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let w = b.worker_processes(WORKER, 2).await?;
    let c = b.client().await?;
    let workers: BTreeSet<u32> = w.pids().into_iter().collect();
    // Fan-ins until the children of each process have run: on a busy machine one process
    // can take a whole fan-in's children (a pack of them, and its free slots) before the
    // other takes any, so up to five are started.
    let mut ran: BTreeSet<u32> = BTreeSet::new();
    for round in 1..=5 {
        let h = c.start(fan(100)).await?;
        let (sum, pids) = within(RESULT_LIMIT, "fan(100)", h.result()).await??;
        assert_eq!(sum, (1..=100).sum::<u64>());
        assert_eq!(pids.len(), 100);
        assert!(pids.iter().all(|p| workers.contains(p)), "{pids:?}");
        for pid in &workers {
            println!(
                "fan-in {round}: worker {pid} ran {} of the 100 children",
                pids.iter().filter(|p| *p == pid).count()
            );
        }
        ran.extend(pids);
        if ran == workers {
            break;
        }
    }
    assert_eq!(
        ran, workers,
        "the children ran in {ran:?}; the worker processes are {workers:?}"
    );
    assert_eq!(dead_letters(&b).await?, 0);
    finish(b, w).await
}

#[tokio::test(flavor = "multi_thread")]
async fn when_any_returns_the_first_and_the_loser_finishes_later() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let w = b.worker_processes(WORKER, 2).await?;
    let c = b.client().await?;
    let marker = b.scratch_file("loser")?;
    // Before the start: the race may begin before `start` returns (the Started fact is
    // recorded while the start goes out).
    let started = Instant::now();
    let h = c.start(race(2_500, 300, marker.clone())).await?;
    assert_eq!(
        within(RESULT_LIMIT, "race", h.result()).await??,
        (1, "fast".to_string())
    );
    assert!(
        std::fs::read_to_string(&marker)
            .unwrap_or_default()
            .is_empty(),
        "the loser finished before the winner"
    );
    // The loser is not cancelled: it finishes later, and its result goes to the finished
    // parent's mailbox, where it is dropped (not dead-lettered).
    wait_for(Duration::from_secs(20), || async {
        Ok(std::fs::read_to_string(&marker).unwrap_or_default() == "slow\n")
    })
    .await
    .context("the loser did not finish")?;
    assert!(started.elapsed() >= Duration::from_millis(2_500));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(dead_letters(&b).await?, 0);
    assert_eq!(h.result().await?, (1, "fast".to_string()));
    finish(b, w).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spawned_handle_is_awaited_after_a_delay() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let w = b.worker_processes(WORKER, 2).await?;
    let c = b.client().await?;
    let started = Instant::now();
    let h = c.start(spawn_then_delay(800)).await?;
    assert_eq!(within(RESULT_LIMIT, "spawn", h.result()).await??, 20);
    assert!(started.elapsed() >= Duration::from_millis(800));
    finish(b, w).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_child_error_reaches_the_parent_as_a_value() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let w = b.worker_processes(WORKER, 2).await?;
    let c = b.client().await?;
    let ok = c.start(checkout(5)).await?;
    let declined = c.start(checkout(5_000)).await?;
    assert_eq!(
        within(RESULT_LIMIT, "checkout", ok.result()).await??,
        Ok("paid 5".to_string())
    );
    assert_eq!(
        within(RESULT_LIMIT, "checkout", declined.result()).await??,
        Err("5000 is over the limit".to_string())
    );
    finish(b, w).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_child_panic_fails_the_parent() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let mut w = b.worker_processes(WORKER, 2).await?;
    let c = b.client().await?;
    let h = c.start(awaits_explosion()).await?;
    let err = within(RESULT_LIMIT, "awaits_explosion", h.result())
        .await?
        .unwrap_err();
    let failure = err.failure().context("the instance failed")?;
    assert!(failure.is_child_failure(), "{failure}");
    assert!(failure.message().contains("boom at 3"), "{failure}");
    let h = c.start(explode(1)).await?;
    let err = within(RESULT_LIMIT, "explode", h.result())
        .await?
        .unwrap_err();
    assert!(err.failure().is_some_and(Failure::is_panic), "{err}");
    // A panic fails the instance, not the process.
    assert!(w.alive(0) && w.alive(1));
    let h = c.start(add_one(1)).await?;
    assert_eq!(within(RESULT_LIMIT, "add_one", h.result()).await??, 2);
    finish(b, w).await
}

#[tokio::test(flavor = "multi_thread")]
async fn delays_are_never_early() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let w = b.worker_processes(WORKER, 2).await?;
    let c = b.client().await?;
    let mut handles = Vec::new();
    for ms in [1u64, 37, 250, 1_000, 1_900] {
        handles.push((ms, c.start(timed_delay(ms)).await?));
    }
    for (ms, h) in handles {
        let (start, end) = within(RESULT_LIMIT, "timed_delay", h.result()).await??;
        assert!(
            end >= start + ms,
            "a {ms} ms delay resumed after {} ms",
            end - start
        );
        println!("delay {ms} ms: resumed after {} ms", end - start);
    }
    finish(b, w).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_poison_message_is_dead_lettered_and_the_processes_keep_serving() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let mut w = b.worker_processes(WORKER, 2).await?;
    let queue = format!("{}.task.it.add_one", b.prefix());
    let ch = b.channel().await?;
    let poison = [
        b"not an envelope".to_vec(),
        vec![b'D', b'T', 0, 1, 0],
        vec![b'D', b'T', 1, 1, 0xc1, 0xff],
    ];
    for body in &poison {
        ch.basic_publish(
            "".into(),
            queue.as_str().into(),
            Default::default(),
            body,
            lapin::BasicProperties::default().with_delivery_mode(2),
        )
        .await?
        .await?;
    }
    let c = b.client().await?;
    let h = c.start(add_one(1)).await?;
    assert_eq!(within(RESULT_LIMIT, "add_one", h.result()).await??, 2);
    let dead_queue = format!("{}.dead", b.prefix());
    wait_for(Duration::from_secs(10), || async {
        Ok(b.queue_len(&dead_queue).await? == Some(3))
    })
    .await
    .context("the poison messages did not reach the dead-letter queue")?;
    let dead = b.take_all(&dead_queue).await?;
    let bodies: BTreeSet<Vec<u8>> = dead.iter().map(|d| d.data.clone()).collect();
    assert_eq!(bodies, poison.iter().cloned().collect::<BTreeSet<_>>());
    for d in &dead {
        let reason = d
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-dtasks-reason").cloned());
        assert!(
            matches!(reason, Some(lapin::types::AMQPValue::LongString(_))),
            "no reason on {:?}",
            d.data
        );
    }
    // Both processes survived and keep serving, on both of them.
    assert!(w.alive(0) && w.alive(1));
    let h = c.start(fan(20)).await?;
    let (sum, _) = within(RESULT_LIMIT, "fan(20)", h.result()).await??;
    assert_eq!(sum, (1..=20).sum::<u64>());
    let queue_consumers = b.consumers(&queue).await?;
    assert_eq!(queue_consumers, 2);
    finish(b, w).await
}

//! A worker process holds timers in memory for their last seconds (unacked in the ready
//! queue) and is killed with SIGKILL while it holds them. Another process, started after
//! the kill, fires every one of them once, none early.

use std::time::{Duration, Instant};

use dtasks_integration_tests::tasks::{now_ms, timed_delay};
use dtasks_integration_tests::{rabbitmqctl, wait_for, within, Broker};

const WORKER: &str = env!("CARGO_BIN_EXE_it-worker");

/// Timers started at once.
const N: usize = 20;
/// Each waits 16 s: 8,192 ms in delay level 13, then about 7.8 s held by a worker (the
/// hold is 10 s here, 1 s by default): long enough for the broker's queue statistics,
/// refreshed every 5 s, to show them held.
const DELAY_MS: u64 = 16_000;

/// The unacknowledged messages of `queue`, from `rabbitmqctl`.
async fn unacked(queue: &str) -> anyhow::Result<u64> {
    let out = rabbitmqctl(&[
        "list_queues",
        "name",
        "messages_unacknowledged",
        "--quiet",
        "--no-table-headers",
    ])
    .await?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .find(|(name, _)| *name == queue)
        .and_then(|(_, n)| n.trim().parse().ok())
        .unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread")]
async fn timers_held_by_a_killed_worker_fire_once_on_another() -> anyhow::Result<()> {
    // This test binary runs this one test: the worker processes it starts inherit it.
    std::env::set_var("IT_TIMER_HOLD_MS", "10000");
    let b = Broker::start().await?;
    let mut victim = b.worker_processes(WORKER, 1).await?;
    let c = b.client().await?;
    let mut handles = Vec::new();
    for _ in 0..N {
        handles.push(c.start(timed_delay(DELAY_MS)).await?);
    }

    // Parked in level 13, then all held by the only worker: unacked in the ready queue.
    let ready = format!("{}.delay.ready", b.prefix());
    let level = format!("{}.delay.13", b.prefix());
    wait_for(Duration::from_secs(10), || async {
        Ok(b.queue_len(&level).await? == Some(N as u32))
    })
    .await?;
    let held = wait_for(Duration::from_secs(14), || async {
        Ok(unacked(&ready).await? == N as u64)
    })
    .await;
    if let Err(e) = held {
        anyhow::bail!(
            "the worker never held every timer: {e:#}\n{}",
            b.report().await
        );
    }
    let killed_at = now_ms();
    victim.kill(0)?;
    for h in &handles {
        assert_eq!(h.try_result().await?, None, "a timer fired before the kill");
    }

    // The held timers are back in the ready queue; a new process fires them.
    let survivor = b.worker_processes(WORKER, 1).await?;
    let t0 = Instant::now();
    for h in &handles {
        let (start, end) = within(Duration::from_secs(30), "a held timer", h.result()).await??;
        assert!(
            end >= start + DELAY_MS,
            "a timer fired {} ms early",
            start + DELAY_MS - end
        );
        assert!(end > killed_at, "a timer fired in the killed worker");
    }
    println!(
        "{N} timers held by a killed worker fired on another within {:?}",
        t0.elapsed()
    );
    wait_for(Duration::from_secs(10), || async {
        Ok(unacked(&ready).await? == 0 && b.queue_len(&ready).await? == Some(0))
    })
    .await?;
    let reports = survivor.stop(Duration::from_secs(20)).await?;
    assert_eq!(reports.len(), 1);
    // One step per timer, each result written once.
    assert_eq!(reports[0].duplicate_results, 0);
    assert_eq!(reports[0].dead_lettered, 0);
    assert!(reports[0].processed >= N as u64, "{:?}", reports[0]);
    drop(victim);
    b.cleanup().await
}

//! A worker process is killed with SIGKILL while retries wait between attempts (a side
//! effect in both execution models, a child call). Another process, started after the
//! kill, makes the remaining attempts: the waits are neither lost nor early, and the
//! count of attempts neither restarts nor loses one.

use std::time::Duration;

use dtasks_integration_tests::tasks::{
    now_ms, retried_effect, retried_effect_snapshot, retried_panics,
};
use dtasks_integration_tests::{wait_for, within, Broker};

const WORKER: &str = env!("CARGO_BIN_EXE_it-worker");

/// The attempts recorded in `path`: `(pid, ms)` per line.
fn attempts(path: &str) -> Vec<(u32, u64)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (pid, at) = l.split_once(' ')?;
            Some((pid.parse().ok()?, at.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_during_a_backoff_neither_loses_the_wait_nor_restarts_the_count(
) -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let mut victim = b.worker_processes(WORKER, 1).await?;
    let victim_pid = victim.pid(0);
    let c = b.client().await?;
    let files: Vec<String> = ["effect", "effect_snapshot", "call"]
        .iter()
        .map(|n| b.scratch_file(&format!("retry-{n}")))
        .collect::<anyhow::Result<_>>()?;
    let h_effect = c.start(retried_effect(files[0].clone())).await?;
    let h_effect_s = c.start(retried_effect_snapshot(files[1].clone())).await?;
    let h_call = c.start(retried_panics(files[2].clone())).await?;

    // The first attempts failed; the instances wait 3 s for the second: their timers are
    // parked in delay level 11 (2,048 ms) once the steps that set them are confirmed.
    let level = format!("{}.delay.11", b.prefix());
    wait_for(Duration::from_secs(20), || async {
        Ok(files.iter().all(|f| attempts(f).len() == 1) && b.queue_len(&level).await? == Some(3))
    })
    .await?;
    // Leave the worker the moment between a confirm and its ack.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed_at = now_ms();
    victim.kill(0)?;
    for f in &files {
        assert_eq!(
            attempts(f).len(),
            1,
            "{f}: a second attempt before the kill"
        );
    }

    let survivor = b.worker_processes(WORKER, 1).await?;
    let effect = within(
        Duration::from_secs(60),
        "the retried effect",
        h_effect.result(),
    )
    .await??;
    assert_eq!(effect, Err("attempt 3 failed".to_string()));
    let effect_s = within(
        Duration::from_secs(60),
        "the snapshot retry",
        h_effect_s.result(),
    )
    .await??;
    assert_eq!(effect_s, Err("attempt 3 failed".to_string()));
    let call = within(Duration::from_secs(60), "the retried call", h_call.result()).await??;
    let msg = call.expect_err("every attempt panicked");
    assert!(msg.contains("failed 3 attempts"), "{msg}");
    assert!(msg.contains("always panics"), "{msg}");

    for f in &files {
        let seen = attempts(f);
        // Exactly three: the count did not restart in the new process, nor lose one.
        assert_eq!(seen.len(), 3, "{f}: attempts {seen:?}");
        assert_eq!(seen[0].0, victim_pid, "{f}: {seen:?}");
        for (pid, at) in &seen[1..] {
            assert_ne!(
                *pid, victim_pid,
                "{f}: an attempt after the kill in the victim"
            );
            assert!(*at > killed_at, "{f}: {seen:?}");
        }
        // The waits (3 s, then 6 s) are never early, across the kill too.
        assert!(seen[1].1 >= seen[0].1 + 3_000, "{f}: early retry {seen:?}");
        assert!(seen[2].1 >= seen[1].1 + 6_000, "{f}: early retry {seen:?}");
    }
    let reports = survivor.stop(Duration::from_secs(20)).await?;
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].dead_lettered, 0);
    drop(victim);
    b.cleanup().await
}

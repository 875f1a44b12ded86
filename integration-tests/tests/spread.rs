//! The doorbell shards, and so the merges of fan-ins, spread over every worker process and
//! move when one is killed or another joins: three `it-worker` processes share the merges
//! of one run of many `when_all`s; one is SIGKILLed in the middle of the next run, its
//! shards go to the two others and every result comes once; a replacement then takes its
//! share.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use dtasks::{Client, Handle};
use dtasks_integration_tests::procs::WorkerProcesses;
use dtasks_integration_tests::tasks::fan;
use dtasks_integration_tests::{wait_for, within, Broker};

const WORKER: &str = env!("CARGO_BIN_EXE_it-worker");

/// What a process last said of its shards: `it-worker shards pid=.. merged=.. held=..`.
#[derive(Clone, Debug, Default)]
struct Shards {
    merged: u64,
    /// The numbers of the shards held.
    held: BTreeSet<u16>,
}

fn shards(w: &WorkerProcesses, i: usize) -> Shards {
    let log = w.log(i);
    let Some(line) = log
        .lines()
        .rev()
        .find(|l| l.starts_with("it-worker shards "))
    else {
        return Shards::default();
    };
    let mut s = Shards::default();
    for kv in line.split_whitespace().skip(2) {
        match kv.split_once('=') {
            Some(("merged", v)) => s.merged = v.parse().unwrap_or(0),
            // `P.shard.<n>`: the numbers.
            Some(("held", v)) => {
                s.held = v
                    .split(',')
                    .filter_map(|x| x.rsplit_once('.'))
                    .filter_map(|(_, n)| n.parse().ok())
                    .collect()
            }
            _ => {}
        }
    }
    s
}

/// Starts `parents` fan-ins of `children` each.
async fn start_wave(
    c: &Client,
    parents: u64,
    children: u64,
) -> anyhow::Result<Vec<Handle<(u64, Vec<u32>)>>> {
    let mut handles = Vec::new();
    for _ in 0..parents {
        handles.push(c.start(fan(children)).await?);
    }
    Ok(handles)
}

/// Waits for every fan-in of a wave and checks its result: the sum of `1..=children`
/// from `children` children.
async fn finish_wave(
    handles: Vec<Handle<(u64, Vec<u32>)>>,
    children: u64,
    limit: Duration,
) -> anyhow::Result<()> {
    let want: u64 = (1..=children).sum();
    for h in handles {
        let (sum, pids) = within(limit, "a fan-in", h.result()).await??;
        assert_eq!(sum, want);
        assert_eq!(pids.len() as u64, children);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn doorbell_shards_spread_over_workers_and_move_when_one_is_killed() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let env = [("IT_SHARDS_EVERY_MS", "100")];
    let mut w = b.worker_processes_with(WORKER, 3, &env).await?;
    // Each process consumes the ready queue once (and every shard).
    let ready = format!("{}.delay.ready", b.prefix());
    wait_for(Duration::from_secs(20), || async {
        Ok(b.consumers(&ready).await? >= 3)
    })
    .await
    .context("the processes did not all subscribe to the shards")?;
    let c = b.client().await?;

    // 1. One run of 64 fan-ins of 40: every process merges some of them.
    let t0 = Instant::now();
    let wave = start_wave(&c, 64, 40).await?;
    finish_wave(wave, 40, Duration::from_secs(60)).await?;
    let first_run = t0.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after_first: Vec<Shards> = (0..3).map(|i| shards(&w, i)).collect();
    for (i, s) in after_first.iter().enumerate() {
        assert!(
            s.merged > 0,
            "process {} merged nothing of the run: {after_first:?}",
            w.pid(i)
        );
        assert!(
            !s.held.is_empty(),
            "process {} holds no shard: {after_first:?}",
            w.pid(i)
        );
    }
    // A shard has one active consumer: no shard is held by two processes.
    let mut seen = BTreeSet::new();
    for s in &after_first {
        for shard in &s.held {
            assert!(
                seen.insert(*shard),
                "shard {shard} held twice: {after_first:?}"
            );
        }
    }

    // 2. Kill process 0 once it merges fan-ins of the next run, then wait for the run:
    // its shards move to the two others, and every fan-in completes with all its results.
    let victim = w.pid(0);
    let before = after_first[0].merged;
    let wave = start_wave(&c, 160, 10).await?;
    wait_for(Duration::from_secs(20), || async {
        Ok(shards(&w, 0).merged > before)
    })
    .await
    .context("the victim merged nothing of the second run")?;
    let victims = shards(&w, 0);
    let killed_at = w.kill(0)?;
    finish_wave(wave, 10, Duration::from_secs(60)).await?;
    let second_run = killed_at.elapsed();
    // Every shard the victim held is held by a survivor once its doorbells come again. A
    // process learns that it holds a shard from a delivery, and the run may have rung the
    // victim's shards for the last time before the kill: small runs ring them again until
    // the survivors report them (each run of 32 fan-ins rings a given shard of 16 with a
    // probability above 0.87).
    let survivors_hold = || {
        let held: BTreeSet<u16> = (1..3).flat_map(|i| shards(&w, i).held).collect();
        victims.held.is_subset(&held)
    };
    let mut rings = 0;
    while !survivors_hold() {
        assert!(
            rings < 20,
            "the victim's shards {:?} did not move after {rings} more runs: the survivors \
             hold {:?} and {:?}",
            victims.held,
            shards(&w, 1).held,
            shards(&w, 2).held
        );
        let wave = start_wave(&c, 32, 2).await?;
        finish_wave(wave, 2, Duration::from_secs(60)).await?;
        rings += 1;
        // The processes log their shards every 100 ms.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let after_kill: Vec<Shards> = (1..3).map(|i| shards(&w, i)).collect();

    // 3. A replacement joins and takes its share of the next run's merges.
    let joined = b.add_worker_process(&mut w).await?;
    wait_for(Duration::from_secs(20), || async {
        Ok(b.consumers(&ready).await? >= 3)
    })
    .await?;
    // The survivors count it (every second) before the run.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let wave = start_wave(&c, 160, 10).await?;
    finish_wave(wave, 10, Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let newcomer = shards(&w, joined);
    assert!(
        newcomer.merged > 0 && !newcomer.held.is_empty(),
        "the process that joined took no shard: {newcomer:?}"
    );

    // Nothing was dead-lettered, nobody else died.
    assert_eq!(b.queue_len(&format!("{}.dead", b.prefix())).await?, Some(0));
    let exits = w.unexpected_exits();
    assert!(exits.is_empty(), "{exits:?}");
    let reports = w.stop(Duration::from_secs(30)).await?;
    let duplicates: u64 = reports.iter().map(|r| r.duplicate_results).sum();
    println!(
        "64 fan-ins of 40 on 3 worker processes in {} ms: merges {:?}, shards held {:?}; \
         {victim} SIGKILLed in a run of 160 fan-ins of 10 holding {:?}, the run completed \
         {} ms after the kill, survivors then held {:?} and {:?} (merges {:?}); a process \
         that joined held {:?} after the next run ({} merges); {duplicates} duplicate \
         results refused",
        first_run.as_millis(),
        after_first.iter().map(|s| s.merged).collect::<Vec<_>>(),
        after_first.iter().map(|s| s.held.len()).collect::<Vec<_>>(),
        victims.held,
        second_run.as_millis(),
        after_kill[0].held,
        after_kill[1].held,
        after_kill.iter().map(|s| s.merged).collect::<Vec<_>>(),
        newcomer.held,
        newcomer.merged,
    );
    b.cleanup().await
}

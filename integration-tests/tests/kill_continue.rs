//! Loops continued as new (`DTask::continue_as_new`) on three worker processes, one of them
//! killed with SIGKILL while runs hand off to the next: every instance, replay and
//! snapshot, ends its last run once, with every run done (the value and the process of
//! each run's child), and the store counts its runs.

use std::time::{Duration, Instant};

use dtasks::store::{Filter, Query};
use dtasks::{InstanceId, Status};
use dtasks_integration_tests::evolve::{renew, renew_snap};
use dtasks_integration_tests::{within, Broker};

const WORKER: &str = env!("CARGO_BIN_EXE_it-worker");

/// Instances of each model.
const N: usize = 20;
/// Runs of each instance.
const RUNS: u32 = 40;

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_while_runs_hand_off_loses_no_run() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let mut w = b.worker_processes(WORKER, 3).await?;
    let victim = w.pid(0);
    let c = b.client().await?;
    // The client's first read follows the facts from their start, which takes a while on
    // a busy machine: done before the loops start, so that the count that decides when to
    // kill is read while they run.
    c.list(&Query::new(Filter::new())).await?;
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for i in 0..N {
        let start = i as u64 * 1_000;
        handles.push((
            false,
            start,
            c.start(renew(1, RUNS, start, Vec::new())).await?,
        ));
        handles.push((
            true,
            start,
            c.start(renew_snap(1, RUNS, start, Vec::new())).await?,
        ));
    }
    let ids: Vec<InstanceId> = handles.iter().map(|(_, _, h)| h.id().clone()).collect();

    // Kill a worker once a third of all runs have begun, by the store's count.
    let total = (2 * N) as u32 * RUNS;
    let begun = |c: dtasks::Client, ids: Vec<InstanceId>| async move {
        let mut sum = 0;
        for id in &ids {
            sum += c.instance(id).await?.runs;
        }
        Ok::<u32, dtasks::Error>(sum)
    };
    let killed_at = within(Duration::from_secs(60), "a third of the runs", async {
        loop {
            let n = begun(c.clone(), ids.clone()).await?;
            if n >= total / 3 {
                return Ok::<_, anyhow::Error>((w.kill(0)?, n));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await??;
    let (killed_at, at_kill) = killed_at;

    let mut victim_runs = 0;
    let mut after_kill = 0;
    for (snapshot, start, h) in handles {
        let (value, pids) = within(Duration::from_secs(120), "the loops", h.result()).await??;
        let model = if snapshot { "snapshot" } else { "replay" };
        // Every run ran its child once in the lineage that finished: one pid per run.
        assert_eq!(value, start + u64::from(RUNS), "{model} {}", h.id());
        assert_eq!(pids.len(), RUNS as usize, "{model} {}", h.id());
        victim_runs += pids.iter().filter(|p| **p == victim).count();
        let info = c.instance(h.id()).await?;
        assert_eq!(info.status, Status::Succeeded);
        assert_eq!(info.runs, RUNS, "{model} {}", h.id());
        // Another client reads the same result by id.
        let other: (u64, Vec<u32>) = c.handle(h.id().clone()).result().await?;
        assert_eq!(other, (value, pids));
        if info.updated_at > std::time::SystemTime::now() - killed_at.elapsed() {
            after_kill += 1;
        }
    }
    let all_done = t0.elapsed();
    // Nothing waits or runs any more under the test's instances.
    let left = c
        .list(&Query::new(Filter::new().status(Status::Suspended)))
        .await?;
    assert!(left.instances.is_empty(), "{:?}", left.instances);
    assert!(victim_runs > 0, "the killed worker had run no run's child");
    assert!(after_kill > 0, "every instance finished before the kill");
    assert_eq!(b.queue_len(&format!("{}.dead", b.prefix())).await?, Some(0));
    let exits = w.unexpected_exits();
    assert!(exits.is_empty(), "{exits:?}");
    let reports = w.stop(Duration::from_secs(30)).await?;
    let duplicates: u64 = reports.iter().map(|r| r.duplicate_results).sum();
    println!(
        "{} loops of {RUNS} runs on 3 worker processes, {victim} SIGKILLed when {at_kill} of \
         {total} runs had begun: all done in {:.2} s, {after_kill} finished after the kill, the \
         victim ran {victim_runs} runs' children; survivors refused {duplicates} duplicate \
         results",
        2 * N,
        all_done.as_secs_f64()
    );
    b.cleanup().await
}

//! Three worker processes share 300 chains; one is killed with SIGKILL mid-run. Every
//! chain completes once with the right value, none is lost.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use dtasks::InstanceId;
use dtasks_integration_tests::tasks::chain;
use dtasks_integration_tests::{within, Broker};

const WORKER: &str = env!("CARGO_BIN_EXE_it-worker");

/// Chains started.
const N: usize = 300;
/// Completions seen before the kill.
const KILL_AFTER: usize = 60;

/// Chain `i`: its start value and its length (2 to 13 steps, so that completions spread
/// over the run and the kill falls between the first and the last).
fn shape(i: usize) -> (u64, u32) {
    (i as u64 * 1_000, 2 + (i % 12) as u32)
}

struct Done {
    id: InstanceId,
    index: usize,
    value: u64,
    pids: Vec<u32>,
    at: Instant,
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_process_killed_mid_run_loses_no_chain() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let mut w = b.worker_processes(WORKER, 3).await?;
    let victim = w.pid(0);
    let c = b.client().await?;
    let t0 = Instant::now();
    // Started one after another, each waited for as soon as it is out: the starts run on
    // while the first results come back, so the kill falls among chains in flight however
    // fast a start is.
    let (out_tx, mut out_rx) = tokio::sync::mpsc::unbounded_channel();
    let starter = tokio::spawn({
        let c = c.clone();
        async move {
            for i in 0..N {
                let (start, steps) = shape(i);
                let h = c.start(chain(start, steps)).await?;
                let out = out_tx.clone();
                tokio::spawn(async move {
                    let got = h.result().await.map(|(value, pids)| Done {
                        id: h.id().clone(),
                        index: i,
                        value,
                        pids,
                        at: Instant::now(),
                    });
                    let _ = out.send(got);
                });
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Ok::<_, dtasks::Error>(())
        }
    });

    let mut done: Vec<Done> = Vec::new();
    let mut kill: Option<(Instant, usize)> = None;
    let limit = Duration::from_secs(60);
    while done.len() < N {
        let got = within(limit, "the chains", out_rx.recv())
            .await?
            .expect("the waits send their results");
        done.push(got?);
        if kill.is_none() && done.len() >= KILL_AFTER {
            let at = w.kill(0)?;
            kill = Some((at, done.len()));
        }
    }
    let total = t0.elapsed();
    within(limit, "the starts", starter).await???;
    let (killed_at, before_kill) = kill.expect("the kill happened");

    // Every instance returned once, with the right value; none is missing.
    let mut by_index: HashMap<usize, usize> = HashMap::new();
    for d in &done {
        *by_index.entry(d.index).or_default() += 1;
        let (start, steps) = shape(d.index);
        assert_eq!(
            d.value,
            start + u64::from(steps),
            "chain {} ({}) returned a wrong value",
            d.index,
            d.id
        );
        assert_eq!(d.pids.len(), steps as usize, "chain {}", d.index);
    }
    assert_eq!(done.len(), N, "results: {} of {N}", done.len());
    assert_eq!(by_index.len(), N, "instances lost");
    assert!(
        by_index.values().all(|n| *n == 1),
        "an instance returned twice"
    );
    let mut ids: Vec<&InstanceId> = done.iter().map(|d| &d.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), N, "two instances shared an id");

    // The kill fell mid-run, and the victim had worked before it died.
    let after_kill = done.iter().filter(|d| d.at > killed_at).count();
    assert!(after_kill > 0, "every chain completed before the kill");
    let victim_steps: usize = done
        .iter()
        .map(|d| d.pids.iter().filter(|p| **p == victim).count())
        .sum();
    assert!(victim_steps > 0, "the killed worker had run no step");
    let next = done
        .iter()
        .filter(|d| d.at > killed_at)
        .map(|d| d.at - killed_at)
        .min()
        .expect("completions after the kill");
    // The longest wait for a completion after the kill (from the kill itself on).
    let mut after: Vec<Instant> = done
        .iter()
        .map(|d| d.at)
        .filter(|at| *at > killed_at)
        .collect();
    after.sort();
    let stall = after
        .iter()
        .scan(killed_at, |prev, at| {
            let gap = *at - *prev;
            *prev = *at;
            Some(gap)
        })
        .max()
        .unwrap_or_default();
    let mut per_worker: Vec<(u32, usize)> = w
        .pids()
        .into_iter()
        .map(|pid| {
            let steps = done
                .iter()
                .map(|d| d.pids.iter().filter(|p| **p == pid).count())
                .sum();
            (pid, steps)
        })
        .collect();
    per_worker.sort();

    // The first result stands: reading each by id from another client gives that value.
    let other = b.client().await?;
    for d in &done {
        let (value, pids) = other
            .handle::<(u64, Vec<u32>)>(d.id.clone())
            .try_result()
            .await?
            .expect("a recorded result");
        assert_eq!((value, &pids), (d.value, &d.pids), "chain {}", d.index);
    }
    assert_eq!(b.queue_len(&format!("{}.dead", b.prefix())).await?, Some(0));
    assert!(w.alive(1) && w.alive(2), "a surviving worker died");
    let exits = w.unexpected_exits();
    assert!(exits.is_empty(), "{exits:?}");
    let reports = w.stop(Duration::from_secs(30)).await?;
    let duplicates: u64 = reports.iter().map(|r| r.duplicate_results).sum();
    println!(
        "{N} chains on 3 worker processes, {victim} SIGKILLed after {before_kill} completions \
         at {:.2} s: {after_kill} completed after the kill; next completion {} ms after the \
         kill, longest gap between completions after it {} ms; all done in {:.2} s; steps per worker {per_worker:?}; the victim ran \
         {victim_steps} recorded steps; survivors refused {duplicates} duplicate results",
        (killed_at - t0).as_secs_f64(),
        next.as_millis(),
        stall.as_millis(),
        total.as_secs_f64(),
    );
    b.cleanup().await
}

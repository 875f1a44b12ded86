//! A `when_all` of 100 children on three worker processes, one of which is killed with
//! SIGKILL while the children run: the parent resumes once, with all 100 results.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use dtasks_integration_tests::tasks::fan_in_once;
use dtasks_integration_tests::{wait_for, within, Broker};

const WORKER: &str = env!("CARGO_BIN_EXE_it-worker");

const CHILDREN: u64 = 100;
/// Local work per child: long enough that the kill lands while every child runs.
const CHILD_MS: u64 = 3_000;

/// The lines `<pid> <child>` the children appended when they started.
fn started(path: &str) -> Vec<(u32, u64)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (pid, i) = l.split_once(' ')?;
            Some((pid.parse().ok()?, i.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fan_in_resumes_once_with_every_result_when_a_worker_is_killed() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let mut w = b.worker_processes(WORKER, 3).await?;
    let victim = w.pid(0);
    let started_file = b.scratch_file("started")?;
    let done_file = b.scratch_file("done")?;
    let c = b.client().await?;
    let t0 = Instant::now();
    let h = c
        .start(fan_in_once(
            CHILDREN,
            CHILD_MS,
            started_file.clone(),
            done_file.clone(),
        ))
        .await?;

    // Kill once every child has started (all run at once: each worker takes up to 64),
    // some of them on the victim: the children are mid-way through their local work, no
    // result has reached the parent's mailbox, the final merge is seconds away.
    wait_for(Duration::from_secs(20), || async {
        let s = started(&started_file);
        let children: BTreeSet<u64> = s.iter().map(|(_, i)| *i).collect();
        Ok(children.len() as u64 == CHILDREN && s.iter().any(|(pid, _)| *pid == victim))
    })
    .await
    .context("the children did not all start, or none on the victim")?;
    let on_victim = started(&started_file)
        .iter()
        .filter(|(pid, _)| *pid == victim)
        .count();
    let killed_at = w.kill(0)?;
    let kill_after = killed_at - t0;
    anyhow::ensure!(
        std::fs::read_to_string(&done_file)
            .unwrap_or_default()
            .is_empty(),
        "the parent resumed before the kill"
    );
    assert!(
        kill_after < Duration::from_millis(CHILD_MS),
        "the kill came {kill_after:?} after the start: the first children may have finished"
    );

    let sum = within(Duration::from_secs(45), "the fan-in", h.result()).await??;
    let resumed_after = killed_at.elapsed();
    assert_eq!(sum, (0..CHILDREN).map(|i| i * i).sum::<u64>());

    // The side effect after the fan-in ran exactly once, in a survivor.
    let done = std::fs::read_to_string(&done_file)?;
    let lines: Vec<&str> = done.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "the parent resumed past its fan-in: {lines:?}"
    );
    let (line_sum, pid) = lines[0].split_once(' ').context("a `<sum> <pid>` line")?;
    assert_eq!(line_sum.parse::<u64>()?, sum);
    assert_ne!(
        pid.parse::<u32>()?,
        victim,
        "the parent resumed in the dead worker"
    );

    // The victim's children were redone by the survivors.
    let s = started(&started_file);
    let mut runs: BTreeMap<u64, usize> = BTreeMap::new();
    for (_, i) in &s {
        *runs.entry(*i).or_default() += 1;
    }
    let redone = runs.values().filter(|n| **n > 1).count();
    assert_eq!(runs.len() as u64, CHILDREN);
    assert!(
        redone >= on_victim,
        "{redone} children redone, {on_victim} were on the victim"
    );

    // Nothing arrives late: the result stays the first one, nothing is dead-lettered.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(std::fs::read_to_string(&done_file)?.lines().count(), 1);
    assert_eq!(b.queue_len(&format!("{}.dead", b.prefix())).await?, Some(0));
    assert!(w.alive(1) && w.alive(2), "a surviving worker died");
    let exits = w.unexpected_exits();
    assert!(exits.is_empty(), "{exits:?}");
    let reports = w.stop(Duration::from_secs(30)).await?;
    let duplicates: u64 = reports.iter().map(|r| r.duplicate_results).sum();
    // The survivors' children finished at about the same time, and their results reached
    // the parent's mailbox in packs: the kill and the redone children lost none of them.
    let packed: u64 = reports.iter().map(|r| r.packed).sum();
    assert!(packed > 0, "no child result went in a pack");
    println!(
        "when_all of {CHILDREN} children ({CHILD_MS} ms each) on 3 worker processes; {victim} \
         SIGKILLed {} ms after the start with {on_victim} children on it; {redone} children \
         redone; the parent completed {} ms after the kill (the next completion), once; \
         survivors refused {duplicates} duplicate results and wrote {packed} results in packs",
        kill_after.as_millis(),
        resumed_after.as_millis(),
    );
    b.cleanup().await
}

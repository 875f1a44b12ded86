//! A cancellation survives the worker processes: the cancel is sent, every worker is
//! killed with SIGKILL at once, and a worker process started afterwards still stops the
//! whole tree — the instances waiting in their mailboxes at once (the cancel items wait
//! there), the grandchildren asleep on their timers through the cancel record, which the
//! new worker reads back from the stream of records.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context as _;
use dtasks::{InstanceId, Status};
use dtasks_integration_tests::tasks::cancel_tree;
use dtasks_integration_tests::{wait_for, within, Broker};

const WORKER: &str = env!("CARGO_BIN_EXE_it-worker");

/// Branches of the tree (each waits on two grandchildren).
const N: u64 = 3;
/// How long the grandchildren's timers are.
const NAP_MS: u64 = 6_000;

fn lines(file: &str) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_sent_before_every_worker_is_killed_still_stops_the_tree() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let mut w = b.worker_processes(WORKER, 2).await?;
    // Children are recorded, so that the grandchildren's ends can be read by id.
    let c = b.client().await?.recording_children();
    let file = b.scratch_file("tree")?;
    let h = c.start(cancel_tree(N, NAP_MS, file.clone())).await?;
    wait_for(Duration::from_secs(20), || async {
        Ok(h.status().await? == Status::Suspended)
    })
    .await
    .context("the tree did not suspend")?;
    // Every grandchild has started its timer (its state rides in it from then on).
    wait_for(Duration::from_secs(20), || async {
        Ok(lines(&file)
            .iter()
            .filter(|l| l.starts_with("napping"))
            .count()
            >= 2 * N as usize)
    })
    .await
    .with_context(|| format!("not every grandchild started: {:?}", lines(&file)))?;

    // Sent (durable), then every worker dies before it can act on it for sure.
    assert!(c.cancel(h.id(), "kill test").await?);
    w.kill(0)?;
    w.kill(1)?;
    let before = lines(&file);

    // A worker started afterwards reads the cancel records from the first.
    let mut fresh = b.worker_processes(WORKER, 1).await?;
    let err = within(Duration::from_secs(30), "the tree's result", h.result())
        .await?
        .unwrap_err();
    assert!(err.is_cancelled(), "{err}");
    assert_eq!(err.failure().expect("failed").message(), "kill test");
    assert_eq!(h.status().await?, Status::Cancelled);
    // Side effects are at least once: a branch that stopped on a killed worker before its
    // step was acked stops again on the new one.
    let branches = |file: &str| -> BTreeSet<String> {
        lines(file)
            .iter()
            .filter_map(|l| {
                l.strip_prefix("stopped ")?
                    .split(':')
                    .next()
                    .map(str::to_string)
            })
            .collect()
    };
    let all: BTreeSet<String> = (0..N).map(|i| i.to_string()).collect();
    wait_for(Duration::from_secs(30), || async {
        Ok(branches(&file) == all)
    })
    .await
    .with_context(|| format!("not every branch stopped: {:?}", lines(&file)))?;
    assert!(
        lines(&file)
            .iter()
            .filter(|l| l.starts_with("stopped"))
            .all(|l| l.ends_with(": kill test")),
        "{:?} (before the kill: {before:?})",
        lines(&file)
    );

    // The grandchildren's states ride in their timers. Each ends cancelled whichever way
    // the new worker reaches it: at its timer's next hop (the sleep ends cancelled), when
    // its timer fires (it stops at its next distributed await, after `woke`), or, when
    // its first step was redone after the kill, at once (its sleep is recorded cancelled).
    let grandchildren: Vec<InstanceId> = (0..N)
        .flat_map(|i| [format!("{}.{i}.0", h.id()), format!("{}.{i}.1", h.id())])
        .map(InstanceId::new)
        .collect::<Result<_, _>>()?;
    wait_for(Duration::from_secs(40), || async {
        for g in &grandchildren {
            if c.status(g).await? != Status::Cancelled {
                return Ok(false);
            }
        }
        Ok(true)
    })
    .await
    .with_context(|| format!("a grandchild did not end cancelled: {:?}", lines(&file)))?;
    // A grandchild that was not cancelled would yield and finish right after waking.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all = lines(&file);
    assert!(!all.iter().any(|l| l == "finished"), "{all:?}");
    let dead = b
        .queue_len(&format!("{}.dead", b.prefix()))
        .await?
        .unwrap_or(0);
    assert_eq!(dead, 0);

    let exits = fresh.unexpected_exits();
    anyhow::ensure!(exits.is_empty(), "worker processes exited: {exits:?}");
    fresh.stop(Duration::from_secs(30)).await?;
    drop(w);
    b.cleanup().await
}

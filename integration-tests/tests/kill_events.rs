//! External events under a worker crash: 20 instances (14 in the replay model, 6 in the
//! snapshot model) each wait for 12 events of one name, one at a time, on three worker
//! processes. The client sends the first events before any worker runs (so before any
//! instance waits), the rest while the instances wait, round after round; halfway, the
//! process that took the most events is killed with SIGKILL and a replacement started
//! while events keep coming. Every instance returns exactly the events sent to it, in the
//! order sent: none lost, none taken twice. An instance waiting on `DTask::suspend` is
//! resumed right after the kill, and a second resume with the same token changes nothing.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use dtasks::{Client, Handle, ResumeToken};
use dtasks_integration_tests::tasks::{await_resume, gather, gather_snap};
use dtasks_integration_tests::{wait_for, within, Broker};

const WORKER: &str = env!("CARGO_BIN_EXE_it-worker");

/// Instances in the replay model, then in the snapshot model.
const REPLAY: usize = 14;
const SNAPSHOT: usize = 6;
const INSTANCES: usize = REPLAY + SNAPSHOT;
/// Events each instance waits for.
const EVENTS: u32 = 12;
/// Events sent to each instance before any worker process runs.
const EARLY: u32 = 2;
/// The kill comes once every instance has taken this many events.
const KILL_AFTER: u32 = 6;
/// The one event name every instance waits for.
const EVENT: &str = "tick";
/// How long the whole run may take before the test fails instead of hanging.
const LIMIT: Duration = Duration::from_secs(120);

type Gathered = (Vec<u64>, Vec<u32>);

/// The value of event `k` for instance `i`: distinct across instances and events, so a
/// swapped, repeated or lost event changes a result.
fn value(i: usize, k: u32) -> u64 {
    (i as u64 + 1) * 1_000 + u64::from(k)
}

/// What instance `i` must return: its events, in the order sent.
fn expected(i: usize) -> Vec<u64> {
    (0..EVENTS).map(|k| value(i, k)).collect()
}

/// Sends event `k` to every instance, all at once; returns when every send is durable.
async fn send_round(c: &Client, handles: &[Handle<Gathered>], k: u32) -> anyhow::Result<()> {
    let sends = handles.iter().enumerate().map(|(i, h)| async move {
        c.signal(h.id(), EVENT, &value(i, k))
            .await
            .with_context(|| format!("sending event {k} to instance {i}"))
    });
    futures::future::try_join_all(sends).await?;
    Ok(())
}

/// The processes that took events so far, one line each (redone steps included).
fn takers(path: &str) -> Vec<u32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn events_arrive_once_in_order_while_a_worker_process_is_killed() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let took = b.scratch_file("took")?;
    let tokens = b.scratch_file("tokens")?;
    let c = b.client().await?;
    let t0 = Instant::now();

    // Every instance starts before any worker runs: the first events are sent before any
    // instance can wait for them.
    let mut handles: Vec<Handle<Gathered>> = Vec::new();
    for i in 0..INSTANCES {
        let h = if i < REPLAY {
            c.start(gather(EVENTS, EVENT.into(), took.clone())).await?
        } else {
            c.start(gather_snap(EVENTS, EVENT.into(), took.clone()))
                .await?
        };
        handles.push(h);
    }
    let suspended = c.start(await_resume(tokens.clone())).await?;
    for k in 0..EARLY {
        send_round(&c, &handles, k).await?;
    }

    let mut w = b.worker_processes(WORKER, 3).await?;
    // The early events are taken: every instance now waits in its mailbox.
    let early = INSTANCES * EARLY as usize;
    wait_for(LIMIT, || async { Ok(takers(&took).len() >= early) })
        .await
        .context("the events sent before the workers ran were not taken")?;
    // The suspension handed out its token.
    wait_for(LIMIT, || async {
        Ok(!std::fs::read_to_string(&tokens)?.trim().is_empty())
    })
    .await
    .context("the suspension gave out no token")?;
    let token_text = std::fs::read_to_string(&tokens)?;
    let token: ResumeToken = token_text.lines().next().context("a token line")?.parse()?;
    anyhow::ensure!(
        token.instance() == suspended.id(),
        "a token of another instance"
    );

    // Events while the instances wait, until each has taken KILL_AFTER of them.
    for k in EARLY..KILL_AFTER {
        send_round(&c, &handles, k).await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before_kill = INSTANCES * KILL_AFTER as usize;
    wait_for(LIMIT, || async { Ok(takers(&took).len() >= before_kill) })
        .await
        .context("the events sent before the kill were not all taken")?;

    // The victim: the process that took the most events so far, the one merging mailboxes.
    let mut per_pid: BTreeMap<u32, usize> = BTreeMap::new();
    for pid in takers(&took) {
        *per_pid.entry(pid).or_default() += 1;
    }
    let (victim, victim_took) = per_pid
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(p, n)| (*p, *n))
        .context("no process took an event")?;
    let victim_index = w
        .pids()
        .iter()
        .position(|p| *p == victim)
        .context("the busiest taker is not a worker process of the test")?;
    // The next round goes out, and the kill lands as soon as the victim has taken one of
    // its events: the other merges of the round are in flight.
    let mut at_kill = 0;
    let (round, killed) = tokio::join!(send_round(&c, &handles, KILL_AFTER), async {
        let deadline = Instant::now() + LIMIT;
        loop {
            at_kill = takers(&took).len();
            if at_kill > before_kill {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "no event of the round was taken");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        w.kill(victim_index)
    });
    round?;
    let killed_at = killed?;

    // While it is dead: resume the suspension; then start a replacement while the
    // remaining rounds go out.
    c.resume(&token, "first").await?;
    let senders = async {
        for k in KILL_AFTER + 1..EVENTS {
            send_round(&c, &handles, k).await?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::Ok(())
    };
    let (added, sent) = tokio::join!(b.add_worker_process(&mut w), senders);
    let replacement = w.pid(added?);
    sent?;
    // A second resume with the same token is dropped: the suspension has its value.
    c.resume(&token, "second").await?;

    // Every instance returns exactly its events, in the order sent.
    let mut victim_kept = 0;
    let mut after_kill = 0;
    for (i, h) in handles.iter().enumerate() {
        let (values, pids) = within(LIMIT, "an instance's events", h.result())
            .await?
            .with_context(|| format!("instance {i}"))?;
        assert_eq!(
            values,
            expected(i),
            "instance {i} ({}, {}) received other events than were sent to it",
            h.id(),
            if i < REPLAY { "replay" } else { "snapshot" }
        );
        assert_eq!(pids.len(), EVENTS as usize, "instance {i}");
        victim_kept += pids.iter().filter(|p| **p == victim).count();
        // Rounds after KILL_AFTER went out after the kill.
        after_kill += pids[KILL_AFTER as usize + 1..]
            .iter()
            .filter(|p| **p != victim)
            .count();
    }
    let resumed = within(LIMIT, "the suspension", suspended.result()).await??;
    assert_eq!(resumed, "first", "the suspension took a later resume");
    let total = t0.elapsed();

    // The kill fell while the victim was taking events: some of what it took stands.
    assert!(
        victim_kept > 0,
        "none of the events the victim took ({victim_took} lines) is in a result"
    );
    assert_eq!(
        after_kill,
        INSTANCES * (EVENTS - KILL_AFTER - 1) as usize,
        "an event sent after the kill was taken by the killed process"
    );
    assert_eq!(b.queue_len(&format!("{}.dead", b.prefix())).await?, Some(0));
    let exits = w.unexpected_exits();
    assert!(exits.is_empty(), "worker processes exited: {exits:?}");
    let lines = takers(&took).len();
    let reports = w.stop(Duration::from_secs(30)).await?;
    let duplicates: u64 = reports.iter().map(|r| r.duplicate_results).sum();
    println!(
        "{INSTANCES} instances ({REPLAY} replay, {SNAPSHOT} snapshot) × {EVENTS} events on 3 \
         worker processes; {victim} (had taken {victim_took} events before round {KILL_AFTER}) SIGKILLed at {:.2} s, \
         {} of round {KILL_AFTER} taken at the kill; replacement {replacement}; \
         {victim_kept} of the events it took stand in results; {lines} events taken for {} \
         sent (the excess was redone after the kill); all done in {:.2} s; survivors refused \
         {duplicates} duplicate results",
        (killed_at - t0).as_secs_f64(),
        at_kill - before_kill,
        INSTANCES * EVENTS as usize,
        total.as_secs_f64(),
    );
    b.cleanup().await
}

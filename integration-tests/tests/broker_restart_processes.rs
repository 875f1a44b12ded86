//! The broker restarted under worker processes running chains, fan-ins and timers:
//! everything completes once, and the same processes carry on (they reconnect by
//! themselves).
//!
//! This restarts the broker's application under everyone using it, so it is the only test
//! of its binary (cargo runs test binaries one after another, so no other test sees the
//! restart). Run it only against a broker of your own: `.ci/run` uses the machine's.
//!
//! For its duration the test also lowers the broker's retry interval of quorum-queue
//! dead-lettering ([`DlxRetry`]): with RabbitMQ's default, a timer that expires while the
//! broker is starting can wait 3 minutes before it moves on (late, never early).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use dtasks::InstanceId;
use dtasks_integration_tests::tasks::{chain, fan, timed_delay};
use dtasks_integration_tests::{rabbitmqctl, wait_for, within, Broker, DlxRetry};
use futures::{StreamExt, TryStreamExt};
use tokio::task::JoinSet;

const WORKER: &str = env!("CARGO_BIN_EXE_it-worker");

const CHAINS: usize = 120;
const TIMERS: u64 = 20;
const FANS: u64 = 4;
/// Chain completions seen before the broker stops.
const STOP_AFTER: usize = 10;

/// Chain `i`: its start value and its length (8 to 27 steps: the run spans the outage).
fn shape(i: usize) -> (u64, u32) {
    (i as u64 * 1_000, 8 + (i % 20) as u32)
}

/// Timer `i`: 1 to 8 s, so that some fire before the outage, some during, some after.
fn timer_ms(i: u64) -> u64 {
    1_000 + i * 7_000 / TIMERS
}

enum Outcome {
    Chain(usize, (u64, Vec<u32>)),
    Timer(u64, (u64, u64)),
    Fan(u64, (u64, Vec<u32>)),
}

fn label(o: &Outcome) -> String {
    match o {
        Outcome::Chain(i, _) => format!("chain {i}"),
        Outcome::Timer(i, _) => format!("timer {i}"),
        Outcome::Fan(n, _) => format!("fan {n}"),
    }
}

/// The delay queues that hold messages: `name: total (ready)`. A quorum queue's messages
/// that expired but wait for its dead-letter worker count in the total, not as ready.
async fn timer_queues(b: &Broker) -> anyhow::Result<String> {
    let list = rabbitmqctl(&[
        "list_queues",
        "name",
        "messages",
        "messages_ready",
        "--quiet",
        "--no-table-headers",
    ])
    .await?;
    let delay = format!("{}.delay.", b.prefix());
    Ok(list
        .lines()
        .filter(|l| l.starts_with(&delay))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (name, total, ready) = (f.next()?, f.next()?, f.next()?);
            (total != "0").then(|| format!("{name}: {total} ({ready})"))
        })
        .collect::<Vec<_>>()
        .join(", "))
}

#[tokio::test(flavor = "multi_thread")]
async fn worker_processes_ride_out_a_broker_restart() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let _dlx_retry = DlxRetry::lower_to(2_000).await?;
    let mut w = b.worker_processes(WORKER, 2).await?;
    let pids: BTreeSet<u32> = w.pids().into_iter().collect();
    let c = b.client().await?;
    let t0 = Instant::now();

    let mut waiting: JoinSet<Result<(InstanceId, Outcome, Instant), dtasks::Error>> =
        JoinSet::new();
    let limit = Duration::from_secs(60);
    let chains: Vec<_> = within(
        limit,
        "starting the chains",
        futures::stream::iter(0..CHAINS)
            .map(|i| {
                let c = c.clone();
                async move {
                    let (start, steps) = shape(i);
                    c.start(chain(start, steps)).await.map(|h| (i, h))
                }
            })
            .buffer_unordered(16)
            .try_collect(),
    )
    .await??;
    for (i, h) in chains {
        waiting.spawn(async move {
            let r = h.result().await?;
            Ok((h.id().clone(), Outcome::Chain(i, r), Instant::now()))
        });
    }
    for i in 0..TIMERS {
        let h = within(limit, "starting a timer", c.start(timed_delay(timer_ms(i)))).await??;
        waiting.spawn(async move {
            let r = h.result().await?;
            Ok((h.id().clone(), Outcome::Timer(i, r), Instant::now()))
        });
    }
    for i in 0..FANS {
        let h = within(limit, "starting a fan-in", c.start(fan(20 + i))).await??;
        waiting.spawn(async move {
            let r = h.result().await?;
            Ok((h.id().clone(), Outcome::Fan(20 + i, r), Instant::now()))
        });
    }
    let total = CHAINS + TIMERS as usize + FANS as usize;

    let mut done = Vec::new();
    let mut chains_done = 0;
    // Stop the broker after the first chain completions, with most of the work under way.
    while chains_done < STOP_AFTER {
        let r = within(limit, "the first chains", waiting.join_next())
            .await?
            .expect("results pending")??;
        if matches!(r.1, Outcome::Chain(..)) {
            chains_done += 1;
        }
        done.push(r);
    }
    let done_before = done.len();
    let stopping = Instant::now();
    rabbitmqctl(&["stop_app"]).await?;
    let stopped = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let starting = Instant::now();
    rabbitmqctl(&["start_app"]).await?;
    rabbitmqctl(&["await_startup"]).await?;
    let back = Instant::now();
    println!(
        "broker stopped {:.2} s after the start ({done_before} of {total} done; stop_app took \
         {:.2} s), started again {:.2} s later (start_app and await_startup took {:.2} s)",
        (stopping - t0).as_secs_f64(),
        (stopped - stopping).as_secs_f64(),
        (starting - stopped).as_secs_f64(),
        (back - starting).as_secs_f64()
    );

    // After the restart: fail with what is missing, and where timers wait, when nothing
    // completes for a while.
    let mut missing: BTreeSet<String> = (0..CHAINS)
        .map(|i| format!("chain {i}"))
        .chain((0..TIMERS).map(|i| format!("timer {i}")))
        .chain((0..FANS).map(|i| format!("fan {}", 20 + i)))
        .collect();
    for (_, outcome, _) in &done {
        missing.remove(&label(outcome));
    }
    loop {
        match tokio::time::timeout(Duration::from_secs(45), waiting.join_next()).await {
            Ok(Some(joined)) => {
                let r = joined??;
                missing.remove(&label(&r.1));
                done.push(r);
            }
            Ok(None) => break,
            Err(_) => anyhow::bail!(
                "nothing completed for 45 s after the restart; missing {missing:?}; timer \
                 messages waiting: {}",
                timer_queues(&b).await?
            ),
        }
    }
    let all_done = t0.elapsed();

    // Every instance completed once, with the right value.
    assert_eq!(done.len(), total);
    let ids: BTreeSet<&InstanceId> = done.iter().map(|(id, _, _)| id).collect();
    assert_eq!(ids.len(), total, "an instance returned twice");
    let mut early = Vec::new();
    let mut latest = 0;
    let mut timers_during = 0;
    for (id, outcome, at) in &done {
        match outcome {
            Outcome::Chain(i, (value, ran)) => {
                let (start, steps) = shape(*i);
                assert_eq!(*value, start + u64::from(steps), "chain {i} ({id})");
                assert_eq!(ran.len(), steps as usize, "chain {i}");
                assert!(ran.iter().all(|p| pids.contains(p)), "chain {i}: {ran:?}");
            }
            Outcome::Timer(i, (start, end)) => {
                if *end < start + timer_ms(*i) {
                    early.push((i, end - start));
                } else {
                    latest = latest.max(end - start - timer_ms(*i));
                }
                if *at > stopping {
                    timers_during += 1;
                }
            }
            Outcome::Fan(n, (sum, ran)) => {
                assert_eq!(*sum, (1..=*n).sum::<u64>(), "fan({n})");
                assert!(ran.iter().all(|p| pids.contains(p)), "fan({n}): {ran:?}");
            }
        }
    }
    assert!(early.is_empty(), "timers fired early: {early:?}");
    let after = done.iter().filter(|(_, _, at)| *at > stopping).count();
    assert!(after > 0, "everything completed before the restart");
    let next = done
        .iter()
        .map(|(_, _, at)| *at)
        .filter(|at| *at > starting)
        .min()
        .map(|at| (at - starting).as_millis());

    // The same processes, reconnected, serve new work, both of them.
    assert!(
        w.unexpected_exits().is_empty(),
        "{:?}",
        w.unexpected_exits()
    );
    // Both have re-subscribed (a reconnect backs off up to 5 s) before the new work.
    let children = format!("{}.task.it.tagged", b.prefix());
    within(
        limit,
        "both workers subscribed again",
        wait_for(Duration::from_secs(30), || async {
            Ok(b.consumers(&children).await? == 2)
        }),
    )
    .await??;
    // Fan-ins until the children of each process have run: one fan-in's 40 children can
    // all go to one process (its prefetch holds them), so up to five are started.
    let mut ran: BTreeSet<u32> = BTreeSet::new();
    for _ in 0..5 {
        let h = within(
            limit,
            "starting a fan-in after the restart",
            c.start(fan(40)),
        )
        .await??;
        let (sum, by) = within(limit, "a fan-in after the restart", h.result()).await??;
        assert_eq!(sum, (1..=40).sum::<u64>());
        assert!(by.iter().all(|p| pids.contains(p)), "{by:?}");
        ran.extend(by);
        if ran == pids {
            break;
        }
    }
    assert_eq!(ran, pids, "after the restart the children ran in {ran:?}");
    let dead = format!("{}.dead", b.prefix());
    assert_eq!(
        within(limit, "reading the dead letters", b.queue_len(&dead)).await??,
        Some(0)
    );
    let reports = w.stop(Duration::from_secs(30)).await?;
    assert_eq!(
        reports.iter().map(|r| r.pid).collect::<BTreeSet<_>>(),
        pids,
        "the worker processes were replaced"
    );
    let duplicates: u64 = reports.iter().map(|r| r.duplicate_results).sum();
    let restarts: u64 = reports.iter().map(|r| r.restarts).sum();
    println!(
        "{total} instances ({CHAINS} chains, {TIMERS} timers, {FANS} fan-ins) on 2 worker \
         processes: {after} completed after the broker stopped ({timers_during} of them \
         timers, the latest {latest} ms late); first completion {} after start_app; all done in {:.2} s; \
         consumer restarts {restarts}; duplicate results refused {duplicates}",
        next.map_or("none".to_string(), |ms| format!("{ms} ms")),
        all_done.as_secs_f64(),
    );
    within(limit, "the cleanup", b.cleanup()).await?
}

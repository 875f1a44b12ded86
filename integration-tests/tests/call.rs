//! `Client::call` on RabbitMQ with worker processes: results come back on the client's
//! reply queue, no per-instance queue is created, a worker killed with SIGKILL mid-run
//! loses no call, and calls survive the broker closing every connection.

use std::collections::HashSet;
use std::time::Duration;

use dtasks_integration_tests::tasks::{chain, fan};
use dtasks_integration_tests::{listed_queues, within, Broker};
use futures::StreamExt;
use tokio::task::JoinSet;

const WORKER: &str = env!("CARGO_BIN_EXE_it-worker");

#[tokio::test(flavor = "multi_thread")]
async fn calls_return_their_results_and_create_no_instance_queues() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let w = b.worker_processes(WORKER, 2).await?;
    let transport = b.transport().await?;
    let c = dtasks::Client::new(transport.clone());
    let (v, pids) = within(Duration::from_secs(30), "a chain call", c.call(chain(5, 4))).await??;
    assert_eq!((v, pids.len()), (9, 4));
    let (sum, _) = within(Duration::from_secs(30), "a fan call", c.call(fan(30))).await??;
    assert_eq!(sum, (1..=30).sum::<u64>());
    // Many at once, each with its own result.
    let results: Vec<_> = futures::stream::iter(0..200u64)
        .map(|i| {
            let c = c.clone();
            async move { c.call(chain(i * 100, 3)).await.map(|(v, _)| (i, v)) }
        })
        .buffer_unordered(200)
        .collect()
        .await;
    for r in results {
        let (i, v) = r?;
        assert_eq!(v, i * 100 + 3);
    }
    // One reply queue for the client; no result or status queue per instance.
    let queues = listed_queues(b.prefix())
        .await
        .expect("rabbitmqctl lists the queues");
    let replies = queues.iter().filter(|q| q.contains(".reply.")).count();
    assert_eq!(replies, 1, "{queues:?}");
    let per_instance: Vec<&String> = queues
        .iter()
        .filter(|q| q.contains(".result.") || q.contains(".status."))
        .collect();
    assert!(per_instance.is_empty(), "{per_instance:?}");
    // Closing the transport takes the reply queue with it (nobody else reads it), and
    // its consumer does not declare it again.
    drop(c);
    transport.close().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let queues = listed_queues(b.prefix())
        .await
        .expect("rabbitmqctl lists the queues");
    let replies: Vec<&String> = queues.iter().filter(|q| q.contains(".reply.")).collect();
    assert!(replies.is_empty(), "{replies:?}");
    w.stop(Duration::from_secs(20)).await?;
    b.cleanup().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_mid_run_loses_no_call() -> anyhow::Result<()> {
    const N: u64 = 200;
    let b = Broker::start().await?;
    let mut w = b.worker_processes(WORKER, 2).await?;
    let c = b.client().await?;
    let mut calls = JoinSet::new();
    for i in 0..N {
        let c = c.clone();
        // Chains of 2 to 13 steps, so that completions spread over the run.
        calls.spawn(async move {
            c.call(chain(i * 1_000, 2 + (i % 12) as u32))
                .await
                .map(|r| (i, r))
        });
    }
    let mut seen = HashSet::new();
    let mut killed = false;
    while let Some(joined) = within(Duration::from_secs(90), "the calls", calls.join_next()).await?
    {
        let (i, (v, pids)) = joined??;
        assert_eq!(v, i * 1_000 + 2 + i % 12, "call {i}");
        assert_eq!(pids.len() as u64, 2 + i % 12);
        assert!(seen.insert(i), "call {i} returned twice");
        if !killed && seen.len() >= 20 {
            w.kill(0)?;
            killed = true;
        }
    }
    assert!(killed, "the kill happened");
    assert_eq!(seen.len() as u64, N);
    drop(c);
    drop(w);
    b.cleanup().await
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_survive_the_broker_closing_every_connection() -> anyhow::Result<()> {
    const N: u64 = 100;
    let b = Broker::start().await?;
    let w = b.worker_processes(WORKER, 2).await?;
    let c = b.client().await?;
    // The first call creates the reply queue and subscribes the client to it.
    let (v, _) = within(Duration::from_secs(30), "a first call", c.call(chain(1, 1))).await??;
    assert_eq!(v, 2);
    let spawn = |calls: &mut JoinSet<_>, from: u64| {
        for i in from..from + N {
            let c = c.clone();
            calls.spawn(async move {
                c.call(chain(i * 1_000, 2 + (i % 12) as u32))
                    .await
                    .map(|r| (i, r))
            });
        }
    };
    let mut calls = JoinSet::new();
    spawn(&mut calls, 0);
    let mut seen = HashSet::new();
    let mut cut = 0;
    while let Some(joined) = within(Duration::from_secs(90), "the calls", calls.join_next()).await?
    {
        let (i, (v, pids)) = joined??;
        assert_eq!(v, i * 1_000 + 2 + i % 12, "call {i}");
        assert_eq!(pids.len() as u64, 2 + i % 12);
        assert!(seen.insert(i), "call {i} returned twice");
        if cut == 0 && seen.len() >= 10 {
            // The client's connections and the workers' alike: every consumer, the
            // client's reply consumer included, has to subscribe again.
            cut = b.cut_connections().await?;
            // These calls can only be answered through the new subscriptions.
            spawn(&mut calls, N);
        }
    }
    assert!(
        cut >= 3,
        "the client's and both workers' connections were cut ({cut})"
    );
    assert_eq!(seen.len() as u64, 2 * N);
    drop(c);
    w.stop(Duration::from_secs(20)).await?;
    b.cleanup().await
}

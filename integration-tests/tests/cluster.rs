//! A 3-node RabbitMQ cluster (`deploy/cluster.sh`, started and stopped by these tests) loses
//! the node that leads the busiest queues (`kill -9` of its Erlang VM) in the middle of a
//! run of chains of child calls (W1b-like) and of `when_all` fan-ins (W2-like), with three
//! worker processes and a client that know every node: nothing is lost, every instance
//! completes once with its whole result, and the stall is measured. Each DTask has three
//! task queues, whose leaders the cluster places on its three nodes. A second test
//! publishes, from a channel that never wrote to a queue, right after that queue's
//! leader was killed: the publish goes through once the queue has a new leader. The two
//! scenarios share one cluster and run in one test, the publish first: the run then starts
//! again the node the first killed, which rejoins, and deletes the first one's queues.
//!
//! The test needs `rabbitmq-server` on this machine (it fails, not skips, without it):
//! the cluster's nodes listen on 5681-5683 and keep their files in their own directory,
//! beside the broker of the other tests.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use dtasks::transport::{Destination, Outgoing, Transport as _};
use dtasks::{Client, InstanceId};
use dtasks_integration_tests::tasks::{chain, fan};
use dtasks_integration_tests::{wait_for, within, Broker};

const WORKER: &str = env!("CARGO_BIN_EXE_it-worker");

/// Chains of `STEPS` child calls, and fan-ins of `CHILDREN` children.
const CHAINS: u64 = 40;
const STEPS: u32 = 300;
const FANS: u64 = 40;
const CHILDREN: u64 = 200;

/// The cluster's directory (not the script's default). Node names and ports are the
/// script's: a cluster of them started by hand is stopped by this test first.
const DIR: &str = "/tmp/dtasks-cluster-test";

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/cluster.sh")
}

/// Runs `deploy/cluster.sh args` and returns its standard output.
fn cluster(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(script())
        .args(args)
        .env("DTASKS_CLUSTER_DIR", DIR)
        .output()
        .with_context(|| format!("running {}", script().display()))?;
    if !out.status.success() {
        bail!(
            "deploy/cluster.sh {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The one cluster of this file's directory, which its two scenarios share, one after the
/// other in a fixed order: the first starts it from nothing (a cluster left by an earlier run is
/// removed first), the next starts again the node the first killed (it rejoins) and
/// deletes the first one's queues, and the last to end discards it.
struct Shared {
    started: bool,
    /// The turn of the test that runs next.
    next: usize,
    /// Tests of this file that have not ended yet.
    left: usize,
    /// The prefix of the queues the test before left on the cluster.
    leftover: Option<String>,
}

static CLUSTER: tokio::sync::Mutex<Shared> = tokio::sync::Mutex::const_new(Shared {
    started: false,
    next: 0,
    left: 2,
    leftover: None,
});

/// The cluster, every node running, held for the length of a test. Dropped when the test
/// ends, whatever the outcome: the next test's turn comes, and the last one's discards
/// the cluster.
struct Up {
    shared: tokio::sync::MutexGuard<'static, Shared>,
    /// How long starting the cluster (or its killed node) took.
    took: Duration,
}

impl Up {
    /// Leaves the queues of `prefix` for the next test to delete, once every node runs
    /// again (deleting a quorum queue one of whose members is down takes seconds each).
    fn leave(&mut self, prefix: &str) {
        self.shared.leftover = Some(prefix.to_string());
    }
}

/// Waits for the turn `turn` (from 0) and for the cluster, and starts what of it is not
/// running.
async fn cluster_up(turn: usize) -> anyhow::Result<Up> {
    let mut shared = loop {
        let shared = CLUSTER.lock().await;
        if shared.next >= turn {
            break shared;
        }
        drop(shared);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let t = Instant::now();
    let fresh = !shared.started;
    shared.started = true;
    let leftover = shared.leftover.take();
    let mut up = Up {
        shared,
        took: Duration::ZERO,
    };
    if fresh {
        cluster(&["stop"])?;
    }
    // Idempotent: on a running cluster, only a node that is not running starts (and
    // rejoins).
    cluster(&["start"])?;
    up.took = t.elapsed();
    if let Some(prefix) = leftover {
        let urls: Vec<String> = cluster(&["urls"])?.lines().map(str::to_string).collect();
        delete_queues_of(&urls, &prefix).await?;
    }
    Ok(up)
}

impl Drop for Up {
    fn drop(&mut self) {
        self.shared.next += 1;
        self.shared.left -= 1;
        if self.shared.left == 0 {
            // Thrown away: killed rather than stopped in order, which takes a node leading
            // hundreds of quorum queues a minute.
            if let Err(e) = cluster(&["discard"]) {
                eprintln!("stopping the cluster: {e}");
            }
        }
    }
}

/// Deletes the queues of the deployment `prefix` from the cluster at `urls`.
async fn delete_queues_of(urls: &[String], prefix: &str) -> anyhow::Result<()> {
    let out = ctl(&["list_queues", "name", "--quiet", "--no-table-headers"])?;
    let start = format!("{prefix}.");
    let mut conn = None;
    for url in urls {
        if let Ok(c) = lapin::Connection::connect(url, Default::default()).await {
            conn = Some(c);
            break;
        }
    }
    let conn = conn.context("no node of the cluster takes a connection")?;
    let ch = conn.create_channel().await?;
    for q in out.lines().map(str::trim).filter(|q| q.starts_with(&start)) {
        ch.queue_delete(q.into(), Default::default())
            .await
            .with_context(|| format!("deleting {q}"))?;
    }
    let _ = ch.close(200, "OK".into()).await;
    let _ = conn.close(200, "OK".into()).await;
    Ok(())
}

/// `rabbitmqctl args` on the first node of the cluster that answers.
fn ctl(args: &[&str]) -> anyhow::Result<String> {
    let mut errors = Vec::new();
    for n in 1..=3 {
        let out = Command::new("timeout")
            .arg("60")
            .arg("rabbitmqctl")
            .arg("-n")
            .arg(format!("rabbit{n}@localhost"))
            .args(args)
            .output()
            .context("running rabbitmqctl")?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        errors.push(format!(
            "node {n}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    bail!("rabbitmqctl {args:?} failed on every node: {errors:?}")
}

/// A replicated queue of the deployment as `rabbitmqctl` lists it.
#[derive(Debug, Clone, Copy)]
struct Replicated {
    /// The leader's node (1 to 3).
    leader: usize,
    /// Its members, and those of them running.
    members: usize,
    online: usize,
}

/// Each quorum queue and stream of `prefix` that has a leader: its leader, members and
/// running members.
fn leaders(prefix: &str) -> anyhow::Result<BTreeMap<String, Replicated>> {
    let out = ctl(&[
        "list_queues",
        "name",
        "type",
        "leader",
        "members",
        "online",
        "--quiet",
        "--no-table-headers",
    ])?;
    let mut map = BTreeMap::new();
    for line in out.lines() {
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.len() < 5 || !cols[0].starts_with(prefix) || !matches!(cols[1], "quorum" | "stream")
        {
            continue;
        }
        let node = |s: &str| {
            s.trim_start_matches("rabbit")
                .split('@')
                .next()
                .and_then(|n| n.parse::<usize>().ok())
        };
        let Some(leader) = node(cols[2]) else {
            continue;
        };
        let members = cols[3].matches("@localhost").count();
        let online = cols[4].matches("@localhost").count();
        map.insert(
            cols[0].to_string(),
            Replicated {
                leader,
                members,
                online,
            },
        );
    }
    Ok(map)
}

async fn a_cluster_loses_the_node_leading_the_busiest_queues_mid_run() -> anyhow::Result<()> {
    // Second: it restarts the node the first test killed.
    let up = cluster_up(1).await?;
    let urls: Vec<String> = cluster(&["urls"])?.lines().map(str::to_string).collect();
    assert_eq!(urls.len(), 3, "{urls:?}");

    let b = Broker::start_at(&urls.join(",")).await?;
    // Each DTask has a task queue per node (declared by dtasks on node `i mod 3`).
    let env = [
        ("DTASKS_QUORUM_MAILBOXES", "1"),
        ("DTASKS_TASK_QUEUES", "3"),
    ];
    let mut w = b.worker_processes_with(WORKER, 3, &env).await?;
    // Results come from the instance store (a stream, replicated): a client's reply
    // queue is a classic queue on one node.
    let t = b
        .transport_with(|c| {
            c.with_quorum_mailboxes(true)
                .with_reply_queues(false)
                .with_task_queues(3)
        })
        .await?;
    let c = Client::new(t.clone());

    // Every quorum queue of the deployment is replicated over the 3 nodes.
    let before = leaders(b.prefix())?;
    for (q, r) in &before {
        assert_eq!(r.members, 3, "{q}: {r:?}");
    }
    // The hot DTask of the run (the children) has its 3 task queues led by 3 nodes.
    let mut child_leaders = Vec::new();
    for i in 0..3 {
        let q = format!("{}.task.it.tagged.{i}", b.prefix());
        let r = before.get(&q).with_context(|| format!("no {q}"))?;
        child_leaders.push(r.leader);
    }
    child_leaders.sort();
    assert_eq!(child_leaders, [1, 2, 3], "the child's task queues' leaders");

    // The node to kill: the one leading the most of the deployment's queues, the first
    // of equals (node 1 also holds every process's connections: they fail over).
    let mut per_node = [0usize; 4];
    for r in before.values() {
        per_node[r.leader] += 1;
    }
    let most = per_node.iter().copied().max().unwrap_or(0);
    let victim = (1..=3).find(|n| per_node[*n] == most).unwrap_or(1);

    // The run: chains and fan-ins at once; each completion is timed.
    let done: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let t0 = Instant::now();
    let mut runs = Vec::new();
    for i in 0..CHAINS {
        let h = c.start(chain(i * 1000, STEPS)).await?;
        let done = done.clone();
        runs.push(tokio::spawn(async move {
            let (v, pids) = h.result().await.with_context(|| format!("chain {i}"))?;
            done.lock().unwrap().push(Instant::now());
            anyhow::ensure!(v == i * 1000 + u64::from(STEPS), "chain {i} returned {v}");
            anyhow::ensure!(
                pids.len() == STEPS as usize,
                "chain {i}: {} steps",
                pids.len()
            );
            Ok(())
        }));
    }
    for i in 0..FANS {
        let h = c.start(fan(CHILDREN)).await?;
        let done = done.clone();
        runs.push(tokio::spawn(async move {
            let (sum, pids) = h.result().await.with_context(|| format!("fan-in {i}"))?;
            done.lock().unwrap().push(Instant::now());
            anyhow::ensure!(
                sum == (1..=CHILDREN).sum::<u64>(),
                "fan-in {i} summed {sum}"
            );
            anyhow::ensure!(pids.len() as u64 == CHILDREN, "fan-in {i}");
            Ok(())
        }));
    }
    let total = runs.len();
    // The client declared the 3 task queues of each of its 2 DTasks through one
    // connection per node, besides its publisher and consumer connections.
    let opened = t.connections_opened();
    assert!(opened <= 2 + 3, "the client opened {opened} connections");

    // Mid-run: once a few instances completed and every replicated queue of the
    // deployment (every fan-in's mailbox among them) runs on all 3 of its members. (A
    // quorum queue or stream whose members are still starting when a node dies can be
    // left without a quorum, refusing every publish: RabbitMQ 3.10 does not recover it.
    // docs/architecture.md, section 5, "A cluster".)
    let mailboxes = format!("{}.mbox.", b.prefix());
    wait_for(Duration::from_secs(60), || async {
        let now = leaders(b.prefix())?;
        let led = now.keys().filter(|q| q.starts_with(&mailboxes)).count();
        let all_up = now.values().all(|r| r.online == 3);
        Ok(done.lock().unwrap().len() >= 2 && led as u64 >= FANS && all_up)
    })
    .await
    .context(
        "nothing completed, or the replicated queues were not all up on 3 nodes, before \
         the kill",
    )?;
    let pid = cluster(&["pid", &victim.to_string()])?.trim().to_string();
    let completed_before = done.lock().unwrap().len();
    assert!(completed_before < total, "the run was over before the kill");
    let status = Command::new("kill").args(["-9", &pid]).status()?;
    assert!(status.success(), "kill -9 {pid}");
    let killed_at = Instant::now();
    let kill_after = killed_at - t0;

    for r in runs {
        within(Duration::from_secs(180), "an instance of the run", r).await???;
    }
    let finished_after = killed_at.elapsed();
    let times = done.lock().unwrap().clone();
    assert_eq!(times.len(), total, "every instance completed once");
    // The stall: the longest time without a completion after the kill.
    let mut after: Vec<Instant> = times.iter().copied().filter(|t| *t > killed_at).collect();
    after.sort();
    let mut stall = Duration::ZERO;
    let mut last = killed_at;
    for t in &after {
        stall = stall.max(*t - last);
        last = *t;
    }
    // The leaders moved off the dead node, and every survivor still runs.
    let moved = leaders(b.prefix())?;
    let victim_node = format!("rabbit{victim}@localhost");
    let still = moved.values().filter(|r| r.leader == victim).count();
    assert_eq!(still, 0, "queues still led by the dead {victim_node}");
    assert_eq!(b.queue_len(&format!("{}.dead", b.prefix())).await?, Some(0));
    let exits = w.unexpected_exits();
    assert!(exits.is_empty(), "{exits:?}");
    let reports = w.stop(Duration::from_secs(60)).await?;
    let duplicates: u64 = reports.iter().map(|r| r.duplicate_results).sum();
    let restarts: u64 = reports.iter().map(|r| r.restarts).sum();
    println!(
        "3-node cluster up again in {} ms (the node the publish test killed restarted); {CHAINS} chains of {STEPS} child calls and {FANS} \
         when_all of {CHILDREN} on 3 worker processes; {victim_node} (leading {} of {} \
         quorum queues and streams; per node {:?}) killed {} ms after the start with {completed_before} of {total} \
         instances done; all {total} completed once, the last {} ms after the kill; longest \
         stall without a completion after the kill {} ms; {duplicates} duplicate results \
         refused, {restarts} consumer restarts",
        up.took.as_millis(),
        per_node[victim],
        before.len(),
        &per_node[1..],
        kill_after.as_millis(),
        finished_after.as_millis(),
        stall.as_millis(),
    );
    drop(c);
    // The cluster is thrown away with them.
    b.leave_queues().await;
    Ok(())
}

/// RabbitMQ 3.10 keeps, per channel and quorum queue, what the channel's first publish to
/// the queue found: a first publish that comes right after the queue's leader died, before
/// its new leader is recorded, leaves that channel refusing every later publish to the
/// queue, for good. The transport closes a channel the broker refused a message on, so
/// the retry goes through on a fresh channel once the queue has its new leader (without
/// that, it is refused until the publish timeout).
async fn a_first_publish_right_after_a_leader_died_goes_through() -> anyhow::Result<()> {
    // First: its deployment has a handful of queues, which the next test deletes.
    let mut up = cluster_up(0).await?;
    let urls: Vec<String> = cluster(&["urls"])?.lines().map(str::to_string).collect();
    assert_eq!(urls.len(), 3, "{urls:?}");
    let b = Broker::start_at(&urls.join(",")).await?;
    let id = InstanceId::random();
    let message = |body: &[u8], message_id: &str| Outgoing {
        destination: Destination::Task {
            name: "probe".into(),
        },
        body: body.to_vec(),
        message_id: message_id.to_string(),
        instance: id.clone(),
        dtask: "probe".to_string(),
        trace: None,
    };
    // The queue, made by a first transport.
    let first = b.transport().await?;
    first.publish(vec![message(b"before", "m-1")]).await?;
    let queue = format!("{}.task.probe", b.prefix());
    let leader = leaders(b.prefix())?
        .get(&queue)
        .with_context(|| format!("no leader for {queue}"))?
        .leader;
    // A transport connected to another node, whose channels have published, but never
    // to that queue.
    let other = (1..=3).find(|n| *n != leader).unwrap_or(1);
    let t = b
        .transport_with(|c| {
            c.with_urls([urls[other - 1].clone()])
                .with_publish_timeout(Duration::from_secs(40))
        })
        .await?;
    let warm = Outgoing {
        destination: Destination::Task {
            name: "warm".into(),
        },
        ..message(b"warm", "m-0")
    };
    t.publish(vec![warm]).await?;

    let pid = cluster(&["pid", &leader.to_string()])?.trim().to_string();
    let status = Command::new("kill").args(["-9", &pid]).status()?;
    assert!(status.success(), "kill -9 {pid}");
    let killed_at = Instant::now();
    within(
        Duration::from_secs(35),
        "the first publish after the leader died",
        t.publish(vec![message(b"after", "m-2")]),
    )
    .await??;
    let took = killed_at.elapsed();
    // Both messages are in the queue, now led by a survivor.
    wait_for(Duration::from_secs(20), || async {
        let out = ctl(&[
            "list_queues",
            "name",
            "messages",
            "--quiet",
            "--no-table-headers",
        ])?;
        Ok(out
            .lines()
            .any(|l| l.split('\t').collect::<Vec<_>>() == [queue.as_str(), "2"]))
    })
    .await
    .context("the queue does not hold both messages")?;
    println!(
        "a first publish on rabbit{other}@localhost to a queue whose leader \
         rabbit{leader}@localhost was killed went through {} ms after the kill",
        took.as_millis()
    );
    up.leave(b.prefix());
    drop((t, first));
    b.leave_queues().await;
    Ok(())
}

/// The file's one test: both scenarios on one cluster, in their order, in one process
/// (a test runner that runs each test in a process of its own would otherwise start two
/// clusters on the same ports). The second runs even when the first failed.
#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_keeps_its_work_when_queue_leaders_die() -> anyhow::Result<()> {
    let publish = a_first_publish_right_after_a_leader_died_goes_through().await;
    let run = a_cluster_loses_the_node_leading_the_busiest_queues_mid_run().await;
    publish.context("a first publish right after a leader died")?;
    run.context("a node leading the busiest queues killed mid-run")
}

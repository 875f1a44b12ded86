//! Two client processes start the same chosen ids at the same moment, against two worker
//! processes on RabbitMQ: for each id exactly one start wins and the other is refused
//! with `is_already_started`, and the instance's `DTask::run` side effect happens once.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use dtasks::InstanceId;
use dtasks_integration_tests::{wait_for, within, Broker};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

const WORKER: &str = env!("CARGO_BIN_EXE_it-worker");
const STARTER: &str = env!("CARGO_BIN_EXE_it-start");

/// Ids each client process starts (all of them at once).
const IDS: usize = 20;
/// How long each instance waits on its timer after its side effect: a losing start may
/// reach a worker while the winner still runs.
const WAIT_MS: u64 = 300;

const LIMIT: Duration = Duration::from_secs(60);

/// A client process (`it-start`), connected and waiting for the signal to start.
struct Starter {
    child: Child,
    out: Lines<BufReader<ChildStdout>>,
}

impl Starter {
    async fn spawn(b: &Broker, path: &str, ids: &[InstanceId]) -> anyhow::Result<Self> {
        let mut child = Command::new(STARTER)
            .arg(path)
            .arg(WAIT_MS.to_string())
            .args(ids.iter().map(InstanceId::as_str))
            .env("AMQP_URL", b.url())
            .env("DTASKS_PREFIX", b.prefix())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting it-start")?;
        let mut out = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let ready = within(LIMIT, "the client process connects", out.next_line()).await??;
        anyhow::ensure!(ready.as_deref() == Some("ready"), "it-start said {ready:?}");
        Ok(Self { child, out })
    }

    async fn go(&mut self) -> anyhow::Result<()> {
        let stdin = self.child.stdin.as_mut().context("stdin")?;
        stdin.write_all(b"go\n").await?;
        stdin.flush().await?;
        Ok(())
    }

    /// What the process said about each id.
    async fn outcomes(mut self) -> anyhow::Result<HashMap<String, String>> {
        let mut said = HashMap::new();
        while let Some(line) = within(LIMIT, "the client's starts", self.out.next_line()).await?? {
            if line == "done" {
                let status = within(LIMIT, "the client's exit", self.child.wait()).await??;
                anyhow::ensure!(status.success(), "it-start exited with {status}");
                return Ok(said);
            }
            let (id, outcome) = line.split_once(' ').context("`<id> <outcome>`")?;
            said.insert(id.to_string(), outcome.to_string());
        }
        anyhow::bail!("it-start ended without `done`: {said:?}")
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_client_processes_start_the_same_ids_at_once_and_each_runs_once() -> anyhow::Result<()>
{
    let b = Broker::start().await?;
    let w = b.worker_processes(WORKER, 2).await?;
    let path = b.scratch_file("side-effects")?;
    let ids: Vec<InstanceId> = (0..IDS)
        .map(|i| InstanceId::new(format!("once-{i}-{}", InstanceId::random())))
        .collect::<Result<_, _>>()?;
    let mut first = Starter::spawn(&b, &path, &ids).await?;
    let mut second = Starter::spawn(&b, &path, &ids).await?;
    // Both are connected and waiting: start them together.
    let (a, z) = tokio::join!(first.go(), second.go());
    a?;
    z?;
    let (first, second) = tokio::join!(first.outcomes(), second.outcomes());
    let (first, second) = (first?, second?);

    // For each id, one start won and the other was refused.
    let mut won = [0usize; 2];
    for id in &ids {
        let a = first.get(id.as_str()).map(String::as_str);
        let z = second.get(id.as_str()).map(String::as_str);
        match (a, z) {
            (Some("ok"), Some("already_started")) => won[0] += 1,
            (Some("already_started"), Some("ok")) => won[1] += 1,
            other => anyhow::bail!("{id}: the two starts said {other:?}"),
        }
    }
    println!("starts won by each client process: {won:?}");

    // Every instance finishes, and its side effect happened once.
    let c = b.client().await?;
    for id in &ids {
        let pid = within(LIMIT, "a result", c.handle::<u32>(id.clone()).result()).await??;
        assert!(w.pids().contains(&pid), "{id} ran in {pid}");
    }
    let lines = std::fs::read_to_string(&path)?;
    let mut runs: HashMap<&str, usize> = HashMap::new();
    for line in lines.lines() {
        let tag = line.split_whitespace().next().context("a tag")?;
        *runs.entry(tag).or_default() += 1;
    }
    for id in &ids {
        assert_eq!(runs.get(id.as_str()), Some(&1), "side effects: {runs:?}");
    }
    assert_eq!(runs.len(), IDS, "side effects of unknown ids: {runs:?}");

    // Every refused start reached a worker, which dropped it without running it.
    let queue = format!("{}.task.it.once", b.prefix());
    wait_for(LIMIT, || async {
        Ok(b.queue_len(&queue).await? == Some(0))
    })
    .await
    .context("the task queue did not drain")?;
    let mut w = w;
    let exits = w.unexpected_exits();
    anyhow::ensure!(exits.is_empty(), "worker processes exited: {exits:?}");
    let reports = w.stop(Duration::from_secs(30)).await?;
    let dropped: u64 = reports.iter().map(|r| r.duplicate_starts).sum();
    assert_eq!(dropped, IDS as u64, "refused starts dropped by the workers");
    b.cleanup().await
}

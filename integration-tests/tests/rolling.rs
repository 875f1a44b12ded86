//! Rolling upgrades on RabbitMQ, with two builds side by side: this one, and the next
//! (`integration-tests/next`: dtasks with the feature `next-revision`, whose state has one
//! more field, which this build cannot decode).
//!
//! - Mixed workers, clients of both builds: every instance completes once. The next build
//!   reads what this one writes; this build's worker hands the next build's starts back
//!   to the queue (for longer than the retry budget lasts, before the next build's worker
//!   joins), and the next build's worker runs them; this build's client reads the results
//!   the next build's worker writes (a result's form did not change, so it keeps its
//!   revision).
//! - No worker of the next build: this build's workers hand a newer start back until their
//!   patience is over, then fail its root visibly — its waiter gets the failure at once —
//!   and dead-letter the message whole, with a reason that says why, ready to replay once
//!   a newer worker runs. Nothing hangs, nothing is lost.
//!
//! That this build reads what the previous revision wrote is checked on bytes kept from
//! it: `protocol::codec::tests::what_the_first_revision_wrote_decodes`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use dtasks_integration_tests::procs::WorkerProcesses;
use dtasks_integration_tests::tasks::add_one;
use dtasks_integration_tests::{wait_for, within, Broker};
use lapin::options::ConfirmSelectOptions;
use lapin::types::AMQPValue;
use tokio::io::AsyncReadExt as _;

const WORKER: &str = env!("CARGO_BIN_EXE_it-worker");

/// How long the worker processes hand a message of a newer build back.
const PATIENCE: Duration = Duration::from_secs(4);

#[tokio::test(flavor = "multi_thread")]
async fn a_start_of_a_newer_build_goes_round_the_workers_then_fails_its_waiter_visibly(
) -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let c = b.client().await?;
    // A start as this build writes it, taken off its queue before any worker runs, and
    // rewritten as the next revision would write it.
    let h = c.start(add_one(41)).await?;
    let queue = format!("{}.task.it.add_one", b.prefix());
    let mut taken = b.take_all(&queue).await?;
    assert_eq!(taken.len(), 1, "the start waits in its queue");
    let start = taken.remove(0);
    let newer = dtasks::test_util::as_next_revision(&start.data).context("a step message")?;
    let mut headers = start.properties.headers().clone().unwrap_or_default();
    headers.insert(
        "x-dtasks-envelope".into(),
        AMQPValue::ShortShortUInt(dtasks::ENVELOPE_VERSION + 1),
    );
    let props = start.properties.clone().with_headers(headers);

    let patience = PATIENCE.as_millis().to_string();
    let mut w: WorkerProcesses = b
        .worker_processes_with(WORKER, 2, &[("IT_NEWER_PATIENCE_MS", patience.as_str())])
        .await?;
    wait_for(Duration::from_secs(20), || async {
        Ok(b.consumers(&queue).await? >= 2)
    })
    .await
    .context("the worker processes did not subscribe")?;
    let ch = b.channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    ch.basic_publish(
        "".into(),
        queue.as_str().into(),
        Default::default(),
        &newer,
        props.with_delivery_mode(2),
    )
    .await?
    .await?;
    let published = Instant::now();

    // Within the patience it goes round: neither run nor dead-lettered.
    let dead = format!("{}.dead", b.prefix());
    tokio::time::sleep(PATIENCE / 2).await;
    assert_eq!(b.queue_len(&dead).await?, Some(0));
    let status = c.status(h.id()).await?;
    assert!(!status.is_finished(), "{status:?}");

    // Then its waiter learns that it failed, and why.
    let e = within(Duration::from_secs(60), "the root's failure", h.result())
        .await?
        .expect_err("a start no worker could read cannot succeed");
    let waited = published.elapsed();
    let f = e.failure().context("a failure")?;
    assert!(f.is_dead_lettered(), "{f:?}");
    assert!(f.message().contains("newer build"), "{f:?}");
    assert!(
        waited >= PATIENCE,
        "failed after {waited:?}, before the patience of {PATIENCE:?}"
    );
    assert!(c.status(h.id()).await?.is_finished());

    // The message is dead-lettered whole, once, with its reason.
    wait_for(Duration::from_secs(10), || async {
        Ok(b.queue_len(&dead).await? == Some(1))
    })
    .await?;
    let letters = b.take_all(&dead).await?;
    assert_eq!(letters.len(), 1);
    assert_eq!(
        letters[0].data, newer,
        "the letter keeps the newer bytes whole"
    );
    let reason = match letters[0]
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-dtasks-reason").cloned())
    {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => format!("{other:?}"),
    };
    assert!(reason.contains("envelope revision"), "{reason}");

    let exits = w.unexpected_exits();
    assert!(exits.is_empty(), "{exits:?}");
    let reports = w.stop(Duration::from_secs(30)).await?;
    let dead_lettered: u64 = reports.iter().map(|r| r.dead_lettered).sum();
    assert_eq!(dead_lettered, 1, "{reports:?}");
    println!(
        "a start of envelope revision {} went round 2 worker processes for {waited:?} \
         (patience {PATIENCE:?}) before its root failed visibly",
        dtasks::ENVELOPE_VERSION + 1
    );
    b.cleanup().await
}

/// Builds the next build (`integration-tests/next`) into this build's target directory,
/// where it shares the dependencies already built; returns its binary.
fn build_next() -> anyhow::Result<PathBuf> {
    let target = Path::new(WORKER)
        .parent()
        .and_then(Path::parent)
        .context("the target directory")?;
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("next/Cargo.toml");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "--quiet", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target)
        .stdin(Stdio::null())
        .output()
        .context("running cargo")?;
    anyhow::ensure!(
        out.status.success(),
        "building the next build failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exe = Path::new(WORKER).with_file_name("it-next");
    anyhow::ensure!(exe.exists(), "no {}", exe.display());
    Ok(exe)
}

/// A process of the next build, on the broker of `b`.
fn next_process(exe: &Path, b: &Broker, args: &[&str]) -> anyhow::Result<tokio::process::Child> {
    Ok(tokio::process::Command::new(exe)
        .args(args)
        .env("AMQP_URL", b.url())
        .env("DTASKS_PREFIX", b.prefix())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?)
}

/// The value of `key` in the line of `out` that starts with `prefix`.
fn field(out: &str, prefix: &str, key: &str) -> Option<u64> {
    out.lines()
        .find(|l| l.starts_with(prefix))?
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn two_builds_side_by_side_complete_every_instance_once() -> anyhow::Result<()> {
    let next = tokio::task::spawn_blocking(build_next).await??;
    let revision = Command::new(&next).arg("revision").output()?;
    let revision: u8 = String::from_utf8_lossy(&revision.stdout).trim().parse()?;
    assert!(
        revision > dtasks::ENVELOPE_VERSION,
        "the next build writes revision {revision}, this one {}: was this build compiled \
         with the feature `next-revision` (`--all-features`)?",
        dtasks::ENVELOPE_VERSION
    );
    let b = Broker::start().await?;
    let queue = format!("{}.task.it.add_one", b.prefix());
    // First this build's worker alone, with starts of the next build's client: it hands
    // each back, for longer than the retry budget of 5 deliveries lasts (a hand-back at
    // least every second or so, for 10 s).
    let old = b
        .worker_processes_with(WORKER, 1, &[("IT_NEWER_PATIENCE_MS", "120000")])
        .await?;
    let starter = next_process(&next, &b, &["start", "20"])?;
    let out = within(
        Duration::from_secs(60),
        "the next build's starts",
        starter.wait_with_output(),
    )
    .await??;
    anyhow::ensure!(out.status.success(), "it-next start failed");
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    let ids: Vec<dtasks::InstanceId> = out
        .lines()
        .filter_map(|l| l.strip_prefix("it-next started "))
        .map(|id| dtasks::InstanceId::new(id.trim()))
        .collect::<Result<_, _>>()?;
    assert_eq!(ids.len(), 20, "{out}");
    tokio::time::sleep(Duration::from_secs(10)).await;

    // Then a worker of the next build joins: it runs them all (none is refused as past the
    // budget: a hand-back is a fresh copy, not a redelivery).
    let mut new = next_process(&next, &b, &["worker"])?;
    wait_for(Duration::from_secs(30), || async {
        Ok(b.consumers(&queue).await? >= 2)
    })
    .await
    .context("the next build's worker did not subscribe")?;

    // Starts from this build's client: either build's worker runs them.
    let c = b.client().await?;
    let mut handles = Vec::new();
    for i in 0..20u64 {
        handles.push((i, c.start(add_one(i)).await?));
    }
    for (i, h) in handles {
        let v = within(Duration::from_secs(60), "a start of this build", h.result()).await??;
        assert_eq!(v, i + 1);
    }
    let mut values = Vec::new();
    for id in ids {
        let h = c.handle::<u64>(id);
        values.push(
            within(
                Duration::from_secs(60),
                "a start of the next build",
                h.result(),
            )
            .await??,
        );
    }
    values.sort_unstable();
    assert_eq!(values, (1..=20).collect::<Vec<u64>>());

    // Both builds ran work; this build's worker handed the next build's starts back and
    // dead-lettered nothing; nothing was recorded twice.
    drop(new.stdin.take());
    let mut new_out = String::new();
    new.stdout
        .take()
        .context("stdout")?
        .read_to_string(&mut new_out)
        .await?;
    within(
        Duration::from_secs(30),
        "the next build's worker to stop",
        new.wait(),
    )
    .await??;
    let new_processed = field(&new_out, "it-next stopped", "processed").context("its report")?;
    let old_reports = old.stop(Duration::from_secs(30)).await?;
    let handed_back = old_reports[0].handed_back;
    assert!(
        new_processed >= 20,
        "the next build ran {new_processed}: {new_out}"
    );
    assert!(old_reports[0].processed > 0, "{old_reports:?}");
    // The next build's 20 starts went round this build's worker alone for 10 s: more
    // than 5 hand-backs each on average.
    assert!(handed_back > 20 * 5, "{old_reports:?}");
    assert_eq!(old_reports[0].dead_lettered, 0, "{old_reports:?}");
    assert_eq!(old_reports[0].duplicate_results, 0, "{old_reports:?}");
    assert_eq!(b.queue_len(&format!("{}.dead", b.prefix())).await?, Some(0));
    println!(
        "two builds side by side: 40 instances completed once; the next build's worker \
         handled {new_processed} deliveries, this build's {} (and handed {handed_back} \
         deliveries of the next build's starts back)",
        old_reports[0].processed
    );
    b.cleanup().await
}

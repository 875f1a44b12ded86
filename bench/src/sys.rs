//! The machine and the broker: CPU time of this process and of the broker, the git commit,
//! the date, and a raw connection for looking at and deleting queues.

use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};

/// The broker URL: `AMQP_URL` (its first node when it lists several), or the default.
pub(crate) fn amqp_url() -> String {
    std::env::var("AMQP_URL")
        .ok()
        .filter(|s| !s.is_empty())
        // A cluster's nodes, separated by commas (as the transport reads them): the raw
        // baseline and the benchmark's own connection use the first; dtasks uses all.
        .and_then(|s| {
            s.split(',')
                .map(str::trim)
                .find(|u| !u.is_empty())
                .map(str::to_string)
        })
        .unwrap_or_else(|| dtasks_amqp::DEFAULT_URL.to_string())
}

fn clk_tck() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// User + system CPU seconds of a process (Linux `/proc`), `None` elsewhere.
fn cpu_secs(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the full line: 12 and 13 of `rest`.
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / clk_tck())
}

/// The pid of the local RabbitMQ node (`beam.smp`), when it runs on this machine: the
/// node `RABBITMQ_NODENAME` names when that is set (as for `rabbitmqctl`), else the first
/// node found. Command-line tools (`rabbitmqctl`) run a `beam.smp` too: they are skipped.
pub(crate) fn broker_pid() -> Option<String> {
    let wanted = std::env::var("RABBITMQ_NODENAME")
        .ok()
        .filter(|s| !s.is_empty())
        .map(|n| format!("RABBITMQ_NODENAME={n}"));
    let dir = std::fs::read_dir("/proc").ok()?;
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(comm) = std::fs::read_to_string(e.path().join("comm")) else {
            continue;
        };
        if comm.trim() != "beam.smp" {
            continue;
        }
        let args = |file: &str| -> Vec<String> {
            std::fs::read(e.path().join(file))
                .map(|b| {
                    b.split(|c| *c == 0)
                        .map(|a| String::from_utf8_lossy(a).into_owned())
                        .collect()
                })
                .unwrap_or_default()
        };
        // A node boots the `rabbit` application; a command-line tool runs an escript.
        let cmdline = args("cmdline");
        if !cmdline
            .windows(2)
            .any(|w| w[0] == "rabbit" && w[1] == "boot")
        {
            continue;
        }
        match &wanted {
            Some(w) if !args("environ").iter().any(|v| v == w) => continue,
            _ => return Some(name),
        }
    }
    None
}

/// CPU used over a measured interval.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CpuUse {
    pub(crate) wall: f64,
    /// CPU seconds of this process (workers, client, raw baseline code).
    pub(crate) bench: f64,
    /// CPU seconds of the broker, when it runs here.
    pub(crate) broker: Option<f64>,
    /// CPU seconds of the PostgreSQL server's processes, when it runs here (every
    /// `postgres` process alive at both ends of the interval: the connections of a run
    /// are; other work on the same server counts too).
    pub(crate) database: Option<f64>,
}

/// Measures wall and CPU time from its creation.
pub(crate) struct CpuMeter {
    t0: Instant,
    bench0: f64,
    broker: Option<(String, f64)>,
    database: Vec<(String, f64)>,
}

/// The pids of the processes named `postgres` (the server and its backends).
fn postgres_pids() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        .filter(|n| {
            std::fs::read_to_string(format!("/proc/{n}/comm")).is_ok_and(|c| c.trim() == "postgres")
        })
        .collect()
}

impl CpuMeter {
    pub(crate) fn start(broker: Option<&str>) -> Self {
        Self {
            t0: Instant::now(),
            bench0: cpu_secs("self").unwrap_or(0.0),
            broker: broker.and_then(|p| cpu_secs(p).map(|s| (p.to_string(), s))),
            database: postgres_pids()
                .into_iter()
                .filter_map(|p| cpu_secs(&p).map(|s| (p, s)))
                .collect(),
        }
    }

    pub(crate) fn stop(&self) -> CpuUse {
        CpuUse {
            wall: self.t0.elapsed().as_secs_f64(),
            bench: cpu_secs("self").unwrap_or(0.0) - self.bench0,
            broker: self
                .broker
                .as_ref()
                .and_then(|(p, s0)| cpu_secs(p).map(|s| s - s0)),
            database: (!self.database.is_empty()).then(|| {
                self.database
                    .iter()
                    .filter_map(|(p, s0)| cpu_secs(p).map(|s| s - s0))
                    .sum()
            }),
        }
    }
}

fn git(args: &[&str]) -> Option<String> {
    let o = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// The short commit, and whether tracked files differ from it.
pub(crate) fn commit() -> (String, bool) {
    let short = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    (short, dirty)
}

/// Today's date (UTC) as `YYYY-MM-DD`, and the time as `HH:MM`.
pub(crate) fn utc_now() -> (String, String) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let tod = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        format!("{y:04}-{m:02}-{d:02}"),
        format!("{:02}:{:02}", tod / 3600, (tod % 3600) / 60),
    )
}

/// The soft open-file limit of the local broker process. RabbitMQ's file handle cache
/// sizes itself from it; with the Linux default of 1,024 it runs out of handles once a few
/// hundred classic queues hold messages, and closing and reopening their files costs the
/// broker CPU (its production checklist asks for at least 50,000).
pub(crate) fn broker_open_files(pid: &str) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The broker's version according to `rabbitmqctl`, when it can run.
pub(crate) fn broker_version() -> Option<String> {
    let o = Command::new("rabbitmqctl").arg("version").output().ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

/// A raw connection for looking at queues and deleting them.
pub(crate) struct Admin {
    conn: Connection,
}

impl Admin {
    pub(crate) async fn connect(url: &str) -> anyhow::Result<Self> {
        let conn = Connection::connect(url, ConnectionProperties::default())
            .await
            .with_context(|| format!("no RabbitMQ at {url} (set AMQP_URL)"))?;
        Ok(Self { conn })
    }

    pub(crate) async fn channel(&self) -> anyhow::Result<Channel> {
        Ok(self.conn.create_channel().await?)
    }

    /// `(ready messages, consumers)` of `queue`, `None` when it does not exist.
    pub(crate) async fn peek(&self, queue: &str) -> anyhow::Result<Option<(u32, u32)>> {
        // A passive declare of a missing queue closes its channel: use a throwaway one.
        let ch = self.channel().await?;
        let opts = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        match ch
            .queue_declare(queue.into(), opts, FieldTable::default())
            .await
        {
            Ok(q) => {
                let _ = ch.close(200, "OK".into()).await;
                Ok(Some((q.message_count(), q.consumer_count())))
            }
            Err(e) if e.to_string().contains("NOT_FOUND") || e.to_string().contains("404") => {
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Waits until each of `queues` has at least `n` consumers.
    pub(crate) async fn wait_consumers(
        &self,
        queues: &[String],
        n: u32,
        limit: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        for q in queues {
            loop {
                let c = self.peek(q).await?.map_or(0, |(_, c)| c);
                if c >= n {
                    break;
                }
                if Instant::now() > deadline {
                    anyhow::bail!("{q} has {c} consumers after {limit:?}, expected {n}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// Deletes `names` (missing ones are fine). Returns how many deletes failed.
    pub(crate) async fn delete(&self, names: &[String]) -> anyhow::Result<usize> {
        let mut ch = self.channel().await?;
        let mut failed = 0;
        for name in names {
            if let Err(e) = ch
                .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                .await
            {
                failed += 1;
                eprintln!("warning: deleting queue {name}: {e}");
                ch = self.channel().await?;
            }
        }
        let _ = ch.close(200, "OK".into()).await;
        Ok(failed)
    }
}

/// The queues under `prefix` according to `rabbitmqctl` (`None` when it cannot run).
pub(crate) fn listed_queues(prefix: &str) -> Option<Vec<String>> {
    let out = Command::new("rabbitmqctl")
        .args(["list_queues", "name", "--quiet", "--no-table-headers"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let start = format!("{prefix}.");
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with(&start))
            .map(str::to_string)
            .collect(),
    )
}

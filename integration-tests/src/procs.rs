//! Worker processes: the package's `it-worker` binary (a [`dtasks_actors::WorkerPod`]
//! running [`crate::tasks::registry`]), started under a test's prefix.
//!
//! Each process writes its log to a file of its own; it stops gracefully when its standard
//! input closes (so it never outlives the test process) or on SIGTERM. The set is a guard:
//! dropping it kills and reaps every process still running and, unless the set was
//! stopped cleanly, prints the end of each log.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// What a worker process reported when it stopped gracefully.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessReport {
    /// The process id.
    pub pid: u32,
    /// Deliveries the process handled.
    pub processed: u64,
    /// Deliveries it moved to the dead-letter queue.
    pub dead_lettered: u64,
    /// Result writes refused because the result was already recorded.
    pub duplicate_results: u64,
    /// Consumer restarts by the pod's supervisor.
    pub restarts: u64,
    /// Starts dropped without running because another start holds their id.
    pub duplicate_starts: u64,
    /// Deliveries of messages of a newer build put back for a newer worker.
    pub handed_back: u64,
    /// Mailbox messages the process wrote in packs (`AmqpTransport::packed_messages`).
    pub packed: u64,
}

impl ProcessReport {
    /// Parses the last line `it-worker stopped key=value ...` of a worker's output.
    fn parse(out: &str) -> Option<Self> {
        let line = out
            .lines()
            .rev()
            .find(|l| l.starts_with("it-worker stopped"))?;
        let mut r = ProcessReport::default();
        for kv in line.split_whitespace().skip(2) {
            let (k, v) = kv.split_once('=')?;
            let v: u64 = v.parse().ok()?;
            match k {
                "pid" => r.pid = u32::try_from(v).ok()?,
                "processed" => r.processed = v,
                "dead_lettered" => r.dead_lettered = v,
                "duplicate_results" => r.duplicate_results = v,
                "restarts" => r.restarts = v,
                "duplicate_starts" => r.duplicate_starts = v,
                "handed_back" => r.handed_back = v,
                "packed" => r.packed = v,
                _ => {}
            }
        }
        Some(r)
    }
}

struct Proc {
    child: Child,
    pid: u32,
    stdin: Option<ChildStdin>,
    log: PathBuf,
    /// Killed by the test (SIGKILL) and reaped.
    killed: bool,
}

/// Worker processes started by [`crate::Broker::worker_processes`].
pub struct WorkerProcesses {
    procs: Vec<Proc>,
    dir: PathBuf,
    stopped: bool,
    /// What every process of the set runs, and where: the binary, the broker, the prefix.
    exe: String,
    url: String,
    prefix: String,
    /// More environment variables every process of the set gets.
    env: Vec<(String, String)>,
}

impl std::fmt::Debug for WorkerProcesses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerProcesses")
            .field("pids", &self.pids())
            .finish_non_exhaustive()
    }
}

impl WorkerProcesses {
    /// Starts `n` processes of the binary `exe` (pass `env!("CARGO_BIN_EXE_it-worker")`)
    /// on the broker at `url` under `prefix`. Returns at once: they subscribe meanwhile.
    pub(crate) fn spawn(
        exe: &str,
        url: &str,
        prefix: &str,
        n: usize,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join("dtasks-it-logs").join(prefix);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut set = Self {
            procs: Vec::new(),
            dir,
            stopped: false,
            exe: exe.to_string(),
            url: url.to_string(),
            prefix: prefix.to_string(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        for _ in 0..n {
            set.spawn_one()?;
        }
        Ok(set)
    }

    /// Starts one more process of the set's binary under its prefix; returns its index.
    /// Returns at once: it subscribes meanwhile.
    pub(crate) fn spawn_one(&mut self) -> anyhow::Result<usize> {
        let i = self.procs.len();
        let filter = std::env::var("IT_WORKER_LOG").unwrap_or_else(|_| "info".to_string());
        let log = self.dir.join(format!("worker-{i}.log"));
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut child = Command::new(&self.exe)
            .env("AMQP_URL", &self.url)
            .env("DTASKS_PREFIX", &self.prefix)
            .env("RUST_LOG", &filter)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(file))
            .spawn()
            .with_context(|| format!("starting {}", self.exe))?;
        let pid = child.id();
        let stdin = child.stdin.take();
        self.procs.push(Proc {
            child,
            pid,
            stdin,
            log,
            killed: false,
        });
        Ok(i)
    }

    /// How many processes of the set are running now (a process that exited is reaped).
    pub fn running(&mut self) -> usize {
        (0..self.procs.len()).filter(|i| self.alive(*i)).count()
    }

    /// How many processes were started.
    pub fn len(&self) -> usize {
        self.procs.len()
    }

    /// Whether no process was started.
    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    /// The process ids, in start order.
    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(|p| p.pid).collect()
    }

    /// The id of process `i`.
    pub fn pid(&self, i: usize) -> u32 {
        self.procs[i].pid
    }

    /// Kills process `i` with SIGKILL and reaps it; returns the instant it was signalled.
    pub fn kill(&mut self, i: usize) -> anyhow::Result<Instant> {
        let p = &mut self.procs[i];
        let at = Instant::now();
        // `Child::kill` is SIGKILL on Unix: no shutdown code runs in the worker.
        p.child.kill().context("sending SIGKILL")?;
        p.child.wait().context("reaping a killed worker")?;
        p.killed = true;
        Ok(at)
    }

    /// Whether process `i` is still running (a process that exited is reaped here).
    pub fn alive(&mut self, i: usize) -> bool {
        matches!(self.procs[i].child.try_wait(), Ok(None))
    }

    /// The processes that are not running although the test did not kill them, with
    /// their exit status.
    pub fn unexpected_exits(&mut self) -> Vec<(u32, String)> {
        self.procs
            .iter_mut()
            .filter(|p| !p.killed)
            .filter_map(|p| match p.child.try_wait() {
                Ok(None) => None,
                Ok(Some(st)) => Some((p.pid, st.to_string())),
                Err(e) => Some((p.pid, e.to_string())),
            })
            .collect()
    }

    /// The whole log of process `i` so far (a killed process's log stays readable).
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.procs[i].log).unwrap_or_default()
    }

    /// The last `n` lines of process `i`'s log.
    pub fn log_tail(&self, i: usize, n: usize) -> String {
        let text = std::fs::read_to_string(&self.procs[i].log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Stops every process the test did not kill, gracefully (their standard input
    /// closes: they stop taking messages and finish the ones in flight), within `limit`.
    /// Returns their reports, in start order; fails when one exits with an error or does
    /// not stop in time. The logs are removed when every process stopped cleanly.
    pub async fn stop(mut self, limit: Duration) -> anyhow::Result<Vec<ProcessReport>> {
        for p in &mut self.procs {
            p.stdin = None;
        }
        let deadline = Instant::now() + limit;
        let mut reports = Vec::new();
        for i in 0..self.procs.len() {
            if self.procs[i].killed {
                continue;
            }
            let status = loop {
                if let Some(st) = self.procs[i].child.try_wait()? {
                    break st;
                }
                if Instant::now() >= deadline {
                    bail!(
                        "worker process {} did not stop within {limit:?}; its log ends with:\n{}",
                        self.procs[i].pid,
                        self.log_tail(i, 30)
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            let mut out = String::new();
            if let Some(mut stdout) = self.procs[i].child.stdout.take() {
                stdout.read_to_string(&mut out)?;
            }
            if !status.success() {
                bail!(
                    "worker process {} exited with {status}; its log ends with:\n{}",
                    self.procs[i].pid,
                    self.log_tail(i, 30)
                );
            }
            let report = ProcessReport::parse(&out)
                .with_context(|| format!("no report from worker {}: {out:?}", self.pid(i)))?;
            reports.push(report);
        }
        self.stopped = true;
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(reports)
    }
}

impl Drop for WorkerProcesses {
    fn drop(&mut self) {
        for p in &mut self.procs {
            if matches!(p.child.try_wait(), Ok(None)) {
                let _ = p.child.kill();
                let _ = p.child.wait();
            }
        }
        if !self.stopped {
            // Shown by the test harness only when the test fails.
            for i in 0..self.procs.len() {
                eprintln!(
                    "--- worker process {} (log {}), last lines:\n{}",
                    self.procs[i].pid,
                    self.procs[i].log.display(),
                    self.log_tail(i, 40)
                );
            }
        }
    }
}

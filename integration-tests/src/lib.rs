//! Integration tests of dtasks against a real RabbitMQ, and the conformance suite that
//! every transport runs.
//!
//! The [`conformance`] module holds the DTask API's scenarios, written once: here they run
//! on the in-memory transport (`tests/conformance_memory.rs`, no broker needed), on
//! RabbitMQ (`tests/conformance_amqp.rs`) and on the simulator with its faults
//! (`tests/conformance_sim.rs`, no broker needed).
//!
//! The [`http`] module holds the HTTP tests of `dtasks-axum`: a web service on
//! DTasks, spoken to with a real HTTP client, on both transports (`tests/http_memory.rs`,
//! `tests/http_amqp.rs`), and its webhooks across worker kills (`tests/kill_webhook.rs`);
//! `tests/web_pages.rs` serves the same service with its web pages and drives them in
//! headless Chromium through chromedriver (Debian's `chromium` and `chromium-driver`).
//!
//! The broker is the one at `AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`).
//! With the `testcontainers` feature, when `AMQP_URL` is unset and Docker is reachable, a
//! RabbitMQ container is started instead. A broker test fails (never skips) when no broker
//! can be reached.
//!
//! Each broker test takes a [`Broker`]: a unique queue prefix, transports and workers under it
//! (in this process, or in worker processes: [`Broker::worker_processes`]), and a cleanup
//! that deletes every queue of the prefix.
//!
//! Two test binaries, `broker_restart` and `broker_restart_processes`, restart the broker's
//! application with `rabbitmqctl` (`stop_app`, `start_app`) under everyone who uses it: CI
//! runs them on a broker of its own, with no other test running beside them
//! (`.config/nextest.toml`). On a broker shared with others, skip them
//! (`.ci/test -E 'not test(/broker_restart/)'`, or
//! `cargo test --workspace -- --skip broker_restart`: both test names contain it, no other
//! does), or run them against a second node of your own, which `rabbitmqctl` reaches
//! through `RABBITMQ_NODENAME`:
//!
//! ```sh
//! # a node on port 5673 (its own config file with `listeners.tcp.1 = 127.0.0.1:5673`)
//! RABBITMQ_NODENAME=it@localhost RABBITMQ_NODE_PORT=5673 RABBITMQ_DIST_PORT=25673 \
//!   RABBITMQ_CONFIG_FILE=/tmp/it-rmq/rabbitmq.conf RABBITMQ_MNESIA_BASE=/tmp/it-rmq/mnesia \
//!   RABBITMQ_LOG_BASE=/tmp/it-rmq/log rabbitmq-server -detached
//! RABBITMQ_NODENAME=it@localhost AMQP_URL=amqp://guest:guest@127.0.0.1:5673/%2f \
//!   cargo test -p dtasks-integration-tests --test broker_restart --test broker_restart_processes
//! ```

pub mod conformance;
pub mod evolve;
pub mod http;
pub mod procs;
pub mod spans;
pub mod tasks;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context as _};
use dtasks::{Client, Registry, Worker, WorkerConfig, WorkerStats};
use dtasks_amqp::{AmqpConfig, AmqpTransport};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicQosOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long a test binary that talks to the broker may run, in seconds, unless
/// `DTASKS_TEST_LIMIT_SECS` says otherwise.
const TEST_LIMIT_SECS: u64 = 600;

/// Starts, once per test process, a thread that ends the process with a failure when it
/// runs longer than `DTASKS_TEST_LIMIT_SECS` (default `TEST_LIMIT_SECS`): a test that
/// hangs (a wait no timeout covers) fails loudly, with the queues of the broker listed,
/// instead of holding CI until its own limit.
pub fn watchdog() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let secs = std::env::var("DTASKS_TEST_LIMIT_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(TEST_LIMIT_SECS);
        let _ = std::thread::Builder::new()
            .name("test-watchdog".into())
            .spawn(move || {
                std::thread::sleep(Duration::from_secs(secs));
                use std::io::Write as _;
                // Straight to the process's stderr: the test harness captures `eprintln!`
                // of threads started by a test, and the exit would lose it.
                let mut err = std::io::stderr();
                let binary = std::env::args().next().unwrap_or_default();
                let _ = writeln!(
                    err,
                    "{binary}: FAILED: still running after {secs} s; a test hangs"
                );
                let queues = [
                    "30",
                    "rabbitmqctl",
                    "list_queues",
                    "name",
                    "messages",
                    "consumers",
                ];
                if let Ok(out) = std::process::Command::new("timeout").args(queues).output() {
                    let listed = String::from_utf8_lossy(&out.stdout);
                    let _ = writeln!(err, "the broker's queues:\n{listed}");
                }
                std::process::exit(101);
            });
    });
}

/// A connection to the first node of `url` (addresses separated by commas) that takes one.
async fn connect_any(url: &str) -> lapin::Result<Connection> {
    let mut last = None;
    for u in url.split(',').filter(|u| !u.is_empty()) {
        match Connection::connect(u, ConnectionProperties::default()).await {
            Ok(c) => return Ok(c),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or(lapin::Error::from(
        lapin::ErrorKind::InvalidConnectionState(lapin::ConnectionState::Closed),
    )))
}

/// Installs a `tracing` subscriber once (filtered by `RUST_LOG`, default `warn`).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// The broker address for the tests.
async fn broker_url() -> anyhow::Result<(String, Option<Container>)> {
    if let Some(url) = std::env::var("AMQP_URL").ok().filter(|s| !s.is_empty()) {
        return Ok((url, None));
    }
    #[cfg(feature = "testcontainers")]
    if docker_reachable() {
        let (url, c) = container::start().await?;
        return Ok((url, Some(c)));
    }
    Ok((dtasks_amqp::DEFAULT_URL.to_string(), None))
}

#[cfg(feature = "testcontainers")]
fn docker_reachable() -> bool {
    std::env::var_os("DOCKER_HOST").is_some()
        || std::path::Path::new("/var/run/docker.sock").exists()
}

#[cfg(feature = "testcontainers")]
type Container = container::Running;
#[cfg(not(feature = "testcontainers"))]
type Container = ();

#[cfg(feature = "testcontainers")]
mod container {
    use anyhow::Context as _;
    use testcontainers_modules::rabbitmq::RabbitMq;
    use testcontainers_modules::testcontainers::runners::AsyncRunner;
    use testcontainers_modules::testcontainers::ContainerAsync;

    pub(crate) type Running = ContainerAsync<RabbitMq>;

    pub(crate) async fn start() -> anyhow::Result<(String, Running)> {
        let node = RabbitMq::default()
            .start()
            .await
            .context("starting a RabbitMQ container")?;
        let host = node.get_host().await?;
        let port = node.get_host_port_ipv4(5672).await?;
        Ok((format!("amqp://guest:guest@{host}:{port}/%2f"), node))
    }
}

/// One test's corner of the broker: a unique prefix, the transports made under it, and
/// the cleanup of its queues.
pub struct Broker {
    url: String,
    prefix: String,
    raw: tokio::sync::Mutex<Connection>,
    transports: Mutex<Vec<AmqpTransport>>,
    /// Worker processes were started: queues declared by them are expected at cleanup.
    processes: AtomicBool,
    cleaned: bool,
    _container: Option<Container>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// Connects to the test broker under a fresh prefix. Fails when the broker is
    /// unreachable.
    pub async fn start() -> anyhow::Result<Self> {
        init_tracing();
        watchdog();
        let (url, container) = broker_url().await?;
        recommended_dlx_retry().await;
        Self::connected(url, container).await
    }

    /// Connects to the broker at `url` (the addresses of the nodes of a cluster,
    /// separated by commas, as `AMQP_URL` takes them) under a fresh prefix: for a test
    /// that runs a broker of its own. Its [`Broker::cleanup`] needs `rabbitmqctl` to
    /// reach that broker's node: a test of a broker it removes afterwards drops the
    /// `Broker` instead.
    pub async fn start_at(url: &str) -> anyhow::Result<Self> {
        init_tracing();
        watchdog();
        Self::connected(url.to_string(), None).await
    }

    async fn connected(url: String, container: Option<Container>) -> anyhow::Result<Self> {
        let raw = connect_any(&url)
            .await
            .with_context(|| format!("no RabbitMQ at {url} (set AMQP_URL)"))?;
        let prefix = format!("dtit-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        Ok(Self {
            url,
            prefix,
            raw: tokio::sync::Mutex::new(raw),
            transports: Mutex::new(Vec::new()),
            processes: AtomicBool::new(false),
            cleaned: false,
            _container: container,
        })
    }

    /// The prefix of this test's queues.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The broker's address.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The path of a file named `name` in a directory of this test's own (created if
    /// needed, removed by [`Broker::cleanup`]), for side effects that worker processes
    /// record.
    pub fn scratch_file(&self, name: &str) -> anyhow::Result<String> {
        let dir = self.scratch_dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir.join(name).to_string_lossy().into_owned())
    }

    fn scratch_dir(&self) -> std::path::PathBuf {
        std::env::temp_dir()
            .join("dtasks-it-files")
            .join(&self.prefix)
    }

    /// The configuration of this test's transports.
    pub fn config(&self) -> AmqpConfig {
        AmqpConfig::new(&self.url)
            .with_urls(self.url.split(','))
            .with_prefix(&self.prefix)
    }

    /// A new transport (its own connections, like another process) under the prefix.
    pub async fn transport(&self) -> anyhow::Result<AmqpTransport> {
        self.transport_with(|c| c).await
    }

    /// A new transport with an adjusted configuration.
    pub async fn transport_with(
        &self,
        f: impl FnOnce(AmqpConfig) -> AmqpConfig,
    ) -> anyhow::Result<AmqpTransport> {
        let t = AmqpTransport::connect(f(self.config())).await?;
        self.transports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(t.clone());
        Ok(t)
    }

    /// A client on a transport of its own.
    pub async fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::new(self.transport().await?))
    }

    /// Starts `n` workers, each on a transport of its own, running `registry`.
    pub async fn workers(&self, n: usize, registry: &Registry) -> anyhow::Result<Workers> {
        self.workers_with(n, WorkerConfig::new().registry(registry))
            .await
    }

    /// Starts `n` workers, each on a transport of its own, with the settings of `config`.
    pub async fn workers_with(&self, n: usize, config: WorkerConfig) -> anyhow::Result<Workers> {
        self.workers_on(n, config, |c| c).await
    }

    /// [`Broker::workers_with`] on transports whose configuration `f` adjusts.
    pub async fn workers_on(
        &self,
        n: usize,
        config: WorkerConfig,
        f: impl Fn(AmqpConfig) -> AmqpConfig,
    ) -> anyhow::Result<Workers> {
        let mut workers = Vec::new();
        for _ in 0..n {
            let t = self.transport_with(&f).await?;
            workers.push(Worker::new(t, config.clone())?);
        }
        let workers = Workers::run(workers);
        // `run_until` subscribes asynchronously: wait until every worker's consumers exist,
        // so that a test's first message is not published before anyone listens.
        for name in config.dtasks() {
            let queue = format!("{}.task.{name}", self.prefix);
            wait_for(Duration::from_secs(10), || async {
                Ok(self.consumers(&queue).await? >= n as u32)
            })
            .await
            .with_context(|| format!("workers did not subscribe to {queue}"))?;
        }
        Ok(workers)
    }

    /// Starts `n` worker processes of `exe` (pass `env!("CARGO_BIN_EXE_it-worker")`) under
    /// this test's prefix, each running [`tasks::registry`] on connections of its own, and
    /// waits until all of them consume every task queue.
    pub async fn worker_processes(
        &self,
        exe: &str,
        n: usize,
    ) -> anyhow::Result<procs::WorkerProcesses> {
        self.worker_processes_with(exe, n, &[]).await
    }

    /// [`Broker::worker_processes`] with more environment variables for every process
    /// (`DTASKS_METRICS_ADDR`, say).
    pub async fn worker_processes_with(
        &self,
        exe: &str,
        n: usize,
        env: &[(&str, &str)],
    ) -> anyhow::Result<procs::WorkerProcesses> {
        self.processes.store(true, Ordering::SeqCst);
        let mut set = procs::WorkerProcesses::spawn(exe, &self.url, &self.prefix, n, env)?;
        self.wait_for_processes(&mut set, n).await?;
        Ok(set)
    }

    /// Starts one more process in `set` (after a kill, say: a replacement) and waits until
    /// every task queue has as many consumers as processes of the set run. Returns its
    /// index in the set.
    pub async fn add_worker_process(
        &self,
        set: &mut procs::WorkerProcesses,
    ) -> anyhow::Result<usize> {
        let i = set.spawn_one()?;
        let running = set.running();
        self.wait_for_processes(set, running).await?;
        Ok(i)
    }

    /// Waits until the queues of each DTask of [`tasks::registry`] have at least `n`
    /// consumers (its wake queue: a worker consumes it with its task queues, whose names
    /// depend on `AmqpConfig::with_task_queues`).
    async fn wait_for_processes(
        &self,
        set: &mut procs::WorkerProcesses,
        n: usize,
    ) -> anyhow::Result<()> {
        for name in tasks::registry().names() {
            let queue = format!("{}.wake.{name}", self.prefix);
            wait_for(Duration::from_secs(30), || async {
                Ok(self.consumers(&queue).await? >= n as u32)
            })
            .await
            .with_context(|| {
                format!(
                    "worker processes did not subscribe to {queue} (exited: {:?})",
                    set.unexpected_exits()
                )
            })?;
        }
        Ok(())
    }

    /// A channel on the test's own raw connection, for looking at queues. The
    /// connection is made again when the broker closed it.
    pub async fn channel(&self) -> anyhow::Result<Channel> {
        let mut raw = self.raw.lock().await;
        if !raw.status().connected() {
            *raw = connect_any(&self.url).await?;
        }
        Ok(raw.create_channel().await?)
    }

    async fn declare_passive(&self, queue: &str) -> anyhow::Result<Option<lapin::Queue>> {
        // A passive declare of a missing queue closes its channel: use a throwaway one.
        let ch = self.channel().await?;
        let opts = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let r = ch
            .queue_declare(queue.into(), opts, FieldTable::default())
            .await;
        match r {
            Ok(q) => {
                let _ = ch.close(200, "OK".into()).await;
                Ok(Some(q))
            }
            Err(e) if e.to_string().contains("NOT_FOUND") || e.to_string().contains("404") => {
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The number of ready messages in `queue` (`None` when it does not exist).
    pub async fn queue_len(&self, queue: &str) -> anyhow::Result<Option<u32>> {
        Ok(self
            .declare_passive(queue)
            .await?
            .map(|q| q.message_count()))
    }

    /// The number of consumers of `queue` (0 when it does not exist).
    pub async fn consumers(&self, queue: &str) -> anyhow::Result<u32> {
        Ok(self
            .declare_passive(queue)
            .await?
            .map_or(0, |q| q.consumer_count()))
    }

    /// Takes every message of `queue` (acked: they are gone afterwards).
    pub async fn take_all(&self, queue: &str) -> anyhow::Result<Vec<lapin::message::Delivery>> {
        let ch = self.channel().await?;
        let mut out = Vec::new();
        while let Some(m) = ch
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await?
        {
            out.push(m.delivery);
        }
        let _ = ch.close(200, "OK".into()).await;
        Ok(out)
    }

    /// The messages of the stream `stream`, read from its first with a consumer of its
    /// own until none comes for a second (a stream keeps them: reading takes nothing).
    pub async fn stream_messages(
        &self,
        stream: &str,
    ) -> anyhow::Result<Vec<lapin::message::Delivery>> {
        use futures::StreamExt;
        let ch = self.channel().await?;
        ch.basic_qos(1000, BasicQosOptions::default()).await?;
        let mut args = FieldTable::default();
        args.insert(
            "x-stream-offset".into(),
            lapin::types::AMQPValue::LongString("first".into()),
        );
        let mut consumer = ch
            .basic_consume(
                stream.into(),
                "".into(),
                BasicConsumeOptions::default(),
                args,
            )
            .await?;
        let mut out = Vec::new();
        while let Ok(Some(d)) = tokio::time::timeout(Duration::from_secs(1), consumer.next()).await
        {
            let d = d?;
            d.acker.ack(BasicAckOptions::default()).await?;
            out.push(d);
        }
        let _ = ch.close(200, "OK".into()).await;
        Ok(out)
    }

    /// Every queue this test's transports declared.
    pub fn known_queues(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .transports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .flat_map(|t| t.declared_queues())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Leaves the prefix's queues where they are, for a broker the test throws away or
    /// cleans up itself (dropping a `Broker` not cleaned up deletes them, which takes seconds per
    /// quorum queue on a cluster whose node is down).
    pub async fn leave_queues(mut self) {
        let transports: Vec<AmqpTransport> = self
            .transports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for t in &transports {
            t.close().await;
        }
        self.cleaned = true;
        let _ = std::fs::remove_dir_all(self.scratch_dir());
    }

    /// Deletes every queue of the prefix, then checks (with `rabbitmqctl`, when
    /// available) that none is left. Stop the workers first (worker processes too).
    pub async fn cleanup(mut self) -> anyhow::Result<()> {
        // Every transport of the test stops consuming first: a live consumer (a client's
        // reply queue, a follower of a stream) would subscribe again to what is deleted.
        let transports: Vec<AmqpTransport> = self
            .transports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for t in &transports {
            t.close().await;
        }
        let ch = self.channel().await?;
        delete_queues(&ch, &self.known_queues()).await?;
        if self.processes.load(Ordering::SeqCst) {
            // Worker processes declared queues this process never saw: list them.
            let theirs = listed_queues(&self.prefix)
                .await
                .context("listing the queues of worker processes needs rabbitmqctl")?;
            let ch = self.channel().await?;
            delete_queues(&ch, &theirs).await?;
        }
        let left = listed_queues(&self.prefix).await.unwrap_or_default();
        // Delete strays too, then report them: something declared a queue behind the
        // transports' backs (or after the workers stopped).
        let ch = self.channel().await?;
        delete_queues(&ch, &left).await?;
        self.cleaned = true;
        let _ = std::fs::remove_dir_all(self.scratch_dir());
        if !left.is_empty() {
            bail!("queues left after cleanup: {left:?}");
        }
        Ok(())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        // The test failed before its cleanup: delete what we can, from a thread of our
        // own (this may run inside the test's runtime).
        let mut names: Vec<String> = self
            .transports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .flat_map(|t| t.declared_queues())
            .collect();
        let (url, prefix) = (self.url.clone(), self.prefix.clone());
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            // Bounded: a broker that does not answer must not hold a failing test.
            let cleanup = async move {
                // Let stopped workers' consumers go away first, or they declare again.
                tokio::time::sleep(Duration::from_millis(500)).await;
                names.extend(listed_queues(&prefix).await.unwrap_or_default());
                if let Ok(conn) = connect_any(&url).await {
                    if let Ok(ch) = conn.create_channel().await {
                        let _ = delete_queues(&ch, &names).await;
                    }
                }
            };
            // The timer is made inside the runtime (it needs its clock).
            let _ =
                rt.block_on(
                    async move { tokio::time::timeout(Duration::from_secs(60), cleanup).await },
                );
        })
        .join();
    }
}

async fn delete_queues(ch: &Channel, names: &[String]) -> anyhow::Result<()> {
    for name in names {
        ch.queue_delete(name.as_str().into(), QueueDeleteOptions::default())
            .await
            .with_context(|| format!("deleting {name}"))?;
    }
    let _ = ch.close(200, "OK".into()).await;
    Ok(())
}

/// The broker setting the deployment docs recommend for timers
/// (`dead_letter_worker_publisher_confirm_timeout`, see [`DlxRetry`]), in ms.
pub const RECOMMENDED_DLX_RETRY_MS: u64 = 5_000;

/// Applies the recommended dead-letter retry to the local broker, once per process, when it
/// is higher (RabbitMQ's default is 180 s): the tests run on a broker configured as the
/// deployment docs say. Without `rabbitmqctl` (a remote broker) the broker is left as is.
async fn recommended_dlx_retry() {
    static DONE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    DONE.get_or_init(|| async {
        let expr = format!(
            "case application:get_env(rabbit, {DLX_RETRY}) of \
             {{ok, V}} when is_integer(V), V =< {RECOMMENDED_DLX_RETRY_MS} -> kept; \
             _ -> application:set_env(rabbit, {DLX_RETRY}, {RECOMMENDED_DLX_RETRY_MS}) end."
        );
        if let Err(e) = rabbitmqctl(&["eval", &expr]).await {
            tracing::warn!(error = %e, "could not apply the recommended dead-letter retry");
        }
    })
    .await;
}

/// How long one `rabbitmqctl` command may take before it is killed and fails: a broker
/// that cannot start (say, its queue recovery blocked) must fail the test, not hang it.
pub const RABBITMQCTL_LIMIT: Duration = Duration::from_secs(180);

/// Runs `rabbitmqctl` with `args` and returns its output; fails when it fails or takes
/// longer than [`RABBITMQCTL_LIMIT`].
pub async fn rabbitmqctl(args: &[&str]) -> anyhow::Result<String> {
    let run = tokio::process::Command::new("rabbitmqctl")
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(RABBITMQCTL_LIMIT, run)
        .await
        .map_err(|_| {
            anyhow::anyhow!("rabbitmqctl {args:?}: no answer within {RABBITMQCTL_LIMIT:?}")
        })?
        .context("running rabbitmqctl")?;
    if !out.status.success() {
        bail!(
            "rabbitmqctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Broker {
    /// A report of this test's queues (messages, ready, unacknowledged, consumers) for a
    /// failure message: a delay level holding messages that are neither ready nor
    /// unacknowledged holds expired timers in its dead-letter worker.
    pub async fn report(&self) -> String {
        let listed = rabbitmqctl(&[
            "list_queues",
            "name",
            "messages",
            "messages_ready",
            "messages_unacknowledged",
            "consumers",
            "--quiet",
            "--no-table-headers",
        ])
        .await;
        match listed {
            Ok(out) => {
                let mut lines: Vec<&str> = out
                    .lines()
                    .filter(|l| l.starts_with(&format!("{}.", self.prefix)))
                    .collect();
                lines.sort_unstable();
                format!(
                    "queues of {} (name, messages, ready, unacked, consumers):\n{}",
                    self.prefix,
                    lines.join("\n")
                )
            }
            Err(e) => format!("no queue report: {e}"),
        }
    }

    /// Has the broker close every connection of this test's transports (their client
    /// name holds the prefix), as a network cut would. Returns how many it closed.
    pub async fn cut_connections(&self) -> anyhow::Result<usize> {
        let pids = self.connections().await?;
        cut(&pids).await?;
        Ok(pids.len())
    }

    /// The broker's ids of the connections of this test's transports, for [`cut`].
    pub async fn connections(&self) -> anyhow::Result<Vec<String>> {
        let list = rabbitmqctl(&[
            "list_connections",
            "pid",
            "client_properties",
            "--quiet",
            "--no-table-headers",
        ])
        .await?;
        list.lines()
            .filter(|l| l.contains(&self.prefix))
            .map(|l| {
                l.split_whitespace()
                    .next()
                    .map(str::to_string)
                    .context("no pid")
            })
            .collect()
    }
}

/// Has the broker close the connections `pids`, all at once (as close to one instant as
/// `rabbitmqctl` allows).
pub async fn cut(pids: &[String]) -> anyhow::Result<()> {
    let closing = pids
        .iter()
        .map(|pid| async move { rabbitmqctl(&["close_connection", pid, "cut by a test"]).await });
    for r in futures::future::join_all(closing).await {
        r?;
    }
    Ok(())
}

/// The queues under `prefix` according to `rabbitmqctl` (`None` when it cannot run).
pub async fn listed_queues(prefix: &str) -> Option<Vec<String>> {
    let out = tokio::process::Command::new("rabbitmqctl")
        .args(["list_queues", "name", "--quiet", "--no-table-headers"])
        .output()
        .await
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

/// Workers running in this process until stopped: started by [`Broker::workers`], or by
/// any transport's [`conformance::Env::workers`] (on the simulator, processes that faults
/// crash and that are replaced).
pub struct Workers(Running);

enum Running {
    Tasks {
        stop: watch::Sender<bool>,
        handles: Vec<JoinHandle<Result<(), dtasks::Error>>>,
        workers: Vec<Worker>,
    },
    Sim(Option<dtasks::sim::SimWorkers>),
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("n", &self.stats().len())
            .finish_non_exhaustive()
    }
}

impl Workers {
    /// Runs each of `workers` on a task of its own until [`Workers::stop`] (or the drop).
    pub fn run(workers: Vec<Worker>) -> Self {
        let (stop, stop_rx) = watch::channel(false);
        let handles = workers
            .iter()
            .map(|worker| {
                let (worker, mut stop) = (worker.clone(), stop_rx.clone());
                tokio::spawn(async move {
                    worker
                        .run_until(async move {
                            let _ = stop.wait_for(|s| *s).await;
                        })
                        .await
                })
            })
            .collect();
        Self(Running::Tasks {
            stop,
            handles,
            workers,
        })
    }

    /// The worker processes of a simulated broker ([`dtasks::sim::World::workers`]).
    pub fn simulated(workers: dtasks::sim::SimWorkers) -> Self {
        Self(Running::Sim(Some(workers)))
    }

    /// The counters of each worker (on the simulator, crashed ones included).
    pub fn stats(&self) -> Vec<WorkerStats> {
        match &self.0 {
            Running::Tasks { workers, .. } => workers.iter().map(Worker::stats).collect(),
            Running::Sim(w) => w.as_ref().map(|w| w.stats()).unwrap_or_default(),
        }
    }

    /// Whether every worker is still running (on the simulator, a process a fault crashed
    /// counts as running: it is replaced).
    pub fn running(&self) -> bool {
        match &self.0 {
            Running::Tasks { handles, .. } => handles.iter().all(|h| !h.is_finished()),
            Running::Sim(w) => w.as_ref().is_some_and(|w| w.running()),
        }
    }

    /// Stops the workers (graceful) and returns the first error one of them ended with.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        match &mut self.0 {
            Running::Tasks { stop, handles, .. } => {
                let _ = stop.send(true);
                let mut first = Ok(());
                for h in std::mem::take(handles) {
                    let r = h.await.context("a worker panicked")?;
                    if let (Err(e), true) = (r, first.is_ok()) {
                        first = Err(anyhow::Error::from(e).context("a worker failed"));
                    }
                }
                first
            }
            Running::Sim(w) => match w.take() {
                Some(w) => w.stop().await.context("a worker failed"),
                None => Ok(()),
            },
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        if let Running::Tasks { stop, handles, .. } = &self.0 {
            let _ = stop.send(true);
            for h in handles {
                h.abort();
            }
        }
    }
}

/// Polls `check` until it holds, failing after `limit`.
pub async fn wait_for<F, Fut>(limit: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await? {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("condition not met within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Lowers the broker's `dead_letter_worker_publisher_confirm_timeout` while it lives and
/// puts the old value back when dropped.
///
/// A delay level dead-letters expired timers to the ready queue at least once: the queue's
/// dead-letter worker keeps a message until the ready queue confirms it. A timer that
/// expires while the broker is starting (the ready queue not yet available) is retried only
/// after this interval, 180 s by default in RabbitMQ 3.10: the timer is late by up to that
/// much (seen in the broker-restart test: a stall with two expired timers held by
/// `P.delay.9`, counted in its messages but not as ready). Deployments that care set it in
/// the broker's configuration; the broker-restart tests set it for their own run.
#[derive(Debug)]
pub struct DlxRetry {
    old: Option<String>,
}

const DLX_RETRY: &str = "dead_letter_worker_publisher_confirm_timeout";

impl DlxRetry {
    /// Sets the interval to `ms` until the value is dropped.
    pub async fn lower_to(ms: u64) -> anyhow::Result<Self> {
        let got = rabbitmqctl(&[
            "eval",
            &format!("application:get_env(rabbit, {DLX_RETRY})."),
        ])
        .await?;
        // `{ok,180000}` or `undefined`.
        let old = got
            .trim()
            .strip_prefix("{ok,")
            .and_then(|v| v.strip_suffix('}'))
            .map(str::to_string);
        rabbitmqctl(&[
            "eval",
            &format!("application:set_env(rabbit, {DLX_RETRY}, {ms})."),
        ])
        .await?;
        Ok(Self { old })
    }
}

impl Drop for DlxRetry {
    fn drop(&mut self) {
        let expr = match &self.old {
            Some(v) => format!("application:set_env(rabbit, {DLX_RETRY}, {v})."),
            None => format!("application:unset_env(rabbit, {DLX_RETRY})."),
        };
        let _ = std::process::Command::new("timeout")
            .args(["60", "rabbitmqctl", "eval", &expr])
            .output();
    }
}

/// Awaits `fut`, failing with `what` when it takes longer than `limit` (a test that
/// would hang fails instead).
pub async fn within<T>(
    limit: Duration,
    what: &str,
    fut: impl std::future::Future<Output = T>,
) -> anyhow::Result<T> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| anyhow::anyhow!("{what}: not done within {limit:?}"))
}

/// A registry of the given `#[dtask]` functions.
#[macro_export]
macro_rules! registry {
    ($($f:expr),* $(,)?) => {{
        let mut r = ::dtasks::Registry::new();
        $( r.register($f).expect("a #[dtask] function"); )*
        r
    }};
}

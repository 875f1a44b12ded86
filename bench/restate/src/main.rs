//! `dtasks-bench-restate`: Restate's W2 (fan-out/fan-in), measured on this machine the way
//! `dtasks-bench` measures its own W2, so that both figures come from the same sitting.
//!
//! One process:
//! 1. starts `restate-server` (one node, its defaults: RocksDB, fsync on) on a fresh
//!    temporary base dir, and waits for its admin and ingress health endpoints;
//! 2. serves the service endpoint (the Restate Rust SDK's HTTP/2 server) on a free local port,
//!    with the service `W2`: a child handler `run` and a parent handler `fan`;
//! 3. registers the endpoint with the admin API (`POST /deployments`);
//! 4. warms up with one parent, then for each rep invokes `--parents` parents at once through
//!    the ingress (`POST /W2/fan`, each request waiting for its result), times the rep from
//!    just before the first request to the last response, checks every sum, and records
//!    `parents × children / wall` steps/s;
//! 5. kills the server, removes its base dir and prints one line of JSON to stdout.
//!
//! Everything else (progress, the server's log tail on failure) goes to stderr.

use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use bytes::{BufMut, Bytes, BytesMut};
use restate_sdk::prelude::*;
use restate_sdk::serde::{Deserialize, InputMetadata, OutputMetadata, PayloadMetadata, Serialize};
use tokio::process::{Child, Command};
use tokio::task::JoinSet;

/// The name the service is registered under; the ingress path is `/W2/<handler>`.
const SERVICE: &str = "W2";

/// The byte every payload is filled with (the same as `dtasks-bench`'s `PAD_BYTE`): a child
/// checks it, so a corrupted payload fails the invocation instead of passing unnoticed.
const PAD_BYTE: u8 = 0xA5;

/// Where `npm ci` puts the server binary, relative to this crate's folder.
const DEFAULT_SERVER: &str = "node_modules/@restatedev/restate-server-linux-x64/bin/restate-server";

/// How long the server gets to answer on its health endpoints after it starts.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);

/// How long the warm-up keeps retrying while the new deployment propagates to the ingress.
const WARMUP_TIMEOUT: Duration = Duration::from_secs(60);

/// How long one parent may take before its request is abandoned (and the run fails).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

// ---------------------------------------------------------------------------------------------
// The service
// ---------------------------------------------------------------------------------------------

/// The child's argument: its index and the payload, as raw bytes on the wire
/// (`application/octet-stream`): the index as 8 bytes little-endian, then the payload.
struct ChildInput {
    /// The number the child returns plus one.
    index: u64,
    /// `--payload` bytes of [`PAD_BYTE`].
    payload: Bytes,
}

/// Why a child's argument could not be decoded.
#[derive(Debug)]
struct ShortInput(usize);

impl std::fmt::Display for ShortInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "child input of {} bytes, needs at least 8", self.0)
    }
}

impl std::error::Error for ShortInput {}

impl Serialize for ChildInput {
    type Error = std::convert::Infallible;

    fn serialize(&self) -> Result<Bytes, Self::Error> {
        let mut b = BytesMut::with_capacity(8 + self.payload.len());
        b.put_u64_le(self.index);
        b.extend_from_slice(&self.payload);
        Ok(b.freeze())
    }
}

impl Deserialize for ChildInput {
    type Error = ShortInput;

    fn deserialize(bytes: &mut Bytes) -> Result<Self, Self::Error> {
        if bytes.len() < 8 {
            return Err(ShortInput(bytes.len()));
        }
        let head = bytes.split_to(8);
        let mut index = [0u8; 8];
        index.copy_from_slice(&head);
        Ok(ChildInput {
            index: u64::from_le_bytes(index),
            payload: bytes.split_off(0),
        })
    }
}

impl PayloadMetadata for ChildInput {
    fn json_schema() -> Option<serde_json::Value> {
        None
    }

    fn input_metadata() -> InputMetadata {
        InputMetadata {
            accept_content_type: "application/octet-stream",
            is_required: true,
        }
    }

    fn output_metadata() -> OutputMetadata {
        OutputMetadata {
            content_type: "application/octet-stream",
            set_content_type_if_empty: false,
        }
    }
}

/// The parent's argument (JSON, sent by the ingress client): the children return
/// `base + 1 ..= base + children`.
#[derive(serde::Serialize, serde::Deserialize, Clone, Copy, Debug)]
struct FanInput {
    /// The first child's index.
    base: u64,
    /// How many children to start at once.
    children: u32,
    /// The size of each child's payload, in bytes.
    payload: u32,
}

/// The sum a parent started with `base` and `children` must return (as `dtasks-bench`'s
/// `fan_expected`).
fn fan_expected(base: u64, children: u32) -> u64 {
    let w = u64::from(children);
    w * base + w * (w + 1) / 2
}

/// The benchmark's Restate service: `fan` (the parent) and `run` (a child).
struct W2;

#[restate_sdk::service(name = "W2")]
impl W2 {
    /// A child: checks its payload and returns `index + 1`.
    #[handler]
    async fn run(&self, _ctx: Context<'_>, input: ChildInput) -> HandlerResult<u64> {
        if !input.payload.iter().all(|b| *b == PAD_BYTE) {
            return Err(TerminalError::new(format!(
                "the payload of child {} arrived corrupted",
                input.index
            ))
            .into());
        }
        Ok(input.index + 1)
    }

    /// A parent: issues `children` calls of `run` (all of them before awaiting any), awaits
    /// them all with the SDK's `DurableFuturesUnordered`, and returns their sum.
    #[handler]
    async fn fan(&self, ctx: Context<'_>, input: Json<FanInput>) -> HandlerResult<u64> {
        let FanInput {
            base,
            children,
            payload,
        } = input.into_inner();
        let payload = Bytes::from(vec![PAD_BYTE; payload as usize]);
        let client = ctx.service_client::<W2Client>();
        // `.call()` journals the call right away; the first await below sends all of them.
        let mut calls: DurableFuturesUnordered<_> = (0..u64::from(children))
            .map(|i| {
                client
                    .run(ChildInput {
                        index: base + i,
                        payload: payload.clone(),
                    })
                    .call()
            })
            .collect();
        let mut sum = 0u64;
        let mut got = 0u32;
        while let Some((_, result)) = calls.next().await? {
            sum += result?;
            got += 1;
        }
        if got != children {
            return Err(TerminalError::new(format!("awaited {got} of {children} children")).into());
        }
        Ok(sum)
    }
}

// ---------------------------------------------------------------------------------------------
// The command line
// ---------------------------------------------------------------------------------------------

/// The command line's settings.
#[derive(Debug)]
struct Args {
    /// The `restate-server` binary.
    server: PathBuf,
    /// Measured reps (after one warm-up parent).
    reps: usize,
    /// Parents invoked at once in each rep.
    parents: usize,
    /// Children of each parent.
    children: u32,
    /// Payload of each child, in bytes.
    payload: u32,
    /// The server's HTTP ingress port.
    ingress_port: u16,
    /// The server's admin API port.
    admin_port: u16,
    /// The server's node-to-node (message fabric) port.
    node_port: u16,
    /// Where to write the server's log (default: in its temporary base dir, removed at the end).
    server_log: Option<PathBuf>,
}

/// The usage text.
const USAGE: &str = "\
usage: dtasks-bench-restate [--server PATH] [--reps N] [--parents N] [--children N]
                            [--payload BYTES] [--ingress-port P] [--admin-port P] [--node-port P]
                            [--server-log PATH]

Measures Restate's W2 (fan-out/fan-in): `parents` parents at once, each calling `children`
children concurrently with a `payload`-byte argument. Prints one line of JSON to stdout.

  --server PATH       restate-server binary
                      (default: <crate>/node_modules/@restatedev/restate-server-linux-x64/bin/restate-server)
  --reps N            measured reps (default 5)
  --parents N         parents per rep (default 20)
  --children N        children per parent (default 100)
  --payload BYTES     payload per child (default 256)
  --ingress-port P    server's ingress port (default 18080)
  --admin-port P      server's admin port (default 19070)
  --node-port P       server's node port (default 15122)
  --server-log PATH   keep the server's log there (default: removed with its base dir)";

impl Args {
    /// Parses `std::env::args()`.
    fn parse() -> anyhow::Result<Args> {
        let mut a = Args {
            server: Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_SERVER),
            reps: 5,
            parents: 20,
            children: 100,
            payload: 256,
            ingress_port: 18080,
            admin_port: 19070,
            node_port: 15122,
            server_log: None,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            if flag == "-h" || flag == "--help" {
                println!("{USAGE}");
                std::process::exit(0);
            }
            const FLAGS: [&str; 9] = [
                "--server",
                "--reps",
                "--parents",
                "--children",
                "--payload",
                "--ingress-port",
                "--admin-port",
                "--node-port",
                "--server-log",
            ];
            if !FLAGS.contains(&flag.as_str()) {
                bail!("unknown flag {flag}\n{USAGE}");
            }
            let value = it
                .next()
                .ok_or_else(|| anyhow!("{flag} needs a value\n{USAGE}"))?;
            let bad = |e: &dyn std::fmt::Display| anyhow!("{flag} {value}: {e}");
            match flag.as_str() {
                "--server" => a.server = PathBuf::from(&value),
                "--reps" => a.reps = value.parse().map_err(|e| bad(&e))?,
                "--parents" => a.parents = value.parse().map_err(|e| bad(&e))?,
                "--children" => a.children = value.parse().map_err(|e| bad(&e))?,
                "--payload" => a.payload = value.parse().map_err(|e| bad(&e))?,
                "--ingress-port" => a.ingress_port = value.parse().map_err(|e| bad(&e))?,
                "--admin-port" => a.admin_port = value.parse().map_err(|e| bad(&e))?,
                "--node-port" => a.node_port = value.parse().map_err(|e| bad(&e))?,
                "--server-log" => a.server_log = Some(PathBuf::from(&value)),
                _ => bail!("unknown flag {flag}\n{USAGE}"),
            }
        }
        if a.reps == 0 || a.parents == 0 || a.children == 0 {
            bail!("--reps, --parents and --children must be at least 1");
        }
        Ok(a)
    }
}

// ---------------------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------------------

/// A running `restate-server`, killed when dropped (also on error and on panic); its base
/// dir is removed after it.
struct Server {
    /// The server process.
    child: Child,
    /// The server's stdout and stderr.
    log: PathBuf,
    /// The fresh base dir; removed on drop (declared after `child`, so dropped after it).
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts the server on a fresh temporary base dir with the given ports, on 127.0.0.1.
    fn start(a: &Args) -> anyhow::Result<Server> {
        for (what, port) in [
            ("ingress", a.ingress_port),
            ("admin", a.admin_port),
            ("node", a.node_port),
        ] {
            StdTcpListener::bind((Ipv4Addr::LOCALHOST, port)).with_context(|| {
                format!("the {what} port {port} is taken: choose another with --{what}-port")
            })?;
        }
        let dir = tempfile::Builder::new()
            .prefix("dtasks-bench-restate-")
            .tempdir()
            .context("creating the server's base dir")?;
        let log = match &a.server_log {
            Some(p) => p.clone(),
            None => dir.path().join("restate-server.log"),
        };
        let out = std::fs::File::create(&log).context("creating the server's log")?;
        let err = out.try_clone()?;
        let child = Command::new(&a.server)
            .arg("--no-logo")
            .arg("--base-dir")
            .arg(dir.path().join("data"))
            .arg("--listen-mode")
            .arg("tcp")
            .arg("--bind-address")
            .arg(format!("127.0.0.1:{}", a.node_port))
            .arg("--advertised-address")
            .arg(format!("http://127.0.0.1:{}/", a.node_port))
            .env("RESTATE_INGRESS__BIND_ADDRESS", format!("127.0.0.1:{}", a.ingress_port))
            .env("RESTATE_ADMIN__BIND_ADDRESS", format!("127.0.0.1:{}", a.admin_port))
            // No usage report to restate.dev from a benchmark run.
            .env("RESTATE_DISABLE_TELEMETRY", "true")
            .env("RESTATE_LOG_DISABLE_ANSI_CODES", "true")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (run `npm ci --ignore-scripts` in bench/restate, or pass --server)",
                    a.server.display()
                )
            })?;
        Ok(Server {
            child,
            log,
            _dir: dir,
        })
    }

    /// Fails if the server has exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("restate-server exited early: {status}");
        }
        Ok(())
    }

    /// The last `n` lines of the server's log.
    fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Kills the server and waits for it.
    async fn stop(mut self) -> anyhow::Result<()> {
        self.child.kill().await.context("killing restate-server")?;
        Ok(())
    }
}

/// `restate-server --version`, e.g. `restate-server 1.7.12`.
async fn server_version(server: &Path) -> anyhow::Result<String> {
    let out = Command::new(server)
        .arg("--version")
        .output()
        .await
        .with_context(|| {
            format!(
                "running {} --version (run `npm ci --ignore-scripts` in bench/restate, or pass --server)",
                server.display()
            )
        })?;
    if !out.status.success() {
        bail!("{} --version: {}", server.display(), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Waits until `url` answers 2xx, while the server lives.
async fn wait_healthy(
    http: &reqwest::Client,
    server: &mut Server,
    url: &str,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    loop {
        server.check_alive()?;
        if let Ok(r) = http.get(url).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if t0.elapsed() > STARTUP_TIMEOUT {
            bail!("{url} not healthy after {STARTUP_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The benchmark
// ---------------------------------------------------------------------------------------------

/// Invokes one parent through the ingress and waits for its sum.
async fn invoke_fan(http: &reqwest::Client, url: &str, input: FanInput) -> anyhow::Result<u64> {
    let r = http
        .post(url)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&input)?)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = r.status();
    let body = r
        .bytes()
        .await
        .with_context(|| format!("POST {url}: body"))?;
    if !status.is_success() {
        bail!(
            "POST {url} {input:?}: {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    serde_json::from_slice(&body).with_context(|| {
        format!(
            "POST {url}: not a number: {}",
            String::from_utf8_lossy(&body)
        )
    })
}

/// One rep: `parents` parents at once; returns its steps/s. Fails on any wrong sum.
async fn rep(http: &reqwest::Client, url: &str, a: &Args, first_base: u64) -> anyhow::Result<f64> {
    let mut set = JoinSet::new();
    let t0 = Instant::now();
    for i in 0..a.parents {
        let http = http.clone();
        let url = url.to_string();
        let input = FanInput {
            base: first_base + i as u64 * 1_000_000,
            children: a.children,
            payload: a.payload,
        };
        set.spawn(async move {
            let got = invoke_fan(&http, &url, input).await;
            (input, got, t0.elapsed())
        });
    }
    let mut wall = Duration::ZERO;
    let mut errors = Vec::new();
    while let Some(joined) = set.join_next().await {
        let (input, got, at) = joined.context("a parent's request task panicked")?;
        wall = wall.max(at);
        match got {
            Ok(v) if v == fan_expected(input.base, input.children) => {}
            Ok(v) => errors.push(format!(
                "fan from {} summed to {v}, expected {}",
                input.base,
                fan_expected(input.base, input.children)
            )),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    if !errors.is_empty() {
        bail!(
            "{} of {} parents failed:\n{}",
            errors.len(),
            a.parents,
            errors.join("\n")
        );
    }
    Ok((a.parents as f64 * f64::from(a.children)) / wall.as_secs_f64())
}

/// The line printed to stdout.
#[derive(serde::Serialize)]
struct Output {
    /// `restate-server --version`.
    server: String,
    /// steps/s of each rep, in order.
    reps: Vec<f64>,
    /// The median rep (the lower middle for an even count, as `dtasks-bench`'s `median_by`).
    median_steps_per_s: f64,
    /// Parents per rep.
    parents: usize,
    /// Children per parent.
    children: u32,
    /// Payload per child, in bytes.
    payload: u32,
}

/// The whole run: server, endpoint, registration, warm-up, reps.
async fn bench(a: &Args) -> anyhow::Result<Output> {
    let version = server_version(&a.server).await?;
    eprintln!("[restate] {version}; {a:?}");

    // The service endpoint, on a free local port.
    let listener = tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .context("binding the service endpoint")?;
    let endpoint_addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let endpoint = tokio::spawn(
        HttpServer::new(Endpoint::builder().bind(W2).build()).serve_with_cancel(listener, stop_rx),
    );
    eprintln!("[restate] service endpoint on http://{endpoint_addr}/");

    let mut server = Server::start(a)?;
    // On Ctrl-C or SIGTERM, stop driving and fall through to killing the server.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let result = tokio::select! {
        r = drive(a, &mut server, endpoint_addr) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        _ = term.recv() => Err(anyhow!("terminated")),
    };
    if let Err(e) = &result {
        eprintln!(
            "[restate] failed: {e:#}\n[restate] the server's log, last lines:\n{}",
            server.log_tail(40)
        );
    }
    server.stop().await?;
    let _ = stop_tx.send(());
    let _ = endpoint.await;
    let reps = result?;

    let mut sorted = reps.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[(sorted.len() - 1) / 2];
    Ok(Output {
        server: version,
        reps,
        median_steps_per_s: median,
        parents: a.parents,
        children: a.children,
        payload: a.payload,
    })
}

/// Health, registration, warm-up and the reps, against a started server.
async fn drive(a: &Args, server: &mut Server, endpoint: SocketAddr) -> anyhow::Result<Vec<f64>> {
    let http = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()?;
    let admin = format!("http://127.0.0.1:{}", a.admin_port);
    let ingress = format!("http://127.0.0.1:{}", a.ingress_port);

    let t0 = Instant::now();
    wait_healthy(&http, server, &format!("{admin}/health")).await?;
    wait_healthy(&http, server, &format!("{ingress}/restate/health")).await?;
    eprintln!(
        "[restate] server healthy after {:.1}s (ingress :{}, admin :{}, node :{})",
        t0.elapsed().as_secs_f64(),
        a.ingress_port,
        a.admin_port,
        a.node_port
    );

    // Register the deployment; the admin API discovers the endpoint before answering.
    let r = http
        .post(format!("{admin}/deployments"))
        .header("content-type", "application/json")
        .body(serde_json::json!({ "uri": format!("http://{endpoint}/") }).to_string())
        .send()
        .await
        .context("POST /deployments")?;
    let status = r.status();
    let body = r.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("POST /deployments: {status}: {body}");
    }
    eprintln!("[restate] deployment registered ({status})");
    // Wait until the admin lists the service.
    let t0 = Instant::now();
    loop {
        let r = http
            .get(format!("{admin}/services/{SERVICE}"))
            .send()
            .await?;
        if r.status().is_success() {
            break;
        }
        if t0.elapsed() > WARMUP_TIMEOUT {
            bail!("service {SERVICE} not listed by the admin API after {WARMUP_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Warm-up: one parent, retried while the deployment propagates to the ingress.
    let url = format!("{ingress}/{SERVICE}/fan");
    let t0 = Instant::now();
    loop {
        server.check_alive()?;
        let input = FanInput {
            base: 0,
            children: a.children,
            payload: a.payload,
        };
        match invoke_fan(&http, &url, input).await {
            Ok(v) if v == fan_expected(0, a.children) => break,
            Ok(v) => bail!(
                "warm-up: fan summed to {v}, expected {}",
                fan_expected(0, a.children)
            ),
            Err(e) if t0.elapsed() < WARMUP_TIMEOUT => {
                eprintln!("[restate] warm-up not yet: {e:#}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(e.context("warm-up")),
        }
    }
    eprintln!(
        "[restate] warm-up done in {:.2}s",
        t0.elapsed().as_secs_f64()
    );

    let mut reps = Vec::with_capacity(a.reps);
    for r in 0..a.reps {
        server.check_alive()?;
        let first_base = (r as u64 + 1) * a.parents as u64 * 1_000_000;
        let v = rep(&http, &url, a, first_base).await?;
        eprintln!("[restate] rep {}: {v:.0} steps/s", r + 1);
        reps.push(v);
    }
    Ok(reps)
}

/// Runs the benchmark; prints its JSON line, or the error (exit status 1).
#[tokio::main]
async fn main() -> std::process::ExitCode {
    let out = match Args::parse() {
        Ok(a) => bench(&a).await,
        Err(e) => Err(e),
    };
    match out.and_then(|o| Ok(serde_json::to_string(&o)?)) {
        Ok(line) => {
            println!("{line}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dtasks-bench-restate: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

//! The worker process of the integration tests: a worker pod running the DTasks of
//! `dtasks_integration_tests::tasks` on RabbitMQ, configured by the environment
//! (`AMQP_URL`, `DTASKS_PREFIX`, `RUST_LOG`, `IT_CODE` for the build of the versioned
//! DTasks of `dtasks_integration_tests::evolve`, `IT_TIMER_HOLD_MS` for
//! [`AmqpConfig::with_timer_hold`], `DTASKS_METRICS_ADDR` to serve Prometheus metrics,
//! `IT_SPANS_DIR` to write its OpenTelemetry spans to a file there, `IT_PG_URL` and
//! `IT_PG_SCHEMA` to keep the facts of roots and the values stored out of band in that
//! PostgreSQL database and schema (the transport's stream store otherwise),
//! `IT_NEWER_PATIENCE_MS` for [`WorkerConfig::newer_message_patience`], and
//! `IT_SHARDS_EVERY_MS` to log, that often, a line `it-worker shards pid=.. merged=..
//! held=a,b` with [`AmqpTransport::merged_doorbells`] and
//! [`AmqpTransport::held_shards`]; logs go to standard error).
//!
//! It stops gracefully when its standard input closes (the test that started it is done
//! or gone) or on SIGTERM, then prints one line to standard output:
//! `it-worker stopped pid=.. processed=.. dead_lettered=.. duplicate_results=.. restarts=..
//! duplicate_starts=.. handed_back=.. packed=..`.

use std::time::Duration;

use dtasks::WorkerConfig;
use dtasks_actors::{shutdown_signal, WorkerPod};
use dtasks_amqp::{AmqpConfig, AmqpTransport};
use dtasks_integration_tests::{evolve, spans, tasks};
use dtasks_otel::Otel;
use tokio::io::AsyncReadExt as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // With `IT_SPANS_DIR`, the spans of this process go to a file there, as
    // OpenTelemetry spans that continue the traces of the messages they handle.
    let otel = match std::env::var_os(spans::SPANS_DIR_ENV) {
        Some(dir) => Some(Otel::with_exporter(
            "it-worker",
            spans::FileExporter::in_dir(std::path::Path::new(&dir))?,
        )),
        None => None,
    };
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(false),
        )
        .with(otel.as_ref().map(|o| o.layer()))
        .init();
    let pid = std::process::id();
    dtasks_actors::serve_prometheus_from_env()?;
    let mut config = AmqpConfig::from_env();
    // A test may hold timers longer, to act while a worker holds them.
    if let Some(ms) = std::env::var("IT_TIMER_HOLD_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        config = config.with_timer_hold(Duration::from_millis(ms));
    }
    let transport = AmqpTransport::connect(config).await?;
    if let Some(ms) = std::env::var("IT_SHARDS_EVERY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        let t = transport.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                eprintln!(
                    "it-worker shards pid={pid} merged={} held={}",
                    t.merged_doorbells(),
                    t.held_shards().join(",")
                );
            }
        });
    }
    // `IT_CODE` chooses the build of the versioned DTasks (`tests/versions.rs`).
    let mut registry = tasks::registry();
    let code = std::env::var(evolve::CODE_ENV).unwrap_or_else(|_| "a".to_string());
    registry.extend(&evolve::code_registry(&code))?;
    let mut worker_config = WorkerConfig::new().registry(&registry);
    // A test of rolling upgrades shortens the patience with messages of a newer build.
    if let Some(ms) = std::env::var("IT_NEWER_PATIENCE_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        worker_config = worker_config.newer_message_patience(Duration::from_millis(ms));
    }
    if let Ok(url) = std::env::var("IT_PG_URL") {
        let mut pg = dtasks_postgres::PgStoreBuilder::new(url);
        if let Ok(schema) = std::env::var("IT_PG_SCHEMA") {
            pg = pg.schema(schema);
        }
        worker_config = worker_config.store(pg.connect().await?);
    }
    let packed = transport.clone();
    let pod = WorkerPod::builder(transport, worker_config)
        .summary_every(Duration::from_secs(2))
        .build()?;
    tracing::info!(pid, "it-worker started");
    let report = pod
        .run_until(async {
            let mut stdin = tokio::io::stdin();
            let mut sink = Vec::new();
            tokio::select! {
                _ = stdin.read_to_end(&mut sink) => {}
                _ = shutdown_signal() => {}
            }
        })
        .await?;
    println!(
        "it-worker stopped pid={pid} processed={} dead_lettered={} duplicate_results={} restarts={} \
         duplicate_starts={} handed_back={} packed={}",
        report.stats.processed,
        report.stats.dead_lettered,
        report.stats.duplicate_results,
        report.restarts,
        report.stats.duplicate_starts,
        report.stats.handed_back,
        packed.packed_messages()
    );
    drop(otel);
    // The blocking read of standard input may still be running (after SIGTERM): do not
    // wait for it.
    std::process::exit(0);
}

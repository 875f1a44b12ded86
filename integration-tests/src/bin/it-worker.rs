//! The worker process of the integration tests: a worker pod running the DTasks of
//! `dtasks_integration_tests::tasks` on RabbitMQ, configured by the environment
//! (`AMQP_URL`, `DTASKS_PREFIX`, `RUST_LOG`, and `IT_TIMER_HOLD_MS` for
//! [`AmqpConfig::with_timer_hold`]; logs go to standard error).
//!
//! It stops gracefully when its standard input closes (the test that started it is done
//! or gone) or on SIGTERM, then prints one line to standard output:
//! `it-worker stopped pid=.. processed=.. dead_lettered=.. duplicate_results=.. restarts=..
//! duplicate_starts=..`.

use std::time::Duration;

use dtasks::WorkerConfig;
use dtasks_actors::{shutdown_signal, WorkerPod};
use dtasks_amqp::{AmqpConfig, AmqpTransport};
use dtasks_integration_tests::tasks;
use tokio::io::AsyncReadExt as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let pid = std::process::id();
    let mut config = AmqpConfig::from_env();
    // A test may hold timers longer, to act while a worker holds them.
    if let Some(ms) = std::env::var("IT_TIMER_HOLD_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        config = config.with_timer_hold(Duration::from_millis(ms));
    }
    let transport = AmqpTransport::connect(config).await?;
    let pod = WorkerPod::builder(transport, WorkerConfig::new().registry(&tasks::registry()))
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
         duplicate_starts={}",
        report.stats.processed,
        report.stats.dead_lettered,
        report.stats.duplicate_results,
        report.restarts,
        report.stats.duplicate_starts
    );
    // The blocking read of standard input may still be running (after SIGTERM): do not
    // wait for it.
    std::process::exit(0);
}

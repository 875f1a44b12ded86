//! A worker pod for the order flow on RabbitMQ. Run several, in separate terminals or as
//! a scaled compose service; configure with the environment only:
//! `AMQP_URL`, `DTASKS_PREFIX`, `DTASKS_CONSUMERS`, `DTASKS_CONCURRENCY`, `RUST_LOG`, and
//! `DATABASE_URL` (with `DTASKS_PG_SCHEMA`) to record the instances' facts in PostgreSQL
//! instead of RabbitMQ, and `DTASKS_METRICS_ADDR` (`0.0.0.0:9464`, say) to serve
//! Prometheus metrics over HTTP, and `OTEL_EXPORTER_OTLP_ENDPOINT` (with
//! `OTEL_SERVICE_NAME`) to export traces with OTLP. Stops gracefully on SIGTERM or Ctrl-C.

use std::time::Duration;

use dtasks::WorkerConfig;
use dtasks_actors::WorkerPod;
use dtasks_amqp::{AmqpConfig, AmqpTransport};
use dtasks_examples::{
    charge, env_or, init_telemetry, process_order, refund, refund_with_approval, ship,
};

/// A worker's allocator: mimalloc, as the benchmark's processes use it (a worker allocates
/// for every delivery it handles; `bench/README.md`, "The allocator").
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = init_telemetry("info", "dtasks-worker")?;
    if let Some(addr) = dtasks_actors::serve_prometheus_from_env()? {
        tracing::info!(%addr, "serving Prometheus metrics");
    }
    let transport = AmqpTransport::connect(AmqpConfig::from_env()).await?;
    let store = dtasks_cli::store_from_env(&transport).await?;
    tracing::info!(
        "instance facts go to {}",
        dtasks_cli::store_choice_from_env()
    );
    let pod = WorkerPod::builder(
        transport,
        WorkerConfig::new()
            .store(store)
            .register(process_order)
            .register(charge)
            .register(ship)
            .register(refund_with_approval)
            .register(refund)
            // Delivers the completion webhooks of starts made by the web example.
            .register(dtasks_axum::webhook)
            .concurrency(env_or("DTASKS_CONCURRENCY", 64usize)),
    )
    .consumers(env_or("DTASKS_CONSUMERS", 1usize))
    .summary_every(Duration::from_secs(env_or("DTASKS_SUMMARY_SECS", 10u64)))
    .build()?;
    let report = pod.run_until_signal().await?;
    println!("worker stopped: {report:?}");
    Ok(())
}

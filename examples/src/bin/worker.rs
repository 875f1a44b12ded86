//! A worker pod for the order flow on RabbitMQ. Run several, in separate terminals or as
//! a scaled compose service; configure with the environment only:
//! `AMQP_URL`, `DTASKS_PREFIX`, `DTASKS_CONSUMERS`, `DTASKS_CONCURRENCY`, `RUST_LOG`.
//! Stops gracefully on SIGTERM or Ctrl-C.

use std::time::Duration;

use dtasks::WorkerConfig;
use dtasks_actors::WorkerPod;
use dtasks_amqp::{AmqpConfig, AmqpTransport};
use dtasks_examples::{
    charge, env_or, init_logs, process_order, refund, refund_with_approval, ship,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logs("info");
    let transport = AmqpTransport::connect(AmqpConfig::from_env()).await?;
    let pod = WorkerPod::builder(
        transport,
        WorkerConfig::new()
            .register(process_order)
            .register(charge)
            .register(ship)
            .register(refund_with_approval)
            .register(refund)
            .concurrency(env_or("DTASKS_CONCURRENCY", 64usize)),
    )
    .consumers(env_or("DTASKS_CONSUMERS", 1usize))
    .summary_every(Duration::from_secs(env_or("DTASKS_SUMMARY_SECS", 10u64)))
    .build()?;
    let report = pod.run_until_signal().await?;
    println!("worker stopped: {report:?}");
    Ok(())
}

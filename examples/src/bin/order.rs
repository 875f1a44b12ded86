//! The main example: one order through the whole flow.
//!
//! Without `AMQP_URL` it runs on the embedded in-memory runtime; with `AMQP_URL` set it
//! runs a worker pod on RabbitMQ in this process and starts the order there (other
//! workers started with `cargo run -p dtasks-examples --bin worker` share the work), with
//! the instance facts in PostgreSQL when `DATABASE_URL` is set too.

use std::time::Duration;

use dtasks::{Client, Runtime, WorkerConfig};
use dtasks_actors::WorkerPod;
use dtasks_amqp::{AmqpConfig, AmqpTransport};
use dtasks_examples::{charge, env_or, init_logs, process_order, sample_order, ship};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logs("warn");
    let cooling_off_ms = env_or("ORDER_COOLING_OFF_MS", 1_500u64);
    let order = sample_order(env_or("ORDER_ID", 1u32));
    if std::env::var_os("AMQP_URL").is_some() {
        let config = AmqpConfig::from_env();
        println!(
            "dtasks order example on RabbitMQ at {} (prefix `{}`), facts in {}",
            config.urls_for_display(),
            config.prefix(),
            dtasks_cli::store_choice_from_env()
        );
        let transport = AmqpTransport::connect(config).await?;
        let store = dtasks_cli::store_from_env(&transport).await?;
        let client = Client::new(transport.clone()).with_store(store.clone());
        let closing = transport.clone();
        let pod = WorkerPod::builder(
            transport,
            WorkerConfig::new()
                .store(store)
                .register(process_order)
                .register(charge)
                .register(ship),
        )
        .summary_every(Duration::from_secs(30))
        .build()?;
        let handle = client.start(process_order(order, cooling_off_ms)).await?;
        println!("started instance {}", handle.id());
        pod.run_until(async move {
            match handle.result().await {
                Ok(Ok(receipt)) => println!("result: {receipt:?}"),
                Ok(Err(e)) => println!("order failed: {e}"),
                Err(e) => println!("instance failed: {e}"),
            }
        })
        .await?;
        // Its client's reply queue goes with it.
        closing.close().await;
    } else {
        println!(
            "dtasks order example on the embedded in-memory runtime (set AMQP_URL for RabbitMQ)"
        );
        let rt = Runtime::new(
            WorkerConfig::new()
                .register(process_order)
                .register(charge)
                .register(ship),
        )?;
        let handle = rt
            .client()
            .start(process_order(order, cooling_off_ms))
            .await?;
        println!("started instance {}", handle.id());
        match handle.result().await? {
            Ok(receipt) => println!("result: {receipt:?}"),
            Err(e) => println!("order failed: {e}"),
        }
        rt.shutdown().await?;
    }
    Ok(())
}

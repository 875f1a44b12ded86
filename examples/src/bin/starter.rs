//! Starts orders on RabbitMQ from a process that is not a worker, and waits for their
//! results. `starter [count]`; configure with `AMQP_URL`, `DTASKS_PREFIX`,
//! `ORDER_COOLING_OFF_MS`, `DATABASE_URL` when the workers record facts in PostgreSQL, and
//! `OTEL_EXPORTER_OTLP_ENDPOINT` to export the starts' spans, where each order's trace
//! begins.

use dtasks_examples::{env_or, init_telemetry, process_order, sample_order};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = init_telemetry("warn", "dtasks-starter")?;
    let count: u32 = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(5);
    let cooling_off_ms = env_or("ORDER_COOLING_OFF_MS", 1_500u64);
    let (client, transport) = dtasks_cli::connect_from_env().await?;
    let mut handles = Vec::new();
    for id in 1..=count {
        let h = client
            .start(process_order(sample_order(id), cooling_off_ms))
            .await?;
        println!("started order {id} as instance {}", h.id());
        handles.push(h);
    }
    for h in handles {
        match h.result().await? {
            Ok(r) => println!(
                "{}: order {} shipped {} items",
                h.id(),
                r.order,
                r.shipments.len()
            ),
            Err(e) => println!("{}: order failed: {e}", h.id()),
        }
    }
    // Its client's reply queue goes with it.
    transport.close().await;
    Ok(())
}

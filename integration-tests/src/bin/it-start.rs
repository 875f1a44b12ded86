//! A client process of the integration tests: starts [`tasks::once`] under chosen ids, all
//! at once, on RabbitMQ (`AMQP_URL`, `DTASKS_PREFIX`), when told to.
//!
//! Usage: `it-start <path> <ms> <id>...`. It connects, prints `ready`, waits for a line on
//! its standard input, then starts `once(path, id, ms)` under each `id` concurrently with
//! `Client::start_with_id`, and prints one line per id: `<id> ok`, `<id> already_started`
//! or `<id> error <message>`, then `done`.

use dtasks::{Client, InstanceId};
use dtasks_amqp::{AmqpConfig, AmqpTransport};
use dtasks_integration_tests::tasks;
use tokio::io::AsyncBufReadExt as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [path, ms, ids @ ..] = &args[..] else {
        anyhow::bail!("usage: it-start <path> <ms> <id>...");
    };
    let ms: u64 = ms.parse()?;
    let ids = ids
        .iter()
        .map(InstanceId::new)
        .collect::<Result<Vec<_>, _>>()?;
    let client = Client::new(AmqpTransport::connect(AmqpConfig::from_env()).await?);
    // Connects the client's pools now, so that the starts begin together on the signal.
    let probe = InstanceId::new(format!("probe-{}", InstanceId::random()))?;
    let _unknown = client.status(&probe).await;
    println!("ready");
    let mut line = String::new();
    tokio::io::BufReader::new(tokio::io::stdin())
        .read_line(&mut line)
        .await?;
    let starts = ids.iter().map(|id| {
        let task = tasks::once(path.clone(), id.to_string(), ms);
        client.start_with_id(id.clone(), task)
    });
    for (id, started) in ids.iter().zip(futures::future::join_all(starts).await) {
        match started {
            Ok(_) => println!("{id} ok"),
            Err(e) if e.is_already_started() => println!("{id} already_started"),
            Err(e) => println!("{id} error {e}"),
        }
    }
    println!("done");
    Ok(())
}

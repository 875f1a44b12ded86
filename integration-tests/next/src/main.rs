//! The next build, in tests of rolling upgrades: dtasks built with the feature
//! `next-revision` (the envelope revision after this one, with a field added to the
//! state), on RabbitMQ, configured by the environment as the workers of the tests are
//! (`AMQP_URL`, `DTASKS_PREFIX`).
//!
//! - `it-next worker`: runs `it.add_one` until its standard input closes, then prints
//!   `it-next stopped processed=<n> handed_back=<n> dead_lettered=<n>`.
//! - `it-next start <n>`: starts `it.add_one(i)` for `i` in `0..n` and prints a line
//!   `it-next started <id>` for each.
//! - `it-next revision`: prints the envelope revision it writes.

use dtasks::{dtask, Client, Worker, WorkerConfig};
use dtasks_amqp::{AmqpConfig, AmqpTransport};
use tokio::io::AsyncReadExt as _;

/// Returns `x + 1`: the same DTask as the current build's `it.add_one`.
#[dtask(name = "it.add_one")]
async fn add_one(x: u64) -> u64 {
    x + 1
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("revision") {
        println!("{}", dtasks::ENVELOPE_VERSION);
        return Ok(());
    }
    let transport = AmqpTransport::connect(AmqpConfig::from_env()).await?;
    match args.first().map(String::as_str) {
        Some("worker") => {
            let worker = Worker::new(transport, WorkerConfig::new().register(add_one))?;
            let stats = worker.clone();
            eprintln!(
                "it-next worker of envelope revision {}",
                dtasks::ENVELOPE_VERSION
            );
            worker
                .run_until(async {
                    let mut sink = Vec::new();
                    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
                })
                .await?;
            let s = stats.stats();
            println!(
                "it-next stopped processed={} handed_back={} dead_lettered={}",
                s.processed, s.handed_back, s.dead_lettered
            );
        }
        Some("start") => {
            let n: u64 = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(1);
            let client = Client::new(transport);
            for i in 0..n {
                let h = client.start(add_one(i)).await?;
                println!("it-next started {}", h.id());
            }
        }
        _ => anyhow::bail!("usage: it-next worker | it-next start <n>"),
    }
    Ok(())
}

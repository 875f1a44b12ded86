//! What the PostgreSQL server spends on the writes of roots: a client store records 500
//! Started facts at once, then two worker stores record their finishes, all at once or
//! spread over a time, as in the benchmark's S1. Prints the server's CPU per root for
//! each half (every `postgres` process of this machine, read from `/proc`: run it on a
//! database server of its own, on Linux) and the transactions each store committed.
//!
//! ```text
//! cargo run --release -p dtasks-postgres --example write_cost
//! ```
//!
//! Environment: `DATABASE_URL` (default the local `test` database), `ROOTS` (500),
//! `REPS` (10), `SPREAD_MS` (0: the finishes come over this many milliseconds),
//! `WRITERS` (4: the worker stores' transactions in flight). The schema
//! `dtasks_write_cost` is made anew and dropped at the end.

use std::time::{Duration, Instant, SystemTime};

use dtasks::store::{Fact, FactKind, InstanceStore};
use dtasks::{InstanceId, Status};
use dtasks_postgres::{PgStore, PgStoreBuilder};
use tokio::task::JoinSet;

const SCHEMA: &str = "dtasks_write_cost";

/// Milliseconds of CPU (user and system) of every `postgres` process now running.
fn server_cpu_ms() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut ticks = 0;
    for entry in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !stat[open + 1..close].starts_with("postgres") {
            continue;
        }
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
        ticks += field(11).unwrap_or(0) + field(12).unwrap_or(0);
    }
    // Clock ticks of 10 ms (USER_HZ is 100 on Linux).
    ticks * 10
}

fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn store(url: &str, writers: usize) -> anyhow::Result<PgStore> {
    Ok(PgStoreBuilder::new(url)
        .schema(SCHEMA)
        .writers(writers)
        .connect()
        .await?)
}

/// Records one fact of `kind` for each of `ids`, each write on its own, through `stores`
/// in turn; the `i`-th of `n` waits `spread × i ÷ n` first.
async fn record_each(
    ids: &[InstanceId],
    stores: &[PgStore],
    spread: Duration,
    kind: impl Fn() -> FactKind,
) -> anyhow::Result<()> {
    let mut set = JoinSet::new();
    for (i, id) in ids.iter().enumerate() {
        let store = stores[i % stores.len()].clone();
        let fact = Fact::new(id.clone(), "cost", SystemTime::now(), kind());
        let after = spread.mul_f64(i as f64 / ids.len() as f64);
        set.spawn(async move {
            tokio::time::sleep(after).await;
            store.record(vec![fact]).await
        });
    }
    while let Some(done) = set.join_next().await {
        done??;
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let url = setting(
        "DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/test".to_string(),
    );
    let roots: usize = setting("ROOTS", 500);
    let reps: usize = setting("REPS", 10);
    let spread = Duration::from_millis(setting("SPREAD_MS", 0));
    let writers: usize = setting("WRITERS", 4);

    let client = store(&url, 4).await?;
    let workers = [store(&url, writers).await?, store(&url, writers).await?];
    let (mut start_cpu, mut finish_cpu) = (0, 0);
    let (mut start_wall, mut finish_wall) = (Duration::ZERO, Duration::ZERO);
    for rep in 0..reps {
        let ids: Vec<InstanceId> = (0..roots)
            .map(|i| InstanceId::new(format!("cost-{rep}-{i}")))
            .collect::<Result<_, _>>()?;
        let started = FactKind::Started { parent: None };
        let (cpu, t) = (server_cpu_ms(), Instant::now());
        record_each(&ids, std::slice::from_ref(&client), Duration::ZERO, || {
            started.clone()
        })
        .await?;
        start_wall += t.elapsed();
        start_cpu += server_cpu_ms() - cpu;

        let finished = FactKind::Finished {
            status: Status::Succeeded,
            result: vec![1; 20],
        };
        let (cpu, t) = (server_cpu_ms(), Instant::now());
        record_each(&ids, &workers, spread, || finished.clone()).await?;
        finish_wall += t.elapsed();
        finish_cpu += server_cpu_ms() - cpu;
    }
    let all = (roots * reps) as f64;
    let per_rep = |d: Duration| d.as_secs_f64() * 1000.0 / reps as f64;
    println!(
        "{roots} roots x {reps}, finishes spread over {spread:?}, {writers} writers per worker store"
    );
    println!(
        "starts:   {:.3} ms of server CPU per root, {:.1} ms per repetition; transactions {}",
        start_cpu as f64 / all,
        per_rep(start_wall),
        client.write_stats().transactions
    );
    println!(
        "finishes: {:.3} ms of server CPU per root, {:.1} ms per repetition; transactions {}",
        finish_cpu as f64 / all,
        per_rep(finish_wall),
        workers[0].write_stats().transactions + workers[1].write_stats().transactions
    );
    drop((client, workers));
    let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    db.batch_execute(&format!("DROP SCHEMA \"{SCHEMA}\" CASCADE"))
        .await?;
    Ok(())
}

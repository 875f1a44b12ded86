//! What the end-to-end tests of `dtasks` share: the built binary run against a test's own
//! corner of the broker (and, for the PostgreSQL store, a schema of its own), with
//! workers in the test process; the DTasks they run.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use anyhow::{bail, Context as _};
use dtasks::{dtask, DTask, WorkerConfig};
use dtasks_integration_tests::{listed_queues, Broker, Workers};
use dtasks_postgres::PgStoreBuilder;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[dtask(name = "cli.add_one")]
pub async fn add_one(x: u64) -> u64 {
    x + 1
}

#[dtask(name = "cli.explode")]
pub async fn explode(x: u64) -> u64 {
    if x > 0 {
        panic!("boom {x}");
    }
    x
}

#[dtask(name = "cli.approval")]
pub async fn approval() -> String {
    let who: String = DTask::event("approval").await;
    format!("approved by {who}")
}

/// Runs `cli.approval` as its child (`{id}.0`), which waits for the event.
#[dtask(name = "cli.audited")]
pub async fn audited() -> String {
    approval().await
}

/// A snapshot-model DTask that waits for `go`, then continues as new `runs` times.
#[dtask(snapshot, name = "cli.hold")]
pub async fn hold(runs: u32) -> u32 {
    let go: u32 = DTask::event("go").await;
    if runs == 0 {
        return go;
    }
    DTask::continue_as_new(hold(runs - 1)).await
}

/// Sleeps `secs` seconds on a durable timer (its state rides in the timer), then
/// returns them.
#[dtask(name = "cli.nap")]
pub async fn nap(secs: u64) -> u64 {
    DTask::delay(Duration::from_secs(secs)).await;
    secs
}

/// A result with fields: dtasks encodes it as an array of them.
#[derive(Debug, Serialize, Deserialize)]
pub struct Receipt {
    pub order: u32,
    pub paid: bool,
}

#[dtask(name = "cli.receipt")]
pub async fn receipt(order: u32) -> Receipt {
    Receipt { order, paid: true }
}

/// The test database: `DTASKS_TEST_DATABASE_URL`, else the local server's `test`
/// database.
pub fn database_url() -> String {
    std::env::var("DTASKS_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A PostgreSQL schema of one test's own, dropped at the end (or when dropped).
pub struct Schema {
    pub name: String,
    dropped: bool,
}

impl Schema {
    pub fn new() -> Self {
        Self {
            name: format!(
                "dtasks_cli_{}",
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            ),
            dropped: false,
        }
    }

    pub async fn drop_schema(mut self) -> anyhow::Result<()> {
        drop_schema(&self.name).await?;
        self.dropped = true;
        Ok(())
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                let _ = rt.block_on(drop_schema(&name));
            }
        })
        .join();
    }
}

async fn drop_schema(name: &str) -> anyhow::Result<()> {
    let (client, connection) = tokio_postgres::connect(&database_url(), tokio_postgres::NoTls)
        .await
        .context("connecting to PostgreSQL")?;
    tokio::spawn(connection);
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
        .await?;
    Ok(())
}

/// What one run of `dtasks` did.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }

    /// Standard output as one JSON value.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }

    /// Standard output as one JSON value per line.
    pub fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }
}

/// A test's deployment: a broker corner, maybe a PostgreSQL schema, workers running the
/// DTasks above on the store `dtasks` will read, and the binary.
pub struct Deployment {
    pub broker: Broker,
    pub schema: Option<Schema>,
    pub workers: Option<Workers>,
}

impl Deployment {
    /// Workers on the RabbitMQ-only store (`with_postgres` false), or on the PostgreSQL
    /// store in a schema of the test's own.
    pub async fn start(with_postgres: bool) -> anyhow::Result<Self> {
        let broker = Broker::start().await?;
        let mut config = WorkerConfig::new()
            .register(add_one)
            .register(explode)
            .register(approval)
            .register(audited)
            .register(dtasks_axum::webhook)
            .register(receipt)
            .register(hold)
            .register(nap);
        let schema = if with_postgres {
            let schema = Schema::new();
            let store = PgStoreBuilder::new(database_url())
                .schema(schema.name.clone())
                .connect()
                .await?;
            config = config.store(store);
            Some(schema)
        } else {
            None
        };
        let workers = broker.workers_with(1, config).await?;
        Ok(Self {
            broker,
            schema,
            workers: Some(workers),
        })
    }

    /// Runs `dtasks args` with the deployment's environment.
    pub async fn run(&self, args: &[&str]) -> anyhow::Result<Out> {
        self.run_with(args, &[]).await
    }

    /// Runs `dtasks args` with the deployment's environment, changed by `env`.
    pub async fn run_with(&self, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Out> {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_dtasks"));
        cmd.args(args)
            .env("AMQP_URL", self.broker.url())
            .env("DTASKS_PREFIX", self.broker.prefix())
            .env_remove("RUST_LOG")
            .env_remove("DATABASE_URL")
            .env_remove("DTASKS_PG_SCHEMA")
            .kill_on_drop(true);
        if let Some(schema) = &self.schema {
            cmd.env("DATABASE_URL", database_url())
                .env("DTASKS_PG_SCHEMA", &schema.name);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
            .await
            .with_context(|| format!("dtasks {args:?} did not end within 60 s"))??;
        Ok(Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8(out.stdout)?,
            stderr: String::from_utf8(out.stderr)?,
        })
    }

    /// Runs `dtasks args`, which must succeed.
    pub async fn ok(&self, args: &[&str]) -> anyhow::Result<Out> {
        let out = self.run(args).await?;
        if out.code != 0 {
            bail!("dtasks {args:?} exited with {}: {out:?}", out.code);
        }
        Ok(out)
    }

    /// Runs `dtasks args`, which must exit with `code`.
    pub async fn fails(&self, code: i32, args: &[&str]) -> anyhow::Result<Out> {
        let out = self.run(args).await?;
        if out.code != code {
            bail!(
                "dtasks {args:?} exited with {}, not {code}: {out:?}",
                out.code
            );
        }
        Ok(out)
    }

    /// `dtasks status <id> --json`, polled until `check` holds (at most 20 s).
    pub async fn status_until(
        &self,
        id: &str,
        check: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.run(&["status", id, "--json"]).await?;
            if out.code == 0 && check(&out.json()) {
                return Ok(out.json());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("the status of {id} did not come as expected: {out:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the workers.
    pub async fn stop_workers(&mut self) -> anyhow::Result<()> {
        if let Some(w) = self.workers.take() {
            w.stop().await?;
        }
        Ok(())
    }

    /// Deletes the queues that only `dtasks` declared (every one must be a claim register
    /// of an id started with `--id`, a mailbox of an instance sent an event or a cancel,
    /// or the task queue of `cli.unregistered`, which no worker runs and a start made:
    /// anything else, a reply queue say, fails the test), then the broker corner and the
    /// schema.
    pub async fn cleanup(mut self) -> anyhow::Result<()> {
        self.stop_workers().await?;
        let known = self.broker.known_queues();
        let prefix = self.broker.prefix().to_string();
        let listed = listed_queues(&prefix)
            .await
            .context("listing the queues of dtasks needs rabbitmqctl")?;
        let theirs: Vec<String> = listed.into_iter().filter(|q| !known.contains(q)).collect();
        let expected = |q: &str| {
            q.starts_with(&format!("{prefix}.claim."))
                || q.starts_with(&format!("{prefix}.mbox."))
                || q == format!("{prefix}.task.cli.unregistered")
        };
        let unexpected: Vec<&String> = theirs.iter().filter(|q| !expected(q)).collect();
        let ch = self.broker.channel().await?;
        for q in &theirs {
            ch.queue_delete(q.as_str().into(), Default::default())
                .await?;
        }
        let _ = ch.close(200, "OK".into()).await;
        if !unexpected.is_empty() {
            bail!("dtasks left queues it should not have declared: {unexpected:?}");
        }
        self.broker.cleanup().await?;
        if let Some(schema) = self.schema.take() {
            schema.drop_schema().await?;
        }
        Ok(())
    }
}

//! Where the workloads run: workers and a client on the in-memory transport or on
//! RabbitMQ, behind the counting wrapper.

use std::sync::Arc;
use std::time::Duration;

use dtasks::store::InstanceStore;
use dtasks::{Client, MemoryTransport, Transport, Worker, WorkerConfig, WorkerStats};
use dtasks_amqp::{AmqpConfig, AmqpTransport};

/// Counters of the RabbitMQ transports' packs and mailboxes
/// (`AmqpTransport::packed_task_messages`, `packed_messages`, `spent_doorbells`,
/// `merged_doorbells`).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Mailboxes {
    /// Task messages written in task packs.
    pub(crate) task_packed: u64,
    /// Mailbox messages written in packs.
    pub(crate) packed: u64,
    /// Doorbells acked without a drain (their messages were already merged).
    pub(crate) spent_doorbells: u64,
    /// Doorbells handed to a worker: each a drain and a merge.
    pub(crate) merges: u64,
}

impl Mailboxes {
    /// What happened since `before`.
    pub(crate) fn since(self, before: Self) -> Self {
        Self {
            task_packed: self.task_packed - before.task_packed,
            packed: self.packed - before.packed,
            spent_doorbells: self.spent_doorbells - before.spent_doorbells,
            merges: self.merges - before.merges,
        }
    }
}
use dtasks_postgres::PgStore;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::counting::{Counters, Counting, CountingStore};
use crate::sys::Admin;
use crate::tasks::{
    await_event, chain, e2_fan, e2_job, fan, m1_replay, m1_snapshot, m1_step, step, timer,
    E1_AWAIT, E2_FAN, E2_JOB, M1_REPLAY, M1_SNAPSHOT, M1_STEP,
};

/// The settings every workload runs with (recorded with the results).
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// Worker loops (in-memory: on one transport; RabbitMQ: each on its own connections).
    pub(crate) workers: usize,
    /// Deliveries each worker handles at once.
    pub(crate) concurrency: usize,
    /// Task-queue prefetch per worker (RabbitMQ).
    pub(crate) prefetch: u16,
    /// User payload bytes carried by each step (and by each raw baseline message).
    pub(crate) payload: u32,
    /// Child steps per chain (W1, W4).
    pub(crate) steps: u32,
    /// Steps a worker may run inline per delivery (`WorkerConfig::inline_steps`; 0: off).
    pub(crate) inline_steps: usize,
}

/// The DTasks the workers of an environment run.
const TASK_NAMES: [&str; 10] = [
    "bench.chain",
    "bench.step",
    "bench.fan",
    "bench.timer",
    M1_STEP,
    M1_REPLAY,
    M1_SNAPSHOT,
    E1_AWAIT,
    E2_FAN,
    E2_JOB,
];

/// Which transport an environment runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Which {
    Memory,
    Amqp,
}

/// Workers and a client on one transport.
pub(crate) struct Env {
    pub(crate) which: Which,
    pub(crate) client: Client,
    pub(crate) counters: Arc<Counters>,
    pub(crate) broker_pid: Option<String>,
    pub(crate) prefix: Option<String>,
    stop: watch::Sender<bool>,
    handles: Vec<JoinHandle<Result<(), dtasks::Error>>>,
    workers: Vec<Worker>,
    memory: Option<MemoryTransport>,
    amqp: Vec<AmqpTransport>,
    /// The PostgreSQL stores of the workers and of the client, when they use one.
    pub(crate) pg: Vec<PgStore>,
}

/// What the PostgreSQL stores of an environment wrote, summed (`PgStore::write_stats`).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct PgWrites {
    pub(crate) transactions: u64,
    pub(crate) facts: u64,
    pub(crate) calls: u64,
    pub(crate) failed_attempts: u64,
}

impl PgWrites {
    /// What happened between `earlier` and `self`.
    pub(crate) fn since(&self, earlier: &PgWrites) -> PgWrites {
        PgWrites {
            transactions: self.transactions - earlier.transactions,
            facts: self.facts - earlier.facts,
            calls: self.calls - earlier.calls,
            failed_attempts: self.failed_attempts - earlier.failed_attempts,
        }
    }
}

fn worker(
    t: Arc<dyn Transport>,
    s: &Settings,
    store: Option<Arc<dyn InstanceStore>>,
) -> Result<Worker, dtasks::Error> {
    let config = WorkerConfig::new();
    let config = match store {
        Some(store) => config.store(store),
        None => config,
    };
    Worker::new(
        t,
        config
            .register(chain)
            .register(step)
            .register(fan)
            .register(timer)
            .register(m1_step)
            .register(m1_replay)
            .register(m1_snapshot)
            .register(await_event)
            .register(e2_fan)
            .register(e2_job)
            .concurrency(s.concurrency)
            .inline_steps(s.inline_steps),
    )
}

impl Env {
    fn spawn(which: Which, workers: Vec<Worker>, client: Client, counters: Arc<Counters>) -> Self {
        let (stop, stop_rx) = watch::channel(false);
        let handles = workers
            .iter()
            .map(|w| {
                let w = w.clone();
                let mut stop = stop_rx.clone();
                tokio::spawn(async move {
                    w.run_until(async move {
                        let _ = stop.wait_for(|s| *s).await;
                    })
                    .await
                })
            })
            .collect();
        Self {
            which,
            client,
            counters,
            broker_pid: None,
            prefix: None,
            stop,
            handles,
            workers,
            memory: None,
            amqp: Vec::new(),
            pg: Vec::new(),
        }
    }

    /// Workers sharing one in-memory transport, and a client on it.
    pub(crate) fn memory(s: &Settings) -> anyhow::Result<Self> {
        let counters = Arc::new(Counters::default());
        let mem = MemoryTransport::new();
        let shared: Arc<dyn Transport> = Arc::new(Counting::new(
            Arc::new(mem.clone()) as Arc<dyn Transport>,
            counters.clone(),
        ));
        let workers = (0..s.workers)
            .map(|_| worker(shared.clone(), s, None))
            .collect::<Result<Vec<_>, _>>()?;
        let client = Client::new(shared);
        let mut env = Self::spawn(Which::Memory, workers, client, counters);
        env.memory = Some(mem);
        Ok(env)
    }

    /// Workers each on a transport (connections) of its own under `prefix`, and a client
    /// on another; returns once every worker consumes its task queues. The facts of roots
    /// go to the transport's own store (the RabbitMQ-only stream store).
    pub(crate) async fn amqp(
        s: &Settings,
        prefix: &str,
        admin: &Admin,
        broker_pid: Option<String>,
    ) -> anyhow::Result<Self> {
        Self::amqp_with(s, prefix, admin, broker_pid, Vec::new()).await
    }

    /// [`Env::amqp`] with the facts of roots in PostgreSQL: `pg` holds one store for each
    /// worker and one for the client (as if each ran in a process of its own), all on the
    /// same schema, each behind the counting wrapper.
    pub(crate) async fn amqp_with(
        s: &Settings,
        prefix: &str,
        admin: &Admin,
        broker_pid: Option<String>,
        pg: Vec<PgStore>,
    ) -> anyhow::Result<Self> {
        if !pg.is_empty() && pg.len() != s.workers + 1 {
            anyhow::bail!("one PostgreSQL store per worker and one for the client");
        }
        let counters = Arc::new(Counters::default());
        let cfg = || {
            AmqpConfig::from_env()
                .with_prefix(prefix)
                .with_prefetch(s.prefetch)
        };
        let counted_pg = |i: usize| -> Option<Arc<dyn InstanceStore>> {
            pg.get(i).map(|p| {
                Arc::new(CountingStore::new(Arc::new(p.clone()), counters.clone()))
                    as Arc<dyn InstanceStore>
            })
        };
        let mut transports = Vec::new();
        let mut workers = Vec::new();
        for i in 0..s.workers {
            let t = AmqpTransport::connect(cfg()).await?;
            transports.push(t.clone());
            let counted: Arc<dyn Transport> =
                Arc::new(Counting::new(Arc::new(t), counters.clone()));
            workers.push(worker(counted, s, counted_pg(i))?);
        }
        let ct = AmqpTransport::connect(cfg()).await?;
        transports.push(ct.clone());
        let client = Client::new(Arc::new(Counting::new(Arc::new(ct), counters.clone())));
        let client = match counted_pg(s.workers) {
            Some(store) => client.with_store(store),
            None => client,
        };
        let mut env = Self::spawn(Which::Amqp, workers, client, counters);
        let queues: Vec<String> = TASK_NAMES
            .iter()
            .map(|n| transports[0].task_queue(n))
            .collect();
        env.amqp = transports;
        env.pg = pg;
        env.prefix = Some(prefix.to_string());
        env.broker_pid = broker_pid;
        admin
            .wait_consumers(&queues, s.workers as u32, Duration::from_secs(30))
            .await?;
        Ok(env)
    }

    /// The workers' counters, summed.
    pub(crate) fn stats(&self) -> WorkerStats {
        self.workers
            .iter()
            .map(Worker::stats)
            .fold(WorkerStats::default(), |a, b| a + b)
    }

    /// What the RabbitMQ transports' mailboxes saw so far, summed over them (zero in
    /// memory).
    pub(crate) fn mailboxes(&self) -> Mailboxes {
        self.amqp
            .iter()
            .fold(Mailboxes::default(), |m, t| Mailboxes {
                task_packed: m.task_packed + t.packed_task_messages(),
                packed: m.packed + t.packed_messages(),
                spent_doorbells: m.spent_doorbells + t.spent_doorbells(),
                merges: m.merges + t.merged_doorbells(),
            })
    }

    /// What the PostgreSQL stores wrote so far, summed (zero without them).
    pub(crate) fn pg_writes(&self) -> PgWrites {
        self.pg
            .iter()
            .map(PgStore::write_stats)
            .fold(PgWrites::default(), |a, w| PgWrites {
                transactions: a.transactions + w.transactions,
                facts: a.facts + w.facts,
                calls: a.calls + w.calls,
                failed_attempts: a.failed_attempts + w.failed_attempts,
            })
    }

    /// A second client under this environment's prefix, on a transport (connections) of
    /// its own, reading `store` when given, else the transport's own store: a client of
    /// another process, which started none of the instances it reads.
    pub(crate) async fn second_client(
        &self,
        s: &Settings,
        store: Option<PgStore>,
    ) -> anyhow::Result<(Client, AmqpTransport)> {
        let prefix = self.prefix.as_deref().unwrap_or_default();
        let t = AmqpTransport::connect(
            AmqpConfig::from_env()
                .with_prefix(prefix)
                .with_prefetch(s.prefetch),
        )
        .await?;
        let client = Client::new(Arc::new(t.clone()) as Arc<dyn Transport>);
        let client = match store {
            Some(p) => client.with_store(p),
            None => client,
        };
        Ok((client, t))
    }

    /// How many messages are in the dead letters now.
    pub(crate) async fn dead_letters(&self, admin: Option<&Admin>) -> anyhow::Result<u64> {
        match (self.which, &self.memory, admin) {
            (Which::Memory, Some(m), _) => Ok(m.dead_letters().len() as u64),
            (Which::Amqp, _, Some(admin)) => {
                let q = self.amqp[0].dead_letter_queue();
                Ok(admin.peek(&q).await?.map_or(0, |(n, _)| u64::from(n)))
            }
            _ => Ok(0),
        }
    }

    /// Deletes the result registers of the instances run so far (RabbitMQ), so that the
    /// next workload, and the raw baseline, start on a broker without them: every classic
    /// queue that exists costs the broker work, whether it is used or not.
    pub(crate) async fn delete_registers(&self, admin: Option<&Admin>) -> anyhow::Result<()> {
        let Some(admin) = admin else { return Ok(()) };
        let mut names: Vec<String> = self
            .amqp
            .iter()
            .flat_map(|t| t.declared_queues())
            .filter(|q| q.contains(".result.") || q.contains(".status."))
            .collect();
        names.sort();
        names.dedup();
        admin.delete(&names).await?;
        Ok(())
    }

    /// Deletes the mailboxes (RabbitMQ) of the instance `root` and of its descendants, once
    /// they have all finished: a classic queue per instance that would otherwise stay until
    /// it expires, and every existing queue costs the broker work.
    pub(crate) async fn delete_mailboxes(
        &self,
        admin: Option<&Admin>,
        root: &str,
    ) -> anyhow::Result<()> {
        let Some(admin) = admin else { return Ok(()) };
        let Some(prefix) = &self.prefix else {
            return Ok(());
        };
        let own = format!("{prefix}.mbox.{root}");
        let under = format!("{own}.");
        let mut names: Vec<String> = self
            .amqp
            .iter()
            .flat_map(|t| t.declared_queues())
            .filter(|q| *q == own || q.starts_with(&under))
            .collect();
        names.sort();
        names.dedup();
        admin.delete(&names).await?;
        Ok(())
    }

    /// Stops the workers (graceful); returns every queue the transports declared.
    pub(crate) async fn stop(self) -> anyhow::Result<Vec<String>> {
        let _ = self.stop.send(true);
        for h in self.handles {
            h.await??;
        }
        let mut names: Vec<String> = self.amqp.iter().flat_map(|t| t.declared_queues()).collect();
        names.sort();
        names.dedup();
        Ok(names)
    }
}

/// Every queue name a deployment under `prefix` may have declared that does not belong to
/// one instance: task queues of the bench DTasks, shards, delay levels, ready, dead.
pub(crate) fn fixed_queues(prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = TASK_NAMES
        .iter()
        .map(|n| format!("{prefix}.task.{n}"))
        .collect();
    v.extend((0..1024).map(|i| format!("{prefix}.shard.{i}")).take(16));
    v.extend((0..=32).map(|k| format!("{prefix}.delay.{k}")));
    v.push(format!("{prefix}.delay.ready"));
    v.push(format!("{prefix}.dead"));
    v
}

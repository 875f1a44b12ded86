//! S1–S4, the instance store on RabbitMQ: W1b with `Client::start` next to `Client::call`
//! on the RabbitMQ-only stream store and on the PostgreSQL store (S1); status reads by id
//! from a client that started none of the instances (S2); pages of a listing of a million
//! instances (S3); and what a root writes to its store (S4, from the S1 runs).
//!
//! The PostgreSQL store lives in schemas of the benchmark's own ([`SCHEMA`],
//! [`LIST_SCHEMA`]), dropped and created anew by each run.

use std::time::{Duration, Instant, UNIX_EPOCH};

use dtasks::store::{Cursor, Fact, FactKind, Filter, MemoryStore, Query};
use dtasks::{InstanceId, Status};
use dtasks_postgres::PgStore;
use tokio::task::JoinSet;
use tokio_postgres::NoTls;

use crate::env::{Env, Settings};
use crate::sys::Admin;
use crate::tasks::{await_event, chain, E1_EVENT};
use crate::workloads::{self, Run, Via};

/// The schema of S1, S2 and S4.
pub(crate) const SCHEMA: &str = "dtasks_bench";
/// The schema of S3's million instances.
pub(crate) const LIST_SCHEMA: &str = "dtasks_bench_list";
/// The instances S3 seeds.
pub(crate) const LIST_ROWS: u64 = 1_000_000;
/// The timed reads of each S3 page (after one untimed read).
pub(crate) const LIST_READS: usize = 21;
/// S2: reads of the status of one suspended instance.
pub(crate) const RUNNING_READS: usize = 200;

/// The database: `DATABASE_URL`, else the local one.
pub(crate) fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// A plain connection, for what the store does not do (dropping a schema, seeding).
async fn sql(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("warning: PostgreSQL connection: {e}");
        }
    });
    Ok(client)
}

/// Drops the schema `schema` and everything in it.
pub(crate) async fn drop_schema(url: &str, schema: &str) -> anyhow::Result<()> {
    sql(url)
        .await?
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .await?;
    Ok(())
}

/// `n` stores on [`SCHEMA`], each with connections and a writer of its own (the first
/// creates the schema).
pub(crate) async fn pg_stores(url: &str, n: usize) -> anyhow::Result<Vec<PgStore>> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(PgStore::builder(url).schema(SCHEMA).connect().await?);
    }
    Ok(v)
}

/// What the S sections measured on RabbitMQ (S1's stream-store rows are W1b's).
#[derive(Debug, Default)]
pub(crate) struct StoreRuns {
    /// S1 on the PostgreSQL store: W1b with `start`, one run per repetition.
    pub(crate) pg_start: Vec<Run>,
    /// S1 on the PostgreSQL store: W1b with `call`, each run just before a `start` one.
    pub(crate) pg_call: Vec<Run>,
    /// S2 on the stream store.
    pub(crate) status_stream: Option<StatusRun>,
    /// S2 on the PostgreSQL store.
    pub(crate) status_pg: Option<StatusRun>,
    /// S3 on the PostgreSQL store.
    pub(crate) list_pg: Option<ListRun>,
    /// S3 on the fold a stream store's reader holds, seeded in memory.
    pub(crate) list_fold: Option<ListRun>,
    /// Why a part did not run.
    pub(crate) skipped: Vec<String>,
}

impl StoreRuns {
    /// Every verification failure.
    pub(crate) fn errors(&self) -> Vec<String> {
        let mut e = Vec::new();
        for r in &self.pg_start {
            e.extend(r.errors.iter().map(|x| format!("S1 PostgreSQL start: {x}")));
        }
        for r in &self.pg_call {
            e.extend(r.errors.iter().map(|x| format!("S1 PostgreSQL call: {x}")));
        }
        for (label, r) in [
            ("S2 stream store", &self.status_stream),
            ("S2 PostgreSQL", &self.status_pg),
        ] {
            if let Some(r) = r {
                e.extend(r.errors.iter().map(|x| format!("{label}: {x}")));
            }
        }
        for (label, r) in [
            ("S3 PostgreSQL", &self.list_pg),
            ("S3 fold", &self.list_fold),
        ] {
            if let Some(r) = r {
                e.extend(r.errors.iter().map(|x| format!("{label}: {x}")));
            }
        }
        e
    }
}

/// Whether the database answers; if not, says so in `out` (the URL may hold a password:
/// it is not shown).
async fn reachable(url: &str, what: &str, out: &mut StoreRuns) -> bool {
    match sql(url).await {
        Ok(_) => true,
        Err(e) => {
            out.skipped.push(format!(
                "PostgreSQL (`DATABASE_URL`) could not be reached ({e}): {what} not measured"
            ));
            false
        }
    }
}

/// S1, S2 and S4 on the PostgreSQL store: workers and a client on RabbitMQ under
/// `<prefix>-pg` with their facts in [`SCHEMA`] (made anew); the queues and the schema
/// are deleted after.
pub(crate) async fn pg_section(
    s: &crate::env::Settings,
    wants: &(dyn Fn(&str) -> bool + Sync),
    (w1b, reps, s2_reads): (usize, usize, usize),
    admin: &Admin,
    prefix: &str,
    broker: Option<String>,
    out: &mut StoreRuns,
) -> anyhow::Result<()> {
    let url = database_url();
    if !reachable(&url, "S1, S2 and S4 on PostgreSQL", out).await {
        return Ok(());
    }
    drop_schema(&url, SCHEMA).await?;
    let stores = pg_stores(&url, s.workers + 1).await?;
    let pp = format!("{prefix}-pg");
    let env = Env::amqp_with(s, &pp, admin, broker, stores).await?;
    let mut second = Vec::new();
    let result = async {
        if wants("s1") || wants("s4") {
            s1_pg(&env, admin, s, w1b, reps, out).await?;
        }
        if wants("s2") {
            crate::step("RabbitMQ + PostgreSQL: S2, status by id");
            let own = PgStore::builder(&url).schema(SCHEMA).connect().await?;
            let (r, q) = s2(&env, admin, s, s2_reads, Some(own)).await?;
            out.status_pg = Some(r);
            second = q;
        }
        anyhow::Ok(())
    }
    .await;
    let mut names = env.stop().await?;
    names.append(&mut second);
    crate::cleanup(admin, &pp, names).await?;
    result?;
    drop_schema(&url, SCHEMA).await?;
    Ok(())
}

/// S3 on PostgreSQL (when it can be reached) and on the fold of the stream store.
pub(crate) async fn list_section(out: &mut StoreRuns) -> anyhow::Result<()> {
    let url = database_url();
    if reachable(&url, "S3 on PostgreSQL", out).await {
        crate::step("PostgreSQL: S3, seeding a million instances and reading pages");
        let client = dtasks::Client::new(dtasks::MemoryTransport::new());
        out.list_pg = Some(s3_pg(&url, &client).await?);
    }
    crate::step("S3 on the stream store's fold, seeded in memory");
    out.list_fold = Some(s3_fold().await?);
    Ok(())
}

/// S1 on the PostgreSQL store: `reps` repetitions of W1b with `call` then with `start`,
/// on `env` (whose workers and client use the store).
pub(crate) async fn s1_pg(
    env: &Env,
    admin: &Admin,
    s: &Settings,
    chains: usize,
    reps: usize,
    out: &mut StoreRuns,
) -> anyhow::Result<()> {
    let warm = workloads::w1b(env, Some(admin), s, 20, 950_000_000).await?;
    if !warm.errors.is_empty() {
        out.skipped
            .push(format!("PostgreSQL warm-up errors: {:?}", warm.errors));
    }
    for rep in 0..reps {
        // Start and call take turns going first.
        for via in Via::pair(rep) {
            let (way, runs, base) = match via {
                Via::Start => ("start", &mut out.pg_start, 700_000_000),
                Via::Call => ("call", &mut out.pg_call, 600_000_000),
            };
            crate::step(&format!(
                "RabbitMQ + PostgreSQL: W1b with {way}, rep {}",
                rep + 1
            ));
            let base = base + rep as u64 * 10_000_000;
            runs.push(workloads::w1b_via(env, Some(admin), s, chains, base, via).await?);
        }
    }
    Ok(())
}

/// S2: status reads by id from a second client.
#[derive(Clone, Debug, Default)]
pub(crate) struct StatusRun {
    /// Instances read (finished ones).
    pub(crate) instances: usize,
    /// Facts recorded under the environment before the first read (for the stream store:
    /// what the second client's first read catches up).
    pub(crate) facts_before: u64,
    /// The second client's first read (ms).
    pub(crate) first_ms: f64,
    /// Each later read of a finished instance (ms), one at a time.
    pub(crate) finished_ms: Vec<f64>,
    /// Reads of one suspended instance (ms), one at a time.
    pub(crate) running_ms: Vec<f64>,
    pub(crate) errors: Vec<String>,
}

/// S2 on `env`: starts `n` chains with its client and waits for them, starts one
/// instance that waits for an event, then reads their statuses from a second client (with
/// `store` when given, else the transport's own store). Returns the run and the queues
/// the second client's transport declared.
pub(crate) async fn s2(
    env: &Env,
    admin: &Admin,
    s: &Settings,
    n: usize,
    store: Option<PgStore>,
) -> anyhow::Result<(StatusRun, Vec<String>)> {
    let mut run = StatusRun {
        instances: n,
        ..StatusRun::default()
    };
    // The instances, started and finished by the environment's client.
    let mut set = JoinSet::new();
    for i in 0..n {
        let client = env.client.clone();
        let (steps, payload) = (s.steps, s.payload);
        let start = 800_000_000 + i as u64 * 1_000;
        set.spawn(async move {
            let h = client.start(chain(start, steps, payload)).await?;
            let v = h.result().await?;
            Ok::<_, dtasks::Error>((h.id().clone(), v == start + u64::from(steps)))
        });
    }
    let mut ids = Vec::new();
    while let Some(r) = set.join_next().await {
        match r? {
            Ok((id, true)) => ids.push(id),
            Ok((id, false)) => run.errors.push(format!("{id} returned a wrong value")),
            Err(e) => run.errors.push(format!("an instance failed: {e}")),
        }
    }
    let waiting = env.client.start(await_event(1)).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match waiting.status().await? {
            Status::Suspended => break,
            st if st.is_finished() || Instant::now() > deadline => {
                anyhow::bail!("the waiting instance did not suspend: {st:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
    run.facts_before = env.counters.snapshot().total_facts();

    let (client, transport) = env.second_client(s, store).await?;
    let result = async {
        let Some(first) = ids.first() else {
            anyhow::bail!("no instance finished");
        };
        let t = Instant::now();
        let st = client.status(first).await?;
        run.first_ms = t.elapsed().as_secs_f64() * 1e3;
        check(&mut run.errors, first, st, Status::Succeeded);
        for id in &ids[1..] {
            let t = Instant::now();
            let st = client.status(id).await?;
            run.finished_ms.push(t.elapsed().as_secs_f64() * 1e3);
            check(&mut run.errors, id, st, Status::Succeeded);
        }
        for _ in 0..RUNNING_READS {
            let t = Instant::now();
            let st = client.status(waiting.id()).await?;
            run.running_ms.push(t.elapsed().as_secs_f64() * 1e3);
            check(&mut run.errors, waiting.id(), st, Status::Suspended);
        }
        anyhow::Ok(())
    }
    .await;
    transport.close().await;
    let declared = transport.declared_queues();
    result?;
    // Let the waiting instance finish, and drop its mailbox.
    env.client.signal(waiting.id(), E1_EVENT, &1u64).await?;
    let (tag, value) = tokio::time::timeout(Duration::from_secs(60), waiting.result()).await??;
    if (tag, value) != (1, 1) {
        run.errors
            .push(format!("the waiting instance returned ({tag}, {value})"));
    }
    env.delete_mailboxes(Some(admin), waiting.id().as_str())
        .await?;
    Ok((run, declared))
}

fn check(errors: &mut Vec<String>, id: &InstanceId, got: Status, want: Status) {
    if got != want && errors.len() < 10 {
        errors.push(format!("{id} read {got:?}, expected {want:?}"));
    }
}

/// S3: pages of 100 from a store of [`LIST_ROWS`] instances.
#[derive(Clone, Debug, Default)]
pub(crate) struct ListRun {
    pub(crate) rows: u64,
    /// How long seeding took (s).
    pub(crate) seed_s: f64,
    pub(crate) cases: Vec<ListCase>,
    pub(crate) errors: Vec<String>,
}

/// The reads of one page.
#[derive(Clone, Debug)]
pub(crate) struct ListCase {
    /// The filter.
    pub(crate) what: &'static str,
    /// The first page, or one in the middle of the listing (by cursor).
    pub(crate) deep: bool,
    /// Each timed read (ms).
    pub(crate) ms: Vec<f64>,
}

/// The seeded instances: one every 600 ms over the week before `BASE_MS + 600 M ms`.
const BASE_MS: u64 = 1_760_000_000_000;
const EVERY_MS: u64 = 600;
const NAMES: [&str; 7] = [
    "orders.charge",
    "orders.ship",
    "billing.invoice",
    "email.send",
    "reports.daily",
    "etl.import",
    "users.signup",
];

/// The status of seeded instance `g`: 91% succeeded, 2% failed, 1% cancelled, 2%
/// running, 3% suspended, 1% pending.
fn seeded_status(g: u64) -> Status {
    match g % 100 {
        0..=1 => Status::Failed,
        2 => Status::Cancelled,
        3..=4 => Status::Running,
        5..=7 => Status::Suspended,
        8 => Status::Pending,
        _ => Status::Succeeded,
    }
}

fn seeded_id(g: u64) -> String {
    format!("inst-{g:07}")
}

/// The cursor just after seeded instance `g`.
fn after_seeded(g: u64) -> anyhow::Result<Cursor> {
    Ok(Cursor::parse(&format!(
        "{}/{}",
        BASE_MS + g * EVERY_MS,
        seeded_id(g)
    ))?)
}

/// The filters S3 reads, each on the first page and from the middle of the listing.
fn list_cases() -> Vec<(&'static str, Filter)> {
    vec![
        ("no filter", Filter::new()),
        ("status failed (2%)", Filter::new().status(Status::Failed)),
        ("name orders.charge (1/7)", Filter::new().name(NAMES[0])),
    ]
}

/// Times the pages of `list_cases` with `read`, checking each page.
async fn time_pages<F, Fut>(rows: u64, mut read: F, run: &mut ListRun) -> anyhow::Result<()>
where
    F: FnMut(Query) -> Fut,
    Fut: std::future::Future<Output = Result<dtasks::store::Listing, dtasks::Error>>,
{
    for (what, filter) in list_cases() {
        for deep in [false, true] {
            let query = if deep {
                Query::new(filter.clone()).after(after_seeded(rows / 2)?)
            } else {
                Query::new(filter.clone())
            };
            let mut case = ListCase {
                what,
                deep,
                ms: Vec::new(),
            };
            for i in 0..=LIST_READS {
                let t = Instant::now();
                let page = read(query.clone()).await?;
                let took = t.elapsed().as_secs_f64() * 1e3;
                if i > 0 {
                    case.ms.push(took);
                }
                let ok = page.instances.len() == 100
                    && page.next.is_some()
                    && page.instances.iter().all(|x| filter.matches(x))
                    && page
                        .instances
                        .windows(2)
                        .all(|w| Cursor::of(&w[0]).parts() > Cursor::of(&w[1]).parts())
                    && query
                        .cursor()
                        .is_none_or(|c| Cursor::of(&page.instances[0]).parts() < c.parts());
                if !ok && i == 0 {
                    run.errors.push(format!(
                        "{what}, {}: a wrong page ({} instances)",
                        if deep { "mid-listing" } else { "first page" },
                        page.instances.len()
                    ));
                }
            }
            run.cases.push(case);
        }
    }
    Ok(())
}

/// S3 on PostgreSQL: seeds [`LIST_ROWS`] instances into [`LIST_SCHEMA`] (made anew) with
/// one `INSERT … SELECT generate_series`, then times `Client::list` pages through
/// `client`'s transport with the store on that schema.
pub(crate) async fn s3_pg(url: &str, client: &dtasks::Client) -> anyhow::Result<ListRun> {
    drop_schema(url, LIST_SCHEMA).await?;
    let store = PgStore::builder(url).schema(LIST_SCHEMA).connect().await?;
    let db = sql(url).await?;
    let names = NAMES
        .iter()
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(",");
    let t = Instant::now();
    // The statuses of `seeded_status`; finished instances hold a 48-byte result,
    // suspended ones wait for an event, and an instance was last updated up to 5 s after
    // its start.
    db.batch_execute(&format!(
        "INSERT INTO \"{LIST_SCHEMA}\".dtasks_instances (id, name, parent, status, waits, \
           created_at, updated_at, version, result, duplicate_results) \
         SELECT 'inst-' || lpad(g::text, 7, '0'), (ARRAY[{names}])[1 + g % 7], NULL, \
           (CASE WHEN g % 100 < 2 THEN 'failed' WHEN g % 100 = 2 THEN 'cancelled' \
             WHEN g % 100 < 5 THEN 'running' WHEN g % 100 < 8 THEN 'suspended' \
             WHEN g % 100 = 8 THEN 'pending' ELSE 'succeeded' END), \
           (CASE WHEN g % 100 BETWEEN 5 AND 7 THEN '[{{\"Event\":\"approval\"}}]' \
             ELSE '[]' END)::jsonb, \
           t, t + (g % 5000) * interval '1 millisecond', 1 + g % 4, \
           (CASE WHEN g % 100 < 3 OR g % 100 >= 9 THEN decode(repeat('a5', 48), 'hex') END), \
           0 \
         FROM generate_series(1, {LIST_ROWS}) AS g, \
           LATERAL (SELECT to_timestamp(({BASE_MS} + g * {EVERY_MS}) / 1000.0) AS t) AS x; \
         ANALYZE \"{LIST_SCHEMA}\".dtasks_instances;"
    ))
    .await?;
    let mut run = ListRun {
        rows: LIST_ROWS,
        seed_s: t.elapsed().as_secs_f64(),
        ..ListRun::default()
    };
    let client = client.clone().with_store(store.clone());
    let read = |q: Query| {
        let client = client.clone();
        async move { client.list(&q).await }
    };
    time_pages(LIST_ROWS, read, &mut run).await?;
    drop(store);
    drop_schema(url, LIST_SCHEMA).await?;
    Ok(run)
}

/// S3 on the fold a stream store's reader holds: [`LIST_ROWS`] instances applied to a
/// [`MemoryStore`] as their facts (a start, then a status or a finish), the same
/// instances as the PostgreSQL table's; pages read with `MemoryStore::page`, which is
/// what the stream store's `list` answers from once synced (the sync, a marker round
/// trip, is not included).
pub(crate) async fn s3_fold() -> anyhow::Result<ListRun> {
    let index = MemoryStore::new();
    let t = Instant::now();
    let chunk = 10_000;
    let mut g = 1;
    while g <= LIST_ROWS {
        let mut facts = Vec::with_capacity(2 * chunk);
        for g in g..(g + chunk as u64).min(LIST_ROWS + 1) {
            let id = InstanceId::new(seeded_id(g))?;
            let name = NAMES[(g % 7) as usize];
            let at = UNIX_EPOCH + Duration::from_millis(BASE_MS + g * EVERY_MS);
            let later = at + Duration::from_millis(g % 5000);
            facts.push(Fact::new(
                id.clone(),
                name,
                at,
                FactKind::Started { parent: None },
            ));
            let status = seeded_status(g);
            let kind = if status.is_finished() {
                FactKind::Finished {
                    status,
                    result: vec![0xa5; 48],
                }
            } else {
                let waits = if status == Status::Suspended {
                    vec![dtasks::Wait::Event("approval".into())]
                } else {
                    Vec::new()
                };
                FactKind::Status {
                    status,
                    waits,
                    version: 1 + g % 4,
                }
            };
            facts.push(Fact::new(id, name, later, kind));
        }
        index.apply(&facts);
        g += chunk as u64;
    }
    let mut run = ListRun {
        rows: index.len() as u64,
        seed_s: t.elapsed().as_secs_f64(),
        ..ListRun::default()
    };
    let read = |q: Query| {
        let page = index.page(&q);
        async move { Ok(page) }
    };
    time_pages(LIST_ROWS, read, &mut run).await?;
    Ok(run)
}

//! # dtasks-cli: the `dtasks` command line
//!
//! `dtasks` manages the instances of a deployment on RabbitMQ from a shell: it lists and
//! inspects them, starts them by name, sends them events, cancels and purges them, lists
//! the code suspended snapshot instances hold, and looks after the transport's dead
//! letters.
//!
//! ```text
//! dtasks list [--status S]... [--name N] [--prefix P] [--since T] [--until T]
//!             [--parent ID | --roots] [--limit N] [--after CURSOR] [--json[=lines|array]]
//! dtasks status <id> [--json]
//! dtasks result <id> [--wait [--timeout D]] [--json]
//! dtasks start <name> <json-args> [--id ID] [--wait [--timeout D]] [--record-children]
//! dtasks signal <id> <event-name> <json-value> [--to CHILD-ID]
//! dtasks cancel <id> [--reason R]
//! dtasks purge (--all | [--status S]... [--name N] [--prefix P] [--until T])
//! dtasks fingerprints [--name N] [--json]
//! dtasks dead-letters list [--json]
//! dtasks dead-letters show <n>
//! dtasks dead-letters replay (<n> | --all)
//! dtasks dead-letters drop (<n> | --all)
//! ```
//!
//! Every subcommand has `--help`. Data goes to standard output, messages to standard
//! error.
//!
//! ## Output
//!
//! - `list` lists roots, and the children of roots that record them (`start
//!   --record-children`). It prints a table (id, name, status, started, updated, waits);
//!   with `--json`, one JSON object per instance and line, with `--json=array` (or
//!   `--json array`) one array. Each object
//!   holds `id`, `name`, `status`, `parent`, `started`, `updated`, `finished`, `waits`
//!   (as the store keeps them: `{"Event": "approval"}`, `{"Timer": {"at_ms": ..}}`),
//!   `duplicates`, `runs` (1 plus one per continue-as-new), `fingerprint` (the code that
//!   saved a suspended snapshot machine, in hexadecimal, or `null`), `records_children`
//!   (whether its children are in the store too) and `cursor`, the
//!   cursor of the page after that instance. When another
//!   page exists, `next page: --after CURSOR` goes to standard error.
//! - `status` prints `key: value` lines (`runs:`, and `code:` for a suspended snapshot
//!   instance, among them), or with `--json` the object `list` prints.
//! - `fingerprints` prints a table (name, fingerprint, instances): for each DTask and
//!   fingerprint, how many unfinished instances hold a snapshot machine saved by that
//!   code, children included when their roots record them
//!   (`Client::recording_children`). When some unfinished roots do not record their
//!   children, a line on standard error (`children not counted: N unfinished root
//!   instance(s) ...`) says so: code that only their suspended children hold is missing
//!   from the table. With `--json`, one object: `held`, an array of objects with those
//!   three keys, `unrecorded_roots` (N) and `children_counted` (N is 0). Code no row
//!   names can be removed once children are counted.
//! - `result` prints the value as JSON on one line; with `--json`, an object with the
//!   `id`, the `status` and the `value`, or for a failure the `failure` and its
//!   `message` (and the failure on standard error, exit code 1).
//! - `start` prints the id; with `--wait`, the result on the next line. When no worker
//!   consumes the DTask's task queue at that moment, a line on standard error says so
//!   (the start waits in the queue until a worker that registers the DTask runs; the
//!   client cannot know which DTasks the workers register). `--timeout` bounds a wait
//!   of `start` or `result` (`90s`, `15m`, `1h30m`): past it, exit code 5 and the status
//!   on standard error; the instance goes on. With
//!   `--record-children` the instance's children are recorded too
//!   (`Client::recording_children`), so `list --parent` lists them and `fingerprints`
//!   counts them.
//! - `cancel` prints `cancelled` or `already finished`. The instance stops at its next
//!   step: at once when it waits in its mailbox; when its state rides in a timer (a
//!   lone `DTask::delay`), at the timer's next hop through a worker
//!   (`AmqpConfig::with_timer_hop`, about 17.5 minutes by default) or when it fires,
//!   whichever comes first, which a line on standard error then says (`ID waits for a
//!   timer: it stops at the timer's next hop … or when the timer fires at T, …`).
//! - `purge` prints the number removed; only finished instances are removed, so
//!   `--status` takes `succeeded`, `failed` and `cancelled` (others are bad usage).
//! - `dead-letters list` prints the letters numbered from 1 (id, source queue, size,
//!   reason), `show` one letter's headers and a hex dump of its body; `replay` prints
//!   `replayed ID to QUEUE` for each, `drop` (for good) `dropped ID`. `show <n>`,
//!   `replay <n>` and `drop <n>` number as the list does at that moment; a replay or a
//!   drop takes the letter by its id, never another one.
//!
//! ## Environment
//!
//! The same as the workers' ([`connect_from_env`]):
//!
//! | variable | meaning |
//! |---|---|
//! | `AMQP_URL` | the broker (default `amqp://guest:guest@127.0.0.1:5672/%2f`; a cluster's nodes separated by commas) |
//! | `DTASKS_PREFIX` | the deployment's queue prefix (default `dtasks`) |
//! | `DTASKS_TASK_QUEUES`, `DTASKS_TASK_PACKS`, `DTASKS_QUORUM_MAILBOXES`, `DTASKS_PUBLISH_CHANNELS` | the topology's settings ([`AmqpConfig::from_env`]): the workers' values |
//! | `DATABASE_URL` | when set, the PostgreSQL instance store (`dtasks-postgres`); when not, the RabbitMQ-only store (the stream `P.facts`) |
//! | `DTASKS_PG_SCHEMA` | the PostgreSQL store's schema (default `dtasks`) |
//! | `RUST_LOG` | the libraries' logs on standard error (default: none, so that the command's own message is the last line there) |
//!
//! A variable that is set but cannot be read (`DTASKS_TASK_QUEUES=abc`), an `AMQP_URL`
//! that is not an AMQP URL and an invalid prefix are errors (exit code 2), not defaults.
//! Every command but `start` joins only a deployment that exists ([`connect_existing`]):
//! a prefix with no deployment under it, or a schema without the store's tables, is an
//! error (exit code 2) that names it, and nothing is made under it. `start` makes them
//! when missing, as a deployment's first process does.
//!
//! Workers and the command line must agree: a worker that records facts in PostgreSQL
//! is read by a `dtasks` that has the same `DATABASE_URL` and schema. `dtasks` makes no
//! reply queue ([`AmqpConfig::with_reply_queues`]): a start with `--wait` reads its
//! result from the store, and nothing is left behind on the broker but what the
//! commands themselves write (an event in a mailbox, the claim of an id started with
//! `--id`).
//!
//! ## Exit codes
//!
//! | code | when |
//! |---|---|
//! | 0 | success |
//! | 1 | the operation failed (the instance asked for its result failed or was cancelled, an event for a finished instance, an id already started) |
//! | 2 | bad usage: unknown options, an invalid id, time, cursor or JSON argument, a setting of the environment that cannot be used |
//! | 3 | not found: no such instance or dead letter |
//! | 4 | the broker or the database cannot be reached (or failed) |
//! | 5 | not finished: `result` without `--wait`, or a wait past its `--timeout` |
//!
//! ## Values
//!
//! Arguments, event values and results are MessagePack inside dtasks; the command line
//! speaks JSON. `start` takes the arguments as a JSON array (`[41]`, `["order-7", 1999]`)
//! and encodes it as the MessagePack tuple a DTask's arguments decode from (`[]` for a
//! DTask without arguments); a JSON object is accepted where a struct is expected, and
//! `{"Approve": "Ada"}` where an enum is. A result is printed as JSON: structs
//! show as arrays of their fields (dtasks encodes them compactly), byte strings as arrays
//! of numbers, and map keys that are not strings as their JSON text.
//!
//! ## Times
//!
//! Times print as RFC 3339 in UTC with milliseconds (`2025-05-01T12:00:00.250Z`).
//! `--since` and `--until` take RFC 3339 (with any offset: `2025-05-01T14:00:00+02:00`)
//! or a duration before now: `90s`, `15m`, `1h`, `2d`, `1w`, `1h30m`. Times are parsed
//! and printed with `chrono`, for its complete RFC 3339 (offsets other than `Z`,
//! fractional seconds), which `humantime` lacks; the relative durations are a small
//! parser of this crate.
//!
//! ## Choosing the store in other binaries
//!
//! [`connect_from_env`] and [`store_from_env`] are the one place that reads
//! `DATABASE_URL`: the example workers and starters use them too, so that a worker and
//! the command line always pick the same store.
//!
//! ```no_run
//! use dtasks::WorkerConfig;
//! use dtasks_amqp::{AmqpConfig, AmqpTransport};
//!
//! # async fn run() -> Result<(), dtasks::Error> {
//! let transport = AmqpTransport::connect(AmqpConfig::from_env()).await?;
//! let store = dtasks_cli::store_from_env(&transport).await?;
//! let config = WorkerConfig::new().store(store);
//! # let _ = config;
//! # Ok(()) }
//! ```

mod args;
mod commands;
mod conn;
mod dead;
mod exit;
mod render;
mod time;

use std::ffi::OsString;
use std::process::ExitCode;
use std::sync::Arc;

use dtasks::store::InstanceStore;
use dtasks::{Client, Error};
use dtasks_amqp::{AmqpConfig, AmqpTransport};
use dtasks_postgres::{PgStoreBuilder, DATABASE_URL};

/// The environment variable naming the PostgreSQL store's schema (default `dtasks`),
/// read with `DATABASE_URL`.
pub const PG_SCHEMA: &str = "DTASKS_PG_SCHEMA";

/// Which instance store the environment selects.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreChoice {
    /// The RabbitMQ-only store of the transport (`DATABASE_URL` unset).
    Stream,
    /// The PostgreSQL store (`DATABASE_URL` set), in this schema.
    Postgres {
        /// The schema: `DTASKS_PG_SCHEMA`, or the store's default.
        schema: Option<String>,
    },
}

impl std::fmt::Display for StoreChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreChoice::Stream => f.write_str("the RabbitMQ-only store (stream P.facts)"),
            StoreChoice::Postgres { schema: Some(s) } => {
                write!(f, "the PostgreSQL store (schema {s})")
            }
            StoreChoice::Postgres { schema: None } => f.write_str("the PostgreSQL store"),
        }
    }
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|s| !s.is_empty())
}

/// The store the environment selects: PostgreSQL when `DATABASE_URL` is set (and not
/// empty), else the RabbitMQ-only store.
pub fn store_choice_from_env() -> StoreChoice {
    if env_var(DATABASE_URL).is_some() {
        StoreChoice::Postgres {
            schema: env_var(PG_SCHEMA),
        }
    } else {
        StoreChoice::Stream
    }
}

/// The instance store the environment selects ([`store_choice_from_env`]): the
/// PostgreSQL store at `DATABASE_URL` (schema `DTASKS_PG_SCHEMA`, default `dtasks`),
/// connected and migrated, or `transport`'s own RabbitMQ-only store. Give it to the
/// workers ([`WorkerConfig::store`](dtasks::WorkerConfig::store)) and the clients
/// ([`Client::with_store`]) of a deployment alike.
pub async fn store_from_env(transport: &AmqpTransport) -> Result<Arc<dyn InstanceStore>, Error> {
    store_of_env(transport, false).await
}

/// [`store_from_env`]; with `existing`, a PostgreSQL schema without the store's tables is
/// refused ([`PgStoreBuilder::existing_schema`]) instead of made.
async fn store_of_env(
    transport: &AmqpTransport,
    existing: bool,
) -> Result<Arc<dyn InstanceStore>, Error> {
    match store_choice_from_env() {
        StoreChoice::Stream => Ok(Arc::new(transport.instance_store())),
        StoreChoice::Postgres { schema } => {
            let mut builder = PgStoreBuilder::from_env()?.existing_schema(existing);
            if let Some(schema) = schema {
                builder = builder.schema(schema);
            }
            Ok(Arc::new(builder.connect().await?))
        }
    }
}

/// Connects to the broker of `cfg` and to the store the environment selects
/// ([`store_from_env`]); returns a client reading that store, and the transport.
pub async fn connect(cfg: AmqpConfig) -> Result<(Client, AmqpTransport), Error> {
    let transport = AmqpTransport::connect(cfg).await?;
    let store = store_from_env(&transport).await?;
    let client = Client::new(transport.clone()).with_store(store);
    Ok((client, transport))
}

/// [`connect`] to a deployment that exists: a prefix without the deployment's queues
/// ([`AmqpConfig::with_existing_deployment`]) or a PostgreSQL schema without the store's
/// tables ([`PgStoreBuilder::existing_schema`]) is an error
/// ([`Error::is_bad_input`]) that names it, not a new, empty deployment.
pub async fn connect_existing(cfg: AmqpConfig) -> Result<(Client, AmqpTransport), Error> {
    let transport = AmqpTransport::connect(cfg.with_existing_deployment(true)).await?;
    let store = store_of_env(&transport, true).await?;
    let client = Client::new(transport.clone()).with_store(store);
    Ok((client, transport))
}

/// [`connect`] with the broker of the environment: `AMQP_URL` and `DTASKS_PREFIX`
/// ([`AmqpConfig::from_env`]).
pub async fn connect_from_env() -> Result<(Client, AmqpTransport), Error> {
    connect(AmqpConfig::from_env()).await
}

/// Runs the command line `args` (the program name first, as `std::env::args_os` gives
/// it) and returns the exit code; what the `dtasks` binary does.
pub async fn run<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    commands::run(args).await
}

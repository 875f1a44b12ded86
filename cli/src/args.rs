//! The command line's grammar (clap derive): subcommands, options, their help.

use std::time::{Duration, SystemTime};

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use dtasks::Status;

use crate::time::{parse_duration, parse_time};

/// A bound on a wait: a duration above zero (`90s`, `15m`, `1h30m`).
fn parse_timeout(s: &str) -> Result<Duration, String> {
    match parse_duration(s.trim()) {
        Some(d) if !d.is_zero() => Ok(d),
        Some(_) => Err("a timeout of zero waits for nothing: leave out --wait".into()),
        None => Err(format!(
            "`{s}` is not a duration (90s, 15m, 1h, 1h30m, 500ms)"
        )),
    }
}

const AFTER_HELP: &str = "\
Environment (the same values as the deployment's workers):
  AMQP_URL                 the broker (default amqp://guest:guest@127.0.0.1:5672/%2f;
                           a cluster's nodes separated by commas)
  DTASKS_PREFIX            the deployment's queue prefix (default dtasks)
  DTASKS_TASK_QUEUES       task queues per DTask (default 1)
  DTASKS_TASK_PACKS        task messages per AMQP message at most (default 16)
  DTASKS_QUORUM_MAILBOXES  1 or true: the deployment's mailboxes are quorum queues
  DTASKS_PUBLISH_CHANNELS  publish channels per process (default 2)
  DATABASE_URL             when set, the PostgreSQL instance store; else the
                           RabbitMQ-only store
  DTASKS_PG_SCHEMA         the PostgreSQL store's schema (default dtasks)
  RUST_LOG                 the libraries' logs on stderr (default: none)
A variable that is set but cannot be read is an error (exit code 2).

Exit codes:
  0 success, 1 the operation failed (e.g. the instance failed), 2 bad usage,
  3 not found, 4 the broker or database cannot be reached, 5 not finished (result)";

/// Manage dtasks instances and dead letters on RabbitMQ.
#[derive(Debug, Parser)]
#[command(name = "dtasks", version, after_help = AFTER_HELP)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// List instances, newest start first, a page at a time: roots, and the children
    /// of roots that record them (`start --record-children`).
    List(ListArgs),
    /// Show what the store knows of an instance.
    Status(StatusArgs),
    /// Print an instance's result as JSON (a failure goes to stderr, exit code 1).
    Result(ResultArgs),
    /// Start an instance of a registered DTask by name; prints its id.
    Start(StartArgs),
    /// Send an event to an instance (received by `DTask::event(name)`).
    Signal(SignalArgs),
    /// Cancel an instance and its running descendants.
    Cancel(CancelArgs),
    /// Remove finished instances from the store; prints how many.
    Purge(PurgeArgs),
    /// Which code suspended snapshot instances still hold: per DTask and fingerprint, how
    /// many unfinished instances hold a machine saved by it (code no row names can go,
    /// unless a line on standard error says that children could not be counted).
    Fingerprints(FingerprintsArgs),
    /// Look after the transport's dead-letter queue (P.dead).
    #[command(subcommand)]
    DeadLetters(DeadLettersCommand),
}

/// A status as typed on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum StatusArg {
    Pending,
    Running,
    Suspended,
    Succeeded,
    Failed,
    Cancelled,
}

impl From<StatusArg> for Status {
    fn from(s: StatusArg) -> Self {
        match s {
            StatusArg::Pending => Status::Pending,
            StatusArg::Running => Status::Running,
            StatusArg::Suspended => Status::Suspended,
            StatusArg::Succeeded => Status::Succeeded,
            StatusArg::Failed => Status::Failed,
            StatusArg::Cancelled => Status::Cancelled,
        }
    }
}

/// How `list --json` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum JsonForm {
    /// One JSON object per line.
    Lines,
    /// One JSON array.
    Array,
}

/// What selects instances, for `list` and `purge`.
#[derive(Debug, Args)]
pub(crate) struct Selection {
    /// Only instances in this status (repeat, or separate with commas, for several).
    #[arg(long, value_enum, value_name = "S", value_delimiter = ',')]
    pub(crate) status: Vec<StatusArg>,
    /// Only instances of the DTask with this name.
    #[arg(long, value_name = "N")]
    pub(crate) name: Option<String>,
    /// Only instances whose id starts with this.
    #[arg(long, value_name = "P")]
    pub(crate) prefix: Option<String>,
    /// Only instances started before this time (RFC 3339, or a duration ago: 1h, 2d).
    #[arg(long, value_name = "T", value_parser = parse_time)]
    pub(crate) until: Option<SystemTime>,
}

#[derive(Debug, Args)]
#[command(after_help = "\
Columns: id, DTask name, status, started, last updated (RFC 3339, UTC), what a suspended
instance waits for. When more pages exist, the cursor of the next one is printed on
stderr (`next page: --after CURSOR`); with --json each instance also carries it in its
`cursor` field (the cursor after that instance).")]
pub(crate) struct ListArgs {
    #[command(flatten)]
    pub(crate) select: Selection,
    /// Only instances started at or after this time (RFC 3339, or a duration ago: 1h, 2d).
    #[arg(long, value_name = "T", value_parser = parse_time)]
    pub(crate) since: Option<SystemTime>,
    /// Only the children of this instance (children are in the store when their root's
    /// client records them).
    #[arg(long, value_name = "ID", conflicts_with = "roots")]
    pub(crate) parent: Option<String>,
    /// Only roots (instances a client started), not children.
    #[arg(long)]
    pub(crate) roots: bool,
    /// At most this many instances (1 to 1000).
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub(crate) limit: u16,
    /// The page after this cursor (printed by the previous page).
    #[arg(long, value_name = "CURSOR")]
    pub(crate) after: Option<String>,
    /// Print JSON: one object per line (`lines`, the default) or one array (`array`).
    #[arg(long, value_enum, value_name = "FORM", num_args = 0..=1,
          default_missing_value = "lines")]
    pub(crate) json: Option<JsonForm>,
}

#[derive(Debug, Args)]
pub(crate) struct FingerprintsArgs {
    /// Only the instances of this DTask.
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// Print one JSON object: `held` (name, fingerprint, instances), `unrecorded_roots`,
    /// `children_counted`.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// The instance id.
    pub(crate) id: String,
    /// Print one JSON object.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
#[command(after_help = "\
Exit codes: 0 it succeeded (the value is on stdout), 1 it failed or was cancelled (the
failure is on stderr), 3 no such instance, 5 it has not finished (without --wait, or
not within --timeout).")]
pub(crate) struct ResultArgs {
    /// The instance id.
    pub(crate) id: String,
    /// Wait until the instance finishes.
    #[arg(long)]
    pub(crate) wait: bool,
    /// With --wait: wait at most this long (90s, 15m, 1h30m), then exit with code 5.
    #[arg(long, value_name = "DURATION", requires = "wait", value_parser = parse_timeout)]
    pub(crate) timeout: Option<Duration>,
    /// Print one JSON object with the id, the status and the value or the failure.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
#[command(after_help = "\
Example: dtasks start add_one '[41]' --id order-17 --wait --timeout 1m
The DTask must be registered by a running worker; the start waits in its task queue
until one takes it (a line on stderr says so when no worker consumes that queue now).
With --id, an id already started is refused (exit code 1).")]
pub(crate) struct StartArgs {
    /// The DTask's registered name.
    pub(crate) name: String,
    /// The arguments as a JSON array, e.g. `[41]` or `["order-7", 1999]`.
    #[arg(value_name = "JSON-ARGS")]
    pub(crate) args: String,
    /// Start under this id, once (an id already started is refused).
    #[arg(long, value_name = "ID")]
    pub(crate) id: Option<String>,
    /// Wait for the result and print it after the id (exit codes as `result`).
    #[arg(long)]
    pub(crate) wait: bool,
    /// With --wait: wait at most this long (90s, 15m, 1h30m), then exit with code 5
    /// (the instance goes on).
    #[arg(long, value_name = "DURATION", requires = "wait", value_parser = parse_timeout)]
    pub(crate) timeout: Option<Duration>,
    /// Record the instance's children in the store too (`Client::recording_children`):
    /// `list --parent ID` then lists them, and `fingerprints` counts the snapshot
    /// machines they hold.
    #[arg(long)]
    pub(crate) record_children: bool,
}

#[derive(Debug, Args)]
pub(crate) struct SignalArgs {
    /// The instance id.
    pub(crate) id: String,
    /// The event's name, as the instance waits for it.
    #[arg(value_name = "EVENT-NAME")]
    pub(crate) event: String,
    /// The event's value as JSON, e.g. `42`, `"Ada"`, `{"Approve": "Ada"}`. It must fit
    /// the type the instance waits for: one that does not fails the instance.
    #[arg(value_name = "JSON-VALUE")]
    pub(crate) value: String,
    /// Send the event to this instance below ID instead (a child: `ID.0`, `ID.0.3`), which
    /// waits for it; checked against ID. An instance started with a completion webhook
    /// (`dtasks_axum.webhook`) runs its call as `ID.0`: its events go there without this.
    #[arg(long, value_name = "CHILD-ID")]
    pub(crate) to: Option<String>,
}

#[derive(Debug, Args)]
#[command(after_help = "\
Prints `cancelled` when the cancellation was recorded for a running instance, or
`already finished` when it had finished (its result stands). The instance stops at its
next step: at once when it waits in its mailbox; when its state rides in a timer
(DTask::delay), at the timer's next hop through a worker (within the workers' timer hop,
about 17.5 minutes by default) or when it fires, whichever comes first, and a line on
stderr then says so.")]
pub(crate) struct CancelArgs {
    /// The instance id.
    pub(crate) id: String,
    /// The reason, the message of the instance's cancelled failure.
    #[arg(
        long,
        value_name = "R",
        default_value = "cancelled from the command line"
    )]
    pub(crate) reason: String,
}

#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("what")
        .required(true)
        .multiple(true)
        .args(["all", "status", "name", "prefix", "until"])
))]
#[command(after_help = "\
Only finished instances are removed (cancel running ones first): --status takes
succeeded, failed and cancelled. Purged ids are unknown afterwards. Give --all, or at
least one filter.")]
pub(crate) struct PurgeArgs {
    #[command(flatten)]
    pub(crate) select: Selection,
    /// Every finished instance.
    #[arg(long, conflicts_with_all = ["status", "name", "prefix", "until"])]
    pub(crate) all: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum DeadLettersCommand {
    /// List the dead letters, numbered from 1, oldest first (they stay in the queue).
    List {
        /// Print one JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Show dead letter <n> of the list: its headers and body.
    Show {
        /// Its number in `dead-letters list`.
        n: usize,
    },
    /// Put dead letters back on the queue each came from.
    #[command(group(ArgGroup::new("which").required(true).args(["n", "all"])))]
    Replay {
        /// Its number in `dead-letters list`.
        n: Option<usize>,
        /// Every dead letter that names its queue.
        #[arg(long)]
        all: bool,
    },
    /// Remove dead letters for good (a poison message, work done another way); prints
    /// `dropped ID` for each.
    #[command(group(ArgGroup::new("which").required(true).args(["n", "all"])))]
    Drop {
        /// Its number in `dead-letters list`.
        n: Option<usize>,
        /// Every dead letter in the queue now.
        #[arg(long)]
        all: bool,
    },
}

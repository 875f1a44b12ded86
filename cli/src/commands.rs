//! The subcommands on instances: parsing the command line, connecting, and each command's
//! work and output.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use dtasks::store::{Cursor, Filter, InstanceInfo, Query};
use dtasks::{Client, InstanceId, Status, Untyped, Wait};

use crate::conn::{client, starting};
use serde_json::{json, Value};

use crate::args::{
    CancelArgs, Cli, Command, FingerprintsArgs, JsonForm, ListArgs, PurgeArgs, ResultArgs,
    Selection, SignalArgs, StartArgs, StatusArgs,
};
use crate::exit::{Doing, Done, Exit, FAILED, NOT_FINISHED};
use crate::render::{
    args_to_msgpack, instance_json, msgpack_to_json, out, status_name, table, waits_text,
};
use crate::time::format_time;

/// Parses `args`, runs the command, and says how it ended.
pub(crate) async fn run<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout with 0; errors to stderr with 2.
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    init_logs();
    match execute(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(exit) => {
            if !exit.message.is_empty() {
                eprintln!("dtasks: {}", exit.message);
            }
            exit.code()
        }
    }
}

/// The libraries' logs on stderr, only when `RUST_LOG` asks for them: a command's own
/// message says what went wrong, and stays the last line of stderr for a script to read.
/// Colours only on a terminal.
fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

async fn execute(command: Command) -> Done {
    match command {
        Command::List(a) => list(a).await,
        Command::Status(a) => status(a).await,
        Command::Result(a) => result(a).await,
        Command::Start(a) => start(a).await,
        Command::Signal(a) => signal(a).await,
        Command::Cancel(a) => cancel(a).await,
        Command::Purge(a) => purge(a).await,
        Command::Fingerprints(a) => fingerprints(a).await,
        Command::DeadLetters(c) => crate::dead::run(c).await,
    }
}

fn instance_id(s: &str) -> Result<InstanceId, Exit> {
    InstanceId::new(s).map_err(|e| Exit::usage(e.to_string()))
}

fn filter_of(select: &Selection) -> Filter {
    let mut filter = Filter::new();
    for s in &select.status {
        filter = filter.status(Status::from(*s));
    }
    if let Some(n) = &select.name {
        filter = filter.name(n.clone());
    }
    if let Some(p) = &select.prefix {
        filter = filter.id_prefix(p.clone());
    }
    if let Some(t) = select.until {
        filter = filter.started_before(t);
    }
    filter
}

async fn list(a: ListArgs) -> Done {
    let mut filter = filter_of(&a.select);
    if let Some(t) = a.since {
        filter = filter.started_after(t);
    }
    if let Some(p) = &a.parent {
        filter = filter.parent(instance_id(p)?);
    }
    if a.roots {
        filter = filter.roots();
    }
    let mut query = Query::new(filter)
        .limit(usize::from(a.limit))
        .map_err(|e| Exit::usage(e.to_string()))?;
    if let Some(c) = &a.after {
        query = query.after(Cursor::parse(c).map_err(|e| Exit::usage(e.to_string()))?);
    }
    let listing = client()
        .await?
        .list(&query)
        .await
        .doing(|| "listing instances".to_string())?;
    match a.json {
        None => {
            let mut rows = vec![["ID", "NAME", "STATUS", "STARTED", "UPDATED", "WAITS"]
                .map(String::from)
                .to_vec()];
            for i in &listing.instances {
                rows.push(vec![
                    i.id.to_string(),
                    i.name.clone(),
                    status_name(i.status).to_string(),
                    format_time(i.created_at),
                    format_time(i.updated_at),
                    waits_text(&i.waits),
                ]);
            }
            for line in table(&rows) {
                out(&line);
            }
        }
        Some(JsonForm::Lines) => {
            for i in &listing.instances {
                out(&instance_json(i).to_string());
            }
        }
        Some(JsonForm::Array) => {
            let all: Vec<Value> = listing.instances.iter().map(instance_json).collect();
            out(&Value::Array(all).to_string());
        }
    }
    if let Some(next) = &listing.next {
        eprintln!("next page: --after {next}");
    }
    Ok(())
}

async fn status(a: StatusArgs) -> Done {
    let id = instance_id(&a.id)?;
    let info = client()
        .await?
        .instance(&id)
        .await
        .doing(|| format!("instance {id}"))?;
    if a.json {
        out(&instance_json(&info).to_string());
        return Ok(());
    }
    let mut rows = vec![
        ("id", info.id.to_string()),
        ("name", info.name.clone()),
        ("status", status_name(info.status).to_string()),
    ];
    if let Some(p) = &info.parent {
        rows.push(("parent", p.to_string()));
    }
    rows.push(("started", format_time(info.created_at)));
    rows.push(("updated", format_time(info.updated_at)));
    if let Some(t) = info.finished_at() {
        rows.push(("finished", format_time(t)));
    }
    rows.push(("waits", waits_text(&info.waits)));
    rows.push(("runs", info.runs.to_string()));
    if let Some(code) = info.fingerprint {
        rows.push(("code", format!("{code:016x}")));
    }
    rows.push(("duplicates", info.duplicate_results.to_string()));
    for (k, v) in rows {
        out(&format!("{:<11} {v}", format!("{k}:")));
    }
    Ok(())
}

/// The code suspended snapshot instances hold: a table of DTask, fingerprint and count,
/// and a line on standard error when unfinished roots do not record their children (whose
/// code the table then cannot show).
async fn fingerprints(a: FingerprintsArgs) -> Done {
    let client = client().await?;
    let found = client
        .fingerprints(a.name.as_deref())
        .await
        .doing(|| "the fingerprints".to_string())?;
    if !found.counts_children() {
        eprintln!(
            "children not counted: {} unfinished root instance(s) do not record their \
             children (start roots with a client made with Client::recording_children); \
             code that suspended snapshot children of theirs hold is not listed",
            found.unrecorded_roots
        );
    }
    if a.json {
        let rows: Vec<Value> = found
            .held
            .iter()
            .map(|h| {
                json!({
                    "name": h.name,
                    "fingerprint": format!("{:016x}", h.fingerprint),
                    "instances": h.instances,
                })
            })
            .collect();
        let answer = json!({
            "held": rows,
            "unrecorded_roots": found.unrecorded_roots,
            "children_counted": found.counts_children(),
        });
        out(&answer.to_string());
        return Ok(());
    }
    let mut rows = vec![["NAME", "FINGERPRINT", "INSTANCES"]
        .map(String::from)
        .to_vec()];
    for h in &found.held {
        rows.push(vec![
            h.name.clone(),
            format!("{:016x}", h.fingerprint),
            h.instances.to_string(),
        ]);
    }
    for line in table(&rows) {
        out(&line);
    }
    Ok(())
}

/// Waits until `id` has finished (a failure counts), with the store's wait; at most
/// `timeout`, after which it has not finished (exit code 5, with its status).
async fn wait_finished(client: &Client, id: &InstanceId, timeout: Option<Duration>) -> Done {
    let handle = client.handle::<Untyped>(id.clone());
    let waited = match timeout {
        None => handle.result_bytes().await,
        Some(t) => match tokio::time::timeout(t, handle.result_bytes()).await {
            Ok(r) => r,
            Err(_) => {
                let status = match client.instance(id).await {
                    Ok(info) => status_name(info.status).to_string(),
                    Err(e) => format!("unread: {e}"),
                };
                return Err(Exit::new(
                    NOT_FINISHED,
                    format!(
                        "instance {id} has not finished within {} (status {status})",
                        humanize(t)
                    ),
                ));
            }
        },
    };
    match waited {
        Ok(_) => Ok(()),
        Err(e) if e.is_failed() => Ok(()),
        Err(e) => Err(Exit::from_error(&format!("waiting for {id}"), &e)),
    }
}

/// `d` as the command line takes it back: `90s`, `1m30s`, `250ms`.
fn humanize(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 != 0 {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    let (h, m, s) = (s / 3600, s / 60 % 60, s % 60);
    let mut out = String::new();
    for (n, unit) in [(h, "h"), (m, "m"), (s, "s")] {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    if out.is_empty() {
        out.push_str("0s");
    }
    out
}

async fn result(a: ResultArgs) -> Done {
    let id = instance_id(&a.id)?;
    let client = client().await?;
    if a.wait {
        wait_finished(&client, &id, a.timeout).await?;
    }
    let info = client
        .instance(&id)
        .await
        .doing(|| format!("instance {id}"))?;
    report_result(&info, a.json)
}

/// Prints the result of the finished instance `info` (its value on stdout), or says
/// why there is none.
fn report_result(info: &InstanceInfo, as_json: bool) -> Done {
    let id = &info.id;
    let status = status_name(info.status);
    match info.result_bytes() {
        None => Err(Exit::new(
            NOT_FINISHED,
            format!("instance {id} has not finished (status {status}); add --wait to wait for it"),
        )),
        Some(Ok(bytes)) => {
            let value = msgpack_to_json(&bytes).map_err(|e| {
                Exit::new(
                    FAILED,
                    format!("the result of {id} is not MessagePack: {e}"),
                )
            })?;
            if as_json {
                out(&json!({ "id": id.as_str(), "status": status, "value": value }).to_string());
            } else {
                out(&value.to_string());
            }
            Ok(())
        }
        Some(Err(e)) => {
            let failure = e.failure();
            let text = failure.map_or_else(|| e.to_string(), ToString::to_string);
            if as_json {
                let message = failure.map(|f| f.message().to_string());
                out(&json!({
                    "id": id.as_str(),
                    "status": status,
                    "failure": text,
                    "message": message,
                })
                .to_string());
            }
            let message = match failure {
                Some(f) if f.is_cancelled() => {
                    format!("instance {id} was cancelled: {}", f.message())
                }
                _ => format!("instance {id} failed: {text}"),
            };
            Err(Exit::new(FAILED, message))
        }
    }
}

async fn start(a: StartArgs) -> Done {
    let args: Value = serde_json::from_str(&a.args)
        .map_err(|e| Exit::usage(format!("the arguments are not JSON ({e}): {}", a.args)))?;
    let Value::Array(args) = args else {
        return Err(Exit::usage(format!(
            "the arguments are a JSON array of the DTask's arguments (e.g. [41]), not {}",
            a.args
        )));
    };
    let input = args_to_msgpack(&args).map_err(Exit::usage)?;
    let id = a.id.as_deref().map(instance_id).transpose()?;
    let (client, transport) = starting().await?;
    let client = if a.record_children {
        client.recording_children()
    } else {
        client
    };
    let started = match id {
        Some(id) => client.start_by_name_with_id(id, &a.name, input).await,
        None => client.start_by_name(&a.name, input).await,
    };
    let handle = started.doing(|| format!("starting {}", a.name))?;
    out(handle.id().as_str());
    // The client cannot know which DTasks the workers register; the broker can say
    // whether any worker takes this one's queue now.
    if let Ok(0) = transport.task_consumers(&a.name).await {
        eprintln!(
            "no worker consumes the task queue of `{}` ({}) now: the start waits there \
             until a worker that registers `{}` runs",
            a.name,
            transport.task_queue(&a.name),
            a.name
        );
    }
    if a.wait {
        wait_finished(&client, handle.id(), a.timeout).await?;
        let info = client
            .instance(handle.id())
            .await
            .doing(|| format!("instance {}", handle.id()))?;
        return report_result(&info, false);
    }
    Ok(())
}

async fn signal(a: SignalArgs) -> Done {
    let id = instance_id(&a.id)?;
    let value: Value = serde_json::from_str(&a.value)
        .map_err(|e| Exit::usage(format!("the value is not JSON ({e}): {}", a.value)))?;
    let client = client().await?;
    let to = match &a.to {
        Some(child) => Some(instance_id(child)?),
        // The call a webhook instance wraps runs as its child `{id}.0`, and waits there
        // (as the HTTP routes send it).
        None => match client.instance(&id).await {
            Ok(info) if info.name == WEBHOOK_DTASK => Some(instance_id(&format!("{id}.0"))?),
            // Not found, finished, unreachable: `signal` says so below.
            _ => None,
        },
    };
    let what = match &to {
        Some(child) => format!("event `{}` to {child} (below {id})", a.event),
        None => format!("event `{}` to {id}", a.event),
    };
    match &to {
        Some(child) => client.signal_child(&id, child, &a.event, &value).await,
        None => client.signal(&id, &a.event, &value).await,
    }
    .doing(|| format!("sending {what}"))?;
    eprintln!("sent {what}");
    Ok(())
}

/// The name of `dtasks-axum`'s completion webhook DTask (`dtasks_axum::WEBHOOK_DTASK`),
/// which runs the call it wraps as its child `{id}.0`.
pub(crate) const WEBHOOK_DTASK: &str = "dtasks_axum.webhook";

async fn cancel(a: CancelArgs) -> Done {
    let id = instance_id(&a.id)?;
    let client = client().await?;
    let cancelled = client
        .cancel(&id, a.reason.clone())
        .await
        .doing(|| format!("cancelling {id}"))?;
    out(if cancelled {
        "cancelled"
    } else {
        "already finished"
    });
    if cancelled {
        // An instance whose state rides in its timer stops when a worker next looks at
        // the timer (a published message cannot be recalled), at the latest when it fires.
        if let Ok(info) = client.instance(&id).await {
            if let [Wait::Timer { at_ms }] = info.waits.as_slice() {
                eprintln!(
                    "{id} waits for a timer: it stops at the timer's next hop through a \
                     worker (within the workers' timer hop, about 17.5 minutes by default) \
                     or when the timer fires at {}, whichever comes first",
                    format_time(dtasks::store::from_millis(*at_ms))
                );
            }
        }
    }
    Ok(())
}

async fn purge(a: PurgeArgs) -> Done {
    if let Some(s) = a
        .select
        .status
        .iter()
        .find(|s| !Status::from(**s).is_finished())
    {
        return Err(Exit::usage(format!(
            "`--status {}` selects unfinished instances, which are never purged (cancel \
             them first); use succeeded, failed or cancelled",
            status_name(Status::from(*s))
        )));
    }
    // `--all` conflicts with every filter (clap checks); without it, one is given.
    let filter = if a.all {
        Filter::new()
    } else {
        filter_of(&a.select)
    };
    let n = client()
        .await?
        .purge(&filter)
        .await
        .doing(|| "purging".to_string())?;
    out(&n.to_string());
    Ok(())
}

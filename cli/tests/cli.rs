//! `dtasks` end to end: the built binary against the real RabbitMQ, with workers in the
//! test process, once on the RabbitMQ-only store and once on PostgreSQL (selected by
//! `DATABASE_URL` and `DTASKS_PG_SCHEMA` in the binary's environment, as an operator
//! would). Each command's output and exit code: start, status, result, list with its
//! filters and pages, signal, cancel, purge; not found, failed, not finished, bad usage,
//! unreachable; and the dead letters listed, shown and replayed.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context as _;

use common::{Deployment, Out};
use dtasks_integration_tests::{listed_queues, wait_for};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_on_the_rabbitmq_only_store() -> anyhow::Result<()> {
    scenario(Deployment::start(false).await?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_on_postgresql() -> anyhow::Result<()> {
    scenario(Deployment::start(true).await?).await
}

/// `dtasks status` shows the run an instance continued as new is in and the code its
/// snapshot machine was saved by; `dtasks fingerprints` counts the instances that hold it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_and_fingerprints_on_the_command_line() -> anyhow::Result<()> {
    let d = Deployment::start(false).await?;
    let mut registry = dtasks::Registry::new();
    registry.register(common::hold)?;
    let code = format!(
        "{:016x}",
        registry.fingerprint("cli.hold").expect("snapshot")
    );
    let id = "hold-1";
    d.ok(&["start", "cli.hold", "[2]", "--id", id]).await?;
    let info = d
        .status_until(id, |v| {
            v["status"] == "suspended" && v["fingerprint"].is_string()
        })
        .await?;
    assert_eq!(info["runs"], 1);
    assert_eq!(info["fingerprint"], json!(code));
    assert_eq!(info["records_children"], json!(false));
    let table = d.ok(&["status", id]).await?.stdout;
    assert!(table.contains("runs:       1"), "{table}");
    assert!(table.contains(&format!("code:       {code}")), "{table}");
    // Started by `dtasks start`, whose client does not record children: the listing
    // says that it cannot count them.
    let held = d.ok(&["fingerprints", "--json"]).await?;
    assert_eq!(
        held.json(),
        json!({
            "held": [{"name": "cli.hold", "fingerprint": code, "instances": 1}],
            "unrecorded_roots": 1,
            "children_counted": false,
        })
    );
    assert!(
        held.stderr
            .starts_with("children not counted: 1 unfinished root instance(s)"),
        "{held:?}"
    );
    let lines = d.ok(&["fingerprints", "--name", "cli.hold"]).await?;
    assert!(
        lines.stdout.contains("NAME") && lines.stdout.contains(&code),
        "{lines:?}"
    );
    assert!(
        lines.stderr.contains("do not record their children"),
        "{lines:?}"
    );
    // Two runs later, the third waits.
    for (n, run) in [(1, 2), (2, 3)] {
        d.ok(&["signal", id, "go", &n.to_string()]).await?;
        d.status_until(id, |v| v["runs"] == run && v["status"] == "suspended")
            .await?;
    }
    d.ok(&["signal", id, "go", "7"]).await?;
    assert_eq!(d.ok(&["result", id, "--wait"]).await?.stdout, "7\n");
    let info = d.ok(&["status", id, "--json"]).await?.json();
    assert_eq!(
        (&info["runs"], &info["fingerprint"]),
        (&json!(3), &Value::Null)
    );
    // Nothing unfinished: nothing held, and nothing that could hide children.
    let none = d.ok(&["fingerprints", "--json"]).await?;
    assert_eq!(
        none.json(),
        json!({"held": [], "unrecorded_roots": 0, "children_counted": true})
    );
    assert!(none.stderr.is_empty(), "{none:?}");
    let table = d.ok(&["fingerprints"]).await?;
    assert_eq!(table.lines().len(), 1, "only the header: {table:?}");
    assert!(table.stderr.is_empty(), "{table:?}");
    // Started with --record-children: its children would be counted, so nothing is
    // said about roots that hide them.
    let recorded = "hold-2";
    d.ok(&[
        "start",
        "cli.hold",
        "[0]",
        "--id",
        recorded,
        "--record-children",
    ])
    .await?;
    let info = d
        .status_until(recorded, |v| v["status"] == "suspended")
        .await?;
    assert_eq!(info["records_children"], json!(true));
    let held = d.ok(&["fingerprints", "--json"]).await?;
    assert_eq!(
        held.json(),
        json!({
            "held": [{"name": "cli.hold", "fingerprint": code, "instances": 1}],
            "unrecorded_roots": 0,
            "children_counted": true,
        })
    );
    assert!(held.stderr.is_empty(), "{held:?}");
    d.ok(&["signal", recorded, "go", "5"]).await?;
    assert_eq!(d.ok(&["result", recorded, "--wait"]).await?.stdout, "5\n");
    d.cleanup().await
}

async fn scenario(mut d: Deployment) -> anyhow::Result<()> {
    usage_and_not_found(&d).await?;
    let ids = instances(&d).await?;
    listing(&d, &ids).await?;
    purging(&d, &ids).await?;
    bounded_waits_and_hints(&d).await?;
    events_below_the_root(&d).await?;
    dead_letters(&mut d).await?;
    unreachable(&d).await?;
    misconfigured(&d).await?;
    d.cleanup().await
}

/// Events for an instance below a root: `signal --to`, checked against the root; and the
/// call an instance started with a completion webhook runs, which `signal` reaches
/// without `--to`, as the HTTP routes do.
async fn events_below_the_root(d: &Deployment) -> anyhow::Result<()> {
    let root = "audit-1";
    d.ok(&["start", "cli.audited", "[]", "--id", root]).await?;
    let out = d
        .fails(
            2,
            &["signal", root, "approval", "\"Eve\"", "--to", "audit-2.0"],
        )
        .await?;
    assert!(
        out.stderr.contains("is not an instance below `audit-1`"),
        "{out:?}"
    );
    let out = d
        .ok(&["signal", root, "approval", "\"Ada\"", "--to", "audit-1.0"])
        .await?;
    assert!(
        out.stderr.contains("to audit-1.0 (below audit-1)"),
        "{out:?}"
    );
    let out = d
        .ok(&["result", root, "--wait", "--timeout", "60s"])
        .await?;
    assert_eq!(out.stdout, "\"approved by Ada\"\n");

    // A webhook instance, started as the HTTP API starts it; the test's client writes to
    // the RabbitMQ-only store, which the command line reads there only.
    if d.schema.is_none() {
        let hooked = "hooked-1";
        // Nothing listens there: one attempt, refused, logged; the instance ends as its
        // call does.
        let hook = dtasks_axum::Webhook::new("http://127.0.0.1:9/hook")?
            .with_retry(dtasks::RetryPolicy::new().with_max_attempts(1));
        dtasks_axum::Api::new(d.broker.client().await?)
            .start(common::approval())
            .id(dtasks::InstanceId::new(hooked)?)
            .webhook(hook)
            .await?;
        let out = d.ok(&["signal", hooked, "approval", "\"Cy\""]).await?;
        assert!(
            out.stderr.contains("to hooked-1.0 (below hooked-1)"),
            "{out:?}"
        );
        let out = d
            .ok(&["result", hooked, "--wait", "--timeout", "60s"])
            .await?;
        assert_eq!(out.stdout, "\"approved by Cy\"\n");
        // The name the command line looks for is the webhook's.
        let info = d.ok(&["status", hooked, "--json"]).await?.json();
        assert_eq!(info["name"], json!(dtasks_axum::WEBHOOK_DTASK));
    }
    Ok(())
}

/// Bad usage exits 2 (clap's errors and ours, before anything is reached); unknown
/// instances 3.
async fn usage_and_not_found(d: &Deployment) -> anyhow::Result<()> {
    for args in [
        &["frobnicate"][..],
        &["list", "--limit", "0"],
        &["list", "--status", "sleeping"],
        &["list", "--since", "yesterday"],
        &["list", "--after", "not-a-cursor"],
        &["purge"],
        &["purge", "--all", "--status", "failed"],
        &["start", "cli.add_one", "41"],
        &["start", "cli.add_one", "[41"],
        &["start", "cli.add_one", "[1]", "--id", "not an id"],
        &["status", "not an id"],
        &["signal", "x", "approval", "not json"],
        &["dead-letters", "replay"],
        &["dead-letters", "drop"],
        &["purge", "--status", "running"],
        &["purge", "--status", "succeeded,suspended"],
        &["result", "x", "--timeout", "5s"],
        &["result", "x", "--wait", "--timeout", "0s"],
        &["start", "cli.add_one", "[1]", "--wait", "--timeout", "soon"],
    ] {
        let out = d.fails(2, args).await?;
        assert!(!out.stderr.is_empty(), "{args:?}: {out:?}");
        assert!(out.stdout.is_empty(), "{args:?}: {out:?}");
    }
    let help = d.ok(&["list", "--help"]).await?;
    assert!(help.stdout.contains("--since"), "{help:?}");
    for args in [
        &["status", "nobody"][..],
        &["result", "nobody"],
        &["result", "nobody", "--wait"],
        &["cancel", "nobody"],
        &["signal", "nobody", "approval", "\"Ada\""],
    ] {
        let out = d.fails(3, args).await?;
        assert!(out.stderr.contains("nobody"), "{args:?}: {out:?}");
    }
    Ok(())
}

/// The ids of what [`instances`] started, by what became of them.
struct Ids {
    added: Vec<String>,
    approved: String,
    exploded: String,
    cancelled: String,
    receipt: String,
}

impl Ids {
    fn all(&self) -> BTreeSet<String> {
        let mut all: BTreeSet<String> = self.added.iter().cloned().collect();
        all.extend([
            self.approved.clone(),
            self.exploded.clone(),
            self.cancelled.clone(),
            self.receipt.clone(),
        ]);
        all
    }
}

/// Starts by name, waits, reads statuses and results, signals, cancels.
async fn instances(d: &Deployment) -> anyhow::Result<Ids> {
    // Started and waited for: the id, then the result.
    let out = d.ok(&["start", "cli.add_one", "[41]", "--wait"]).await?;
    let lines = out.lines();
    assert_eq!(lines.len(), 2, "{out:?}");
    assert_eq!(lines[1], "42");
    let first = lines[0].to_string();
    // Started, then its result waited for apart.
    let second = d.ok(&["start", "cli.add_one", "[1]"]).await?.stdout;
    let second = second.trim().to_string();
    assert_eq!(d.ok(&["result", &second, "--wait"]).await?.stdout, "2\n");
    let status = d.ok(&["status", &second]).await?.stdout;
    assert!(status.contains("status:     succeeded"), "{status}");
    assert!(status.contains("name:       cli.add_one"), "{status}");
    let info = d.ok(&["status", &second, "--json"]).await?.json();
    assert_eq!(info["id"], json!(second));
    assert_eq!(info["status"], "succeeded");
    assert_eq!(info["waits"], json!([]));
    assert_eq!(info["duplicates"], 0);
    assert!(info["started"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert!(info["finished"].is_string(), "{info}");
    let as_json = d.ok(&["result", &second, "--json"]).await?.json();
    assert_eq!(
        as_json,
        json!({"id": second, "status": "succeeded", "value": 2})
    );

    // Under a chosen id, waiting for an event: not finished until signalled.
    let approved = "appr-1";
    let out = d
        .ok(&["start", "cli.approval", "[]", "--id", approved])
        .await?;
    assert_eq!(out.stdout.trim(), approved);
    let info = d
        .status_until(approved, |v| v["status"] == "suspended")
        .await?;
    assert_eq!(info["waits"], json!([{"Event": "approval"}]));
    let table = d.ok(&["status", approved]).await?.stdout;
    assert!(table.contains("waits:      event approval"), "{table}");
    let out = d.fails(5, &["result", approved]).await?;
    assert!(out.stderr.contains("not finished"), "{out:?}");
    let again = d
        .fails(1, &["start", "cli.approval", "[]", "--id", approved])
        .await?;
    assert!(again.stderr.contains("already"), "{again:?}");
    // The command's own message alone: no library log (the broker closes the channel
    // of the refused claim), no colour codes.
    assert_eq!(again.stderr.lines().count(), 1, "{again:?}");
    assert!(again.stderr.starts_with("dtasks: "), "{again:?}");
    assert!(!again.stderr.contains('\x1b'), "{again:?}");
    let out = d.ok(&["signal", approved, "approval", "\"Ada\""]).await?;
    assert!(
        out.stdout.is_empty() && out.stderr.contains("approval"),
        "{out:?}"
    );
    let out = d.ok(&["result", approved, "--wait"]).await?;
    assert_eq!(out.stdout, "\"approved by Ada\"\n");
    let late = d
        .fails(1, &["signal", approved, "approval", "\"Bob\""])
        .await?;
    assert!(late.stderr.contains("finished"), "{late:?}");

    // A failure: on stderr, exit code 1, with --wait and without.
    let out = d
        .fails(1, &["start", "cli.explode", "[7]", "--wait"])
        .await?;
    let exploded = out.stdout.lines().next().unwrap_or_default().to_string();
    assert_eq!(out.lines().len(), 1, "only the id on stdout: {out:?}");
    assert!(
        out.stderr.contains("failed") && out.stderr.contains("boom 7"),
        "{out:?}"
    );
    let out = d.fails(1, &["result", &exploded]).await?;
    assert!(
        out.stdout.is_empty() && out.stderr.contains("panicked"),
        "{out:?}"
    );
    let out = d.fails(1, &["result", &exploded, "--json"]).await?;
    let v = out.json();
    assert_eq!(
        (&v["id"], &v["status"]),
        (&json!(exploded), &json!("failed"))
    );
    assert!(
        v["message"].as_str().is_some_and(|m| m.contains("boom 7")),
        "{v}"
    );
    assert!(
        v["failure"]
            .as_str()
            .is_some_and(|m| m.starts_with("panicked")),
        "{v}"
    );

    // Cancelled while it waits; a second cancel finds it finished.
    let cancelled = "canc-1";
    d.ok(&["start", "cli.approval", "[]", "--id", cancelled])
        .await?;
    d.status_until(cancelled, |v| v["status"] == "suspended")
        .await?;
    let out = d
        .ok(&["cancel", cancelled, "--reason", "no longer needed"])
        .await?;
    assert_eq!(out.stdout, "cancelled\n");
    let out = d.fails(1, &["result", cancelled, "--wait"]).await?;
    assert!(
        out.stderr.contains("cancelled") && out.stderr.contains("no longer needed"),
        "{out:?}"
    );
    assert_eq!(
        d.ok(&["cancel", cancelled]).await?.stdout,
        "already finished\n"
    );
    d.status_until(cancelled, |v| v["status"] == "cancelled")
        .await?;

    // A struct result: an array of its fields.
    let out = d.ok(&["start", "cli.receipt", "[7]", "--wait"]).await?;
    assert_eq!(out.lines()[1], "[7,true]");
    let receipt = out.lines()[0].to_string();

    Ok(Ids {
        added: vec![first, second],
        approved: approved.to_string(),
        exploded,
        cancelled: cancelled.to_string(),
        receipt,
    })
}

fn ids_of(values: &[Value]) -> Vec<String> {
    values
        .iter()
        .map(|v| v["id"].as_str().expect("an id").to_string())
        .collect()
}

/// The cursor of the next page, from what `list` said on stderr.
fn next_page(out: &Out) -> Option<String> {
    out.stderr
        .lines()
        .find_map(|l| l.strip_prefix("next page: --after "))
        .map(str::to_string)
}

/// Filters, forms and pages of `list`.
async fn listing(d: &Deployment, ids: &Ids) -> anyhow::Result<()> {
    let all = d.ok(&["list", "--json"]).await?.json_lines();
    assert_eq!(ids_of(&all).into_iter().collect::<BTreeSet<_>>(), ids.all());
    // Newest first.
    let started: Vec<&str> = all.iter().map(|v| v["started"].as_str().unwrap()).collect();
    assert!(started.windows(2).all(|w| w[0] >= w[1]), "{started:?}");

    let finished = d
        .ok(&[
            "list",
            "--status",
            "succeeded",
            "--status",
            "failed",
            "--json=array",
        ])
        .await?
        .json();
    let finished = finished.as_array().expect("an array").clone();
    assert_eq!(finished.len(), 5, "{finished:?}");
    assert!(finished
        .iter()
        .all(|v| v["status"] == "succeeded" || v["status"] == "failed"));
    let commas = d
        .ok(&["list", "--status", "succeeded,failed", "--json=array"])
        .await?
        .json();
    assert_eq!(commas.as_array().map(Vec::len), Some(5));

    let table = d.ok(&["list", "--name", "cli.approval"]).await?;
    let lines = table.lines();
    assert!(
        lines[0].starts_with("ID ") && lines[0].contains("WAITS"),
        "{table:?}"
    );
    assert_eq!(lines.len(), 3, "{table:?}");
    assert!(lines[1..].iter().all(|l| l.contains("cli.approval")));
    let by_prefix = d.ok(&["list", "--prefix", "appr-", "--json"]).await?;
    assert_eq!(ids_of(&by_prefix.json_lines()), vec![ids.approved.clone()]);

    // Times: everything started within the hour, and after an offset time of 2000.
    assert_eq!(
        d.ok(&["list", "--since", "1h", "--json"])
            .await?
            .json_lines()
            .len(),
        6
    );
    assert!(d
        .ok(&["list", "--until", "1h", "--json"])
        .await?
        .stdout
        .is_empty());
    let since = d
        .ok(&["list", "--since", "2000-01-01T02:00:00+02:00", "--json"])
        .await?;
    assert_eq!(since.json_lines().len(), 6);

    // By parent: every instance here is a root (their client records no children).
    let roots = d.ok(&["list", "--roots", "--json"]).await?.json_lines();
    assert_eq!(
        ids_of(&roots).into_iter().collect::<BTreeSet<_>>(),
        ids.all()
    );
    assert!(d
        .ok(&["list", "--parent", &ids.approved, "--json"])
        .await?
        .stdout
        .is_empty());

    // Pages of two: the cursor on stderr, and in each object's `cursor`.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..10 {
        let mut args = vec!["list", "--limit", "2", "--json"];
        if let Some(a) = &after {
            args.extend(["--after", a.as_str()]);
        }
        let out = d.ok(&args).await?;
        let page = out.json_lines();
        assert!(page.len() <= 2);
        seen.extend(ids_of(&page));
        after = next_page(&out);
        match &after {
            Some(next) => assert_eq!(page.last().map(|v| &v["cursor"]), Some(&json!(next))),
            None => break,
        }
    }
    assert!(after.is_none(), "the pages did not end");
    assert_eq!(seen.len(), 6, "{seen:?}");
    assert_eq!(seen.into_iter().collect::<BTreeSet<_>>(), ids.all());
    Ok(())
}

/// Purges by filter and all, never a running instance.
async fn purging(d: &Deployment, ids: &Ids) -> anyhow::Result<()> {
    let running = "keep-1";
    d.ok(&["start", "cli.approval", "[]", "--id", running])
        .await?;
    d.status_until(running, |v| v["status"] == "suspended")
        .await?;
    assert_eq!(d.ok(&["purge", "--status", "failed"]).await?.stdout, "1\n");
    d.fails(3, &["status", &ids.exploded]).await?;
    assert_eq!(
        d.ok(&["purge", "--name", "cli.receipt"]).await?.stdout,
        "1\n"
    );
    d.fails(3, &["result", &ids.receipt]).await?;
    assert_eq!(d.ok(&["purge", "--prefix", "keep-"]).await?.stdout, "0\n");
    // The two sums, the approved and the cancelled one.
    assert_eq!(d.ok(&["purge", "--all"]).await?.stdout, "4\n");
    let left = d.ok(&["list", "--json"]).await?.json_lines();
    assert_eq!(ids_of(&left), vec![running.to_string()]);
    Ok(())
}

/// Waits bounded by `--timeout`; a start no worker takes; a cancel that waits for a
/// timer; `list --json array`.
async fn bounded_waits_and_hints(d: &Deployment) -> anyhow::Result<()> {
    // A wait that ends before the instance: exit code 5, the id still on stdout.
    let out = d
        .fails(
            5,
            &[
                "start",
                "cli.approval",
                "[]",
                "--id",
                "slow-1",
                "--wait",
                "--timeout",
                "1s",
            ],
        )
        .await?;
    assert_eq!(out.stdout, "slow-1\n", "{out:?}");
    assert!(out.stderr.contains("has not finished within 1s"), "{out:?}");
    let out = d
        .fails(5, &["result", "slow-1", "--wait", "--timeout", "500ms"])
        .await?;
    assert!(out.stderr.contains("status suspended"), "{out:?}");
    // The workers run it: no hint.
    assert!(!out.stderr.contains("no worker"), "{out:?}");

    // No worker runs this DTask: said on stderr, and the wait ends at its bound.
    let out = d
        .fails(
            5,
            &[
                "start",
                "cli.unregistered",
                "[]",
                "--wait",
                "--timeout",
                "1s",
            ],
        )
        .await?;
    assert!(
        out.stderr
            .contains("no worker consumes the task queue of `cli.unregistered`"),
        "{out:?}"
    );
    let registered = d.ok(&["start", "cli.add_one", "[1]"]).await?;
    assert!(registered.stderr.is_empty(), "{registered:?}");

    // A cancel of an instance whose state rides in its timer says when it stops.
    d.ok(&["start", "cli.nap", "[3600]", "--id", "nap-1"])
        .await?;
    let info = d
        .status_until("nap-1", |v| v["status"] == "suspended")
        .await?;
    assert!(info["waits"][0]["Timer"].is_object(), "{info}");
    let out = d.ok(&["cancel", "nap-1"]).await?;
    assert_eq!(out.stdout, "cancelled\n");
    assert!(
        out.stderr
            .contains("nap-1 waits for a timer: it stops at the timer's next hop through a worker"),
        "{out:?}"
    );
    // One waiting in its mailbox stops at once: no such line.
    let out = d.ok(&["cancel", "slow-1"]).await?;
    assert!(out.stderr.is_empty(), "{out:?}");
    d.status_until("slow-1", |v| v["status"] == "cancelled")
        .await?;

    // `--json array` as well as `--json=array`.
    let spaced = d.ok(&["list", "--json", "array"]).await?.json();
    let joined = d.ok(&["list", "--json=array"]).await?.json();
    assert!(spaced.as_array().is_some_and(|a| !a.is_empty()), "{spaced}");
    assert_eq!(ids_of_array(&spaced), ids_of_array(&joined));
    Ok(())
}

fn ids_of_array(v: &Value) -> Vec<String> {
    ids_of(v.as_array().map(Vec::as_slice).unwrap_or_default())
}

/// Settings the command cannot use: exit code 2 with the setting named, before any
/// broker or database is asked.
async fn misconfigured(d: &Deployment) -> anyhow::Result<()> {
    for (env, named) in [
        (("DTASKS_TASK_QUEUES", "abc"), "DTASKS_TASK_QUEUES"),
        (
            ("DTASKS_QUORUM_MAILBOXES", "yes"),
            "DTASKS_QUORUM_MAILBOXES",
        ),
        (("AMQP_URL", "not-a-url"), "not an AMQP URL"),
        (("DTASKS_PREFIX", "bad prefix!"), "prefix"),
    ] {
        let out = d.run_with(&["list"], &[env]).await?;
        assert_eq!(out.code, 2, "{env:?}: {out:?}");
        assert!(out.stderr.contains(named), "{env:?}: {out:?}");
    }
    // A mistyped prefix or schema: an error that names it, and nothing made under it.
    let typo = format!("{}x", d.broker.prefix());
    for args in [&["status", "x"][..], &["list"], &["dead-letters", "list"]] {
        let out = d.run_with(args, &[("DTASKS_PREFIX", &typo)]).await?;
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
        assert!(
            out.stderr
                .contains(&format!("no dtasks deployment under the prefix `{typo}`")),
            "{args:?}: {out:?}"
        );
    }
    let made = listed_queues(&typo)
        .await
        .context("listing queues needs rabbitmqctl")?;
    assert_eq!(
        made,
        Vec::<String>::new(),
        "queues made under a mistyped prefix"
    );
    if let Some(schema) = &d.schema {
        let typo = format!("{}_typo", schema.name);
        let out = d
            .run_with(&["list"], &[("DTASKS_PG_SCHEMA", &typo)])
            .await?;
        assert_eq!(out.code, 2, "{out:?}");
        assert!(
            out.stderr.contains(&format!("no dtasks schema `{typo}`")),
            "{out:?}"
        );
        let (client, connection) =
            tokio_postgres::connect(&common::database_url(), tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        let made = client
            .query_one(
                "SELECT count(*) FROM information_schema.schemata WHERE schema_name = $1",
                &[&typo],
            )
            .await?;
        assert_eq!(made.get::<_, i64>(0), 0, "the mistyped schema was created");
    }
    Ok(())
}

/// Publishes `body` to `queue` with the message id `id` and `headers`.
async fn publish(
    d: &Deployment,
    queue: &str,
    body: &[u8],
    id: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<()> {
    let mut table = FieldTable::default();
    for (k, v) in headers {
        table.insert(
            (*k).into(),
            AMQPValue::LongString(LongString::from(v.as_bytes().to_vec())),
        );
    }
    let ch = d.broker.channel().await?;
    ch.basic_publish(
        "".into(),
        queue.into(),
        Default::default(),
        body,
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(id.into())
            .with_headers(table),
    )
    .await?
    .await?;
    let _ = ch.close(200, "OK".into()).await;
    Ok(())
}

/// A message that does not decode, dead-lettered by the worker: listed, shown, replayed
/// to its task queue; then one put in the dead-letter queue, replayed with `--all`; then
/// one whose body the transport cut at 64 KiB when it dead-lettered it: marked as cut.
async fn dead_letters(d: &mut Deployment) -> anyhow::Result<()> {
    let prefix = d.broker.prefix().to_string();
    let task_queue = format!("{prefix}.task.cli.add_one");
    let dead = format!("{prefix}.dead");
    publish(d, &task_queue, b"not an envelope", "poison-1", &[]).await?;
    wait_for(Duration::from_secs(10), || async {
        Ok(d.broker.queue_len(&dead).await? == Some(1))
    })
    .await?;
    let listed = d
        .ok(&["dead-letters", "list", "--json"])
        .await?
        .json_lines();
    assert_eq!(listed.len(), 1, "{listed:?}");
    let letter = &listed[0];
    assert_eq!(
        (
            &letter["n"],
            &letter["id"],
            &letter["queue"],
            &letter["size"]
        ),
        (
            &json!(1),
            &json!("poison-1"),
            &json!(task_queue),
            &json!(15)
        )
    );
    assert_eq!(letter["truncated"], json!(false), "{letter}");
    assert!(
        letter["reason"]
            .as_str()
            .is_some_and(|r| r.contains("magic")),
        "{letter}"
    );
    let table = d.ok(&["dead-letters", "list"]).await?;
    assert_eq!(table.lines().len(), 2, "{table:?}");
    assert!(table.lines()[1].starts_with("1  poison-1  "), "{table:?}");
    let shown = d.ok(&["dead-letters", "show", "1"]).await?.stdout;
    assert!(
        shown.contains(&format!("source queue: {task_queue}")),
        "{shown}"
    );
    assert!(shown.contains("00000000  6e 6f 74 20 61 6e"), "{shown}");
    assert!(shown.contains("|not an envelope|"), "{shown}");
    d.fails(3, &["dead-letters", "show", "2"]).await?;
    // Listing and showing took nothing: the letters they read go back to the queue (the
    // broker requeues what a closed channel held, just after the close).
    wait_for(Duration::from_secs(10), || async {
        Ok(d.broker.queue_len(&dead).await? == Some(1))
    })
    .await?;

    // Replayed with no worker to take it: it waits in its task queue.
    d.stop_workers().await?;
    let out = d.ok(&["dead-letters", "replay", "1"]).await?;
    assert_eq!(out.stdout, format!("replayed poison-1 to {task_queue}\n"));
    assert!(d
        .ok(&["dead-letters", "list", "--json"])
        .await?
        .stdout
        .is_empty());
    d.fails(3, &["dead-letters", "replay", "1"]).await?;
    publish(
        d,
        &dead,
        b"later",
        "poison-2",
        &[("x-dtasks-queue", &task_queue)],
    )
    .await?;
    let out = d.ok(&["dead-letters", "replay", "--all"]).await?;
    assert_eq!(out.stdout, format!("replayed poison-2 to {task_queue}\n"));
    assert!(out.stderr.contains("1 replayed; 0 left"), "{out:?}");
    let back = d.broker.take_all(&task_queue).await?;
    let bodies: Vec<&[u8]> = back.iter().map(|m| m.data.as_slice()).collect();
    assert_eq!(bodies, vec![&b"not an envelope"[..], &b"later"[..]]);

    // 70,000 bytes dead-lettered by the transport: it keeps the first 64 KiB.
    {
        use dtasks::transport::Transport as _;
        use futures::StreamExt as _;
        let t = d.broker.transport().await?;
        let mut deliveries = t.consume(vec!["cli.probe".to_string()]).await?;
        let probe = t.task_queue("cli.probe");
        publish(d, &probe, &vec![b'x'; 70_000], "poison-3", &[]).await?;
        let delivery = tokio::time::timeout(Duration::from_secs(10), deliveries.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("the stream ended"))??;
        delivery
            .settle
            .dead_letter("too big to look at".to_string())
            .await?;
    }
    let listed = d
        .ok(&["dead-letters", "list", "--json"])
        .await?
        .json_lines();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (
            &listed[0]["id"],
            &listed[0]["size"],
            &listed[0]["truncated"]
        ),
        (&json!("poison-3"), &json!(70_000), &json!(true))
    );
    let table = d.ok(&["dead-letters", "list"]).await?;
    assert!(
        table.lines()[1].contains("70000 (cut to 65536)"),
        "{table:?}"
    );
    let shown = d.ok(&["dead-letters", "show", "1"]).await?.stdout;
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("size:") && l.contains("70000 bytes, cut to the first 65536")),
        "{shown}"
    );

    // Dropped for good: one by its number (the others stay; those read before it go back
    // to the queue, so the order may change), then the rest.
    for id in ["poison-4", "poison-5"] {
        publish(d, &dead, b"drop me", id, &[]).await?;
    }
    let out = d.ok(&["dead-letters", "drop", "2"]).await?;
    assert_eq!(out.stdout, "dropped poison-4\n");
    let left = d
        .ok(&["dead-letters", "list", "--json"])
        .await?
        .json_lines();
    let mut left = ids_of(&left);
    left.sort();
    assert_eq!(left, vec!["poison-3", "poison-5"]);
    d.fails(3, &["dead-letters", "drop", "3"]).await?;
    let out = d.ok(&["dead-letters", "drop", "--all"]).await?;
    let mut dropped = out.lines();
    dropped.sort_unstable();
    assert_eq!(
        dropped,
        vec!["dropped poison-3", "dropped poison-5"],
        "{out:?}"
    );
    assert!(out.stderr.contains("2 dropped"), "{out:?}");
    wait_for(Duration::from_secs(10), || async {
        Ok(d.broker.queue_len(&dead).await? == Some(0))
    })
    .await?;
    Ok(())
}

/// A broker or database that cannot be reached: exit code 4.
async fn unreachable(d: &Deployment) -> anyhow::Result<()> {
    let nowhere = [("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")];
    for args in [&["list"][..], &["dead-letters", "list"]] {
        let out = d.run_with(args, &nowhere).await?;
        assert_eq!(out.code, 4, "{args:?}: {out:?}");
    }
    if d.schema.is_some() {
        let no_db = [("DATABASE_URL", "postgres://postgres@127.0.0.1:1/test")];
        let out = d.run_with(&["status", "keep-1"], &no_db).await?;
        assert_eq!(out.code, 4, "{out:?}");
    }
    Ok(())
}

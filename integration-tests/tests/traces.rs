//! One trace per instance tree across worker processes and timers: two `it-worker`
//! processes export their OpenTelemetry spans to files (`IT_SPANS_DIR`), the test process
//! (the client) to memory, and the test puts the spans of all three processes together
//! and checks the parent/child structure of each instance's trace.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use dtasks_integration_tests::spans::{read_dir, SpanRecord, SPANS_DIR_ENV};
use dtasks_integration_tests::tasks::{fan, spawn_then_delay};
use dtasks_integration_tests::{within, Broker};
use dtasks_otel::Otel;
use opentelemetry_sdk::trace::InMemorySpanExporter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

const WORKER: &str = env!("CARGO_BIN_EXE_it-worker");
const LIMIT: Duration = Duration::from_secs(30);

/// The spans of one trace, by id.
struct Trace<'a> {
    start: &'a SpanRecord,
    by_id: HashMap<&'a str, &'a SpanRecord>,
}

impl<'a> Trace<'a> {
    /// The trace of the instance `root`, from the span of its start; checks that every
    /// span of the tree of `root` is in it and that its spans form one tree.
    fn of(spans: &'a [SpanRecord], root: &str) -> Self {
        let start = spans
            .iter()
            .find(|s| s.name == "dtask.start" && s.attr("instance") == root)
            .unwrap_or_else(|| panic!("no dtask.start span for {root}"));
        let by_id: HashMap<&str, &SpanRecord> = spans
            .iter()
            .filter(|s| s.trace_id == start.trace_id)
            .map(|s| (s.span_id.as_str(), s))
            .collect();
        let t = Trace { start, by_id };
        let child_prefix = format!("{root}.");
        for s in spans.iter().filter(|s| s.name == "dtask.step") {
            let instance = s.attr("instance");
            if instance == root || instance.starts_with(&child_prefix) {
                assert_eq!(
                    s.trace_id, start.trace_id,
                    "a step of {instance} is outside the trace of its root: {s:?}"
                );
            }
        }
        for s in t.by_id.values() {
            if s.span_id == start.span_id {
                continue;
            }
            let parent = t
                .parent(s)
                .unwrap_or_else(|| panic!("a span of the trace has its parent outside it: {s:?}"));
            match s.name.as_str() {
                // A step runs within the delivery (or mailbox merge) of its process.
                "dtask.step" => {
                    assert!(
                        matches!(parent.name.as_str(), "dtask.delivery" | "dtask.mailbox"),
                        "a step's parent is {parent:?}"
                    );
                    assert_eq!(parent.pid, s.pid, "a step and its delivery share a process");
                }
                // A delivery continues the span that sent its message: the client's start
                // or a step, in whatever process.
                "dtask.delivery" | "dtask.mailbox" => assert!(
                    matches!(parent.name.as_str(), "dtask.start" | "dtask.step"),
                    "a delivery's parent is {parent:?}"
                ),
                _ => {}
            }
        }
        t
    }

    fn parent(&self, s: &SpanRecord) -> Option<&'a SpanRecord> {
        self.by_id.get(s.parent_span_id.as_str()).copied()
    }

    fn ancestors(&self, s: &'a SpanRecord) -> Vec<&'a SpanRecord> {
        let mut out = Vec::new();
        let mut at = s;
        while let Some(p) = self.parent(at) {
            out.push(p);
            at = p;
        }
        out
    }

    fn steps(&self, dtask: &str) -> Vec<&'a SpanRecord> {
        self.by_id
            .values()
            .copied()
            .filter(|s| s.name == "dtask.step" && s.attr("dtask") == dtask)
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_trace_holds_a_start_its_steps_on_two_worker_processes_and_a_timer(
) -> anyhow::Result<()> {
    let exporter = InMemorySpanExporter::default();
    let otel = Otel::with_exporter("it-client", exporter.clone());
    tracing_subscriber::registry().with(otel.layer()).init();
    let b = Broker::start().await?;
    let dir = std::env::temp_dir()
        .join("dtasks-it-spans")
        .join(b.prefix());
    std::fs::create_dir_all(&dir)?;
    let dir_text = dir.to_string_lossy().into_owned();
    let w = b
        .worker_processes_with(WORKER, 2, &[(SPANS_DIR_ENV, &dir_text)])
        .await?;
    let c = b.client().await?;

    let fanned = c.start(fan(40)).await?;
    let (_, pids) = within(LIMIT, "fan(40)", fanned.result()).await??;
    let timed = c.start(spawn_then_delay(1_000)).await?;
    assert_eq!(
        within(LIMIT, "spawn_then_delay", timed.result()).await??,
        20
    );

    // Stopped gracefully, the workers have ended (and written) every span.
    let mut w = w;
    let exits = w.unexpected_exits();
    anyhow::ensure!(exits.is_empty(), "worker processes exited: {exits:?}");
    let worker_pids: BTreeSet<u32> = w.pids().into_iter().collect();
    w.stop(LIMIT).await?;
    let mut spans = read_dir(&dir)?;
    spans.extend(exporter.get_finished_spans()?.iter().map(SpanRecord::of));

    // The fan-out: forty children, on both processes, all in the root's trace.
    let t = Trace::of(&spans, fanned.id().as_str());
    assert_eq!(t.start.pid, std::process::id(), "the start is the client's");
    let tagged = t.steps("it.tagged");
    assert_eq!(tagged.len(), 40, "one step per child");
    let ran: BTreeSet<u32> = tagged.iter().map(|s| s.pid).collect();
    assert_eq!(
        ran, worker_pids,
        "the children ran on both worker processes"
    );
    assert_eq!(ran, pids.iter().copied().collect::<BTreeSet<u32>>());
    assert!(
        t.by_id.values().any(|s| s.name == "dtask.delivery"
            && t.parent(s)
                .is_some_and(|p| p.name == "dtask.step" && p.pid != s.pid)),
        "some message crossed from one worker process to the other within the trace"
    );
    for s in &tagged {
        let root_step = t.ancestors(s).into_iter().find(|a| a.name == "dtask.step");
        assert_eq!(
            root_step.map(|a| a.attr("dtask")),
            Some("it.fan"),
            "a child's step descends from the step of its parent that started it"
        );
    }
    for s in t.steps("it.fan") {
        assert_eq!(s.attr("model"), "replay");
        assert!(
            !s.attr("outcome").is_empty(),
            "the outcome is recorded: {s:?}"
        );
    }

    // The timer: the step after it continues the trace of the step that set it.
    let t = Trace::of(&spans, timed.id().as_str());
    let steps = t.steps("it.spawn_then_delay");
    let first = steps
        .iter()
        .find(|s| s.attr("step") == "0")
        .expect("the first step");
    assert_eq!(first.attr("outcome"), "suspended");
    let last = steps
        .iter()
        .find(|s| s.attr("outcome") == "completed")
        .expect("the last step");
    assert!(
        t.ancestors(last).iter().any(|a| a.span_id == first.span_id),
        "the step after the timer descends from the step that set it: {last:?}"
    );
    assert_eq!(
        t.steps("it.add_one").len(),
        1,
        "the spawned child is in the trace"
    );

    drop(otel);
    let _ = std::fs::remove_dir_all(&dir);
    b.cleanup().await
}

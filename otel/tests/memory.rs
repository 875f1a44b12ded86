//! One trace per instance tree on the in-memory transport: a start, its children, a day's
//! timer (virtual time) and a when_all through the mailbox, exported to memory.

use std::collections::HashMap;
use std::time::Duration;

use dtasks::{dtask, DTask, Runtime, WorkerConfig};
use dtasks_otel::Otel;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

#[dtask(name = "otel.leaf")]
async fn leaf(x: u64) -> u64 {
    x + 1
}

#[dtask(name = "otel.root")]
async fn root(x: u64) -> u64 {
    let a = leaf(x).await;
    DTask::delay(Duration::from_secs(86_400)).await;
    let all = DTask::when_all((0..3).map(|i| leaf(a + i))).await;
    all.into_iter().sum()
}

fn attr(s: &SpanData, key: &str) -> String {
    s.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_start_its_children_and_a_timer_of_a_day_later_are_one_trace() -> anyhow::Result<()> {
    let exporter = InMemorySpanExporter::default();
    let otel = Otel::with_exporter("otel-memory-test", exporter.clone());
    tracing_subscriber::registry().with(otel.layer()).init();

    let rt = Runtime::builder(WorkerConfig::new().register(leaf).register(root))
        .workers(2)
        .virtual_time()
        .build()?;
    let h = rt.client().start(root(1)).await?;
    rt.wait_idle().await;
    rt.advance(Duration::from_secs(86_400));
    assert_eq!(h.result().await?, 3 + 4 + 5);
    rt.shutdown().await?;

    let spans = exporter.get_finished_spans()?;
    let start = spans
        .iter()
        .find(|s| s.name == "dtask.start")
        .expect("the start's span");
    let trace = start.span_context.trace_id();
    let by_id: HashMap<_, _> = spans
        .iter()
        .map(|s| (s.span_context.span_id(), s))
        .collect();
    let steps: Vec<&SpanData> = spans.iter().filter(|s| s.name == "dtask.step").collect();
    // root: the child, the timer, the fan-out, the end; leaf: four instances.
    assert_eq!(
        steps
            .iter()
            .filter(|s| attr(s, "dtask") == "otel.leaf")
            .count(),
        4
    );
    assert!(
        steps
            .iter()
            .filter(|s| attr(s, "dtask") == "otel.root")
            .count()
            >= 4
    );
    for s in &spans {
        assert_eq!(s.span_context.trace_id(), trace, "one trace: {s:?}");
        // A mailbox merge that took in several messages links to their senders.
        for link in s.links.iter() {
            assert!(
                by_id.contains_key(&link.span_context.span_id()),
                "a link to a span of the trace: {s:?}"
            );
        }
        if s.span_context.span_id() != start.span_context.span_id() {
            assert!(
                by_id.contains_key(&s.parent_span_id),
                "every span's parent is in the trace: {s:?}"
            );
        }
    }
    // The step after the timer descends from the step that set it.
    let ancestors = |s: &SpanData| {
        let mut out = Vec::new();
        let mut at = s.parent_span_id;
        while let Some(p) = by_id.get(&at) {
            out.push(p.span_context.span_id());
            at = p.parent_span_id;
        }
        out
    };
    let root_step = |n: &str| {
        steps
            .iter()
            .copied()
            .find(|s| attr(s, "dtask") == "otel.root" && attr(s, "step") == n)
            .unwrap_or_else(|| panic!("step {n} of the root"))
    };
    let (set_timer, after_timer) = (root_step("1"), root_step("2"));
    assert_eq!(attr(set_timer, "outcome"), "suspended");
    assert!(ancestors(after_timer).contains(&set_timer.span_context.span_id()));
    Ok(())
}

//! Every step of every instance is a `tracing` span `dtask.step` with the instance, the
//! DTask, the step's number, the execution model and the outcome, wherever it runs (a
//! delivery, an inline run, a mailbox merge).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};

use dtasks::{dtask, DTask, Runtime, WorkerConfig};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::Subscriber;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

type TestResult = Result<(), Box<dyn std::error::Error>>;

type Fields = BTreeMap<String, String>;

/// Keeps the fields of every `dtask.step` span, in the order the spans closed.
#[derive(Clone, Default)]
struct Steps {
    open: Arc<Mutex<HashMap<u64, Fields>>>,
    closed: Arc<Mutex<Vec<Fields>>>,
}

struct Visitor<'a>(&'a mut Fields);

impl Visit for Visitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Steps {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        if attrs.metadata().name() == "dtask.step" {
            let mut fields = Fields::new();
            attrs.record(&mut Visitor(&mut fields));
            self.open.lock().unwrap().insert(id.into_u64(), fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        if let Some(fields) = self.open.lock().unwrap().get_mut(&id.into_u64()) {
            values.record(&mut Visitor(fields));
        }
    }

    fn on_close(&self, id: Id, _: Context<'_, S>) {
        if let Some(fields) = self.open.lock().unwrap().remove(&id.into_u64()) {
            self.closed.lock().unwrap().push(fields);
        }
    }
}

impl Steps {
    /// `(step, model, outcome)` of the steps of the instances of `dtask`, by step.
    fn of(&self, dtask: &str) -> Vec<(String, String, String)> {
        let mut v: Vec<_> = self
            .closed
            .lock()
            .unwrap()
            .iter()
            .filter(|f| f.get("dtask").map(String::as_str) == Some(dtask))
            .map(|f| {
                let get = |k: &str| f.get(k).cloned().unwrap_or_default();
                (get("step"), get("model"), get("outcome"))
            })
            .collect();
        v.sort();
        v
    }
}

#[dtask(name = "spans.leaf")]
async fn leaf(x: u64) -> u64 {
    x + 1
}

#[dtask(name = "spans.chain")]
async fn chain() -> u64 {
    let a = leaf(1).await;
    leaf(a).await
}

#[dtask(name = "spans.machine", snapshot)]
async fn machine() -> u64 {
    let a = leaf(10).await;
    let b = DTask::when_all([leaf(a), leaf(a + 1)]).await;
    b.iter().sum()
}

#[dtask(name = "spans.broken")]
async fn broken() -> u64 {
    let a = leaf(1).await;
    if a > 0 {
        panic!("broken on purpose");
    }
    a
}

fn step(n: &str, model: &str, outcome: &str) -> (String, String, String) {
    (n.to_string(), model.to_string(), outcome.to_string())
}

#[tokio::test]
async fn every_step_is_a_span_with_its_instance_number_model_and_outcome() -> TestResult {
    let steps = Steps::default();
    let _default =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(steps.clone()));
    let rt = Runtime::new(
        WorkerConfig::new()
            .register(leaf)
            .register(chain)
            .register(machine)
            .register(broken),
    )?;
    let c = rt.client();
    assert_eq!(c.start(chain()).await?.result().await?, 3);
    assert_eq!(c.start(machine()).await?.result().await?, 12 + 13);
    let err = c.start(broken()).await?.result().await.unwrap_err();
    assert!(err.failure().is_some_and(|f| f.is_panic()), "{err}");
    rt.shutdown().await?;

    // Two children awaited in sequence: three steps, the first two suspend.
    assert_eq!(
        steps.of("spans.chain"),
        vec![
            step("0", "replay", "suspended"),
            step("1", "replay", "suspended"),
            step("2", "replay", "completed"),
        ]
    );
    // A snapshot machine: a child, then a fan-out of two merged in its mailbox (one or two
    // merges, as the results arrive), then done.
    let machine_steps = steps.of("spans.machine");
    assert!(machine_steps
        .iter()
        .all(|(_, model, _)| model == "snapshot"));
    assert_eq!(machine_steps[0], step("0", "snapshot", "suspended"));
    assert_eq!(
        machine_steps.last().map(|s| s.2.as_str()),
        Some("completed"),
        "{machine_steps:?}"
    );
    assert!((3..=4).contains(&machine_steps.len()), "{machine_steps:?}");
    // A panic ends its step as failed.
    assert_eq!(
        steps.of("spans.broken"),
        vec![
            step("0", "replay", "suspended"),
            step("1", "replay", "failed"),
        ]
    );
    // Every child ran one step; each carries its own instance id.
    let leaves = steps.of("spans.leaf");
    assert_eq!(leaves.len(), 2 + 3 + 1, "{leaves:?}");
    assert!(leaves
        .iter()
        .all(|s| *s == step("0", "replay", "completed")));
    let ids: std::collections::HashSet<String> = steps
        .closed
        .lock()
        .unwrap()
        .iter()
        .filter(|f| f.get("dtask").map(String::as_str) == Some("spans.leaf"))
        .filter_map(|f| f.get("instance").cloned())
        .collect();
    assert_eq!(ids.len(), 6, "{ids:?}");
    Ok(())
}

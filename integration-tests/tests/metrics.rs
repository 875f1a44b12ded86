//! Prometheus metrics of a worker process: an `it-worker` with `DTASKS_METRICS_ADDR` runs
//! instances on RabbitMQ, and the test scrapes its endpoint over HTTP and checks that the
//! counters moved by exactly what ran.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use dtasks::metrics as m;
use dtasks::transport::{Destination, Outgoing, Transport as _};
use dtasks::InstanceId;
use dtasks_integration_tests::tasks::{awaits_explosion, chain3, fan, sleep_then};
use dtasks_integration_tests::{wait_for, within, Broker};

const WORKER: &str = env!("CARGO_BIN_EXE_it-worker");
const LIMIT: Duration = Duration::from_secs(30);

/// One scrape: every sample, by metric name, with its labels.
struct Scrape(Vec<(String, BTreeMap<String, String>, f64)>);

impl Scrape {
    fn parse(text: &str) -> anyhow::Result<Self> {
        let mut samples = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let (series, value) = line
                .rsplit_once(' ')
                .with_context(|| format!("a sample without a value: {line}"))?;
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|l| !l.is_empty())
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
                .collect();
            let value: f64 = value
                .parse()
                .with_context(|| format!("a sample whose value is not a number: {line}"))?;
            samples.push((name.to_string(), labels, value));
        }
        Ok(Self(samples))
    }

    /// The sum of the samples of `name` that have every label of `with`.
    fn sum(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|(n, labels, _)| {
                n == name
                    && with
                        .iter()
                        .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }
}

async fn scrape(url: &str) -> anyhow::Result<Scrape> {
    let text = reqwest::get(url).await?.error_for_status()?.text().await?;
    Scrape::parse(&text)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_process_serves_counters_that_move_by_what_ran() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = format!("127.0.0.1:{port}");
    let url = format!("http://{addr}/metrics");
    let w = b
        .worker_processes_with(WORKER, 1, &[("DTASKS_METRICS_ADDR", &addr)])
        .await?;
    let before = scrape(&url)
        .await
        .context("scraping the worker's metrics")?;
    assert_eq!(before.sum(m::STEPS, &[]), 0.0, "no step ran yet");

    let c = b.client().await?;
    // Ten chains of three instances: chain3 and middle run two steps each (the call,
    // then the result), add_one one.
    for i in 0..10u64 {
        let h = c.start(chain3(i)).await?;
        assert_eq!(
            within(LIMIT, "chain3", h.result()).await??,
            (i + 1) * 2 + 100
        );
    }
    // Three failures: a panic in explode, then a child failure of its caller.
    for _ in 0..3 {
        let h = c.start(awaits_explosion()).await?;
        let e = within(LIMIT, "awaits_explosion", h.result())
            .await?
            .expect_err("the child panics");
        assert!(e.failure().is_some_and(|f| f.is_child_failure()), "{e}");
    }
    // One message no worker can read: dead-lettered at its first delivery.
    let t = b.transport().await?;
    t.publish(vec![Outgoing {
        destination: Destination::Task {
            name: "it.add_one".into(),
        },
        body: b"not an envelope".to_vec(),
        message_id: "garbage-1".into(),
        instance: InstanceId::random(),
        dtask: "it.add_one".into(),
        trace: None,
    }])
    .await?;
    wait_for(LIMIT, || async {
        Ok(scrape(&url).await?.sum(m::DEAD_LETTERS, &[]) == 1.0)
    })
    .await
    .context("the dead letter's counter")?;
    // Two timers held for ten minutes.
    for i in 0..2 {
        c.start(sleep_then(600_000, format!("late {i}"))).await?;
    }
    wait_for(LIMIT, || async {
        Ok(scrape(&url).await?.sum(m::TIMERS_HELD, &[]) == 2.0)
    })
    .await
    .context("the summary's gauge of timers held")?;

    let s = scrape(&url).await?;
    let steps =
        |dtask: &str, outcome: &str| s.sum(m::STEPS, &[("dtask", dtask), ("outcome", outcome)]);
    assert_eq!(steps("it.chain3", "suspended"), 10.0);
    assert_eq!(steps("it.chain3", "completed"), 10.0);
    assert_eq!(steps("it.middle", "suspended"), 10.0);
    assert_eq!(steps("it.middle", "completed"), 10.0);
    assert_eq!(steps("it.add_one", "completed"), 10.0);
    assert_eq!(steps("it.explode", "failed"), 3.0);
    assert_eq!(steps("it.awaits_explosion", "suspended"), 3.0);
    assert_eq!(steps("it.awaits_explosion", "failed"), 3.0);
    assert_eq!(steps("it.sleep_then", "suspended"), 2.0);
    assert_eq!(
        s.sum(m::STEPS, &[("model", "replay")]),
        s.sum(m::STEPS, &[]),
        "every DTask here uses the replay model"
    );
    let failures =
        |dtask: &str, kind: &str| s.sum(m::FAILURES, &[("dtask", dtask), ("kind", kind)]);
    assert_eq!(failures("it.explode", "panic"), 3.0);
    assert_eq!(failures("it.awaits_explosion", "child_failed"), 3.0);
    assert_eq!(s.sum(m::FAILURES, &[]), 6.0);
    // Every step ran in a task delivery of its own or inline after the step before it
    // (none of these instances uses a mailbox).
    assert_eq!(
        s.sum(m::STEPS, &[]) + 1.0,
        s.sum(m::DELIVERIES, &[("kind", "task")]) + s.sum(m::INLINE_STEPS, &[]),
        "steps and the dead letter = task deliveries + inline steps"
    );
    assert!(s.sum(m::INLINE_STEPS, &[]) > 0.0, "children run inline");
    assert_eq!(
        s.sum(m::IN_FLIGHT, &[]),
        0.0,
        "nothing is in flight at rest"
    );
    assert_eq!(s.sum(m::DEAD_LETTERS, &[]), 1.0);
    // A histogram per DTask, one observation per step.
    let count = format!("{}_count", m::STEP_DURATION);
    assert_eq!(s.sum(&count, &[("dtask", "it.chain3")]), 20.0);
    assert_eq!(s.sum(&count, &[]), s.sum(m::STEPS, &[]));
    let buckets = format!("{}_bucket", m::STEP_DURATION);
    assert_eq!(
        s.sum(&buckets, &[("dtask", "it.add_one"), ("le", "+Inf")]),
        10.0
    );
    // Every step's messages were made durable, through confirmed publishes.
    let published = format!("{}_count", m::PUBLISH_DURATION);
    assert!(s.sum(&published, &[]) >= 10.0, "{}", s.sum(&published, &[]));
    let confirms = format!("{}_count", dtasks_amqp::metrics::CONFIRM_DURATION);
    assert!(s.sum(&confirms, &[]) > 0.0);
    assert!(s.sum(dtasks_amqp::metrics::PUBLISHED, &[]) >= 10.0);
    // The worker's publisher and consumer connections, none lost.
    assert_eq!(s.sum(dtasks_amqp::metrics::CONNECTIONS_OPENED, &[]), 2.0);
    assert_eq!(
        s.sum(dtasks_amqp::metrics::PACKED, &[]),
        0.0,
        "no mailbox was written yet"
    );
    // A fan-in of 200: the children's results that reach the parent's mailbox while an
    // earlier write to it is on its way go several to one message (the worker handles
    // 64 deliveries at once, so results come together).
    let task_packed = s.sum(dtasks_amqp::metrics::TASK_PACKED, &[]);
    let h = c.start(fan(200)).await?;
    let (sum, _) = within(LIMIT, "fan", h.result()).await??;
    assert_eq!(sum, 200 * 201 / 2);
    let s = scrape(&url).await?;
    let packed = s.sum(dtasks_amqp::metrics::PACKED, &[]);
    assert!(
        (2.0..=201.0).contains(&packed),
        "{packed} mailbox messages went in packs"
    );
    // The 200 children's starts went out in task packs (16 to a pack, by default).
    assert_eq!(
        s.sum(dtasks_amqp::metrics::TASK_PACKED, &[]) - task_packed,
        200.0,
        "the fan-out's starts went in task packs"
    );

    let exits = {
        let mut w = w;
        let exits = w.unexpected_exits();
        w.stop(Duration::from_secs(30)).await?;
        exits
    };
    anyhow::ensure!(exits.is_empty(), "worker processes exited: {exits:?}");
    b.cleanup().await
}

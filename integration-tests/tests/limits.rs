//! Inputs at and past dtasks' limits on the real broker, with worker processes where a
//! crash loop is the risk: deep recursions and fan-ins finish (the worker process
//! survives them, and so does a replacement), limits are typed errors where the call is
//! made, a message that fails at every delivery fails its instance, and the dead-letter
//! queue is bounded.

use std::time::Duration;

use anyhow::Context as _;
use dtasks::test_util::RefuseStatus;
use dtasks::transport::Transport;
use dtasks::{Client, InstanceId, Status, WorkerConfig};
use dtasks_integration_tests::tasks::{
    self, length, nest, nest_fan, sleep_forever, slow_first_step,
};
use dtasks_integration_tests::{wait_for, within, Broker};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::BasicProperties;

const WORKER: &str = env!("CARGO_BIN_EXE_it-worker");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_nesting_finishes_and_the_worker_process_survives_it() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let mut w = b.worker_processes(WORKER, 1).await?;
    let c = b.client().await?;
    let limit = Duration::from_secs(120);
    // 150 nested child awaits aborted a debug worker (stack overflow) at every delivery:
    // one such instance took down every worker that took its message.
    let h = c.start(nest(150)).await?;
    assert_eq!(within(limit, "nest(150)", h.result()).await??, 150);
    // A fan-in at each of 100 levels: the deepest mailboxes' names are over 255 bytes.
    let h = c.start(nest_fan(100)).await?;
    assert_eq!(within(limit, "nest_fan(100)", h.result()).await??, 100);
    assert_eq!(h.status().await?, Status::Succeeded);
    assert!(w.alive(0), "the worker process died: {}", w.log_tail(0, 30));
    // A replacement takes its share of another deep recursion, and lives on too.
    let second = b.add_worker_process(&mut w).await?;
    let hs = [c.start(nest(300)).await?, c.start(nest(150)).await?];
    for (h, want) in hs.iter().zip([300, 150]) {
        assert_eq!(within(limit, "the recursions", h.result()).await??, want);
    }
    assert!(w.alive(0) && w.alive(second), "{:?}", w.unexpected_exits());
    let reports = w.stop(Duration::from_secs(30)).await?;
    assert_eq!(reports.len(), 2);
    assert!(reports.iter().all(|r| r.dead_lettered == 0), "{reports:?}");
    let dead = b.transport().await?.dead_letters().await?;
    assert!(dead.is_empty(), "{dead:?}");
    b.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_typed_errors_where_the_call_is_made() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let workers = b.workers(1, &tasks::registry()).await?;
    let c = b.client().await?;
    let limit = Duration::from_secs(30);
    // A delay past the longest: a failure of the instance, not a panic.
    let h = c.start(sleep_forever()).await?;
    let e = within(limit, "the delay", h.result())
        .await?
        .expect_err("too long");
    let f = e.failure().expect("a failure of the instance");
    assert!(f.is_limit_exceeded() && !f.is_panic(), "{f}");
    assert_eq!(h.status().await?, Status::Failed);
    // Arguments over the budget, with every value inline (none stored out of band):
    // refused at the start, nothing started.
    let c = c.with_payload_threshold(usize::MAX);
    let big = vec![3u8; 10 * 1024 * 1024];
    let id = InstanceId::new(format!("{}-big", b.prefix()))?;
    let e = c
        .start_with_id(id.clone(), length(big.clone()))
        .await
        .map(|_| ())
        .expect_err("10 MB");
    assert!(e.is_limit_exceeded(), "{e}");
    assert!(c.status(&id).await.expect_err("unknown").is_not_found());
    let e = c.call(length(big)).await.expect_err("10 MB");
    assert!(e.is_limit_exceeded(), "{e}");
    assert_eq!(c.call(length(vec![1u8; 100_000])).await?, 100_000);
    workers.stop().await?;
    b.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_fails_at_every_delivery_fails_its_instance() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let t = b.transport().await?;
    let store = RefuseStatus(t.store().expect("the RabbitMQ-only store"));
    let workers = b
        .workers_with(
            1,
            WorkerConfig::new()
                .registry(&tasks::registry())
                .store(store.clone())
                .max_redeliveries(2),
        )
        .await?;
    let c = Client::new(t.clone()).with_store(store);
    let h = c.start(slow_first_step()).await?;
    let e = within(Duration::from_secs(60), "the failure", h.result())
        .await?
        .expect_err("failed");
    let f = e.failure().expect("a failure of the instance");
    assert!(f.is_dead_lettered(), "{f}");
    assert!(f.message().contains("retry budget exhausted"), "{f}");
    assert_eq!(h.status().await?, Status::Failed);
    // The worker publishes the instance's failure before it dead-letters the message: the
    // client can have the failure first.
    wait_for(Duration::from_secs(10), || async {
        let counted: u64 = workers.stats().iter().map(|s| s.dead_lettered).sum();
        Ok(counted > 0 && !t.dead_letters().await?.is_empty())
    })
    .await
    .context("the message was not dead-lettered")?;
    let dead = t.dead_letters().await?;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].instance.as_deref(), Some(h.id().as_str()));
    assert!(dead[0]
        .reason
        .as_deref()
        .is_some_and(|r| r.contains("retry budget")));
    assert_eq!(
        workers.stats().iter().map(|s| s.dead_lettered).sum::<u64>(),
        1
    );
    workers.stop().await?;
    b.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dead_letter_queue_is_bounded_and_cuts_big_bodies() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let t = b.transport_with(|c| c.with_dead_letter_limit(3)).await?;
    // One delivery at a time: the letters are dead-lettered in the order published.
    let config = WorkerConfig::new()
        .registry(&tasks::registry())
        .concurrency(1);
    let workers = b.workers_with(1, config).await?;
    let ch = b.channel().await?;
    let queue = t.task_queue("it.add_one");
    // Garbage no worker can read: five of them, the first 300 KB.
    for i in 0..5usize {
        let body = if i == 0 {
            vec![0xAB; 300 * 1024]
        } else {
            format!("garbage {i}").into_bytes()
        };
        ch.basic_publish(
            "".into(),
            queue.as_str().into(),
            Default::default(),
            &body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await?
        .await?;
    }
    let dead = t.dead_letter_queue();
    wait_for(Duration::from_secs(30), || async {
        Ok(workers.stats().iter().map(|s| s.dead_lettered).sum::<u64>() == 5)
    })
    .await?;
    // Only the newest three are kept.
    assert_eq!(b.queue_len(&dead).await?, Some(3));
    let letters = t.dead_letters().await?;
    let bodies: Vec<&[u8]> = letters.iter().map(|l| l.body.as_slice()).collect();
    assert_eq!(
        bodies,
        [&b"garbage 2"[..], b"garbage 3", b"garbage 4"],
        "the oldest went first"
    );
    workers.stop().await?;
    // A big body is cut, says its size, and is not replayed.
    let t2 = b.transport_with(|c| c.with_dead_letter_limit(3)).await?;
    let mut stream = t2.consume(vec!["it.add_one".to_string()]).await?;
    ch.basic_publish(
        "".into(),
        queue.as_str().into(),
        Default::default(),
        &vec![0xCD; 200 * 1024],
        BasicProperties::default().with_delivery_mode(2),
    )
    .await?
    .await?;
    use futures::StreamExt;
    let d = within(Duration::from_secs(10), "a delivery", stream.next())
        .await?
        .expect("a delivery")?;
    d.settle.dead_letter("looked at by the test".into()).await?;
    drop(stream);
    let big = t2
        .dead_letters()
        .await?
        .into_iter()
        .find(|l| l.reason.as_deref() == Some("looked at by the test"))
        .expect("the big letter");
    assert_eq!(big.body.len(), dtasks_amqp::DEAD_LETTER_BODY);
    assert_eq!(big.truncated, Some(200 * 1024));
    assert_eq!(big.body_size(), 200 * 1024);
    let e = t2.replay_dead_letter(&big.id).await.expect_err("cut");
    assert!(e.is_bad_input(), "{e}");
    b.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_queue_made_without_the_bound_is_used_as_it_is() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    // As an earlier version declared it.
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        lapin::types::AMQPValue::LongString("quorum".into()),
    );
    let dead = format!("{}.dead", b.prefix());
    b.channel()
        .await?
        .queue_declare(dead.as_str().into(), QueueDeclareOptions::durable(), args)
        .await?;
    let t = b.transport().await?;
    assert_eq!(t.dead_letter_queue(), dead);
    let c = Client::new(t.clone());
    let workers = b.workers(1, &tasks::registry()).await?;
    assert_eq!(c.call(tasks::add_one(1)).await?, 2);
    workers.stop().await?;
    b.cleanup().await
}

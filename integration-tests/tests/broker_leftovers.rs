//! Finished instances leave nothing behind on RabbitMQ. Fan-ins of every kind run to their
//! end on a fresh prefix: `when_all` of children with timers, a `when_any` whose loser
//! replies after the end, a race whose cancelled loser stops at its timer, a timer that
//! loses a timeout, a child waiting for a resume (resumed once more after the end), and a
//! fan-in that waits on keep-alives, called and started (whose facts go to the instance
//! store). Once the results
//! are in and the losers have replied, the broker holds only the fixed topology of the
//! prefix (task, wake, delay, shard, dead-letter and reply queues, the streams of cancel
//! records and instance facts), and
//! none of those holds a message: no mailbox, no tombstone, no keep-alive parked in a
//! delay level.

use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context as _;
use dtasks::transport::{Delivery, DeliveryKind, Destination, Outgoing, Published, Transport};
use dtasks::{dtask, Client, DTask, InstanceId, ResumeToken, Worker, WorkerConfig};
use dtasks_amqp::AmqpConfig;
use dtasks_integration_tests::{rabbitmqctl, wait_for, within, Broker, Workers};
use futures::stream::BoxStream;
use futures::StreamExt;

/// The mailbox retention of this test: an hour, so that nothing expires while the test
/// runs (what is gone was deleted). The first keep-alive comes after 1/1024 of it (3.5 s),
/// each next one twice as late.
const RETENTION: Duration = Duration::from_secs(3600);

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The resume tokens handed out by the children that wait for one.
static TOKENS: Mutex<Vec<ResumeToken>> = Mutex::new(Vec::new());

#[dtask(name = "leftovers.nap")]
async fn nap(millis: u64) -> u64 {
    DTask::delay(ms(millis)).await;
    millis
}

#[dtask(name = "leftovers.quick")]
async fn quick(x: u64) -> u64 {
    x
}

/// Waits in its mailbox until resumed with a number.
#[dtask(name = "leftovers.approval")]
async fn approval() -> u64 {
    DTask::suspend(|token| async move {
        TOKENS.lock().unwrap_or_else(|p| p.into_inner()).push(token);
    })
    .await
}

#[dtask(name = "leftovers.fan_in")]
async fn fan_in(n: u64) -> u64 {
    let naps: u64 = DTask::when_all((1..=n).map(|i| nap(100 * i)))
        .await
        .iter()
        .sum();
    // The loser replies two seconds after the winner.
    let (_, first) = DTask::when_any([quick(7), nap(2_000)]).await;
    // The loser is cancelled; its state rides in its timer, which a worker brings early:
    // the sleep ends cancelled.
    let (_, raced) = DTask::race([quick(8), nap(5_000)]).await;
    let ((), q) = DTask::join((DTask::delay(ms(300)), quick(9))).await;
    // The timer loses and fires after the end.
    let t = DTask::timeout(ms(1_500), quick(10)).await.unwrap_or(0);
    let (approved, z) = DTask::join((approval(), quick(0))).await;
    naps + first + raced + q + t + approved + z
}

/// Waits ten seconds in its mailbox: a keep-alive comes meanwhile, and the next one is
/// pending when it ends.
#[dtask(name = "leftovers.long_wait")]
async fn long_wait() -> u64 {
    let ((), ()) = DTask::join((DTask::delay(ms(10_000)), DTask::delay(ms(10_001)))).await;
    1
}

fn config() -> WorkerConfig {
    WorkerConfig::new()
        .register(nap)
        .register(quick)
        .register(approval)
        .register(fan_in)
        .register(long_wait)
}

fn with_retention(c: AmqpConfig) -> AmqpConfig {
    c.with_mailbox_retention(RETENTION)
}

/// The queues of the prefix with their message counts (`rabbitmqctl list_queues`).
async fn queues(b: &Broker) -> anyhow::Result<Vec<(String, u64)>> {
    let out = rabbitmqctl(&[
        "list_queues",
        "name",
        "messages",
        "--quiet",
        "--no-table-headers",
    ])
    .await
    .context("listing the broker's queues needs rabbitmqctl")?;
    let start = format!("{}.", b.prefix());
    let mut listed = Vec::new();
    for line in out.lines() {
        let mut cols = line.split_whitespace();
        let (Some(name), Some(n)) = (cols.next(), cols.next()) else {
            continue;
        };
        if name.starts_with(&start) {
            listed.push((name.to_string(), n.parse().unwrap_or(u64::MAX)));
        }
    }
    listed.sort();
    Ok(listed)
}

/// What is left of the instances: per-instance queues (mailboxes, registers), and any
/// message in a queue of the fixed topology. The streams of cancel records and instance
/// facts keep their records (and their followers' markers) for the result retention by
/// design: their messages are not counted.
fn leftovers(prefix: &str, queues: &[(String, u64)]) -> Vec<(String, u64)> {
    let per_instance = ["mbox", "result", "status", "claim"].map(|k| format!("{prefix}.{k}."));
    let streams = [format!("{prefix}.cancels"), format!("{prefix}.facts")];
    queues
        .iter()
        .filter(|(name, n)| {
            per_instance.iter().any(|p| name.starts_with(p.as_str()))
                || (!streams.contains(name) && *n > 0)
        })
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_fan_ins_leave_only_the_fixed_topology() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let mut workers = Vec::new();
    for _ in 0..2 {
        let t = b.transport_with(with_retention).await?;
        workers.push(Worker::new(t, config())?);
    }
    let workers = Workers::run(workers);
    for name in config().dtasks() {
        let queue = format!("{}.task.{name}", b.prefix());
        wait_for(Duration::from_secs(10), || async {
            Ok(b.consumers(&queue).await? >= 2)
        })
        .await
        .with_context(|| format!("workers did not subscribe to {queue}"))?;
    }
    let c = Client::new(b.transport_with(with_retention).await?);

    // Resumes each approval once while the fan-ins run.
    let resumer = {
        let c = c.clone();
        tokio::spawn(async move {
            let mut resumed = Vec::new();
            while resumed.len() < 5 {
                let tokens: Vec<ResumeToken> =
                    std::mem::take(&mut *TOKENS.lock().unwrap_or_else(|p| p.into_inner()));
                for token in tokens {
                    c.resume(&token, &100u64).await?;
                    resumed.push(token);
                }
                tokio::time::sleep(ms(20)).await;
            }
            anyhow::Ok(resumed)
        })
    };
    let long = {
        let c = c.clone();
        tokio::spawn(async move { c.call(long_wait()).await })
    };
    // Three called, two started: a started root's facts go to the instance store (the
    // stream), never to a queue of its own.
    let fan_ins = (0..5).map(|i| {
        let c = c.clone();
        async move {
            if i < 3 {
                c.call(fan_in(3)).await
            } else {
                c.start(fan_in(3)).await?.result().await
            }
        }
    });
    let sums = within(
        Duration::from_secs(60),
        "the fan-ins",
        futures::future::try_join_all(fan_ins),
    )
    .await??;
    assert_eq!(sums, vec![600 + 7 + 8 + 9 + 10 + 100; 5]);
    let resumed = within(Duration::from_secs(10), "the resumes", resumer).await???;
    // The fan-ins wait for their race's loser, which stops seconds after their end: their
    // tombstones are there now.
    let now = queues(&b).await?;
    let mailboxes = now
        .iter()
        .filter(|(q, _)| q.starts_with(&format!("{}.mbox.", b.prefix())))
        .count();
    assert!(mailboxes >= 5, "no tombstone kept for the losers: {now:?}");
    // Late events: each approval, finished, is resumed again. Its tombstone drops them.
    for token in &resumed {
        c.resume(token, &200u64).await?;
    }

    assert_eq!(
        within(Duration::from_secs(60), "the long wait", long).await???,
        1
    );

    // Everything finished: what remains once the losers replied and the last probes came
    // is the fixed topology, empty.
    let waited = wait_for(Duration::from_secs(60), || async {
        Ok(leftovers(b.prefix(), &queues(&b).await?).is_empty())
    })
    .await;
    if let Err(e) = waited {
        let left = leftovers(b.prefix(), &queues(&b).await?);
        anyhow::bail!("{e}: left {left:?}\n{}", b.report().await);
    }
    assert_eq!(b.queue_len(&format!("{}.dead", b.prefix())).await?, Some(0));
    // The client's reply consumer would declare its queue again after the cleanup.
    drop(c);
    workers.stop().await?;
    b.cleanup().await
}

async fn next_doorbell(
    deliveries: &mut BoxStream<'static, Result<Delivery, dtasks::Error>>,
) -> anyhow::Result<Delivery> {
    let d = within(Duration::from_secs(10), "a doorbell", deliveries.next())
        .await?
        .context("the stream ended")??;
    anyhow::ensure!(
        matches!(d.kind, DeliveryKind::Doorbell { .. }),
        "{:?}",
        d.kind
    );
    Ok(d)
}

/// The tag of a doorbell delivery, which its drain names.
fn tag_of(d: &Delivery) -> u64 {
    match &d.kind {
        DeliveryKind::Doorbell { tag, .. } => *tag,
        _ => 0,
    }
}

/// The transport alone: `delete_mailbox` takes the messages a drain holds with the
/// mailbox (settling them afterwards breaks nothing), and a keep-alive
/// (`Destination::Touch`) never creates a mailbox: it is dropped when there is none, and
/// rings like any mailbox message when there is one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_mailbox_takes_what_a_drain_holds_and_a_touch_creates_none() -> anyhow::Result<()>
{
    let b = Broker::start().await?;
    let t = b.transport().await?;
    let mut deliveries = t.consume(vec!["probe".to_string()]).await?;
    let id = InstanceId::random();
    let queue = format!("{}.mbox.{id}", b.prefix());
    let to = |destination: Destination, body: &[u8], message_id: &str| Outgoing {
        destination,
        body: body.to_vec(),
        message_id: message_id.to_string(),
        instance: id.clone(),
        dtask: "probe".to_string(),
        trace: None,
    };
    let mailbox = Destination::Mailbox {
        instance: id.clone(),
    };
    let touch = Destination::Touch {
        instance: id.clone(),
    };

    // No mailbox: a touch is dropped and creates none.
    assert_eq!(
        t.publish(vec![to(touch.clone(), b"t1", "t1")]).await?,
        vec![Published::Dropped]
    );
    assert_eq!(b.queue_len(&queue).await?, None);

    // A mailbox with two messages, drained and held; deleted with them.
    let report = t
        .publish(vec![
            to(mailbox.clone(), b"m1", "m1"),
            to(mailbox.clone(), b"m2", "m2"),
        ])
        .await?;
    assert_eq!(report, vec![Published::Stored; 2]);
    let bell = next_doorbell(&mut deliveries).await?;
    let held = t.drain_for_doorbell(&id, tag_of(&bell)).await?;
    assert_eq!(held.len(), 2);
    t.delete_mailbox(&id).await?;
    assert_eq!(b.queue_len(&queue).await?, None);
    for m in held {
        m.settle.ack().await?;
    }
    bell.settle.ack().await?;
    // Deleting a missing mailbox does nothing.
    t.delete_mailbox(&id).await?;

    // The doorbell channel still works: a new message creates the mailbox again, and a
    // touch now goes in beside it, with a doorbell.
    t.publish(vec![to(mailbox.clone(), b"m3", "m3")]).await?;
    let bell = next_doorbell(&mut deliveries).await?;
    let items = t.drain_for_doorbell(&id, tag_of(&bell)).await?;
    let bodies: Vec<&[u8]> = items.iter().map(|m| m.body.as_slice()).collect();
    assert_eq!(bodies, vec![&b"m3"[..]]);
    for m in items {
        m.settle.ack().await?;
    }
    bell.settle.ack().await?;
    assert_eq!(
        t.publish(vec![to(touch, b"t2", "t2")]).await?,
        vec![Published::Stored]
    );
    let bell = next_doorbell(&mut deliveries).await?;
    let items = t.drain_for_doorbell(&id, tag_of(&bell)).await?;
    let bodies: Vec<&[u8]> = items.iter().map(|m| m.body.as_slice()).collect();
    assert_eq!(bodies, vec![&b"t2"[..]]);
    for m in items {
        m.settle.ack().await?;
    }
    bell.settle.ack().await?;
    t.delete_mailbox(&id).await?;
    drop(deliveries);
    b.cleanup().await
}

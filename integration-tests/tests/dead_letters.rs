//! The dead-letter queue for operators on the real broker: `AmqpTransport::dead_letters`
//! lists every dead letter and loses none however often it is called;
//! `replay_dead_letter` puts one back on the queue it came from, with its message id and
//! without the dead-lettering headers, and refuses what it cannot replay;
//! `replay_dead_letters` replays them all, and only once each even when the consumer
//! dead-letters them again at once. An unreadable mailbox item fails its instance and is
//! dead-lettered.

use std::time::Duration;

use anyhow::Context as _;
use dtasks::transport::{Delivery, DeliveryKind, Destination, Outgoing, Transport};
use dtasks::{dtask, DTask, InstanceId, Status};
use dtasks_integration_tests::{registry, wait_for, Broker};
use futures::stream::BoxStream;
use futures::StreamExt;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

type Deliveries = BoxStream<'static, Result<Delivery, dtasks::Error>>;

async fn next(s: &mut Deliveries) -> anyhow::Result<Delivery> {
    Ok(tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .context("no delivery within 10 s")?
        .context("the stream ended")??)
}

fn task_of(d: &Delivery) -> (Vec<u8>, Option<String>) {
    match &d.kind {
        DeliveryKind::Task {
            body, message_id, ..
        } => (body.clone(), message_id.clone()),
        other => panic!("not a task delivery: {other:?}"),
    }
}

/// Publishes `body` to `queue` with nothing but persistence and `props`.
async fn publish_raw(
    b: &Broker,
    queue: &str,
    body: &[u8],
    props: BasicProperties,
) -> anyhow::Result<()> {
    let ch = b.channel().await?;
    ch.basic_publish(
        "".into(),
        queue.into(),
        Default::default(),
        body,
        props.with_delivery_mode(2),
    )
    .await?
    .await?;
    let _ = ch.close(200, "OK".into()).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_without_loss_and_replayed_to_their_queue() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let t = b.transport().await?;
    let task_queue = t.task_queue("probe");
    let dead = t.dead_letter_queue();
    let mut deliveries = t.consume(vec!["probe".to_string()]).await?;
    let instance = InstanceId::random();
    let to_probe = |body: &[u8], id: &str| Outgoing {
        destination: Destination::Task {
            name: "probe".into(),
        },
        body: body.to_vec(),
        message_id: id.to_string(),
        instance: instance.clone(),
        dtask: "probe".to_string(),
        trace: None,
    };
    t.publish(vec![to_probe(b"one", "dl-1"), to_probe(b"two!", "dl-2")])
        .await?;
    // A message from elsewhere, without a message id.
    publish_raw(&b, &task_queue, b"three", BasicProperties::default()).await?;
    for _ in 0..3 {
        let d = next(&mut deliveries).await?;
        let (body, _) = task_of(&d);
        let reason = format!("cannot read {}", String::from_utf8_lossy(&body));
        d.settle.dead_letter(reason).await?;
    }
    wait_for(Duration::from_secs(5), || async {
        Ok(b.queue_len(&dead).await? == Some(3))
    })
    .await?;

    let letters = t.dead_letters().await?;
    assert_eq!(letters.len(), 3, "{letters:?}");
    let by_body = |body: &[u8]| {
        letters
            .iter()
            .find(|l| l.body == body)
            .with_context(|| format!("no dead letter {body:?}: {letters:?}"))
    };
    let one = by_body(b"one")?;
    assert_eq!(one.id, "dl-1");
    assert_eq!(one.message_id.as_deref(), Some("dl-1"));
    assert_eq!(one.reason.as_deref(), Some("cannot read one"));
    assert_eq!(one.queue.as_deref(), Some(task_queue.as_str()));
    assert_eq!(one.instance.as_deref(), Some(instance.as_str()));
    assert_eq!(one.dtask.as_deref(), Some("probe"));
    assert!(one.published_at.is_some());
    assert_eq!(by_body(b"two!")?.body_size(), 4);
    let three = by_body(b"three")?;
    assert_eq!(three.message_id, None);
    assert!(three.id.starts_with("fnv-"), "{}", three.id);
    assert_eq!(three.queue.as_deref(), Some(task_queue.as_str()));

    // Listing takes nothing: the same letters, in the same order, every time, all of
    // them back in the queue.
    for _ in 0..5 {
        assert_eq!(t.dead_letters().await?, letters);
    }
    wait_for(Duration::from_secs(5), || async {
        Ok(b.queue_len(&dead).await? == Some(3))
    })
    .await
    .context("the listed letters are back in the queue")?;

    // One replayed: it comes back from its queue as it was first published.
    let (replayed, queue) = t.replay_dead_letter("dl-1").await?;
    assert_eq!(
        (replayed.id.as_str(), queue.as_str()),
        ("dl-1", task_queue.as_str())
    );
    let d = next(&mut deliveries).await?;
    assert_eq!(task_of(&d), (b"one".to_vec(), Some("dl-1".to_string())));
    assert_eq!(d.redeliveries, 0);
    d.settle.ack().await?;
    let left: Vec<String> = t.dead_letters().await?.into_iter().map(|l| l.id).collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(!left.contains(&"dl-1".to_string()));
    let again = t.replay_dead_letter("dl-1").await.unwrap_err();
    assert!(again.is_not_found(), "{again}");
    // A replay keeps the message's id and headers but those of the dead-lettering: seen
    // in a queue nobody consumes.
    let idle = t.task_queue("idle");
    let mut headers = FieldTable::default();
    for (k, v) in [
        ("x-dtasks-queue", idle.as_str()),
        ("x-dtasks-reason", "a test put it here"),
        ("x-dtasks-dtask", "idle"),
    ] {
        headers.insert(k.into(), text(v));
    }
    publish_raw(
        &b,
        &dead,
        b"idle",
        BasicProperties::default()
            .with_message_id("dl-idle".into())
            .with_headers(headers),
    )
    .await?;
    let (_, queue) = t.replay_dead_letter("dl-idle").await?;
    assert_eq!(queue, idle);
    let got = b.take_all(&idle).await?;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data, b"idle");
    let props = &got[0].properties;
    assert_eq!(
        props.message_id().as_ref().map(|s| s.as_str()),
        Some("dl-idle")
    );
    let kept = props.headers().clone().unwrap_or_default();
    assert_eq!(kept.inner().get("x-dtasks-dtask"), Some(&text("idle")));
    assert!(!kept.inner().contains_key("x-dtasks-queue"), "{kept:?}");
    assert!(!kept.inner().contains_key("x-dtasks-reason"), "{kept:?}");

    // A letter that names a queue outside the prefix is not replayed; it stays.
    let mut headers = FieldTable::default();
    headers.insert("x-dtasks-queue".into(), text("elsewhere.task.probe"));
    publish_raw(
        &b,
        &dead,
        b"foreign",
        BasicProperties::default()
            .with_message_id("dl-foreign".into())
            .with_headers(headers),
    )
    .await?;
    wait_for(Duration::from_secs(5), || async {
        Ok(b.queue_len(&dead).await? == Some(3))
    })
    .await?;
    let refused = t.replay_dead_letter("dl-foreign").await.unwrap_err();
    assert!(refused.is_bad_input(), "{refused}");
    assert!(
        refused.to_string().contains("elsewhere.task.probe"),
        "{refused}"
    );

    // All replayed at once, while the consumer dead-letters each again as it arrives:
    // each is replayed once, and the foreign one stays.
    let consumer = tokio::spawn(async move {
        let mut seen = Vec::new();
        while seen.len() < 2 {
            let d = next(&mut deliveries).await?;
            seen.push(task_of(&d));
            d.settle.dead_letter("still bad".into()).await?;
        }
        anyhow::Ok((seen, deliveries))
    });
    let all = t.replay_dead_letters().await?;
    let mut ids: Vec<&str> = all.iter().map(|(l, _)| l.id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids.len(), 2, "{all:?}");
    assert_eq!(ids[0], "dl-2");
    assert!(ids[1].starts_with("fnv-"), "{ids:?}");
    assert!(all.iter().all(|(_, q)| *q == task_queue));
    let (seen, deliveries) = tokio::time::timeout(Duration::from_secs(20), consumer)
        .await
        .context("the replayed letters did not arrive")???;
    let mut bodies: Vec<Vec<u8>> = seen.into_iter().map(|(body, _)| body).collect();
    bodies.sort();
    assert_eq!(bodies, vec![b"three".to_vec(), b"two!".to_vec()]);
    // Back in the queue: the two dead-lettered again (with the new reason) and the
    // foreign one, which was never taken out for good.
    wait_for(Duration::from_secs(5), || async {
        Ok(b.queue_len(&dead).await? == Some(3))
    })
    .await?;
    let now = t.dead_letters().await?;
    assert_eq!(now.len(), 3, "{now:?}");
    assert!(now.iter().any(|l| l.id == "dl-foreign"));
    assert_eq!(
        now.iter()
            .filter(|l| l.reason.as_deref() == Some("still bad"))
            .count(),
        2
    );
    drop(deliveries);
    b.cleanup().await
}

/// Waits in its mailbox for the event `data`.
#[dtask]
async fn awaits_data() -> String {
    DTask::event::<String>("data").await
}

/// An item in a waiting instance's mailbox that no worker can read (garbage, with its
/// doorbell) fails that instance, visibly to its waiter and in its status, and is
/// dead-lettered with a reason, the mailbox it came from and its instance; the workers
/// keep serving, and an instance next to it is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_mailbox_item_fails_its_instance_and_is_dead_lettered() -> anyhow::Result<()>
{
    let b = Broker::start().await?;
    let w = b.workers(2, &registry![awaits_data]).await?;
    let c = b.client().await?;
    let h = c.start(awaits_data()).await?;
    let other = c.start(awaits_data()).await?;
    for waiting in [&h, &other] {
        wait_for(Duration::from_secs(10), || async {
            Ok(waiting.status().await? == Status::Suspended)
        })
        .await?;
    }
    let t = b.transport().await?;
    let id = h.id().clone();
    t.publish(vec![Outgoing {
        destination: Destination::Mailbox {
            instance: id.clone(),
        },
        body: b"garbage".to_vec(),
        message_id: format!("{id}:garbage"),
        instance: id.clone(),
        dtask: "awaits_data".to_string(),
        trace: None,
    }])
    .await?;
    let err = tokio::time::timeout(Duration::from_secs(30), h.result())
        .await
        .context("the instance did not fail within 30 s")?
        .expect_err("an unreadable item fails the instance");
    let f = err.failure().context("a failure of the instance")?;
    assert!(f.is_dead_lettered(), "{f}");
    assert!(f.message().contains("could not be read"), "{f}");
    assert_eq!(h.status().await?, Status::Failed);
    wait_for(Duration::from_secs(10), || async {
        Ok(!t.dead_letters().await?.is_empty())
    })
    .await?;
    let letters = t.dead_letters().await?;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let d = &letters[0];
    assert_eq!(d.body, b"garbage");
    assert_eq!(
        d.queue.as_deref(),
        Some(format!("{}.mbox.{id}", b.prefix()).as_str())
    );
    assert_eq!(d.instance.as_deref(), Some(id.as_str()));
    let reason = d.reason.as_deref().context("a reason")?;
    assert!(!reason.is_empty());
    // The instance next to it still waits, and takes its event.
    assert_eq!(other.status().await?, Status::Suspended);
    c.signal(other.id(), "data", "hello").await?;
    assert_eq!(other.result().await?, "hello");
    assert!(w.running());
    w.stop().await?;
    drop(t);
    b.cleanup().await
}

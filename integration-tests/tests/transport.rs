//! The transport contract on its own, without workers: mailboxes, doorbells, message
//! properties and errors.

use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use dtasks::transport::{Delivery, DeliveryKind, Destination, Outgoing, Published, Transport};
use dtasks::InstanceId;
use dtasks_amqp::AmqpTransport;
use dtasks_integration_tests::{wait_for, Broker};
use futures::stream::BoxStream;
use futures::StreamExt;
use lapin::types::AMQPValue;

fn out(destination: Destination, body: &[u8], id: &str, instance: &InstanceId) -> Outgoing {
    Outgoing {
        destination,
        body: body.to_vec(),
        message_id: id.to_string(),
        instance: instance.clone(),
        dtask: "probe".to_string(),
        trace: None,
    }
}

async fn next(
    s: &mut BoxStream<'static, Result<Delivery, dtasks::Error>>,
) -> anyhow::Result<Delivery> {
    Ok(tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .context("no delivery within 10 s")?
        .context("the stream ended")??)
}

/// A broker, a transport consuming the doorbells (and the `probe` task queue), and the
/// mailbox of one new instance: what the mailbox tests start from.
struct Mailbox {
    b: Broker,
    t: AmqpTransport,
    deliveries: BoxStream<'static, Result<Delivery, dtasks::Error>>,
    id: InstanceId,
    mailbox: Destination,
}

impl Mailbox {
    async fn start() -> anyhow::Result<Self> {
        let b = Broker::start().await?;
        let t = b.transport().await?;
        let deliveries = t.consume(vec!["probe".to_string()]).await?;
        let id = InstanceId::random();
        let mailbox = Destination::Mailbox {
            instance: id.clone(),
        };
        Ok(Self {
            b,
            t,
            deliveries,
            id,
            mailbox,
        })
    }
}

/// The tag of a doorbell delivery, which its drain names.
/// Nothing more comes on `deliveries` within 2 s, and each of `queues` empties (a queue
/// not made yet counts as empty).
async fn nothing_left(
    b: &Broker,
    deliveries: &mut BoxStream<'static, Result<Delivery, dtasks::Error>>,
    queues: &[String],
) -> anyhow::Result<()> {
    let extra = tokio::time::timeout(Duration::from_secs(2), deliveries.next()).await;
    anyhow::ensure!(extra.is_err(), "a delivery after every message was settled");
    for queue in queues {
        wait_for(Duration::from_secs(10), || async {
            Ok(b.queue_len(queue).await?.unwrap_or(0) == 0)
        })
        .await
        .with_context(|| format!("{queue} still holds messages"))?;
    }
    Ok(())
}

fn tag_of(d: &Delivery) -> anyhow::Result<u64> {
    match &d.kind {
        DeliveryKind::Doorbell { tag, .. } => Ok(*tag),
        other => anyhow::bail!("not a doorbell: {other:?}"),
    }
}

fn is_doorbell_of(d: &Delivery, id: &InstanceId) -> bool {
    matches!(&d.kind, DeliveryKind::Doorbell { instance, .. } if instance == id)
}

fn header<'a>(d: &'a lapin::message::Delivery, key: &str) -> Option<&'a AMQPValue> {
    d.properties.headers().as_ref()?.inner().get(key)
}

fn long_string(v: Option<&AMQPValue>) -> Option<String> {
    match v? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailbox_messages_ring_a_doorbell_and_drain_in_order() -> anyhow::Result<()> {
    let Mailbox {
        b,
        t,
        mut deliveries,
        id,
        mailbox,
    } = Mailbox::start().await?;
    // A batch: three mailbox messages and one task message, one doorbell.
    let batch = vec![
        out(mailbox.clone(), b"m1", "m1", &id),
        out(
            Destination::Task {
                name: "probe".into(),
            },
            b"task",
            "t1",
            &id,
        ),
        out(mailbox.clone(), b"m2", "m2", &id),
        out(mailbox.clone(), b"m3", "m3", &id),
    ];
    let report = t.publish(batch).await?;
    assert_eq!(report, vec![Published::Stored; 4]);
    let mut doorbell = None;
    let mut task = None;
    while doorbell.is_none() || task.is_none() {
        let d = next(&mut deliveries).await?;
        match &d.kind {
            DeliveryKind::Doorbell { instance, .. } => {
                assert_eq!(instance, &id);
                assert!(doorbell.is_none(), "two doorbells for one batch");
                doorbell = Some(d);
            }
            DeliveryKind::Task {
                body, message_id, ..
            } => {
                assert_eq!(body, b"task");
                assert_eq!(message_id.as_deref(), Some("t1"));
                task = Some(d);
            }
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }
    task.context("task")?.settle.ack().await?;
    let bell = tag_of(doorbell.as_ref().context("doorbell")?)?;
    let items = t.drain_for_doorbell(&id, bell).await?;
    let bodies: Vec<&[u8]> = items.iter().map(|m| m.body.as_slice()).collect();
    assert_eq!(bodies, vec![&b"m1"[..], b"m2", b"m3"]);
    // Settle: keep the second, remove the others.
    let mut items = items.into_iter();
    let (m1, m2, m3) = (
        items.next().context("m1")?,
        items.next().context("m2")?,
        items.next().context("m3")?,
    );
    m1.settle.ack().await?;
    m2.settle.requeue().await?;
    m3.settle.ack().await?;
    doorbell.context("doorbell")?.settle.ack().await?;
    let again = t.drain_mailbox(&id).await?;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].body, b"m2");
    // Dropped unsettled: back in the mailbox.
    drop(again);
    let queue = format!("{}.mbox.{id}", b.prefix());
    wait_for(Duration::from_secs(5), || async {
        Ok(b.queue_len(&queue).await? == Some(1))
    })
    .await?;
    // A mailbox that does not exist is empty, and draining it breaks nothing.
    let nobody = InstanceId::random();
    assert!(t.drain_mailbox(&nobody).await?.is_empty());
    t.publish(vec![out(mailbox, b"m4", "m4", &id)]).await?;
    let d = next(&mut deliveries).await?;
    assert!(is_doorbell_of(&d, &id));
    let items = t.drain_for_doorbell(&id, tag_of(&d)?).await?;
    assert_eq!(items.len(), 2);
    for m in items {
        m.settle.ack().await?;
    }
    d.settle.ack().await?;
    drop(deliveries);
    b.cleanup().await
}

/// A doorbell announces the messages of its batch. When this process has drained and acked
/// every one of them, the doorbell is spent: acked without a delivery. A doorbell with a
/// message still to merge (put back) is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_doorbell_whose_messages_were_all_merged_is_spent() -> anyhow::Result<()> {
    let Mailbox {
        b,
        t,
        mut deliveries,
        id,
        mailbox,
    } = Mailbox::start().await?;
    let doorbell = |d: &Delivery| is_doorbell_of(d, &id);
    // Two batches, two doorbells: [e1], then [e2, e3].
    t.publish(vec![out(mailbox.clone(), b"e1", "e1", &id)])
        .await?;
    t.publish(vec![
        out(mailbox.clone(), b"e2", "e2", &id),
        out(mailbox.clone(), b"e3", "e3", &id),
    ])
    .await?;
    // The first doorbell's drain takes all three; e3 goes back.
    let first = next(&mut deliveries).await?;
    assert!(doorbell(&first));
    let mut items = t
        .drain_for_doorbell(&id, tag_of(&first)?)
        .await?
        .into_iter();
    let bodies = [b"e1".as_slice(), b"e2", b"e3"];
    for (want, ack) in bodies.iter().zip([true, true, false]) {
        let m = items.next().context("a drained message")?;
        assert_eq!(&m.body, want);
        if ack {
            m.settle.ack().await?;
        } else {
            m.settle.requeue().await?;
        }
    }
    first.settle.ack().await?;
    // e2 was merged, e3 was not: the second doorbell is delivered.
    let second = next(&mut deliveries).await?;
    assert!(doorbell(&second));
    assert_eq!(t.spent_doorbells(), 0);
    let items = t.drain_for_doorbell(&id, tag_of(&second)?).await?;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].body, b"e3");
    for m in items {
        m.settle.ack().await?;
    }
    second.settle.ack().await?;
    // [e4], then [e5]: the drain on e4's doorbell takes both, so e5's is spent.
    t.publish(vec![out(mailbox.clone(), b"e4", "e4", &id)])
        .await?;
    t.publish(vec![out(mailbox.clone(), b"e5", "e5", &id)])
        .await?;
    let third = next(&mut deliveries).await?;
    assert!(doorbell(&third));
    let items = t.drain_for_doorbell(&id, tag_of(&third)?).await?;
    assert_eq!(items.len(), 2);
    for m in items {
        m.settle.ack().await?;
    }
    third.settle.ack().await?;
    wait_for(Duration::from_secs(5), || async {
        Ok(t.spent_doorbells() == 1)
    })
    .await?;
    let more = tokio::time::timeout(Duration::from_millis(500), deliveries.next()).await;
    assert!(more.is_err(), "a spent doorbell was delivered");
    // It was acked, not left in its shard.
    let shards: Vec<String> = t
        .declared_queues()
        .into_iter()
        .filter(|q| q.contains(".shard."))
        .collect();
    assert!(
        !shards.is_empty(),
        "the shards are among the declared queues"
    );
    for q in shards {
        assert_eq!(b.queue_len(&q).await?, Some(0), "{q}");
    }
    drop(deliveries);
    b.cleanup().await
}

/// A doorbell for a batch of many messages to one mailbox does not list them (headers stay
/// small), so it is never spent: it is delivered even when its messages were merged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_doorbell_of_a_long_batch_is_never_spent() -> anyhow::Result<()> {
    let Mailbox {
        b,
        t,
        mut deliveries,
        id,
        mailbox,
    } = Mailbox::start().await?;
    t.publish(vec![out(mailbox.clone(), b"a", "a", &id)])
        .await?;
    // 300 ids of 20 bytes and more: past the 4 KiB a doorbell lists.
    let long: Vec<Outgoing> = (0..300)
        .map(|i| {
            out(
                mailbox.clone(),
                b"b",
                &format!("a-long-message-id-{i:04}"),
                &id,
            )
        })
        .collect();
    t.publish(long).await?;
    let first = next(&mut deliveries).await?;
    assert!(is_doorbell_of(&first, &id));
    let items = t.drain_for_doorbell(&id, tag_of(&first)?).await?;
    assert_eq!(items.len(), 301);
    for m in items {
        m.settle.ack().await?;
    }
    first.settle.ack().await?;
    let second = next(&mut deliveries).await?;
    assert!(is_doorbell_of(&second, &id));
    assert_eq!(t.spent_doorbells(), 0);
    assert!(t
        .drain_for_doorbell(&id, tag_of(&second)?)
        .await?
        .is_empty());
    second.settle.ack().await?;
    drop(deliveries);
    b.cleanup().await
}

/// Publishes that write to one mailbox at once share doorbells: each returns only once a
/// doorbell naming its message is confirmed, and every doorbell names only messages
/// already in the mailbox (once they are merged, every doorbell left is spent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_to_one_mailbox_at_once_share_doorbells() -> anyhow::Result<()> {
    let Mailbox {
        b,
        t,
        mut deliveries,
        id,
        mailbox,
    } = Mailbox::start().await?;
    const N: usize = 200;
    let publishes = (0..N).map(|i| {
        let t = t.clone();
        let m = out(mailbox.clone(), b"m", &format!("m{i}"), &id);
        async move { t.publish(vec![m]).await }
    });
    for report in futures::future::join_all(publishes).await {
        assert_eq!(report?, vec![Published::Stored]);
    }
    let first = next(&mut deliveries).await?;
    assert!(is_doorbell_of(&first, &id));
    // Every publish returned: all of their messages are in the mailbox.
    let items = t.drain_for_doorbell(&id, tag_of(&first)?).await?;
    assert_eq!(items.len(), N);
    for m in items {
        m.settle.ack().await?;
    }
    first.settle.ack().await?;
    // The other doorbells name only messages merged now: each is spent, none delivered.
    let late = tokio::time::timeout(Duration::from_secs(2), deliveries.next()).await;
    assert!(
        late.is_err(),
        "a doorbell was delivered after its messages were merged"
    );
    let doorbells = 1 + t.spent_doorbells() as usize;
    assert!(
        doorbells <= N / 2,
        "{doorbells} doorbells for {N} publishes at once: they were not shared"
    );
    drop(deliveries);
    b.cleanup().await
}

/// Messages that reach one mailbox while an earlier write to it is on its way go as one
/// pack: fewer messages in the queue than were published, and a drain hands out every one
/// of them, with its trace context. Each part settles on its own: the merged ones are gone,
/// the one put back is in the mailbox again (alone), the one dead-lettered is a letter of
/// its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_to_one_mailbox_at_once_go_in_packs_and_settle_one_by_one() -> anyhow::Result<()> {
    let Mailbox {
        b,
        t,
        mut deliveries,
        id,
        mailbox,
    } = Mailbox::start().await?;
    const N: usize = 100;
    let trace = |i: usize| {
        dtasks::trace::TraceContext::new(format!("00-{:032x}-{:016x}-01", i + 1, i + 1), "")
    };
    let publishes = (0..N).map(|i| {
        let t = t.clone();
        let mut m = out(
            mailbox.clone(),
            format!("body {i}").as_bytes(),
            &format!("m{i}"),
            &id,
        );
        m.trace = trace(i);
        async move { t.publish(vec![m]).await }
    });
    for report in futures::future::join_all(publishes).await {
        assert_eq!(report?, vec![Published::Stored]);
    }
    assert!(t.packed_messages() > 0, "no message went in a pack");
    let queue = format!("{}.mbox.{id}", b.prefix());
    let in_queue = b.queue_len(&queue).await?.context("the mailbox")? as usize;
    assert!(
        in_queue < N,
        "{in_queue} queue messages for {N} mailbox messages"
    );
    let first = next(&mut deliveries).await?;
    let items = t.drain_for_doorbell(&id, tag_of(&first)?).await?;
    assert_eq!(items.len(), N);
    let mut seen: Vec<usize> = Vec::new();
    let mut items_by_index = Vec::new();
    for m in items {
        let text = String::from_utf8(m.body.clone())?;
        let i: usize = text.strip_prefix("body ").context("a body")?.parse()?;
        assert_eq!(m.trace, trace(i), "the trace of message {i}");
        seen.push(i);
        items_by_index.push((i, m));
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..N).collect::<Vec<_>>());
    // Settle: 7 put back, 1 dead-lettered, the others merged.
    let mut back = Vec::new();
    for (i, m) in items_by_index {
        match i {
            13 => m.settle.dead_letter("unreadable".into()).await?,
            i if i % 13 == 0 => {
                back.push(i);
                m.settle.requeue().await?
            }
            _ => m.settle.ack().await?,
        }
    }
    first.settle.ack().await?;
    let dead = format!("{}.dead", b.prefix());
    wait_for(Duration::from_secs(5), || async {
        Ok(b.queue_len(&dead).await? == Some(1))
    })
    .await?;
    let again = t.drain_mailbox(&id).await?;
    let mut left: Vec<usize> = again
        .iter()
        .map(|m| {
            let text = String::from_utf8_lossy(&m.body).into_owned();
            text.trim_start_matches("body ")
                .parse()
                .unwrap_or(usize::MAX)
        })
        .collect();
    left.sort_unstable();
    back.sort_unstable();
    assert_eq!(left, back, "the messages put back");
    for m in again {
        m.settle.ack().await?;
    }
    let letters = t.dead_letters().await?;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].body, b"body 13");
    assert_eq!(letters[0].message_id.as_deref(), Some("m13"));
    assert_eq!(letters[0].reason.as_deref(), Some("unreadable"));
    assert_eq!(letters[0].queue.as_deref(), Some(queue.as_str()));
    drop(deliveries);
    b.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doorbells_of_one_instance_are_never_outstanding_twice() -> anyhow::Result<()> {
    let Mailbox {
        b,
        t,
        mut deliveries,
        id,
        mailbox,
    } = Mailbox::start().await?;
    for i in 0..3 {
        t.publish(vec![out(mailbox.clone(), b"m", &format!("m{i}"), &id)])
            .await?;
    }
    let first = next(&mut deliveries).await?;
    // The next doorbell of the same shard waits until the first is settled.
    let early = tokio::time::timeout(Duration::from_millis(500), deliveries.next()).await;
    assert!(
        early.is_err(),
        "a second doorbell came while the first was out"
    );
    first.settle.ack().await?;
    let second = next(&mut deliveries).await?;
    assert!(is_doorbell_of(&second, &id));
    // Requeued, it comes back, after the pause for redelivered doorbells (the quorum
    // queue may hand out the remaining fresh doorbell first).
    let requeued = std::time::Instant::now();
    second.settle.requeue().await?;
    let mut redelivered_after = None;
    for _ in 0..2 {
        let d = next(&mut deliveries).await?;
        assert!(is_doorbell_of(&d, &id));
        if d.redeliveries > 0 {
            redelivered_after = Some(requeued.elapsed());
        }
        d.settle.ack().await?;
    }
    let after = redelivered_after.context("the requeued doorbell did not come back")?;
    assert!(
        after >= Duration::from_millis(450),
        "handed out after {after:?}"
    );
    for m in t.drain_mailbox(&id).await? {
        m.settle.ack().await?;
    }
    drop(deliveries);
    b.cleanup().await
}

/// A drain follows the doorbell delivery it serves. The consumer's connection is cut while
/// it holds a doorbell: the broker puts the doorbell back and hands it to this same
/// process again, on its new channel. A merge still running under the first delivery (a
/// stale one) must not drain: it takes nothing and fails, where draining on a channel of
/// its own would have split the mailbox with the merge under the new delivery, which
/// drains everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_under_a_doorbell_whose_channel_closed_takes_nothing() -> anyhow::Result<()> {
    let Mailbox {
        b,
        t,
        mut deliveries,
        id,
        mailbox,
    } = Mailbox::start().await?;
    t.publish(vec![out(mailbox.clone(), b"m1", "m1", &id)])
        .await?;
    let first = next(&mut deliveries).await?;
    assert!(is_doorbell_of(&first, &id));
    let stale = tag_of(&first)?;
    let cut = b.cut_connections().await?;
    assert!(cut >= 2, "{cut} connections cut");
    // The doorbell comes again, to this process (the only consumer), after it reconnected.
    let again = loop {
        let d = tokio::time::timeout(Duration::from_secs(30), deliveries.next())
            .await
            .context("the doorbell did not come again within 30 s")?
            .context("the stream ended")?;
        match d {
            Ok(d) if is_doorbell_of(&d, &id) => break d,
            Ok(d) => anyhow::bail!("unexpected {:?}", d.kind),
            // The consumer reconnecting.
            Err(_) => continue,
        }
    };
    assert!(again.redeliveries > 0, "not the redelivered doorbell");
    let fresh = tag_of(&again)?;
    assert_ne!(fresh, stale);
    // The stale merge's drain: refused, nothing taken.
    let refused = t.drain_for_doorbell(&id, stale).await;
    assert!(
        refused.is_err(),
        "a drain under a closed channel took messages"
    );
    let queue = format!("{}.mbox.{id}", b.prefix());
    assert_eq!(b.queue_len(&queue).await?, Some(1));
    // The fresh delivery drains the mailbox whole.
    let items = t.drain_for_doorbell(&id, fresh).await?;
    let bodies: Vec<&[u8]> = items.iter().map(|m| m.body.as_slice()).collect();
    assert_eq!(bodies, vec![&b"m1"[..]]);
    for m in items {
        m.settle.ack().await?;
    }
    again.settle.ack().await?;
    // The first delivery's settle goes to its closed channel: harmless.
    let _ = first.settle.ack().await;
    wait_for(Duration::from_secs(5), || async {
        Ok(b.queue_len(&queue).await? == Some(0))
    })
    .await?;
    drop(deliveries);
    b.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_persistent_and_carry_their_headers() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    // Each message alone (a pack's own properties are looked at in the packs' test).
    let t = b.transport_with(|c| c.with_task_packs(1)).await?;
    let id = InstanceId::random();
    let task = Destination::Task {
        name: "inspect".into(),
    };
    let long_id = "x".repeat(300);
    t.publish(vec![
        out(task.clone(), b"a", "id-a", &id),
        out(task.clone(), b"b", &long_id, &id),
        // Due already: straight to the wake queue.
        out(
            Destination::Delayed {
                name: "inspect".into(),
                at: SystemTime::now() - Duration::from_secs(1),
            },
            b"c",
            "id-c",
            &id,
        ),
    ])
    .await?;
    let mut got = b.take_all(&format!("{}.task.inspect", b.prefix())).await?;
    assert_eq!(got.len(), 2);
    let woken = b.take_all(&format!("{}.wake.inspect", b.prefix())).await?;
    assert_eq!(woken.len(), 1);
    assert_eq!(woken[0].data, b"c");
    got.extend(woken);
    for d in &got {
        assert_eq!(*d.properties.delivery_mode(), Some(2), "not persistent");
        assert_eq!(
            long_string(header(d, "x-dtasks-instance")).as_deref(),
            Some(id.as_str())
        );
        assert_eq!(
            long_string(header(d, "x-dtasks-dtask")).as_deref(),
            Some("probe")
        );
        assert!(matches!(
            header(d, "x-dtasks-envelope"),
            Some(AMQPValue::ShortShortUInt(v)) if *v == dtasks::ENVELOPE_VERSION
        ));
    }
    assert_eq!(
        got[0].properties.message_id().as_ref().map(|s| s.as_str()),
        Some("id-a")
    );
    // Too long for the property: carried in a header, and read back from it.
    assert_eq!(
        long_string(header(&got[1], "x-dtasks-message-id")),
        Some(long_id.clone())
    );
    assert!(header(&got[2], "x-dtasks-at").is_some());
    t.publish(vec![out(task, b"b", &long_id, &id)]).await?;
    let mut deliveries = t.consume(vec!["inspect".to_string()]).await?;
    let d = next(&mut deliveries).await?;
    assert!(
        matches!(&d.kind, DeliveryKind::Task { message_id: Some(m), .. } if *m == long_id),
        "{d:?}"
    );
    d.settle.ack().await?;
    drop(deliveries);
    b.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_requeues_and_redelivery_counts() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let t = b.transport().await?;
    let mut deliveries = t.consume(vec!["probe".to_string()]).await?;
    let id = InstanceId::random();
    let task = Destination::Task {
        name: "probe".into(),
    };
    t.publish(vec![out(task, b"bad", "bad-1", &id)]).await?;
    let d = next(&mut deliveries).await?;
    assert_eq!(d.redeliveries, 0);
    d.settle.requeue().await?;
    let d = next(&mut deliveries).await?;
    assert_eq!(d.redeliveries, 1);
    // Dropped unsettled: delivered again.
    drop(d);
    let d = next(&mut deliveries).await?;
    assert_eq!(d.redeliveries, 2);
    d.settle.dead_letter("it is bad".into()).await?;
    let dead = format!("{}.dead", b.prefix());
    wait_for(Duration::from_secs(5), || async {
        Ok(b.queue_len(&dead).await? == Some(1))
    })
    .await?;
    let got = b.take_all(&dead).await?;
    assert_eq!(got[0].data, b"bad");
    assert_eq!(
        long_string(header(&got[0], "x-dtasks-reason")).as_deref(),
        Some("it is bad")
    );
    assert_eq!(
        long_string(header(&got[0], "x-dtasks-queue")),
        Some(format!("{}.task.probe", b.prefix()))
    );
    assert_eq!(
        b.queue_len(&format!("{}.task.probe", b.prefix())).await?,
        Some(0)
    );
    drop(deliveries);
    b.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_queue_is_declared_again_and_bad_names_are_errors() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let t = b.transport().await?;
    let id = InstanceId::random();
    let task = Destination::Task {
        name: "gone".into(),
    };
    t.publish(vec![out(task.clone(), b"1", "1", &id)]).await?;
    let queue = format!("{}.task.gone", b.prefix());
    b.channel()
        .await?
        .queue_delete(queue.as_str().into(), Default::default())
        .await?;
    // The transport still believes the queue exists: the broker returns the message,
    // and the transport declares the queue again and republishes.
    t.publish(vec![out(task, b"2", "2", &id)]).await?;
    assert_eq!(b.queue_len(&queue).await?, Some(1));
    let too_long = Destination::Task {
        name: "n".repeat(300),
    };
    let err = t
        .publish(vec![out(too_long, b"x", "x", &id)])
        .await
        .unwrap_err();
    // The caller's name is at fault, not the broker: retrying cannot help.
    assert!(err.is_bad_input(), "{err}");
    assert!(err.to_string().contains("255"), "{err}");
    b.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_only_an_existing_deployment_refuses_a_prefix_that_has_none() -> anyhow::Result<()>
{
    let b = Broker::start().await?;
    // The test's corner exists once a transport connected the usual way.
    let _first = b.transport().await?;
    let joined =
        dtasks_amqp::AmqpTransport::connect(b.config().with_existing_deployment(true)).await?;
    assert_eq!(joined.prefix(), b.prefix());
    let typo = format!("{}x", b.prefix());
    let err = dtasks_amqp::AmqpTransport::connect(
        b.config()
            .with_prefix(typo.clone())
            .with_existing_deployment(true),
    )
    .await
    .unwrap_err();
    assert!(err.is_bad_input(), "{err}");
    assert!(err.to_string().contains(&typo), "{err}");
    assert_eq!(
        dtasks_integration_tests::listed_queues(&typo).await,
        Some(Vec::new()),
        "nothing declared under the refused prefix"
    );
    b.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_is_an_error() -> anyhow::Result<()> {
    let cfg = dtasks_amqp::AmqpConfig::new("amqp://guest:guest@127.0.0.1:1/%2f");
    let started = std::time::Instant::now();
    let err = dtasks_amqp::AmqpTransport::connect(cfg).await.unwrap_err();
    assert!(err.is_transport(), "{err}");
    assert!(started.elapsed() < Duration::from_secs(15));
    let err = dtasks_amqp::AmqpTransport::connect(
        dtasks_amqp::AmqpConfig::new("amqp://guest:guest@127.0.0.1:1/%2f")
            .with_prefix("bad prefix"),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("prefix"), "{err}");
    assert!(err.is_bad_input(), "{err}");
    let err = dtasks_amqp::AmqpTransport::connect(dtasks_amqp::AmqpConfig::new("not-a-url"))
        .await
        .unwrap_err();
    assert!(err.is_bad_input(), "{err}");
    assert!(err.to_string().contains("not an AMQP URL"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trace_context_travels_as_headers_through_queues_timers_and_mailboxes(
) -> anyhow::Result<()> {
    let Mailbox {
        b,
        t,
        mut deliveries,
        id,
        mailbox,
    } = Mailbox::start().await?;
    let ctx = |span: &str| {
        dtasks::trace::TraceContext::new(
            format!("00-0af7651916cd43dd8448eb211c80319c-{span}-01"),
            "vendor=1",
        )
    };
    let traced = |destination: Destination, body: &[u8], mid: &str, span: &str| Outgoing {
        trace: ctx(span),
        ..out(destination, body, mid, &id)
    };
    let task = Destination::Task {
        name: "probe".into(),
    };
    let timer = Destination::Delayed {
        name: "probe".into(),
        at: SystemTime::now() + Duration::from_millis(300),
    };
    let batch = vec![
        traced(task, b"now", "tr-now", "b7ad6b7169203331"),
        traced(timer, b"later", "tr-later", "00f067aa0ba902b7"),
        traced(mailbox, b"mail", "tr-mail", "53995c3f42cd8ad8"),
    ];
    t.publish(batch).await?;
    let mut tasks = Vec::new();
    let mut doorbell = None;
    while tasks.len() < 2 || doorbell.is_none() {
        let d = next(&mut deliveries).await?;
        match &d.kind {
            DeliveryKind::Task { body, trace, .. } => {
                tasks.push((body.clone(), trace.clone()));
                d.settle.ack().await?;
            }
            DeliveryKind::Doorbell { .. } => doorbell = Some(d),
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }
    tasks.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        tasks,
        vec![
            (b"later".to_vec(), ctx("00f067aa0ba902b7")),
            (b"now".to_vec(), ctx("b7ad6b7169203331")),
        ],
        "a task message and a timer keep their trace context"
    );
    let bell = tag_of(doorbell.as_ref().context("doorbell")?)?;
    let items = t.drain_for_doorbell(&id, bell).await?;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].trace, ctx("53995c3f42cd8ad8"));
    assert_eq!(
        items[0].trace.as_ref().and_then(|c| c.tracestate()),
        Some("vendor=1")
    );
    for m in items {
        m.settle.ack().await?;
    }
    doorbell.context("doorbell")?.settle.ack().await?;
    drop(deliveries);
    b.cleanup().await
}

/// Claims the broker refuses close their channel on purpose; publishes waiting for their
/// confirms meanwhile are on channels of their own, so none of them fails or goes twice:
/// every publish returns `Ok` and the queue holds each message once. With claims on the
/// publish channels, a publish failed with the claim's PRECONDITION_FAILED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_claims_meanwhile_never_make_a_publish_go_twice() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    // One publish channel: every batch shares it while it waits for its confirms. Each
    // task message alone (no task packs), so that every publish is a batch of its own.
    let t = b
        .transport_with(|c| c.with_publish_channels(1).with_task_packs(1))
        .await?;
    let store = t.store().context("the transport has a store")?;
    let held = InstanceId::random();
    assert!(store.claim(&held, 1).await?, "the first claim takes the id");
    let id = InstanceId::random();
    let task = Destination::Task {
        name: "claims".into(),
    };
    const PUBLISHES: usize = 400;
    const CLAIMS: u64 = 100;
    let publishes = futures::stream::iter(0..PUBLISHES)
        .map(|i| {
            let t = t.clone();
            let o = out(task.clone(), &i.to_be_bytes(), &format!("m-{i}"), &id);
            async move { t.publish(vec![o]).await }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>();
    let claims = futures::stream::iter(2..2 + CLAIMS)
        .map(|nonce| {
            let store = store.clone();
            let held = held.clone();
            async move { store.claim(&held, nonce).await }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>();
    let (published, claimed) = tokio::join!(publishes, claims);
    for p in published {
        p?;
    }
    for c in claimed {
        assert!(!c?, "a second claim of a held id was taken");
    }
    let queue = format!("{}.task.claims", b.prefix());
    let got = b.take_all(&queue).await?;
    let mut seen: Vec<usize> = got
        .iter()
        .map(|d| {
            let bytes: [u8; 8] = d.data.as_slice().try_into().expect("8 bytes");
            usize::from_be_bytes(bytes)
        })
        .collect();
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..PUBLISHES).collect::<Vec<_>>(),
        "each message once: a publish failed by a closed channel goes again"
    );
    b.cleanup().await
}

/// Task deliveries settled many at once and out of order, some put back (a worker's acks
/// on one channel go together, as `multiple` acks where they can): every message is
/// acked once, each one put back comes back once, and nothing else comes twice (an ack
/// covering a delivery still in hand would lose a message put back later; an ack of a
/// tag already covered would close the channel and bring every unsettled one back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_deliveries_settled_at_once_and_out_of_order_settle_each_once() -> anyhow::Result<()> {
    const MESSAGES: usize = 600;
    let b = Broker::start().await?;
    // Each message alone (no task packs): the acks of single deliveries coalesce.
    let t = b
        .transport_with(|c| c.with_prefetch(200).with_task_packs(1))
        .await?;
    let id = InstanceId::random();
    let batch = (0..MESSAGES)
        .map(|i| {
            let name = format!("m{i}");
            let task = Destination::Task {
                name: "probe".into(),
            };
            out(task, name.as_bytes(), &name, &id)
        })
        .collect();
    t.publish(batch).await?;
    let mut deliveries = t.consume(vec!["probe".to_string()]).await?;
    let put_back = |i: usize| i % 7 == 3;
    let mut seen = vec![0u32; MESSAGES];
    let mut acked = 0;
    while acked < MESSAGES {
        // A wave: what comes within a moment, up to 150.
        let mut wave = vec![next(&mut deliveries).await?];
        while wave.len() < 150 {
            match tokio::time::timeout(Duration::from_millis(200), deliveries.next()).await {
                Ok(Some(d)) => wave.push(d?),
                _ => break,
            }
        }
        // Settled in an order of their own: the odd positions first, from the back.
        let n = wave.len();
        let order: Vec<usize> = (0..n)
            .rev()
            .filter(|p| p % 2 == 1)
            .chain((0..n).filter(|p| p % 2 == 0))
            .collect();
        let mut slots: Vec<Option<Delivery>> = wave.into_iter().map(Some).collect();
        let mut settles = Vec::with_capacity(n);
        for p in order {
            let d = slots[p].take().context("a delivery settled twice")?;
            let DeliveryKind::Task { message_id, .. } = &d.kind else {
                anyhow::bail!("not a task delivery: {:?}", d.kind);
            };
            let i: usize = message_id
                .as_deref()
                .context("a task delivery without its message id")?
                .trim_start_matches('m')
                .parse()?;
            seen[i] += 1;
            let first = seen[i] == 1;
            if put_back(i) && first {
                settles.push(d.settle.requeue());
            } else {
                acked += 1;
                settles.push(d.settle.ack());
            }
        }
        for r in futures::future::join_all(settles).await {
            r?;
        }
    }
    for (i, n) in seen.iter().enumerate() {
        let want = if put_back(i) { 2 } else { 1 };
        assert_eq!(*n, want, "message m{i} came {n} times");
    }
    // Nothing comes again, and nothing is left.
    nothing_left(&b, &mut deliveries, &[t.task_queue("probe")]).await?;
    drop(deliveries);
    b.cleanup().await
}

/// A cancel record is followed by nudges of the cancel records' stream: markers nobody
/// waits for, which make a worker's follower that missed the record's commit (a stream
/// consumer on a replica, on RabbitMQ before 4.0) read it. Each record's publish writes
/// one at once; the records published before a later sequence's first nudge share its
/// two nudges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_records_are_followed_by_nudges_of_their_stream() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let t = b.transport().await?;
    let stream = format!("{}.cancels", b.prefix());
    let first = InstanceId::random();
    let second = InstanceId::random();
    let cancel = |id: &InstanceId| Destination::Cancel {
        instance: id.clone(),
    };
    t.publish(vec![out(cancel(&first), b"first", "cancel-1", &first)])
        .await?;
    t.publish(vec![out(cancel(&second), b"second", "cancel-2", &second)])
        .await?;
    let is_nudge = |d: &lapin::message::Delivery| {
        long_string(header(d, "x-dtasks-marker")).is_some_and(|m| m.starts_with("nudge-"))
    };
    // The marker of the check a process makes before it first writes to a stream.
    let is_check = |d: &lapin::message::Delivery| {
        long_string(header(d, "x-dtasks-marker")).is_some_and(|m| m.starts_with("ready-"))
    };
    // One at once after each record, then the sequence's two, 1 s and 4 s after the
    // first record.
    wait_for(Duration::from_secs(10), || async {
        let got = b.stream_messages(&stream).await?;
        Ok(got.iter().filter(|d| is_nudge(d)).count() >= 4)
    })
    .await?;
    // And no more: the second record did not start a sequence of its own.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got = b.stream_messages(&stream).await?;
    let kinds: Vec<String> = got
        .iter()
        .map(|d| {
            if is_nudge(d) {
                "nudge".to_string()
            } else if is_check(d) {
                "check".to_string()
            } else {
                String::from_utf8_lossy(&d.data).into_owned()
            }
        })
        .collect();
    assert_eq!(
        kinds,
        ["check", "first", "nudge", "second", "nudge", "nudge", "nudge"]
    );
    b.cleanup().await
}

/// The id of a task delivery's message.
fn task_id(d: &Delivery) -> anyhow::Result<String> {
    let DeliveryKind::Task { message_id, .. } = &d.kind else {
        anyhow::bail!("not a task delivery: {:?}", d.kind);
    };
    message_id
        .clone()
        .context("a task delivery without its message id")
}

/// The task messages of one publish that go to one task queue travel in packs of up to
/// `with_task_packs` messages, in a queue of their own; each message of a pack comes as a
/// delivery of its own, with its id, body and trace context, and settles on its own: the
/// ones put back come again alone from the task queue, the one dead-lettered is in the
/// dead letters as if it had come alone, and nothing is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_messages_of_one_publish_go_in_packs_and_settle_one_by_one() -> anyhow::Result<()> {
    const MESSAGES: usize = 40;
    let b = Broker::start().await?;
    let t = b.transport().await?;
    let task = || Destination::Task {
        name: "probe".into(),
    };
    let parent = InstanceId::random();
    let trace = dtasks::trace::TraceContext::new(
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_string(),
        String::new(),
    );
    let mut batch: Vec<Outgoing> = (0..MESSAGES)
        .map(|i| {
            let child = parent.child(i as u32);
            let mut o = out(
                task(),
                format!("body {i}").as_bytes(),
                &format!("c{i}"),
                &child,
            );
            o.trace = trace.clone();
            o
        })
        .collect();
    // A message for another DTask goes alone, wherever it is in the batch.
    batch.insert(
        5,
        out(
            Destination::Task {
                name: "other".into(),
            },
            b"alone",
            "other-1",
            &parent,
        ),
    );
    let published = t.publish(batch).await?;
    assert_eq!(published.len(), MESSAGES + 1);
    assert!(published.iter().all(|p| *p == Published::Stored));
    assert_eq!(t.packed_task_messages(), MESSAGES as u64);
    let packs = format!("{}.packs.probe", b.prefix());
    // 16 + 16 + 8 (the default, `DEFAULT_TASK_PACKS`).
    assert_eq!(dtasks_amqp::DEFAULT_TASK_PACKS, 16);
    assert_eq!(b.queue_len(&packs).await?, Some(3));
    // Nothing went to the task queue of `probe` (not even made yet).
    assert_eq!(b.queue_len(&t.task_queue("probe")).await?.unwrap_or(0), 0);
    assert_eq!(b.queue_len(&t.task_queue("other")).await?, Some(1));

    let mut deliveries = t.consume(vec!["probe".to_string()]).await?;
    let put_back = ["c3", "c17"];
    let dead = "c33";
    let mut seen = std::collections::HashMap::<String, u32>::new();
    let mut settles = Vec::new();
    for _ in 0..MESSAGES {
        let d = next(&mut deliveries).await?;
        let id = task_id(&d)?;
        let DeliveryKind::Task {
            body, trace: got, ..
        } = &d.kind
        else {
            unreachable!()
        };
        let i: usize = id.trim_start_matches('c').parse()?;
        assert_eq!(body, format!("body {i}").as_bytes(), "{id}");
        assert_eq!(got, &trace, "{id}: its trace context");
        assert_eq!(d.redeliveries, 0, "{id}");
        *seen.entry(id.clone()).or_default() += 1;
        settles.push(if put_back.contains(&id.as_str()) {
            d.settle.requeue()
        } else if id == dead {
            d.settle.dead_letter("a bad part".into())
        } else {
            d.settle.ack()
        });
    }
    for r in futures::future::join_all(settles).await {
        r?;
    }
    assert_eq!(seen.len(), MESSAGES, "every message of the packs came once");
    // The two put back come again, alone.
    let mut again = Vec::new();
    for _ in 0..put_back.len() {
        let d = next(&mut deliveries).await?;
        again.push(task_id(&d)?);
        d.settle.ack().await?;
    }
    again.sort();
    let mut want = put_back.map(String::from).to_vec();
    want.sort();
    assert_eq!(again, want);
    let dead_queue = format!("{}.dead", b.prefix());
    wait_for(Duration::from_secs(5), || async {
        Ok(b.queue_len(&dead_queue).await? == Some(1))
    })
    .await?;
    let letters = b.take_all(&dead_queue).await?;
    assert_eq!(letters[0].data, b"body 33");
    assert_eq!(
        letters[0]
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some(dead)
    );
    assert_eq!(
        long_string(header(&letters[0], "x-dtasks-queue")),
        Some(t.task_queue("probe")),
        "a part is dead-lettered as from its task queue, where a replay sends it"
    );
    assert_eq!(
        long_string(header(&letters[0], "x-dtasks-instance")),
        Some(parent.child(33).to_string())
    );
    nothing_left(&b, &mut deliveries, &[packs, t.task_queue("probe")]).await?;
    drop(deliveries);

    // A pack itself, as the broker holds it: persistent, with its count of messages.
    let peek = || Destination::Task {
        name: "peek".into(),
    };
    t.publish(vec![
        out(peek(), b"1", "p1", &parent.child(1)),
        out(peek(), b"2", "p2", &parent.child(2)),
    ])
    .await?;
    let held = b.take_all(&format!("{}.packs.peek", b.prefix())).await?;
    assert_eq!(held.len(), 1);
    assert_eq!(
        *held[0].properties.delivery_mode(),
        Some(2),
        "not persistent"
    );
    assert!(matches!(
        header(&held[0], "x-dtasks-pack"),
        Some(AMQPValue::LongLongInt(2))
    ));
    assert_eq!(
        long_string(header(&held[0], "x-dtasks-dtask")).as_deref(),
        Some("peek"),
        "the DTask whose queues carry it"
    );
    b.cleanup().await
}

/// A task pack that comes again (its consumer went away with it unsettled) is split:
/// its messages are published alone to the task queue and the pack acked, so each comes
/// once more as a fresh single message, and a worker that took part of it before is no
/// reason for any to be lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_pack_delivered_again_is_split_into_single_messages() -> anyhow::Result<()> {
    const MESSAGES: usize = 20;
    let b = Broker::start().await?;
    let publisher = b.transport().await?;
    let parent = InstanceId::random();
    let batch: Vec<Outgoing> = (0..MESSAGES)
        .map(|i| {
            let task = Destination::Task {
                name: "probe".into(),
            };
            out(task, &[i as u8], &format!("c{i}"), &parent.child(i as u32))
        })
        .collect();
    publisher.publish(batch).await?;
    assert_eq!(publisher.packed_task_messages(), MESSAGES as u64);
    let packs = format!("{}.packs.probe", b.prefix());
    assert_eq!(b.queue_len(&packs).await?, Some(2));

    // A first consumer takes some of the messages, settles none, and goes away.
    let first = b.transport().await?;
    let mut taken = first.consume(vec!["probe".to_string()]).await?;
    let held = vec![next(&mut taken).await?, next(&mut taken).await?];
    drop(taken);
    drop(held);
    first.close().await;

    // The next one gets every message once, each now a single message of the task queue.
    let second = b.transport().await?;
    let mut deliveries = second.consume(vec!["probe".to_string()]).await?;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..MESSAGES {
        let d = next(&mut deliveries).await?;
        let id = task_id(&d)?;
        let DeliveryKind::Task { body, .. } = &d.kind else {
            unreachable!()
        };
        let i: usize = id.trim_start_matches('c').parse()?;
        assert_eq!(body, &[i as u8]);
        assert_eq!(d.redeliveries, 0, "{id} came as a fresh single message");
        assert!(seen.insert(id.clone()), "{id} came twice");
        d.settle.ack().await?;
    }
    nothing_left(&b, &mut deliveries, &[packs, second.task_queue("probe")]).await?;
    drop(deliveries);
    b.cleanup().await
}

/// Publishes to one task queue at about the same time go together: while a round of the
/// queue is on its way, the messages published meanwhile wait for the next one, which
/// carries them in task packs. Every publish returns once its message is confirmed, and
/// every message comes once, as a delivery of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_to_one_task_queue_at_once_go_together_in_packs() -> anyhow::Result<()> {
    const PUBLISHES: usize = 300;
    let b = Broker::start().await?;
    let t = b.transport().await?;
    let published = futures::stream::iter(0..PUBLISHES)
        .map(|i| {
            let t = t.clone();
            let task = Destination::Task {
                name: "probe".into(),
            };
            let o = out(
                task,
                &(i as u32).to_be_bytes(),
                &format!("m{i}"),
                &InstanceId::random(),
            );
            async move { t.publish(vec![o]).await }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    for p in published {
        assert_eq!(p?, vec![Published::Stored]);
    }
    let packed = t.packed_task_messages();
    assert!(
        packed > 0 && packed <= PUBLISHES as u64,
        "{packed} of {PUBLISHES} messages published one by one went in packs"
    );
    let mut deliveries = t.consume(vec!["probe".to_string()]).await?;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..PUBLISHES {
        let d = next(&mut deliveries).await?;
        let DeliveryKind::Task { body, .. } = &d.kind else {
            anyhow::bail!("not a task delivery");
        };
        let i = u32::from_be_bytes(body.as_slice().try_into()?) as usize;
        assert_eq!(task_id(&d)?, format!("m{i}"));
        assert!(seen.insert(i), "m{i} came twice");
        d.settle.ack().await?;
    }
    let packs = format!("{}.packs.probe", b.prefix());
    nothing_left(&b, &mut deliveries, &[packs, t.task_queue("probe")]).await?;
    drop(deliveries);
    b.cleanup().await
}

/// A worker holds at most twice its task prefetch in messages of packs: the pack queues
/// are consumed with a prefetch of `2 · prefetch / task_packs` packs, so a fan-out larger
/// than that stays in the queue for other workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_holds_at_most_twice_its_prefetch_in_messages_of_packs() -> anyhow::Result<()> {
    const MESSAGES: usize = 100;
    let b = Broker::start().await?;
    // Prefetch 16, packs of 4: 8 packs, 32 messages in hand at most.
    let t = b
        .transport_with(|c| c.with_prefetch(16).with_task_packs(4))
        .await?;
    let parent = InstanceId::random();
    let batch: Vec<Outgoing> = (0..MESSAGES)
        .map(|i| {
            let task = Destination::Task {
                name: "probe".into(),
            };
            out(task, b"x", &format!("c{i}"), &parent.child(i as u32))
        })
        .collect();
    t.publish(batch).await?;
    let packs = format!("{}.packs.probe", b.prefix());
    assert_eq!(b.queue_len(&packs).await?, Some(25));
    let mut deliveries = t.consume(vec!["probe".to_string()]).await?;
    let mut held = Vec::new();
    while let Ok(Some(d)) = tokio::time::timeout(Duration::from_secs(2), deliveries.next()).await {
        held.push(d?);
    }
    assert_eq!(held.len(), 32, "messages in hand, none settled");
    assert_eq!(
        b.queue_len(&packs).await?,
        Some(17),
        "the rest waits for others"
    );
    // Settled, they make room: every message comes once.
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < MESSAGES {
        for d in held.drain(..) {
            assert!(seen.insert(task_id(&d)?), "a message came twice");
            d.settle.ack().await?;
        }
        if seen.len() < MESSAGES {
            held.push(next(&mut deliveries).await?);
        }
    }
    nothing_left(&b, &mut deliveries, &[packs, t.task_queue("probe")]).await?;
    drop(deliveries);
    b.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_says_whether_it_carries_the_recorded_result() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let t = b.transport().await?;
    let queues = t.replies().context("the transport has reply queues")?;
    let mut replies = queues.consume_replies("probe-client").await?;
    let (carried, unknown) = (InstanceId::random(), InstanceId::random());
    let reply = |recorded: bool, id: &InstanceId| {
        let to = Destination::Reply {
            client: "probe-client".into(),
            recorded,
        };
        out(to, b"result", &format!("{id}:result"), id)
    };
    t.publish(vec![reply(true, &carried), reply(false, &unknown)])
        .await?;
    let mut seen = Vec::new();
    for _ in 0..2 {
        let r = tokio::time::timeout(Duration::from_secs(10), replies.next())
            .await
            .context("no reply within 10 s")?
            .context("the stream ended")??;
        assert_eq!(r.body, b"result");
        seen.push((r.instance.clone(), r.recorded));
        r.settle.ack().await?;
    }
    seen.sort_by_key(|(id, _)| *id == unknown);
    assert_eq!(seen, [(carried, true), (unknown, false)]);
    drop(replies);
    b.cleanup().await
}

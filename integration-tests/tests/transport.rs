//! The transport contract on its own, without workers: registers, mailboxes, doorbells,
//! message properties and errors.

use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use dtasks::transport::{
    Delivery, DeliveryKind, Destination, Outgoing, Published, Registers, Transport,
};
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

fn is_doorbell_of(d: &Delivery, id: &InstanceId) -> bool {
    matches!(&d.kind, DeliveryKind::Doorbell { instance } if instance == id)
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
async fn registers_result_once_status_last() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let t = b.transport().await?;
    let id = InstanceId::random();
    assert_eq!(t.read_result(&id).await?, None);
    assert_eq!(t.read_status(&id).await?, None);
    let result = Destination::Result {
        instance: id.clone(),
    };
    // No register yet: the write is returned by the broker, and the transport creates the
    // register and writes again.
    let first = t
        .publish(vec![out(result.clone(), b"one", "r1", &id)])
        .await?;
    assert_eq!(first, vec![Published::Stored]);
    let second = t.publish(vec![out(result, b"two", "r2", &id)]).await?;
    assert_eq!(second, vec![Published::Duplicate]);
    // Reading does not consume, and always sees the first write.
    for _ in 0..3 {
        assert_eq!(t.read_result(&id).await?.as_deref(), Some(&b"one"[..]));
    }
    // From another transport (another process), waiting returns at once.
    let other = b.transport().await?;
    assert_eq!(other.wait_result(&id).await?, b"one");
    assert_eq!(other.wait_result(&id).await?, b"one");
    let register = format!("{}.result.{id}", b.prefix());
    assert_eq!(b.queue_len(&register).await?, Some(1));
    assert_eq!(
        b.consumers(&register).await?,
        0,
        "wait_result left a consumer"
    );

    let status = Destination::Status {
        instance: id.clone(),
    };
    for (i, s) in [&b"pending"[..], b"running", b"done"].iter().enumerate() {
        t.publish(vec![out(status.clone(), s, &format!("s{i}"), &id)])
            .await?;
    }
    assert_eq!(t.read_status(&id).await?.as_deref(), Some(&b"done"[..]));
    assert_eq!(t.read_status(&id).await?.as_deref(), Some(&b"done"[..]));
    b.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_register_takes_one_nonce_of_many_at_once_and_keeps_it() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    // Eight processes claim one id at once, each with a nonce of its own.
    let mut transports = Vec::new();
    for _ in 0..8 {
        transports.push(b.transport().await?);
    }
    let id = InstanceId::random();
    let claims = transports.iter().zip(1u64..).map(|(t, nonce)| {
        let id = &id;
        async move { t.claim(id, nonce).await.map(|ours| (nonce, ours)) }
    });
    let claimed = futures::future::try_join_all(claims).await?;
    let winners: Vec<u64> = claimed
        .iter()
        .filter(|(_, ours)| *ours)
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(winners.len(), 1, "claims: {claimed:?}");
    let winner = winners[0];
    // The winner stands for every transport, whatever it claims with; the winner's own
    // nonce, claimed again (by a worker for its client), holds.
    for t in &transports {
        assert!(t.claim(&id, winner).await?);
        assert!(!t.claim(&id, winner + 100).await?);
    }
    // The register holds no message (the nonce is an argument of the queue), and other ids
    // are free.
    let register = format!("{}.claim.{id}", b.prefix());
    assert_eq!(b.queue_len(&register).await?, Some(0));
    assert!(transports[0].claim(&InstanceId::random(), 7).await?);
    b.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_a_result_wakes_on_the_write() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let t = b.transport().await?;
    let id = InstanceId::random();
    let waiter = tokio::spawn({
        let t = b.transport().await?;
        let id = id.clone();
        async move { t.wait_result(&id).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished());
    let result = Destination::Result {
        instance: id.clone(),
    };
    t.publish(vec![out(result, b"value", "r", &id)]).await?;
    let got = tokio::time::timeout(Duration::from_secs(5), waiter).await???;
    assert_eq!(got, b"value");
    // A dropped wait leaves no consumer behind.
    let never = InstanceId::random();
    let t2 = t.clone();
    let register = format!("{}.result.{never}", b.prefix());
    let dropped = tokio::spawn(async move { t2.wait_result(&never).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    dropped.abort();
    wait_for(Duration::from_secs(5), || async {
        Ok(b.consumers(&register).await? == 0)
    })
    .await?;
    b.cleanup().await
}

/// The channels of this test's connections, according to the broker.
async fn channels(b: &Broker) -> anyhow::Result<u32> {
    let listed = dtasks_integration_tests::rabbitmqctl(&[
        "list_connections",
        "channels",
        "client_properties",
        "--quiet",
        "--no-table-headers",
    ])
    .await?;
    let mut sum = 0;
    for line in listed.lines().filter(|l| l.contains(b.prefix())) {
        let n = line.split_whitespace().next().context("no channel count")?;
        sum += n
            .parse::<u32>()
            .with_context(|| format!("not a count: {line}"))?;
    }
    Ok(sum)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_waits_share_a_channel_and_an_abandoned_wait_puts_its_result_back(
) -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let writer = b.transport().await?;
    let t = b.transport().await?;
    let ids: Vec<InstanceId> = (0..200).map(|_| InstanceId::random()).collect();
    let waits: Vec<_> = ids
        .iter()
        .map(|id| {
            let (t, id) = (t.clone(), id.clone());
            tokio::spawn(async move { t.wait_result(&id).await })
        })
        .collect();
    let last = format!("{}.result.{}", b.prefix(), ids[199]);
    wait_for(Duration::from_secs(30), || async {
        Ok(b.consumers(&last).await? == 1)
    })
    .await?;
    // 200 waiting handles, a handful of channels (publish pool, consumers, one for waits).
    let open = channels(&b).await?;
    assert!(open < 20, "{open} channels for 200 waits");
    let results: Vec<Outgoing> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let to = Destination::Result {
                instance: id.clone(),
            };
            out(to, format!("value {i}").as_bytes(), &format!("r{i}"), id)
        })
        .collect();
    writer.publish(results).await?;
    for (i, w) in waits.into_iter().enumerate() {
        let got = tokio::time::timeout(Duration::from_secs(10), w).await???;
        assert_eq!(got, format!("value {i}").as_bytes());
    }

    // A wait dropped before its result comes leaves no consumer to take it: the result
    // stays ready in its register, for the next wait in this process and for readers.
    let id = InstanceId::random();
    let register = format!("{}.result.{id}", b.prefix());
    let abandoned = tokio::spawn({
        let (t, id) = (t.clone(), id.clone());
        async move { t.wait_result(&id).await }
    });
    wait_for(Duration::from_secs(10), || async {
        Ok(b.consumers(&register).await? == 1)
    })
    .await?;
    abandoned.abort();
    wait_for(Duration::from_secs(10), || async {
        Ok(b.consumers(&register).await? == 0)
    })
    .await?;
    let to = Destination::Result {
        instance: id.clone(),
    };
    writer.publish(vec![out(to, b"late", "late", &id)]).await?;
    assert_eq!(b.queue_len(&register).await?, Some(1));
    let again = tokio::time::timeout(Duration::from_secs(10), t.wait_result(&id)).await??;
    assert_eq!(again, b"late");
    assert_eq!(t.read_result(&id).await?.as_deref(), Some(&b"late"[..]));
    b.cleanup().await
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
            DeliveryKind::Doorbell { instance } => {
                assert_eq!(instance, &id);
                assert!(doorbell.is_none(), "two doorbells for one batch");
                doorbell = Some(d);
            }
            DeliveryKind::Task { body, message_id } => {
                assert_eq!(body, b"task");
                assert_eq!(message_id.as_deref(), Some("t1"));
                task = Some(d);
            }
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }
    task.context("task")?.settle.ack().await?;
    let items = t.drain_mailbox(&id).await?;
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
    let items = t.drain_mailbox(&id).await?;
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
    let mut items = t.drain_mailbox(&id).await?.into_iter();
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
    let items = t.drain_mailbox(&id).await?;
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
    let items = t.drain_mailbox(&id).await?;
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
    let items = t.drain_mailbox(&id).await?;
    assert_eq!(items.len(), 301);
    for m in items {
        m.settle.ack().await?;
    }
    first.settle.ack().await?;
    let second = next(&mut deliveries).await?;
    assert!(is_doorbell_of(&second, &id));
    assert_eq!(t.spent_doorbells(), 0);
    assert!(t.drain_mailbox(&id).await?.is_empty());
    second.settle.ack().await?;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_persistent_and_carry_their_headers() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let t = b.transport().await?;
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
    assert!(err.is_transport(), "{err}");
    assert!(err.to_string().contains("255"), "{err}");
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
        dtasks_amqp::AmqpConfig::new("x").with_prefix("bad prefix"),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("prefix"), "{err}");
    Ok(())
}

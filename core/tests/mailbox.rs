//! Mailbox-mode instances that wait longer than the transport keeps an unused mailbox.

use std::time::Duration;

use dtasks::transport::{Destination, Outgoing};
use dtasks::{dtask, DTask, InstanceId, MemoryTransport, Runtime, Transport, WorkerConfig};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const HOUR: Duration = Duration::from_secs(3600);

#[dtask]
async fn wait_hours(h: u64) -> u64 {
    DTask::delay(HOUR * h as u32).await;
    h
}

#[dtask]
async fn wait_all(hours: Vec<u64>) -> u64 {
    DTask::when_all(hours.into_iter().map(wait_hours))
        .await
        .iter()
        .sum()
}

#[tokio::test]
async fn a_fan_in_waiting_ten_times_the_mailbox_retention_keeps_its_state() -> TestResult {
    let rt = Runtime::builder(WorkerConfig::new().register(wait_all).register(wait_hours))
        .virtual_time()
        .mailbox_retention(HOUR)
        .build()?;
    let h = rt.client().start(wait_all(vec![10, 7])).await?;
    rt.wait_idle().await;
    for _ in 0..(11 * 6) {
        rt.advance(Duration::from_secs(600));
        rt.wait_idle().await;
    }
    // Without the keep-alive the state is gone with the mailbox and this never finishes.
    let result = tokio::time::timeout(Duration::from_secs(10), h.result()).await;
    assert_eq!(result.expect("the instance was lost with its mailbox")?, 17);
    Ok(())
}

#[tokio::test]
async fn an_unused_mailbox_expires() -> TestResult {
    let t = MemoryTransport::builder()
        .virtual_time()
        .mailbox_retention(HOUR)
        .build();
    assert_eq!(t.mailbox_retention(), Some(HOUR));
    let id = InstanceId::new("lonely")?;
    t.publish(vec![Outgoing {
        destination: Destination::Mailbox {
            instance: id.clone(),
        },
        body: b"not used".to_vec(),
        message_id: "m1".into(),
        instance: id.clone(),
        dtask: "x".into(),
        trace: None,
    }])
    .await?;
    t.advance(HOUR - Duration::from_secs(1));
    let kept = t.drain_mailbox(&id).await?;
    assert_eq!(kept.len(), 1, "drained before the retention ran out");
    for m in kept {
        m.settle.requeue().await?;
    }
    // The drain counted as a use: another retention from now.
    t.advance(HOUR - Duration::from_secs(1));
    assert_eq!(t.drain_mailbox(&id).await?.len(), 1);
    t.advance(HOUR);
    assert!(t.drain_mailbox(&id).await?.is_empty(), "expired");
    Ok(())
}

#[tokio::test]
async fn a_deleted_mailbox_takes_what_a_drain_holds_and_a_touch_creates_none() -> TestResult {
    use dtasks::transport::Published;

    let t = MemoryTransport::new();
    let id = InstanceId::new("finished")?;
    let to = |destination: Destination, body: &[u8]| Outgoing {
        destination,
        body: body.to_vec(),
        message_id: String::from_utf8_lossy(body).into_owned(),
        instance: id.clone(),
        dtask: "x".into(),
        trace: None,
    };
    let mailbox = || Destination::Mailbox {
        instance: id.clone(),
    };
    let touch = || Destination::Touch {
        instance: id.clone(),
    };
    // No mailbox: a touch is dropped and creates none.
    assert_eq!(
        t.publish(vec![to(touch(), b"t1")]).await?,
        vec![Published::Dropped]
    );
    assert!(t.mailboxes().is_empty());
    t.publish(vec![to(mailbox(), b"m1"), to(mailbox(), b"m2")])
        .await?;
    assert_eq!(t.mailboxes(), vec![id.clone()]);
    let held = t.drain_mailbox(&id).await?;
    assert_eq!(held.len(), 2);
    t.delete_mailbox(&id).await?;
    assert!(t.mailboxes().is_empty());
    // Settled after the deletion, whichever way, they are gone with the mailbox.
    let mut held = held.into_iter();
    held.next().expect("m1").settle.requeue().await?;
    drop(held);
    assert!(t.mailboxes().is_empty());
    assert!(t.drain_mailbox(&id).await?.is_empty());
    t.delete_mailbox(&id).await?;
    // A mailbox message creates it again; a touch then goes in.
    t.publish(vec![to(mailbox(), b"m3")]).await?;
    assert_eq!(
        t.publish(vec![to(touch(), b"t2")]).await?,
        vec![Published::Stored]
    );
    let bodies: Vec<Vec<u8>> = t
        .drain_mailbox(&id)
        .await?
        .into_iter()
        .map(|m| m.body.clone())
        .collect();
    assert_eq!(bodies, vec![b"m3".to_vec(), b"t2".to_vec()]);
    Ok(())
}

//! A fan-in that waits longer than the broker keeps an unused mailbox: the workers'
//! keep-alive uses the mailbox so that the waiting instance's state is never expired.
//! Once it finished, its mailbox is deleted; a mailbox nobody uses expires.

use std::time::Duration;

use anyhow::Context as _;

use dtasks::transport::{Destination, Outgoing, Transport};
use dtasks::{dtask, Client, DTask, InstanceId, Worker, WorkerConfig};
use dtasks_integration_tests::{listed_queues, wait_for, within, Broker};

#[dtask(name = "retention.nap")]
async fn nap(ms: u64) -> u64 {
    DTask::delay(Duration::from_millis(ms)).await;
    ms
}

#[dtask(name = "retention.naps")]
async fn naps(ms: u64) -> u64 {
    DTask::when_all([nap(ms), nap(ms + 1)]).await.iter().sum()
}

/// Whether the broker has the queue `name`, looked up with `rabbitmqctl`: a declaration,
/// even a passive one, would count as a use of the queue and keep it alive.
async fn listed(prefix: &str, name: &str) -> anyhow::Result<bool> {
    let queues = listed_queues(prefix).await;
    Ok(queues
        .context("rabbitmqctl cannot list the queues")?
        .iter()
        .any(|q| q == name))
}

/// The mailbox retention of this test: `x-expires` of every mailbox queue.
const RETENTION: Duration = Duration::from_secs(3);

/// The retention of the mailbox that nobody uses, at the end of the test.
const UNUSED_RETENTION: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_in_outlives_the_mailbox_retention() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut running = Vec::new();
    for _ in 0..2 {
        let t = b
            .transport_with(|c| c.with_mailbox_retention(RETENTION))
            .await?;
        let w = Worker::new(t, WorkerConfig::new().register(nap).register(naps))?;
        let mut stopped = stopped.clone();
        running.push(tokio::spawn(w.run_until(async move {
            let _ = stopped.wait_for(|s| *s).await;
        })));
    }
    let c = Client::new(
        b.transport_with(|c| c.with_mailbox_retention(RETENTION))
            .await?,
    );
    // Three retention periods: without the keep-alive the broker deletes the mailbox, and
    // the parent's state with it, long before the children's results come.
    let wait = RETENTION * 3;
    let h = c.start(naps(wait.as_millis() as u64)).await?;
    let mailbox = format!("{}.mbox.{}", b.prefix(), h.id());
    wait_for(Duration::from_secs(10), || listed(b.prefix(), &mailbox)).await?;
    let got = within(Duration::from_secs(60), "the fan-in's result", h.result()).await??;
    assert_eq!(got, 2 * wait.as_millis() as u64 + 1);
    // Once the instance finished, its mailbox is deleted.
    wait_for(RETENTION * 5, || async {
        Ok(!listed(b.prefix(), &mailbox).await?)
    })
    .await?;
    let _ = stop.send(true);
    for r in running {
        r.await??;
    }
    assert_eq!(b.queue_len(&format!("{}.dead", b.prefix())).await?, Some(0));
    // The retention is real: a mailbox that nobody uses (no worker runs to drain it now)
    // is deleted by the broker, as the fan-in's would have been without the keep-alive.
    // A longer one here: `rabbitmqctl` must list it before it expires, and on a busy
    // machine a listing took longer than the 3 s above.
    let unused = InstanceId::random();
    let t = b
        .transport_with(|c| c.with_mailbox_retention(UNUSED_RETENTION))
        .await?;
    t.publish(vec![Outgoing {
        destination: Destination::Mailbox {
            instance: unused.clone(),
        },
        body: b"never drained".to_vec(),
        message_id: "unused".into(),
        instance: unused.clone(),
        dtask: "retention.naps".into(),
        trace: None,
    }])
    .await?;
    let unused = format!("{}.mbox.{unused}", b.prefix());
    assert!(
        listed(b.prefix(), &unused).await?,
        "the mailbox was created"
    );
    wait_for(UNUSED_RETENTION * 3, || async {
        Ok(!listed(b.prefix(), &unused).await?)
    })
    .await?;
    b.cleanup().await
}

//! Timers over RabbitMQ's delay levels: many at once, never early, long ones parked, and
//! a long sleep that a cancel stops at the timer's next hop.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use dtasks::transport::{DeliveryKind, Destination, Outgoing, Transport};
use dtasks::{dtask, DTask, InstanceId, Status};
use dtasks_integration_tests::{registry, wait_for, Broker};
use futures::{StreamExt, TryStreamExt};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

/// A spread of delays from 50 ms to 3 s, the same in every run.
fn delay_ms(i: u64) -> u64 {
    50 + (i * 7_919) % 2_951
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Waits until the intended fire time, then reports when it resumed.
#[dtask]
async fn alarm(fire_at_ms: u64) -> (u64, u64) {
    DTask::delay_until(UNIX_EPOCH + Duration::from_millis(fire_at_ms)).await;
    let seen = DTask::run(|| async { now_ms() }).await;
    (fire_at_ms, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_timers_all_fire_and_none_early() -> anyhow::Result<()> {
    const N: u64 = 1_000;
    let b = Broker::start().await?;
    let w = b.workers(2, &registry![alarm]).await?;
    let c = b.client().await?;
    let handles: Vec<_> = futures::stream::iter(0..N)
        .map(|i| {
            let c = c.clone();
            async move { c.start(alarm(now_ms() + delay_ms(i))).await }
        })
        .buffer_unordered(32)
        .try_collect()
        .await?;
    let results: Vec<(u64, u64)> = futures::stream::iter(handles)
        .map(|h| async move { h.result().await })
        .buffer_unordered(32)
        .try_collect()
        .await?;
    assert_eq!(results.len() as u64, N, "timers lost");
    let early: Vec<_> = results.iter().filter(|(at, seen)| seen < at).collect();
    assert!(
        early.is_empty(),
        "{} timers fired early: {early:?}",
        early.len()
    );
    let mut late: Vec<u64> = results.iter().map(|(at, seen)| seen - at).collect();
    late.sort_unstable();
    println!(
        "{N} timers (50 ms .. 3 s): lateness p50 {} ms, p99 {} ms, max {} ms",
        percentile(&late, 0.5),
        percentile(&late, 0.99),
        late[late.len() - 1]
    );
    assert_eq!(b.queue_len(&format!("{}.dead", b.prefix())).await?, Some(0));
    w.stop().await?;
    b.cleanup().await
}

/// The transport alone, without the core (which would re-delay a message that arrives
/// early): every delayed message reaches its task queue no earlier than its time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_messages_reach_the_task_queue_never_early() -> anyhow::Result<()> {
    const N: u64 = 300;
    let b = Broker::start().await?;
    let t = b.transport().await?;
    let mut deliveries = t.consume(vec!["probe".to_string()]).await?;
    let batch: Vec<Outgoing> = (0..N)
        .map(|i| {
            let at = now_ms() + delay_ms(i) / 2;
            Outgoing {
                destination: Destination::Delayed {
                    name: "probe".into(),
                    at: UNIX_EPOCH + Duration::from_millis(at),
                },
                body: at.to_be_bytes().to_vec(),
                message_id: format!("probe-{i}"),
                instance: InstanceId::random(),
                dtask: "probe".into(),
                trace: None,
            }
        })
        .collect();
    t.publish(batch).await?;
    let mut late = Vec::new();
    let mut ids = std::collections::HashSet::new();
    while late.len() < N as usize {
        let d = tokio::time::timeout(Duration::from_secs(20), deliveries.next())
            .await
            .context("timers stopped arriving")?
            .context("the stream ended")??;
        let arrived = now_ms();
        let DeliveryKind::Task {
            body, message_id, ..
        } = &d.kind
        else {
            anyhow::bail!("unexpected {d:?}");
        };
        let at = u64::from_be_bytes(body.as_slice().try_into()?);
        assert!(
            arrived >= at,
            "{message_id:?} arrived {} ms early",
            at - arrived
        );
        ids.insert(message_id.clone().context("no message id")?);
        late.push(arrived - at);
        d.settle.ack().await?;
    }
    assert_eq!(ids.len(), N as usize, "duplicates or losses");
    late.sort_unstable();
    println!(
        "{N} raw timers (25 ms .. 1.5 s): lateness p50 {} ms, p99 {} ms, max {} ms",
        percentile(&late, 0.5),
        percentile(&late, 0.99),
        late[late.len() - 1]
    );
    drop(deliveries);
    b.cleanup().await
}

#[dtask]
async fn ten_days() -> String {
    DTask::delay(Duration::from_secs(10 * 86_400)).await;
    "ten days later".to_string()
}

/// A ten-day delay waits in the level of the hop (the default, 2^20 ms: a worker looks
/// at it about every 17.5 minutes, for a cancel), and with the longest hop in the largest
/// level that does not overshoot: 10 days is 864,000,000 ms, and level 29 (2^29 ms,
/// about 6.2 days) the largest below it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_day_delay_is_parked_in_a_high_level() -> anyhow::Result<()> {
    for (hop, level) in [(None, 20u8), (Some(Duration::from_millis(1 << 32)), 29)] {
        let b = Broker::start().await?;
        let config = dtasks::WorkerConfig::new().registry(&registry![ten_days]);
        let w = b
            .workers_on(1, config, |c| match hop {
                Some(d) => c.with_timer_hop(d),
                None => c,
            })
            .await?;
        let c = b.client().await?;
        let h = c.start(ten_days()).await?;
        wait_for(Duration::from_secs(5), || async {
            Ok(h.status().await? == Status::Suspended)
        })
        .await?;
        let parked = format!("{}.delay.{level}", b.prefix());
        wait_for(Duration::from_secs(5), || async {
            Ok(b.queue_len(&parked).await? == Some(1))
        })
        .await
        .with_context(|| format!("not parked in {parked}"))?;
        let mut elsewhere = 0;
        for other in (0..=32u8).filter(|l| *l != level) {
            elsewhere += b
                .queue_len(&format!("{}.delay.{other}", b.prefix()))
                .await?
                .unwrap_or(0);
        }
        assert_eq!(elsewhere, 0);
        assert_eq!(
            b.queue_len(&format!("{}.delay.ready", b.prefix())).await?,
            Some(0)
        );
        assert_eq!(h.try_result().await?, None);
        assert_eq!(b.transport().await?.pending_timers().await?, Some(1));
        w.stop().await?;
        b.cleanup().await?;
    }
    Ok(())
}

/// Sleeps `ms`.
#[dtask]
async fn nap(ms: u64) -> u64 {
    DTask::delay(Duration::from_millis(ms)).await;
    ms
}

/// Waits on one `nap`: its state rides in the nap's start, then in the nap's timer.
#[dtask]
async fn after_nap(ms: u64) -> u64 {
    nap(ms).await + 1
}

/// An hour's sleep, two levels deep, stops within a hop of the cancel: the hop brings
/// the timer that holds both states to a worker, the sleep ends cancelled, and the
/// parent with it; then no timer is left (the tombstones' probes delete the mailboxes
/// the cancel items went to, after a grace of a second with a 3-second retention).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_stops_an_hour_long_sleep_at_the_next_hop() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let hop = Duration::from_secs(2);
    let adjust = move |c: dtasks_amqp::AmqpConfig| {
        c.with_timer_hop(hop)
            .with_mailbox_retention(Duration::from_secs(3))
    };
    let config = dtasks::WorkerConfig::new().registry(&registry![nap, after_nap]);
    let w = b.workers_on(2, config, adjust).await?;
    let t = b.transport_with(adjust).await?;
    let c = dtasks::Client::new(t.clone());
    let h = c.start(after_nap(3_600_000)).await?;
    wait_for(Duration::from_secs(20), || async {
        Ok(h.status().await? == Status::Suspended && t.pending_timers().await? == Some(1))
    })
    .await
    .context("the sleep did not begin")?;
    // Several hops go by: the sleep goes on while nothing cancels it.
    tokio::time::sleep(3 * hop).await;
    assert_eq!(h.try_result().await?, None);
    assert_eq!(h.status().await?, Status::Suspended);

    assert!(c.cancel(h.id(), "not needed").await?);
    let err = tokio::time::timeout(Duration::from_secs(60), h.result())
        .await
        .context("the cancel did not stop the sleep")?
        .expect_err("cancelled");
    assert!(err.is_cancelled(), "{err}");
    assert_eq!(err.failure().expect("failed").message(), "not needed");
    assert_eq!(h.status().await?, Status::Cancelled);
    wait_for(Duration::from_secs(30), || async {
        Ok(t.pending_timers().await? == Some(0))
    })
    .await
    .context("a timer stayed parked")?;
    assert_eq!(b.queue_len(&format!("{}.dead", b.prefix())).await?, Some(0));
    w.stop().await?;
    b.cleanup().await
}

//! A broker restart under an in-process worker and a client: nothing is lost.
//!
//! This restarts the broker's application under everyone using it, so it is the only test
//! of its binary (cargo runs test binaries one after another, so no other test sees the
//! restart). Run it only against a broker of your own: `.ci/run` uses the machine's. It
//! lowers the broker's dead-letter retry for its run ([`DlxRetry`]), so that timers that
//! expire while the broker starts move on within seconds.

use std::time::Duration;

use dtasks_integration_tests::tasks::{pause, pauses, pauses_sum};
use dtasks_integration_tests::{rabbitmqctl, registry, within, Broker, DlxRetry};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_loses_nothing() -> anyhow::Result<()> {
    let b = Broker::start().await?;
    let _dlx_retry = DlxRetry::lower_to(2_000).await?;
    let w = b.workers(1, &registry![pauses, pause]).await?;
    let c = b.client().await?;
    let before = c.start(pauses(10, 3_000)).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    rabbitmqctl(&["stop_app"]).await?;
    // A start during the outage waits for the broker instead of failing.
    let starting = tokio::spawn({
        let c = c.clone();
        async move { c.start(pauses(3, 100)).await }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    rabbitmqctl(&["start_app"]).await?;
    rabbitmqctl(&["await_startup"]).await?;
    let limit = Duration::from_secs(45);
    let during = within(limit, "the start during the outage", starting).await???;
    assert_eq!(
        within(limit, "the fan-in started before", before.result()).await??,
        pauses_sum(10, 3_000)
    );
    assert_eq!(
        within(limit, "the fan-in started during", during.result()).await??,
        pauses_sum(3, 100)
    );
    assert!(w.running());
    let after = c.start(pauses(3, 10)).await?;
    assert_eq!(
        within(limit, "a fan-in after", after.result()).await??,
        pauses_sum(3, 10)
    );
    w.stop().await?;
    b.cleanup().await
}

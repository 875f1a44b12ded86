//! The HTTP routes, starts and webhooks on RabbitMQ (`AMQP_URL`): a worker and the web
//! service's client on connections of their own, under a prefix of the test's own, the
//! instance facts in the RabbitMQ-only store, real HTTP requests to a server on
//! 127.0.0.1.

use std::future::Future;

use dtasks_axum::Api;
use dtasks_integration_tests::http::{self as common, app, config, serve, Http};
use dtasks_integration_tests::Broker;

/// Runs `scenario` against a web service on RabbitMQ, then stops and cleans up.
async fn on_rabbitmq<F, Fut>(scenario: F) -> anyhow::Result<()>
where
    F: FnOnce(Http) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let b = Broker::start().await?;
    let workers = b.workers_with(1, config()).await?;
    let api = Api::new(b.client().await?);
    let http = Http::new(serve(app(api)).await?);
    let outcome = scenario(http).await;
    workers.stop().await?;
    outcome?;
    b.cleanup().await
}

#[tokio::test(flavor = "multi_thread")]
async fn start_poll_signal() -> anyhow::Result<()> {
    on_rabbitmq(|http| async move { common::start_poll_signal(&http).await }).await
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel() -> anyhow::Result<()> {
    on_rabbitmq(|http| async move { common::cancel(&http).await }).await
}

#[tokio::test(flavor = "multi_thread")]
async fn list_filters() -> anyhow::Result<()> {
    on_rabbitmq(|http| async move { common::list_filters(&http).await }).await
}

#[tokio::test(flavor = "multi_thread")]
async fn webhooks() -> anyhow::Result<()> {
    on_rabbitmq(|http| async move { common::webhooks(&http).await }).await
}

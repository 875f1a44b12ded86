//! The HTTP routes, starts and webhooks over the embedded in-memory runtime, with real
//! HTTP requests to a server on 127.0.0.1.

use dtasks::Runtime;
use dtasks_axum::Api;
use dtasks_integration_tests::http::{self as common, app, config, serve, Http};

async fn service() -> anyhow::Result<(Runtime, Http)> {
    let rt = Runtime::new(config())?;
    let base = serve(app(Api::new(rt.client()))).await?;
    Ok((rt, Http::new(base)))
}

#[tokio::test(flavor = "multi_thread")]
async fn start_poll_signal() -> anyhow::Result<()> {
    let (rt, http) = service().await?;
    common::start_poll_signal(&http).await?;
    rt.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_requests_are_answered_in_json() -> anyhow::Result<()> {
    let (rt, http) = service().await?;
    common::refused_requests(&http).await?;
    rt.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel() -> anyhow::Result<()> {
    let (rt, http) = service().await?;
    common::cancel(&http).await?;
    rt.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn list_filters() -> anyhow::Result<()> {
    let (rt, http) = service().await?;
    common::list_filters(&http).await?;
    rt.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn webhooks() -> anyhow::Result<()> {
    let (rt, http) = service().await?;
    common::webhooks(&http).await?;
    rt.shutdown().await?;
    Ok(())
}

/// Routes nested under a path of their own: the URLs in answers lead there.
#[tokio::test(flavor = "multi_thread")]
async fn routes_under_a_base_path() -> anyhow::Result<()> {
    let rt = Runtime::new(config())?;
    let api = Api::new(rt.client()).with_base_path("/api/");
    assert_eq!(api.base_path(), "/api");
    let router = axum::Router::new().nest("/api", app(api));
    let http = Http::new(serve(router).await?);
    let a = http
        .post("/api/start/double", &serde_json::json!({ "x": 5 }))
        .await?
        .expect(202)?;
    let id = a.body["id"].as_str().unwrap().to_string();
    let location = format!("/api/instances/{id}");
    assert_eq!(a.header("location"), Some(location.as_str()));
    let status = http.get(&location).await?.expect(200)?;
    assert_eq!(
        status.body["result_url"],
        serde_json::json!(format!("{location}/result"))
    );
    let done = http
        .get(&format!("{location}/result?wait=10"))
        .await?
        .expect(200)?;
    assert_eq!(done.body["value"], serde_json::json!(10));
    rt.shutdown().await?;
    Ok(())
}

//! A web service for the order flow and refunds with approval (`dtasks-axum`).
//!
//! Without `AMQP_URL` it runs on the embedded in-memory runtime; with `AMQP_URL` set it
//! runs a worker pod on RabbitMQ in this process (workers started with
//! `cargo run -p dtasks-examples --bin worker` share the work), with the instance facts
//! in PostgreSQL when `DATABASE_URL` is set too. It listens on `WEB_ADDR` (default
//! `127.0.0.1:3000`) and stops on Ctrl-C or SIGTERM.
//!
//! ```text
//! curl -i -X POST localhost:3000/orders -H 'content-type: application/json' \
//!      -d '{"order": 7, "customer": "Ada", "cents": 1999, "skus": ["book", "pen"]}'
//!   -> 202 Accepted, Location: /instances/<id>
//! curl -i localhost:3000/instances/<id>/result          -> 202 while it runs, then 200
//! curl localhost:3000/instances?status=succeeded
//! curl -X POST localhost:3000/refunds -H 'content-type: application/json' \
//!      -d '{"order": 7, "cents": 500, "id": "refund-7", "callback_url": "http://127.0.0.1:9000/hook"}'
//! curl -X POST localhost:3000/instances/refund-7/signal/approval -d '{"Approve": "Ada"}'
//! curl -X POST localhost:3000/instances/refund-7/cancel -d '{"reason": "withdrawn"}'
//! ```
//!
//! The same instances in a browser: <http://localhost:3000/ui> lists them (filters by
//! status, DTask, id prefix and start time; read again every 2 s), and each has a page
//! with its status, what it waits for, its timeline and result, and forms to send it an
//! event and to cancel it.
//!
//! A refund started with a `callback_url` runs under the webhook DTask: the outcome is
//! POSTed there when it finishes. Its events go to the refund the webhook DTask runs
//! (`refund-7.0`), which waits for them, so the approval above reaches it (see
//! `Start::webhook`).

use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use dtasks::{Client, InstanceId, Runtime, WorkerConfig};
use dtasks_actors::{shutdown_signal, WorkerPod};
use dtasks_amqp::{AmqpConfig, AmqpTransport};
use dtasks_axum::{Accepted, Api, ApiError, Start, Webhook};
use dtasks_examples::{
    charge, env_or, init_telemetry, process_order, refund, refund_with_approval, ship, Item, Order,
};
use serde::Deserialize;

/// `POST /orders`: an order to process.
#[derive(Deserialize)]
struct NewOrder {
    order: u32,
    customer: String,
    cents: u64,
    skus: Vec<String>,
    /// An id of the caller's choice: a second start with it answers 409.
    id: Option<String>,
    /// Where to POST the outcome when the order is done.
    callback_url: Option<String>,
}

/// `POST /refunds`: a refund that waits for the event `approval`.
#[derive(Deserialize)]
struct NewRefund {
    order: u32,
    cents: u64,
    /// How long to wait for the approval (default one hour).
    timeout_s: Option<u64>,
    id: Option<String>,
    callback_url: Option<String>,
}

/// The optional parts of a start: a chosen id, a webhook.
fn with_options<T>(
    mut start: Start<T>,
    id: Option<String>,
    callback_url: Option<String>,
) -> Result<Start<T>, ApiError> {
    if let Some(id) = id {
        start = start.id(InstanceId::new(id)?);
    }
    if let Some(url) = callback_url {
        start = start.webhook(Webhook::new(&url)?);
    }
    Ok(start)
}

async fn post_order(
    State(api): State<Api>,
    body: Result<Json<NewOrder>, JsonRejection>,
) -> Result<Accepted, ApiError> {
    let Json(o) = body?;
    let order = Order {
        id: o.order,
        customer: o.customer,
        items: o.skus.into_iter().map(|sku| Item { sku, qty: 1 }).collect(),
        cents: o.cents,
    };
    let cooling_off_ms = env_or("ORDER_COOLING_OFF_MS", 1_500u64);
    let start = api.start(process_order(order, cooling_off_ms));
    with_options(start, o.id, o.callback_url)?.await
}

async fn post_refund(
    State(api): State<Api>,
    body: Result<Json<NewRefund>, JsonRejection>,
) -> Result<Accepted, ApiError> {
    let Json(r) = body?;
    let timeout_ms = r.timeout_s.unwrap_or(3600).saturating_mul(1000);
    let start = api.start(refund_with_approval(r.order, r.cents, timeout_ms));
    with_options(start, r.id, r.callback_url)?.await
}

/// The service: the two starts, the instances' routes, and their web pages at `/ui`.
fn app(client: Client) -> Router {
    // The roots it starts record their children, which the pages then list and link (a
    // store write or so more per child: the service starts few roots, each worth a look).
    let api = Api::new(client.recording_children());
    Router::new()
        .route("/orders", post(post_order))
        .route("/refunds", post(post_refund))
        .with_state(api.clone())
        .merge(api.routes())
        .merge(api.pages())
        // Every answer in JSON, unknown paths and methods included.
        .fallback(dtasks_axum::fallback)
        .method_not_allowed_fallback(dtasks_axum::method_not_allowed)
}

/// Every DTask the service starts, and the webhook that delivers their outcomes.
fn worker_config() -> WorkerConfig {
    WorkerConfig::new()
        .register(process_order)
        .register(charge)
        .register(ship)
        .register(refund_with_approval)
        .register(refund)
        .register(dtasks_axum::webhook)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = init_telemetry("warn", "dtasks-web")?;
    let addr = std::env::var("WEB_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_string());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let local = listener.local_addr()?;
    if std::env::var_os("AMQP_URL").is_some() {
        let config = AmqpConfig::from_env();
        println!(
            "dtasks web example on RabbitMQ at {} (prefix `{}`), facts in {}, listening on http://{local} (pages at http://{local}/ui)",
            config.urls_for_display(),
            config.prefix(),
            dtasks_cli::store_choice_from_env()
        );
        let transport = AmqpTransport::connect(config).await?;
        let store = dtasks_cli::store_from_env(&transport).await?;
        let client = Client::new(transport.clone()).with_store(store.clone());
        let pod = WorkerPod::builder(transport, worker_config().store(store))
            .summary_every(Duration::from_secs(30))
            .build()?;
        let server = axum::serve(listener, app(client)).with_graceful_shutdown(shutdown_signal());
        pod.run_until(async move {
            if let Err(e) = server.await {
                eprintln!("the server stopped: {e}");
            }
        })
        .await?;
    } else {
        println!(
            "dtasks web example on the embedded in-memory runtime (set AMQP_URL for RabbitMQ), \
             listening on http://{local} (pages at http://{local}/ui)"
        );
        let rt = Runtime::new(worker_config())?;
        axum::serve(listener, app(rt.client()))
            .with_graceful_shutdown(shutdown_signal())
            .await?;
        rt.shutdown().await?;
    }
    Ok(())
}

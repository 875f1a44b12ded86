//! The order-processing flow used by the examples: charge the card, wait out a cooling-off
//! period on a durable timer, ship every item in parallel (fan-out), and collect the
//! shipments (fan-in).
//!
//! Steps print as they happen. Parent-level prints go through [`DTask::run`] so that a
//! replay (each resume re-runs the function from the top) does not print them again.

use std::time::Duration;

use dtasks::{dtask, DTask};
use serde::{Deserialize, Serialize};

/// An order to process.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Order {
    /// The order number.
    pub id: u32,
    /// Who ordered.
    pub customer: String,
    /// What to ship.
    pub items: Vec<Item>,
    /// The amount to charge, in cents.
    pub cents: u64,
}

/// One line of an order.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Item {
    /// Stock-keeping unit.
    pub sku: String,
    /// How many.
    pub qty: u32,
}

/// A shipped item.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Shipment {
    /// The item shipped.
    pub sku: String,
    /// The carrier's tracking number.
    pub tracking: String,
}

/// The result of a processed order.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Receipt {
    /// The order number.
    pub order: u32,
    /// The payment reference.
    pub payment: String,
    /// One shipment per item.
    pub shipments: Vec<Shipment>,
}

/// Why an order failed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum OrderError {
    /// The card was declined.
    PaymentDeclined(String),
}

impl std::fmt::Display for OrderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OrderError::PaymentDeclined(why) => write!(f, "payment declined: {why}"),
        }
    }
}

/// Charges `cents` for order `order` (a stand-in for a payment API call).
#[dtask(name = "shop.charge")]
pub async fn charge(order: u32, cents: u64) -> Result<String, OrderError> {
    println!("  [charge]   order {order}: charging {cents} cents");
    // An ordinary future inside a DTask: local work, driven to completion.
    tokio::time::sleep(Duration::from_millis(20)).await;
    if cents == 0 {
        return Err(OrderError::PaymentDeclined("nothing to charge".into()));
    }
    Ok(format!("pay-{order}-{cents}"))
}

/// Ships one item of order `order`.
#[dtask(name = "shop.ship")]
pub async fn ship(order: u32, item: Item) -> Shipment {
    println!(
        "  [ship]     order {order}: shipping {} x {}",
        item.qty, item.sku
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    Shipment {
        tracking: format!("TRK-{order}-{}", item.sku),
        sku: item.sku,
    }
}

/// Processes an order: charge, a durable cooling-off delay, fan-out shipping, fan-in.
#[dtask(name = "shop.process_order")]
pub async fn process_order(order: Order, cooling_off_ms: u64) -> Result<Receipt, OrderError> {
    let id = order.id;
    say(format!(
        "  [order {id}] received from {}: {} items, {} cents",
        order.customer,
        order.items.len(),
        order.cents
    ))
    .await;
    // Request-reply with a child DTask; its `Err` arrives as a value.
    let payment = charge(id, order.cents).await?;
    say(format!(
        "  [order {id}] paid ({payment}); cooling-off for {cooling_off_ms} ms on a durable timer"
    ))
    .await;
    DTask::delay(Duration::from_millis(cooling_off_ms)).await;
    say(format!(
        "  [order {id}] shipping {} items in parallel",
        order.items.len()
    ))
    .await;
    let shipments = DTask::when_all(order.items.into_iter().map(|item| ship(id, item))).await;
    say(format!(
        "  [order {id}] all {} items shipped",
        shipments.len()
    ))
    .await;
    Ok(Receipt {
        order: id,
        payment,
        shipments,
    })
}

/// Prints once: the print is a recorded side effect, not re-run on replay.
async fn say(line: String) {
    DTask::run(move || async move { println!("{line}") }).await
}

/// A sample order.
pub fn sample_order(id: u32) -> Order {
    Order {
        id,
        customer: format!("customer-{id}"),
        items: ["book", "lamp", "mug"]
            .iter()
            .enumerate()
            .map(|(i, sku)| Item {
                sku: (*sku).to_string(),
                qty: i as u32 + 1,
            })
            .collect(),
        cents: 4_200 + u64::from(id),
    }
}

/// Reads a setting from the environment, with a default.
pub fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Installs a log subscriber that honours `RUST_LOG` (default: `info` for dtasks).
pub fn init_logs(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).init();
}

/// What [`init_telemetry`] set up; keep it while the process runs: dropped, it sends the
/// spans still buffered.
#[derive(Debug)]
pub struct Telemetry {
    #[cfg(feature = "otel")]
    _otel: Option<dtasks_otel::Otel>,
}

/// [`init_logs`], plus (with the feature `otel`, on by default) OpenTelemetry traces
/// exported with OTLP over HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set
/// (`http://collector:4318`, say), under the service name `OTEL_SERVICE_NAME` or
/// `service`. One trace holds a start and every step of its instance and children, on
/// whichever worker they run.
pub fn init_telemetry(default: &str, service: &str) -> anyhow::Result<Telemetry> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;

    // `RUST_LOG` filters the logs only: the spans of a trace are at info level whatever
    // the logs show.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let registry =
        tracing_subscriber::registry().with(tracing_subscriber::fmt::layer().with_filter(filter));
    #[cfg(feature = "otel")]
    {
        let otel = dtasks_otel::Otel::from_env(service)?;
        let spans = otel.as_ref().map(|o| {
            o.layer()
                .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
        });
        registry.with(spans).init();
        if otel.is_some() {
            tracing::info!("exporting traces with OTLP");
        }
        Ok(Telemetry { _otel: otel })
    }
    #[cfg(not(feature = "otel"))]
    {
        let _ = service;
        registry.init();
        Ok(Telemetry {})
    }
}

/// A reviewer's answer to a refund request.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum Decision {
    /// Refund, with the reviewer's name.
    Approve(String),
    /// Do not refund, with the reason.
    Reject(String),
}

/// How a refund request ended.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum RefundOutcome {
    /// Refunded after approval.
    Refunded {
        /// The reviewer who approved.
        by: String,
        /// The refund's payment reference.
        payment: String,
    },
    /// A reviewer said no.
    Rejected(String),
    /// Nobody answered in time.
    Expired,
}

/// Pays `cents` back for order `order` (a stand-in for a payment API call).
#[dtask(name = "shop.refund")]
pub async fn refund(order: u32, cents: u64) -> String {
    println!("  [refund]   order {order}: paying back {cents} cents");
    format!("refund-{order}-{cents}")
}

/// A refund that needs a human's approval within `timeout_ms`: waits for the event
/// `approval` (a [`Decision`]) at most that long, on a durable timer, then refunds with a
/// child DTask or gives up. Send the decision with `Client::signal(id, "approval", ..)`.
#[dtask(name = "shop.refund_with_approval")]
pub async fn refund_with_approval(order: u32, cents: u64, timeout_ms: u64) -> RefundOutcome {
    say(format!(
        "  [refund {order}] {cents} cents: waiting up to {timeout_ms} ms for an approval"
    ))
    .await;
    let decision = DTask::event::<Decision>("approval")
        .within(Duration::from_millis(timeout_ms))
        .await;
    match decision {
        Some(Decision::Approve(by)) => {
            let payment = refund(order, cents).await;
            say(format!("  [refund {order}] approved by {by}: refunded")).await;
            RefundOutcome::Refunded { by, payment }
        }
        Some(Decision::Reject(why)) => {
            say(format!("  [refund {order}] rejected: {why}")).await;
            RefundOutcome::Rejected(why)
        }
        None => {
            say(format!("  [refund {order}] no answer in time")).await;
            RefundOutcome::Expired
        }
    }
}

//! Completion webhooks: the DTask [`webhook`] runs a call as its child, then POSTs the
//! outcome to a URL with [`DTask::run_with_retry_if`], so that the delivery is a durable
//! step of the instance (retried after durable waits, redone after a worker crash).

use std::sync::OnceLock;
use std::time::Duration;

use dtasks::{dtask, Call, DTask, Failure, InstanceId, RetryPolicy};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::error::ApiError;
use crate::json::{outcome_json, value_to_json};

/// The name the webhook DTask is registered under: register [`webhook`] on every worker
/// (`WorkerConfig::new().register(dtasks_axum::webhook)`).
pub const WEBHOOK_DTASK: &str = "dtasks_axum.webhook";

/// Where and how the outcome of an instance is delivered when it finishes: a POST of the
/// JSON that `GET /instances/{id}/result` answers, to an `http` or `https` URL, tried
/// again after durable waits ([`RetryPolicy`]) until a `2xx` answer.
///
/// The defaults: 10 attempts, waits from 1 s doubling up to 5 minutes (about 8.5 minutes
/// in all), 10 s per attempt. An attempt fails on a connection error, a timeout, or an
/// answer `5xx`, `408` or `429`, and is then tried again; any other answer that is not
/// `2xx` (`3xx`: redirects are not followed; `4xx`) ends the delivery at once.
///
/// ```
/// use std::time::Duration;
/// use dtasks::RetryPolicy;
/// use dtasks_axum::Webhook;
///
/// let hook = Webhook::new("https://example.com/hooks/orders")?
///     .with_retry(RetryPolicy::new().with_max_attempts(5))
///     .with_timeout(Duration::from_secs(3));
/// assert_eq!(hook.url(), "https://example.com/hooks/orders");
/// assert!(Webhook::new("ftp://example.com/x").is_err());
/// # Ok::<(), dtasks_axum::ApiError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Webhook {
    url: String,
    retry: RetryPolicy,
    timeout: Duration,
}

impl Webhook {
    /// A webhook to `url`, an absolute `http` or `https` URL (else a 400 `bad_input`
    /// error), with the default retries and timeout.
    pub fn new(url: &str) -> Result<Self, ApiError> {
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| ApiError::bad_input(format!("`{url}` is not a callback URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") || !parsed.has_host() {
            return Err(ApiError::bad_input(format!(
                "`{url}` is not a callback URL: http or https with a host"
            )));
        }
        Ok(Self {
            url: parsed.into(),
            retry: RetryPolicy::new()
                .with_max_attempts(10)
                .with_initial_delay(Duration::from_secs(1))
                .with_backoff_factor(2.0)
                .with_max_delay(Duration::from_secs(300)),
            timeout: Duration::from_secs(10),
        })
    }

    /// Tries the delivery as `policy` says.
    pub fn with_retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Gives each attempt `timeout` to be answered.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The URL the outcome is posted to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// How the delivery is tried.
    pub fn retry(&self) -> &RetryPolicy {
        &self.retry
    }

    /// How long each attempt may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// Any MessagePack value, passed through unchanged: the result of the DTask a [`webhook`]
/// instance runs, which is the webhook instance's result too.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AnyValue(rmpv::Value);

impl AnyValue {
    /// The value as JSON, in the form the routes answer (see the crate docs).
    pub fn to_json(&self) -> serde_json::Value {
        value_to_json(self.0.clone())
    }
}

/// Runs the call of the DTask `dtask` with `input` (the MessagePack tuple of its
/// arguments) as its child, POSTs the outcome to `hook` when the child finishes, and
/// ends as the child did: with its value, or failed (a child failure quoting the
/// child's, or cancelled with the reason).
///
/// Not called directly: [`Start::webhook`](crate::Start::webhook) starts it, and every
/// worker must register it (`WorkerConfig::new().register(dtasks_axum::webhook)`). The
/// delivery is a [`DTask::run_with_retry_if`] of the instance: each attempt is recorded,
/// the waits between attempts are durable timers, and a worker that dies mid-delivery
/// leaves the attempt to be made again by another (at least once: a receiver must
/// tolerate a repeated delivery, e.g. by the instance id in the body and the
/// `Dtasks-Instance` header). A cancelled instance still delivers its cancellation (the
/// delivery runs in [`DTask::cleanup`]). A delivery that runs out of attempts is logged
/// and changes nothing: the instance's outcome is its child's.
#[dtask(name = "dtasks_axum.webhook")]
pub async fn webhook(dtask: String, input: ByteBuf, hook: Webhook) -> AnyValue {
    let child = DTask::spawn(Call::<AnyValue>::from_encoded(dtask, input.into_vec()));
    // Two operations outstanding (the child and a yield) put this instance in its mailbox
    // for the rest of its life: a cancellation is merged at once and passed on to the
    // child, instead of waiting in the mailbox while this state rides in the child's start.
    DTask::yield_now().await;
    let outcome = child.catch_failure().await;
    let child_id = child.child_id();
    let id = parent_of(&child_id);
    let body = delivery_body(&id, &outcome);
    let url = hook.url.clone();
    let timeout = hook.timeout;
    let delivered = DTask::cleanup(DTask::run_with_retry_if(
        hook.retry.clone(),
        DeliveryError::is_retryable,
        move || post(url.clone(), id.to_string(), body.clone(), timeout),
    ))
    .await;
    if let Err(e) = delivered {
        tracing::warn!(instance = %child_id, url = %hook.url, error = %e, "the completion webhook was not delivered");
    }
    // Ends as the child did: its value, or its failure (recorded already: no wait).
    child.await
}

/// The instance whose child `child` is: child ids are `<parent>.<position>`.
fn parent_of(child: &InstanceId) -> InstanceId {
    child
        .as_str()
        .rsplit_once('.')
        .and_then(|(parent, _)| InstanceId::new(parent).ok())
        .unwrap_or_else(|| child.clone())
}

/// The JSON the webhook posts: what `GET /instances/{id}/result` answers for the webhook
/// instance `id` once it has finished the way `outcome` says. A caught failure of the
/// spawned child is the failure the instance ends with when it awaits the child.
fn delivery_body(id: &InstanceId, outcome: &Result<AnyValue, Failure>) -> Vec<u8> {
    let body = outcome_json(id, outcome.as_ref().map(AnyValue::to_json));
    serde_json::to_vec(&body).unwrap_or_default()
}

/// Why an attempt to deliver failed: recorded in the instance's journal.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum DeliveryError {
    /// The receiver answered this status.
    Status(u16),
    /// No answer: a connection error, a timeout.
    Unreachable(String),
    /// No HTTP client could be made (TLS setup).
    Client(String),
}

impl DeliveryError {
    fn is_retryable(&self) -> bool {
        match self {
            DeliveryError::Status(s) => *s >= 500 || *s == 408 || *s == 429,
            DeliveryError::Unreachable(_) => true,
            DeliveryError::Client(_) => false,
        }
    }
}

impl std::fmt::Display for DeliveryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeliveryError::Status(s) => write!(f, "the receiver answered {s}"),
            DeliveryError::Unreachable(e) => write!(f, "no answer: {e}"),
            DeliveryError::Client(e) => write!(f, "no HTTP client: {e}"),
        }
    }
}

/// One HTTP client for every delivery of the process (its connection pool is shared).
fn http() -> Result<&'static reqwest::Client, DeliveryError> {
    static CLIENT: OnceLock<Result<reqwest::Client, String>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                // A POST redirected would become a GET: a redirect is an answer, not a delivery.
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("dtasks-axum/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| DeliveryError::Client(e.clone()))
}

/// One attempt: POSTs `body` to `url`.
async fn post(
    url: String,
    id: String,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<(), DeliveryError> {
    let answer = http()?
        .post(&url)
        .timeout(timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("Dtasks-Instance", &id)
        .body(body)
        .send()
        .await
        // The error's chain names the cause (refused, timed out); its first line alone does not.
        .map_err(|e| DeliveryError::Unreachable(error_chain(&e)))?;
    let status = answer.status();
    if status.is_success() {
        tracing::debug!(instance = %id, url = %url, status = status.as_u16(), "webhook delivered");
        Ok(())
    } else {
        tracing::debug!(instance = %id, url = %url, status = status.as_u16(), "webhook refused");
        Err(DeliveryError::Status(status.as_u16()))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

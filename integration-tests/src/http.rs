//! The HTTP tests of `dtasks-axum`: DTasks, a web service on them, an HTTP client, a
//! webhook receiver, and the scenarios, each run on the in-memory transport
//! (`tests/http_memory.rs`) and on RabbitMQ (`tests/http_amqp.rs`); `tests/kill_webhook.rs`
//! kills a worker process during a webhook's retries.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use dtasks::{dtask, DTask, InstanceId, RetryPolicy, WorkerConfig};
use dtasks_axum::{Accepted, Api, ApiError, Webhook};
use serde::Deserialize;
use serde_json::{json, Value};

/// Waits for the event `go` and answers `x * 2 + go`.
#[dtask(name = "it_http.gated")]
pub async fn gated(x: u64) -> u64 {
    let add: u64 = DTask::event("go").await;
    x * 2 + add
}

/// Answers at once.
#[dtask(name = "it_http.double")]
pub async fn double(x: u64) -> u64 {
    x * 2
}

/// Panics.
#[dtask(name = "it_http.fails")]
pub async fn fails(x: u64) -> u64 {
    if x > 0 {
        panic!("no {x} today");
    }
    x
}

/// Waits an hour on two timers (in its mailbox: a cancellation stops it at once).
#[dtask(name = "it_http.sleeper")]
pub async fn sleeper(x: u64) -> u64 {
    let hour = Duration::from_secs(3600);
    DTask::when_all([DTask::delay(hour), DTask::delay(hour)]).await;
    x
}

/// The workers' settings: every DTask above and the webhook.
pub fn config() -> WorkerConfig {
    WorkerConfig::new()
        .register(gated)
        .register(double)
        .register(fails)
        .register(sleeper)
        .register(dtasks_axum::webhook)
}

/// What `POST /start/{kind}` takes.
#[derive(Deserialize)]
struct StartBody {
    x: u64,
    id: Option<String>,
    callback: Option<String>,
    /// Milliseconds before the first retry of the webhook.
    retry_ms: Option<u64>,
}

/// A start from a request, as an application writes it.
async fn start(
    State(api): State<Api>,
    Path(kind): Path<String>,
    body: Result<Json<StartBody>, JsonRejection>,
) -> Result<Accepted, ApiError> {
    let Json(b) = body?;
    macro_rules! go {
        ($call:expr) => {{
            let mut start = api.start($call);
            if let Some(id) = b.id {
                start = start.id(InstanceId::new(id)?);
            }
            if let Some(url) = &b.callback {
                let retry = RetryPolicy::new()
                    .with_max_attempts(4)
                    .with_initial_delay(Duration::from_millis(b.retry_ms.unwrap_or(100)));
                start = start.webhook(Webhook::new(url)?.with_retry(retry));
            }
            start.await
        }};
    }
    match kind.as_str() {
        "gated" => go!(gated(b.x)),
        "double" => go!(double(b.x)),
        "fails" => go!(fails(b.x)),
        "sleeper" => go!(sleeper(b.x)),
        other => Err(ApiError::bad_input(format!("no DTask `{other}` here"))),
    }
}

/// The service: `POST /start/{kind}` and the routes of `api`; unknown paths and methods
/// answered in JSON.
pub fn app(api: Api) -> Router {
    Router::new()
        .route("/start/{kind}", post(start))
        .with_state(api.clone())
        .merge(api.routes())
        .fallback(dtasks_axum::fallback)
        .method_not_allowed_fallback(dtasks_axum::method_not_allowed)
}

/// Serves `app` on 127.0.0.1 at a port of its own; returns its base URL.
pub async fn serve(app: Router) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(format!("http://{addr}"))
}

/// An HTTP client that speaks to the service at `base`.
pub struct Http {
    /// The service's URL, without a trailing slash.
    pub base: String,
    client: reqwest::Client,
}

/// An answer: its status, headers and JSON body (`null` when empty).
#[derive(Debug)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The headers.
    pub headers: reqwest::header::HeaderMap,
    /// The body as JSON.
    pub body: Value,
}

impl Answer {
    /// The header `name`, as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Fails unless the status is `status`.
    pub fn expect(self, status: u16) -> anyhow::Result<Self> {
        ensure!(
            self.status == status,
            "expected {status}, got {}: {}",
            self.status,
            self.body
        );
        Ok(self)
    }
}

impl Http {
    /// A client of the service at `base`.
    pub fn new(base: String) -> Self {
        Self {
            base,
            client: reqwest::Client::new(),
        }
    }

    async fn answer(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Answer> {
        let res = req.send().await?;
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let bytes = res.bytes().await?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .with_context(|| format!("not JSON: {}", String::from_utf8_lossy(&bytes)))?
        };
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    /// `GET {base}{path}`.
    pub async fn get(&self, path: &str) -> anyhow::Result<Answer> {
        self.answer(self.client.get(format!("{}{path}", self.base)))
            .await
    }

    /// `POST {base}{path}` with the JSON `body`.
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Answer> {
        let req = self
            .client
            .post(format!("{}{path}", self.base))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(body)?);
        self.answer(req).await
    }

    /// `POST {base}{path}` with `body` as it is and `content_type`, if any.
    pub async fn post_body(
        &self,
        path: &str,
        body: Vec<u8>,
        content_type: Option<&str>,
    ) -> anyhow::Result<Answer> {
        let mut req = self.client.post(format!("{}{path}", self.base)).body(body);
        if let Some(t) = content_type {
            req = req.header(reqwest::header::CONTENT_TYPE, t);
        }
        self.answer(req).await
    }

    /// `POST {base}{path}` with `body` as it is, without a content type.
    pub async fn post_raw(&self, path: &str, body: &'static str) -> anyhow::Result<Answer> {
        self.answer(self.client.post(format!("{}{path}", self.base)).body(body))
            .await
    }

    /// Starts `kind` with `body`; returns the id, after checking the 202 and its
    /// `Location`.
    pub async fn start(&self, kind: &str, body: Value) -> anyhow::Result<String> {
        let a = self
            .post(&format!("/start/{kind}"), &body)
            .await?
            .expect(202)?;
        let id = a.body["id"].as_str().context("no id")?.to_string();
        let location = format!("/instances/{id}");
        ensure!(a.header("location") == Some(location.as_str()), "{a:?}");
        ensure!(a.body["status_url"] == json!(location), "{a:?}");
        ensure!(
            a.body["result_url"] == json!(format!("{location}/result")),
            "{a:?}"
        );
        Ok(id)
    }

    /// Polls the result of `id` until it is no longer 202 (within `limit`).
    pub async fn outcome(&self, id: &str, limit: Duration) -> anyhow::Result<Answer> {
        let deadline = Instant::now() + limit;
        loop {
            let a = self.get(&format!("/instances/{id}/result")).await?;
            if a.status != 202 {
                return Ok(a);
            }
            if Instant::now() > deadline {
                bail!("{id} still running after {limit:?}: {a:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// One POST a webhook receiver got.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// When it came.
    pub at: Instant,
    /// Its `Dtasks-Instance` header.
    pub instance: Option<String>,
    /// Its `Content-Type` header.
    pub content_type: Option<String>,
    /// Its body.
    pub body: Value,
    /// What the receiver answered.
    pub answered: u16,
}

/// A webhook receiver: answers `fail_with` to the first `fail_first` POSTs to each
/// instance, then 200, and records every POST.
#[derive(Clone)]
pub struct Receiver {
    /// Where it receives.
    pub url: String,
    seen: Arc<Mutex<Vec<Delivery>>>,
}

impl Receiver {
    /// A receiver on 127.0.0.1 that answers `fail_with` to the first `fail_first` POSTs
    /// about each instance.
    pub async fn start(fail_first: usize, fail_with: u16) -> anyhow::Result<Self> {
        Self::serve(ReceiverRules {
            fail_first,
            fail_with,
            stall_first: Duration::ZERO,
        })
        .await
    }

    /// A receiver on 127.0.0.1 that answers the first POST about each instance only after
    /// `stall` (recording it when it comes), and the others at once; all with 200.
    pub async fn stalling(stall: Duration) -> anyhow::Result<Self> {
        Self::serve(ReceiverRules {
            fail_first: 0,
            fail_with: 200,
            stall_first: stall,
        })
        .await
    }

    async fn serve(rules: ReceiverRules) -> anyhow::Result<Self> {
        let seen: Arc<Mutex<Vec<Delivery>>> = Arc::default();
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state((seen.clone(), rules));
        let base = serve(app).await?;
        Ok(Self {
            url: format!("{base}/hook"),
            seen,
        })
    }

    /// The POSTs about `id`, in order.
    pub fn deliveries(&self, id: &str) -> Vec<Delivery> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|d| d.body["id"] == json!(id))
            .cloned()
            .collect()
    }
}

/// How a [`Receiver`] answers.
#[derive(Clone, Copy)]
struct ReceiverRules {
    fail_first: usize,
    fail_with: u16,
    stall_first: Duration,
}

type ReceiverState = (Arc<Mutex<Vec<Delivery>>>, ReceiverRules);

async fn receive(
    State((seen, rules)): State<ReceiverState>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> StatusCode {
    let (answered, first) = {
        let mut seen = seen.lock().unwrap();
        let before = seen.iter().filter(|d| d.body["id"] == body["id"]).count();
        let answered = if before < rules.fail_first {
            rules.fail_with
        } else {
            200
        };
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        seen.push(Delivery {
            at: Instant::now(),
            instance: text("dtasks-instance"),
            content_type: text("content-type"),
            body,
            answered,
        });
        (answered, before == 0)
    };
    if first {
        tokio::time::sleep(rules.stall_first).await;
    }
    StatusCode::from_u16(answered).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Start → 202 + Location; the status; polls answering 202, an event, then 200 with the
/// result; a failure; 404s and 400s; a start under a chosen id twice.
pub async fn start_poll_signal(http: &Http) -> anyhow::Result<()> {
    let id = http.start("gated", json!({ "x": 20 })).await?;
    let status = http.get(&format!("/instances/{id}")).await?.expect(200)?;
    assert_eq!(status.body["id"], json!(id));
    assert_eq!(status.body["name"], json!("it_http.gated"));
    assert_eq!(
        status.body["result_url"],
        json!(format!("/instances/{id}/result"))
    );
    assert!(status.body["finished"].is_null(), "{:?}", status.body);
    // The service's client does not record children.
    assert_eq!(status.body["records_children"], json!(false));
    let running = http
        .get(&format!("/instances/{id}/result"))
        .await?
        .expect(202)?;
    assert_eq!(running.header("retry-after"), Some("1"));
    assert_eq!(running.body["id"], json!(id));
    assert!(
        ["pending", "running", "suspended"].contains(&running.body["status"].as_str().unwrap()),
        "{:?}",
        running.body
    );
    // Suspended, waiting for the event: the status says so.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = http.get(&format!("/instances/{id}")).await?.expect(200)?;
        if s.body["status"] == json!("suspended") {
            assert_eq!(s.body["waits"], json!([{ "Event": "go" }]));
            break;
        }
        ensure!(Instant::now() < deadline, "never suspended: {:?}", s.body);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Still running after a short wait: 202.
    http.get(&format!("/instances/{id}/result?wait=0.2"))
        .await?
        .expect(202)?;
    let sent = http
        .post(&format!("/instances/{id}/signal/go"), &json!(2))
        .await?
        .expect(202)?;
    assert_eq!(sent.body, json!({ "id": id, "event": "go" }));
    let done = http
        .get(&format!("/instances/{id}/result?wait=20"))
        .await?
        .expect(200)?;
    assert_eq!(
        done.body,
        json!({ "id": id, "status": "succeeded", "value": 42 })
    );
    let status = http.get(&format!("/instances/{id}")).await?.expect(200)?;
    assert_eq!(status.body["status"], json!("succeeded"));
    assert!(status.body["finished"].is_string(), "{:?}", status.body);
    // An event for a finished instance, a cancellation of one: 409.
    let late = http
        .post(&format!("/instances/{id}/signal/go"), &json!(1))
        .await?
        .expect(409)?;
    assert_eq!(late.body["error"], json!("finished"));
    let late = http
        .post_raw(&format!("/instances/{id}/cancel"), "")
        .await?
        .expect(409)?;
    assert_eq!(late.body["error"], json!("finished"));

    // A failure: 200, in the documented form.
    let id = http.start("fails", json!({ "x": 3 })).await?;
    let failed = http
        .outcome(&id, Duration::from_secs(20))
        .await?
        .expect(200)?;
    assert_eq!(failed.body["status"], json!("failed"));
    assert_eq!(failed.body["failure"]["kind"], json!("panic"));
    let message = failed.body["failure"]["message"].as_str().unwrap();
    assert!(message.contains("no 3 today"), "{message}");

    // Unknown ids: 404 everywhere; invalid ones: 400.
    for (path, post) in [
        ("/instances/nobody-here", false),
        ("/instances/nobody-here/result", false),
        ("/instances/nobody-here/signal/go", true),
        ("/instances/nobody-here/cancel", true),
    ] {
        let a = if post {
            http.post(path, &json!({})).await?
        } else {
            http.get(path).await?
        };
        let a = a.expect(404)?;
        assert_eq!(a.body["error"], json!("not_found"), "{path}");
    }
    let bad = http.get("/instances/not%20an%20id").await?.expect(400)?;
    assert_eq!(bad.body["error"], json!("bad_input"));
    let bad = http
        .post_raw(&format!("/instances/{id}/signal/go"), "{not json")
        .await?
        .expect(400)?;
    assert_eq!(bad.body["error"], json!("bad_input"));
    let bad = http
        .get(&format!("/instances/{id}/result?wait=soon"))
        .await?
        .expect(400)?;
    assert_eq!(bad.body["error"], json!("bad_input"));

    // A chosen id starts once.
    let chosen = format!("order-{}", InstanceId::random());
    let first = http
        .start("double", json!({ "x": 4, "id": chosen }))
        .await?;
    assert_eq!(first, chosen);
    let again = http
        .post("/start/double", &json!({ "x": 5, "id": chosen }))
        .await?
        .expect(409)?;
    assert_eq!(again.body["error"], json!("already_started"));
    let done = http
        .outcome(&chosen, Duration::from_secs(20))
        .await?
        .expect(200)?;
    assert_eq!(done.body["value"], json!(8));
    Ok(())
}

/// Requests refused before any route's work, each answered in JSON (`Answer` fails on a
/// body that is not JSON): bodies the `Json` extractor refuses, a body past the limit,
/// unknown paths and methods.
pub async fn refused_requests(http: &Http) -> anyhow::Result<()> {
    let json = Some("application/json");
    for (body, content_type, status) in [
        (&b"{not json"[..], json, 400),
        (&br#"{"x": 1}"#[..], None, 415),
        (&br#"{"y": 1}"#[..], json, 422),
    ] {
        let a = http
            .post_body("/start/double", body.to_vec(), content_type)
            .await?
            .expect(status)?;
        ensure!(a.body["error"] == "bad_input", "{status}: {}", a.body);
        ensure!(a.body["message"].is_string(), "{status}: {}", a.body);
    }
    let big = vec![b'1'; 3 << 20];
    // On a client of its own: the server answers 413 before reading the body and closes
    // the connection, which a shared pool could hand to the next request.
    let a = Http::new(http.base.clone())
        .post_body("/instances/someone/signal/go", big, json)
        .await?
        .expect(413)?;
    ensure!(a.body["error"] == "bad_input", "{}", a.body);
    // A parameter given twice is refused, not settled by the last one; `status` repeats.
    let a = http
        .get("/instances?limit=1&limit=1000")
        .await?
        .expect(400)?;
    ensure!(a.body["error"] == "bad_input", "{}", a.body);
    ensure!(
        a.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("`limit` is given twice")),
        "{}",
        a.body
    );
    http.get("/instances/someone/result?wait=1&wait=2")
        .await?
        .expect(400)?;
    http.get("/instances?status=succeeded&status=failed")
        .await?
        .expect(200)?;
    let a = http.get("/nowhere").await?.expect(404)?;
    ensure!(a.body["error"] == "not_found", "{}", a.body);
    let a = http.post("/instances", &Value::Null).await?.expect(405)?;
    ensure!(a.body["error"] == "method_not_allowed", "{}", a.body);
    Ok(())
}

/// A cancellation changes the instance: 202, then its result reads cancelled with the
/// reason, and a second cancellation is a 409.
pub async fn cancel(http: &Http) -> anyhow::Result<()> {
    let id = http.start("sleeper", json!({ "x": 1 })).await?;
    let c = http
        .post(
            &format!("/instances/{id}/cancel"),
            &json!({ "reason": "no longer needed" }),
        )
        .await?
        .expect(202)?;
    assert_eq!(
        c.body,
        json!({ "id": id, "cancelled": true, "reason": "no longer needed" })
    );
    let out = http
        .get(&format!("/instances/{id}/result?wait=20"))
        .await?
        .expect(200)?;
    assert_eq!(
        out.body,
        json!({
            "id": id,
            "status": "cancelled",
            "failure": { "kind": "cancelled", "message": "no longer needed" },
        })
    );
    let status = http.get(&format!("/instances/{id}")).await?.expect(200)?;
    assert_eq!(status.body["status"], json!("cancelled"));
    http.post(&format!("/instances/{id}/cancel"), &json!({}))
        .await?
        .expect(409)?;
    let bad = http
        .post(&format!("/instances/{id}/cancel"), &json!({ "why": 1 }))
        .await?
        .expect(400)?;
    assert_eq!(bad.body["error"], json!("bad_input"));
    Ok(())
}

/// Listings filter by status, name, id prefix and start time, and page with a cursor.
pub async fn list_filters(http: &Http) -> anyhow::Result<()> {
    let tag = format!("ls{}", &InstanceId::random().as_str()[..8]);
    let before = http.get("/instances?limit=1").await?.expect(200)?;
    let _ = before;
    let since = dtasks_now_ms();
    let mut done = Vec::new();
    for x in 0..3 {
        let id = http
            .start("double", json!({ "x": x, "id": format!("{tag}-d{x}") }))
            .await?;
        done.push(id);
    }
    let waiting = http
        .start("gated", json!({ "x": 1, "id": format!("{tag}-g") }))
        .await?;
    for id in &done {
        http.outcome(id, Duration::from_secs(20))
            .await?
            .expect(200)?;
    }
    let ids = |a: &Answer| -> Vec<String> {
        a.body["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_string())
            .collect()
    };
    let all = http
        .get(&format!("/instances?prefix={tag}"))
        .await?
        .expect(200)?;
    let mut expected: Vec<String> = done.iter().cloned().chain([waiting.clone()]).collect();
    let mut got = ids(&all);
    got.sort();
    expected.sort();
    assert_eq!(got, expected);
    assert!(all.body["next"].is_null());

    let succeeded = http
        .get(&format!("/instances?prefix={tag}&status=succeeded"))
        .await?
        .expect(200)?;
    let mut got = ids(&succeeded);
    got.sort();
    assert_eq!(got, done);
    let by_name = http
        .get(&format!("/instances?prefix={tag}&name=it_http.gated"))
        .await?
        .expect(200)?;
    assert_eq!(ids(&by_name), vec![waiting.clone()]);
    // Several statuses: repeated or comma-separated.
    let both = http
        .get(&format!(
            "/instances?prefix={tag}&status=succeeded,pending&status=suspended&status=running"
        ))
        .await?
        .expect(200)?;
    assert_eq!(ids(&both).len(), 4);
    let none = http
        .get(&format!("/instances?prefix={tag}&status=failed"))
        .await?
        .expect(200)?;
    assert_eq!(ids(&none), Vec::<String>::new());
    // Start times: everything started since `since`, nothing before it.
    let recent = http
        .get(&format!("/instances?prefix={tag}&since={since}"))
        .await?
        .expect(200)?;
    assert_eq!(ids(&recent).len(), 4);
    let older = http
        .get(&format!("/instances?prefix={tag}&until={since}"))
        .await?
        .expect(200)?;
    assert_eq!(ids(&older).len(), 0);
    let rfc = http
        .get(&format!(
            "/instances?prefix={tag}&since=2000-01-01T00:00:00Z"
        ))
        .await?
        .expect(200)?;
    assert_eq!(ids(&rfc).len(), 4);
    // Pages of 3, then the rest by the cursor: newest first, each once.
    let first = http
        .get(&format!("/instances?prefix={tag}&limit=3"))
        .await?
        .expect(200)?;
    assert_eq!(ids(&first).len(), 3);
    let cursor = first.body["next"]
        .as_str()
        .context("a next page")?
        .to_string();
    let rest = http
        .get(&format!(
            "/instances?prefix={tag}&limit=3&cursor={}",
            urlencode(&cursor)
        ))
        .await?
        .expect(200)?;
    assert_eq!(ids(&rest).len(), 1);
    assert!(rest.body["next"].is_null());
    let mut paged: Vec<String> = ids(&first).into_iter().chain(ids(&rest)).collect();
    paged.sort();
    assert_eq!(paged, expected);
    // Bad parameters: 400.
    for q in [
        "status=done",
        "limit=0",
        "limit=x",
        "since=yesterday",
        "cursor=zz",
        "colour=red",
    ] {
        let a = http.get(&format!("/instances?{q}")).await?.expect(400)?;
        assert_eq!(a.body["error"], json!("bad_input"), "{q}");
    }
    // Let the waiting one go.
    http.post(&format!("/instances/{waiting}/signal/go"), &json!(0))
        .await?
        .expect(202)?;
    http.outcome(&waiting, Duration::from_secs(20))
        .await?
        .expect(200)?;
    Ok(())
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn dtasks_now_ms() -> u64 {
    dtasks::store::millis(std::time::SystemTime::now())
}

/// Waits until the receiver got `n` POSTs about `id`, then a little longer to see that no
/// more come; returns them.
pub async fn deliveries(
    receiver: &Receiver,
    id: &str,
    n: usize,
    limit: Duration,
) -> anyhow::Result<Vec<Delivery>> {
    let deadline = Instant::now() + limit;
    while receiver.deliveries(id).len() < n {
        ensure!(
            Instant::now() < deadline,
            "{id}: {} deliveries after {limit:?}, expected {n}",
            receiver.deliveries(id).len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(receiver.deliveries(id))
}

/// Webhooks: a receiver that fails the first two attempts sees exactly three POSTs, the
/// waits between them no shorter than the policy's, each with the body a read of the
/// result gives; a failed and a cancelled instance deliver their failure; a receiver
/// that refuses with a 4xx is not tried again.
pub async fn webhooks(http: &Http) -> anyhow::Result<()> {
    let flaky = Receiver::start(2, 503).await?;
    let id = http
        .start(
            "double",
            json!({ "x": 21, "callback": flaky.url, "retry_ms": 200 }),
        )
        .await?;
    let seen = deliveries(&flaky, &id, 3, Duration::from_secs(30)).await?;
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(
        seen.iter().map(|d| d.answered).collect::<Vec<_>>(),
        [503, 503, 200]
    );
    // Waits of 200 ms and 400 ms, never shorter.
    assert!(
        seen[1].at - seen[0].at >= Duration::from_millis(200),
        "{seen:?}"
    );
    assert!(
        seen[2].at - seen[1].at >= Duration::from_millis(400),
        "{seen:?}"
    );
    let result = http
        .outcome(&id, Duration::from_secs(20))
        .await?
        .expect(200)?;
    assert_eq!(
        result.body,
        json!({ "id": id, "status": "succeeded", "value": 42 })
    );
    for d in &seen {
        assert_eq!(d.body, result.body);
        assert_eq!(d.instance.as_deref(), Some(id.as_str()));
        assert_eq!(d.content_type.as_deref(), Some("application/json"));
    }
    // The instance is the webhook DTask.
    let status = http.get(&format!("/instances/{id}")).await?.expect(200)?;
    assert_eq!(status.body["name"], json!(dtasks_axum::WEBHOOK_DTASK));

    // A failure and a cancellation are delivered as a read of the result shows them.
    let ok = Receiver::start(0, 500).await?;

    // An event for an instance started with a webhook goes to the call it runs, which
    // waits for it, even when it is sent before that call has started.
    let gated = http
        .start("gated", json!({ "x": 20, "callback": ok.url }))
        .await?;
    let sent = http
        .post(&format!("/instances/{gated}/signal/go"), &json!(2))
        .await?
        .expect(202)?;
    assert_eq!(sent.body, json!({ "id": gated, "event": "go" }));
    let result = http
        .outcome(&gated, Duration::from_secs(20))
        .await?
        .expect(200)?;
    assert_eq!(
        result.body,
        json!({ "id": gated, "status": "succeeded", "value": 42 })
    );
    let seen = deliveries(&ok, &gated, 1, Duration::from_secs(20)).await?;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].body, result.body);
    let failed = http
        .start("fails", json!({ "x": 5, "callback": ok.url }))
        .await?;
    let sleeping = http
        .start("sleeper", json!({ "x": 5, "callback": ok.url }))
        .await?;
    // Wait until the sleeper's child has started before cancelling the root.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = http
            .get(&format!("/instances/{sleeping}"))
            .await?
            .expect(200)?;
        if s.body["status"] == json!("suspended") {
            break;
        }
        ensure!(Instant::now() < deadline, "never suspended: {:?}", s.body);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    http.post(
        &format!("/instances/{sleeping}/cancel"),
        &json!({ "reason": "changed my mind" }),
    )
    .await?
    .expect(202)?;
    for (id, status, kind) in [
        (&failed, "failed", "child_failure"),
        (&sleeping, "cancelled", "cancelled"),
    ] {
        let result = http
            .outcome(id, Duration::from_secs(20))
            .await?
            .expect(200)?;
        assert_eq!(result.body["status"], json!(status), "{:?}", result.body);
        assert_eq!(
            result.body["failure"]["kind"],
            json!(kind),
            "{:?}",
            result.body
        );
        let seen = deliveries(&ok, id, 1, Duration::from_secs(20)).await?;
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].body, result.body);
    }
    let failed_result = http.outcome(&failed, Duration::from_secs(1)).await?;
    let message = failed_result.body["failure"]["message"].as_str().unwrap();
    assert!(message.contains("no 5 today"), "{message}");
    let cancelled = http.outcome(&sleeping, Duration::from_secs(1)).await?;
    assert_eq!(
        cancelled.body["failure"]["message"],
        json!("changed my mind")
    );

    // A 4xx ends the delivery: one attempt; the instance's outcome stands.
    let refusing = Receiver::start(10, 404).await?;
    let id = http
        .start("double", json!({ "x": 1, "callback": refusing.url }))
        .await?;
    let result = http
        .outcome(&id, Duration::from_secs(20))
        .await?
        .expect(200)?;
    assert_eq!(result.body["value"], json!(2));
    let seen = deliveries(&refusing, &id, 1, Duration::from_secs(20)).await?;
    assert_eq!(seen.len(), 1, "{seen:?}");

    // A callback that is not an http(s) URL: 400, nothing started.
    let bad = http
        .post(
            "/start/double",
            &json!({ "x": 1, "callback": "mailto:ops@example.com" }),
        )
        .await?
        .expect(400)?;
    assert_eq!(bad.body["error"], json!("bad_input"));
    Ok(())
}

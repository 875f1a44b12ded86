//! # dtasks-axum: dtasks over HTTP
//!
//! Long work started by an HTTP request answers at once with `202 Accepted` and a
//! `Location` to poll; the work runs as a DTask instance, anywhere, for as long as it
//! takes. This crate gives an [axum](https://docs.rs/axum) application:
//!
//! - [`Api::start`]: a start from a handler, answered `202 Accepted`,
//!   `Location: /instances/{id}`, body `{"id", "status_url", "result_url"}`; under an id
//!   of the request's choice once ([`Start::id`]), and with a completion webhook
//!   ([`Start::webhook`]);
//! - [`Api::routes`]: a [`Router`](axum::Router) for the instances' status, results,
//!   listings, events and cancellation;
//! - [`Api::pages`]: web pages of the same instances, for people: a list with filters,
//!   and a page per instance with its timeline, its result and forms that signal and
//!   cancel it;
//! - [`webhook`]: the DTask that delivers a completion webhook durably. Register it on
//!   every worker: `WorkerConfig::new().register(dtasks_axum::webhook)`.
//!
//! ```
//! use axum::body::Body;
//! use axum::extract::rejection::JsonRejection;
//! use axum::extract::State;
//! use axum::http::{header, Request, StatusCode};
//! use axum::routing::post;
//! use axum::{Json, Router};
//! use dtasks::{dtask, Runtime, WorkerConfig};
//! use dtasks_axum::{Accepted, Api, ApiError};
//! use tower::ServiceExt as _;
//!
//! #[dtask]
//! async fn double(x: u64) -> u64 {
//!     x * 2
//! }
//!
//! // Taken as a `Result`, a refused body is answered in JSON too (`ApiError`).
//! async fn post_double(
//!     State(api): State<Api>,
//!     body: Result<Json<u64>, JsonRejection>,
//! ) -> Result<Accepted, ApiError> {
//!     let Json(x) = body?;
//!     api.start(double(x)).await
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> anyhow::Result<()> {
//! let rt = Runtime::new(WorkerConfig::new().register(double).register(dtasks_axum::webhook))?;
//! let api = Api::new(rt.client());
//! let app: Router = Router::new()
//!     .route("/double", post(post_double))
//!     .with_state(api.clone())
//!     .merge(api.routes())
//!     // Unknown paths and methods answered in JSON as well.
//!     .fallback(dtasks_axum::fallback)
//!     .method_not_allowed_fallback(dtasks_axum::method_not_allowed);
//!
//! let bad = Request::post("/double")
//!     .header(header::CONTENT_TYPE, "application/json")
//!     .body(Body::from("twenty-one"))?;
//! let answer = app.clone().oneshot(bad).await?;
//! assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
//! let body = axum::body::to_bytes(answer.into_body(), 1 << 20).await?;
//! let error: serde_json::Value = serde_json::from_slice(&body)?;
//! assert_eq!(error["error"], "bad_input");
//! let nowhere = Request::get("/nowhere").body(Body::empty())?;
//! assert_eq!(app.clone().oneshot(nowhere).await?.status(), StatusCode::NOT_FOUND);
//!
//! let start = Request::post("/double")
//!     .header(header::CONTENT_TYPE, "application/json")
//!     .body(Body::from("21"))?;
//! let answer = app.clone().oneshot(start).await?;
//! assert_eq!(answer.status(), StatusCode::ACCEPTED);
//! let location = answer.headers()[header::LOCATION].to_str()?.to_string();
//! assert!(location.starts_with("/instances/"));
//!
//! let poll = Request::get(format!("{location}/result?wait=5")).body(Body::empty())?;
//! let answer = app.oneshot(poll).await?;
//! assert_eq!(answer.status(), StatusCode::OK);
//! let body = axum::body::to_bytes(answer.into_body(), 1 << 20).await?;
//! let outcome: serde_json::Value = serde_json::from_slice(&body)?;
//! assert_eq!(outcome["status"], "succeeded");
//! assert_eq!(outcome["value"], 42);
//! # rt.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! ## Routes
//!
//! Paths are relative to where the routes are served ([`Api::with_base_path`]); every
//! body is JSON.
//!
//! | method and path | answers |
//! |---|---|
//! | `GET /instances/{id}` | 200 and the instance: `{"id", "name", "status", "parent", "started", "updated", "finished", "waits", "duplicates", "history", "history_dropped", "steps", "runs", "fingerprint", "records_children", "result_url"}`; `history` holds the status changes workers reported (`{"at", "status", "waits", "steps"}`, at most the latest 50), `steps` the journal as the latest of them summarised it (the store's own JSON of [`Steps`](dtasks::store::Steps)); `runs`: 1 plus one per continue-as-new; `fingerprint`: the code that saved a suspended snapshot machine, hexadecimal, or `null`; `records_children`: whether its children are recorded too (`Client::recording_children`) |
//! | `GET /instances/{id}/result` | 200 and the outcome once the instance finished; 202, `Retry-After: 1` and `{"id", "status"}` while it runs; `?wait=SECONDS` (at most 60) waits for the finish first |
//! | `GET /instances` | 200 and `{"instances": [..], "next": cursor or null}`: newest start first; filters `status` (repeated or comma-separated), `name` (the DTask), `prefix` (of the id), `since` and `until` (start time: RFC 3339 or milliseconds since the Unix epoch), `parent` (the children of this id), `roots` (`true`: roots only), `limit` (1–1000, default 100), `cursor` (the `next` of the page before) |
//! | `POST /instances/{id}/signal/{name}` | 202 and `{"id", "event"}`: the body (empty: `null`; read as JSON whatever its content type) was sent as the event `name` (1 to 200 bytes, any of them; [`Client::signal`](dtasks::Client::signal)); durable once answered. The route cannot know the type the instance waits for: a body that does not decode as it fails the instance when its wait takes it, so a service whose events come from outside should check them and send them from a route of its own |
//! | `POST /instances/{id}/cancel` | 202 and `{"id", "cancelled": true, "reason"}`: the cancellation was recorded ([`Client::cancel`](dtasks::Client::cancel)); the body is empty or `{"reason": "..."}` |
//!
//! An **outcome** is `{"id", "status": "succeeded", "value": <the result>}`, or for an
//! instance that failed or was cancelled `{"id", "status": "failed" | "cancelled",
//! "failure": {"kind", "message"}}`, still with 200: the result is there, and it is a
//! failure. The `kind` names the failure's predicate: `panic`, `child_failure`,
//! `cancelled`, `timeout`, `nondeterminism`, `unknown_dtask`, `bad_input`,
//! `state_too_large`, `stuck`, `misuse`, `code_changed`.
//!
//! **Values** are MessagePack inside dtasks and JSON here, as the `dtasks` command line
//! shows them: a result's structs are arrays of their fields (dtasks encodes them
//! compactly), enums are `{"Variant": value}`, byte strings arrays of numbers. An event's
//! JSON body decodes into the type the instance waits for: an object where a struct is
//! expected, `{"Approve": "Ada"}` where an enum is. **Times** are RFC 3339 in UTC with
//! milliseconds. `waits` are the store's own JSON (`{"Event": "approval"}`,
//! `{"Timer": {"at_ms": ..}}`).
//!
//! **Errors** answer `{"error": "<code>", "message": "<text>"}` with one status per kind
//! (see [`ApiError`]): 400 bad input (an invalid id, parameter or body; an unknown query
//! parameter too, and one given twice, but `status`, whose values add up), 404 unknown instance, 409 already finished or already started, 503
//! the broker or the instance store unavailable, 500 otherwise. A body the routes refuse
//! before reading it is `bad_input` too, with axum's status: 413 past the body limit
//! (axum's `DefaultBodyLimit`, 2 MB unless the application sets another). Handlers of the
//! application that take their body as `Result<Json<T>, JsonRejection>` answer their
//! refusals the same way (400, 415, 422: `?` turns them into an [`ApiError`]); with
//! [`fallback`] and [`method_not_allowed`] on the router, unknown paths (404) and methods
//! (405) are answered in JSON as well.
//!
//! ## Web pages
//!
//! [`Api::pages`] serves, next to the routes, `GET /ui` (the roots, newest first,
//! filtered by status, DTask name, id prefix and start time; children too when asked, or
//! the children of one instance) and `GET /ui/instances/{id}` (status, what it waits for,
//! a timeline, its parent and children, the result or failure, and forms that send an
//! event and cancel).
//!
//! The **timeline** shows the start, each status change a worker reported (the first
//! suspension, a long wait — an event, a resume, a timer — beginning or ending, the
//! finish; the latest 50), and between them the journal's steps (children, timers, events,
//! resumes, side effects, with how many are done) as the latest report summarised them. It
//! does not show changes among children alone (no write is made for them), times of single
//! steps (the journal keeps none), nor the steps of snapshot-model instances (only their
//! suspensions and resumes). **Children** are in the store, listed and linked, only under
//! roots started by a client made with
//! [`Client::recording_children`](dtasks::Client::recording_children); each child's page
//! links its parent. A page view reads the store twice (the instance, its children).
//!
//! They are plain HTML rendered on the server, with one stylesheet and
//! one small script that reads the page again every 2 seconds and swaps in what changed;
//! the forms work without it (they post and are redirected back). Everything an instance
//! brings to a page (ids, names, results, failures, event names) is escaped, no inline
//! script runs (content security policy), and forms sent from other sites are refused;
//! the pages check nobody's identity, so serve them behind the application's own
//! authentication where signalling and cancelling matter.
//!
//! ## Completion webhooks
//!
//! `api.start(call).webhook(Webhook::new(url)?)` starts the DTask [`webhook`] as the root
//! instance, which runs `call` as its child, then POSTs the outcome, the same JSON that
//! `GET /instances/{id}/result` answers, to `url` (headers `Content-Type:
//! application/json` and `Dtasks-Instance: <id>`), and ends as the child did. The POST is
//! a [`DTask::run_with_retry_if`](dtasks::DTask::run_with_retry_if) of that instance:
//! attempts that fail (no answer, `5xx`, `408`, `429`) are tried again after durable waits
//! as the [`Webhook`]'s [`RetryPolicy`](dtasks::RetryPolicy) says, across worker crashes
//! and restarts, and a worker that dies during an attempt leaves it to another. Delivery
//! is therefore at least once: a receiver drops repeats by the instance id. Other answers
//! (`3xx`, other `4xx`) end the delivery; a delivery that runs out of attempts is logged
//! as a warning and leaves the instance's outcome as it is.
//!
//! ## Why the HTTP client
//!
//! Webhooks are sent with `reqwest` (hyper underneath, as axum), without its default
//! features and with rustls: no OpenSSL to build or link, Mozilla's root certificates
//! built in, one connection pool per process. The core crate `dtasks` has no HTTP
//! dependency.
#![doc(test(attr(deny(warnings))))]

mod api;
mod error;
mod json;
mod pages;
mod routes;
mod webhook;

pub use api::{Accepted, Api, Start};
pub use error::{fallback, method_not_allowed, ApiError};
pub use webhook::{webhook, AnyValue, Webhook, WEBHOOK_DTASK};

//! [`Api`], what the routes and the start helper share, and the start itself: [`Start`]
//! and its answer, [`Accepted`].

use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use dtasks::{Call, Client, InstanceId};
use serde_bytes::ByteBuf;
use serde_json::json;

use crate::error::ApiError;
use crate::json::instance_path;
use crate::webhook::{webhook, Webhook};

/// dtasks over HTTP: a [`Client`] and the path the routes are served under. Cheap to
/// clone; keep one in the state of your handlers.
///
/// [`Api::start`] starts an instance from a handler and answers `202 Accepted`;
/// [`Api::routes`] serves the instances' status, results, listings, events and
/// cancellation.
#[derive(Clone)]
pub struct Api {
    client: Client,
    base: Arc<str>,
}

impl fmt::Debug for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Api")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Api {
    /// An API over `client`, whose routes are served at the root (`/instances/...`).
    pub fn new(client: Client) -> Self {
        Self {
            client,
            base: Arc::from(""),
        }
    }

    /// Tells where [`Api::routes`] is nested (`"/api"` for `Router::nest("/api", ..)`), so
    /// that the URLs in answers (`Location`, `status_url`, ...) lead there. No trailing
    /// slash.
    pub fn with_base_path(mut self, base: &str) -> Self {
        self.base = Arc::from(base.trim_end_matches('/'));
        self
    }

    /// The client it starts and reads instances with.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The path the routes are served under (`""` at the root).
    pub fn base_path(&self) -> &str {
        &self.base
    }

    /// A start of `call` as a new root instance, to await in a handler: it answers
    /// `202 Accepted` with `Location: {base}/instances/{id}` and the JSON body
    /// `{"id", "status_url", "result_url"}`. Add [`Start::id`] to start it under an id of
    /// your choice, once; [`Start::webhook`] to have its outcome posted to a URL.
    ///
    /// ```
    /// use axum::extract::State;
    /// use axum::Json;
    /// use dtasks::dtask;
    /// use dtasks_axum::{Accepted, Api, ApiError};
    ///
    /// #[dtask]
    /// async fn resize(url: String, width: u32) -> String {
    ///     format!("{url}?w={width}")
    /// }
    ///
    /// #[derive(serde::Deserialize)]
    /// struct Resize {
    ///     url: String,
    ///     width: u32,
    /// }
    ///
    /// async fn post_resize(
    ///     State(api): State<Api>,
    ///     Json(r): Json<Resize>,
    /// ) -> Result<Accepted, ApiError> {
    ///     api.start(resize(r.url, r.width)).await
    /// }
    /// # let _ = post_resize;
    /// ```
    pub fn start<T>(&self, call: Call<T>) -> Start<T> {
        Start {
            api: self.clone(),
            call,
            id: None,
            webhook: None,
        }
    }

    /// The path of the instance `id`'s status.
    pub(crate) fn instance_path(&self, id: &InstanceId) -> String {
        instance_path(&self.base, id)
    }
}

/// A start of one instance from an HTTP handler ([`Api::start`]); await it.
#[must_use = "a start does nothing unless it is awaited"]
pub struct Start<T> {
    api: Api,
    call: Call<T>,
    id: Option<InstanceId>,
    webhook: Option<Webhook>,
}

impl<T> fmt::Debug for Start<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Start")
            .field("call", &self.call)
            .field("id", &self.id)
            .field("webhook", &self.webhook)
            .finish()
    }
}

impl<T> Start<T> {
    /// Starts the instance under `id`, once: a second start of the same id (from any
    /// process) answers `409 already_started`
    /// ([`Client::start_with_id`](dtasks::Client::start_with_id)). Gives requests an
    /// idempotency key: a client that retries a start whose answer it lost gets the 409
    /// and finds the instance at `/instances/{id}`.
    pub fn id(mut self, id: InstanceId) -> Self {
        self.id = Some(id);
        self
    }

    /// Posts the outcome to `hook` when the instance finishes, durably (see [`Webhook`]
    /// and [`webhook`](crate::webhook())): the root instance is then the webhook DTask,
    /// `dtasks_axum.webhook`, which runs the call as its child (id `{id}.0`) and ends as
    /// it did. Its status, result, events and cancellation are the instance's as usual,
    /// with two differences: listings show it under the name `dtasks_axum.webhook`, and a
    /// failure of the call reads as a `child_failure` quoting it. An event sent through
    /// the routes (`POST /instances/{id}/signal/{name}`) or the command line
    /// (`dtasks signal`) goes to the call, which waits for it as `{id}.0`; from Rust, send it with
    /// [`Client::signal_child`](dtasks::Client::signal_child) to `{id}.0` (an event
    /// [`Client::signal`](dtasks::Client::signal) sends to the root is never taken).
    pub fn webhook(mut self, hook: Webhook) -> Self {
        self.webhook = Some(hook);
        self
    }

    /// Starts the instance; what awaiting the start does.
    pub async fn send(self) -> Result<Accepted, ApiError> {
        let Start {
            api,
            call,
            id,
            webhook: hook,
        } = self;
        let client = &api.client;
        let started = match hook {
            Some(hook) => {
                let (name, input) = call.into_encoded()?;
                let wrapped = webhook(name, ByteBuf::from(input), hook);
                match id {
                    Some(id) => client.start_with_id(id, wrapped).await?.id().clone(),
                    None => client.start(wrapped).await?.id().clone(),
                }
            }
            None => match id {
                Some(id) => client.start_with_id(id, call).await?.id().clone(),
                None => client.start(call).await?.id().clone(),
            },
        };
        Ok(Accepted {
            location: api.instance_path(&started),
            id: started,
        })
    }
}

impl<T: Send + 'static> IntoFuture for Start<T> {
    type Output = Result<Accepted, ApiError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.send())
    }
}

/// The answer to a start: `202 Accepted`, `Location: {base}/instances/{id}`, and the
/// JSON body `{"id": "<id>", "status_url": "<location>", "result_url":
/// "<location>/result"}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    id: InstanceId,
    location: String,
}

impl Accepted {
    /// The id of the instance started.
    pub fn id(&self) -> &InstanceId {
        &self.id
    }

    /// The path of its status (the `Location` header).
    pub fn location(&self) -> &str {
        &self.location
    }
}

impl IntoResponse for Accepted {
    fn into_response(self) -> Response {
        let body = json!({
            "id": self.id.as_str(),
            "status_url": self.location,
            "result_url": format!("{}/result", self.location),
        });
        (
            StatusCode::ACCEPTED,
            [(header::LOCATION, self.location)],
            Json(body),
        )
            .into_response()
    }
}

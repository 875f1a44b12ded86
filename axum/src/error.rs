//! [`ApiError`]: what a route answers when it cannot do what it was asked, one HTTP status
//! per kind of [`dtasks::Error`].

use std::fmt;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// An error answered over HTTP: a status code and the JSON body
/// `{"error": "<code>", "message": "<text>"}`.
///
/// Every route of [`Api::routes`](crate::Api::routes) and [`Start`](crate::Start) maps a
/// [`dtasks::Error`] the same way:
///
/// | status | `error` | when |
/// |---|---|---|
/// | 400 | `bad_input` | an invalid id, event name, query parameter, JSON body, callback URL, or arguments that cannot be encoded |
/// | 400 | `unknown_dtask` | a start names a DTask the client's registry does not have |
/// | 404 | `not_found` | no instance with this id is known (never started, started with `Client::call`, or purged) |
/// | 409 | `finished` | an event or a cancellation for an instance that has finished |
/// | 409 | `already_started` | a start under an id that was already started |
/// | 503 | `unavailable` | the broker or the instance store cannot be reached, or failed |
/// | 500 | `internal` | anything else (a misconfiguration, a stored value that does not decode) |
///
/// Its own handlers can return it too: `From<dtasks::Error>` makes `?` work on any dtasks
/// call.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    /// A 400 `bad_input` error saying `message`.
    pub fn bad_input(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "bad_input",
            message: message.into(),
        }
    }

    /// A 409 `finished` error: the instance `id` has finished.
    pub(crate) fn finished(id: &str) -> Self {
        Self {
            status: StatusCode::CONFLICT,
            code: "finished",
            message: format!("instance `{id}` has finished"),
        }
    }

    /// A 500 `internal` error saying `message`.
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: message.into(),
        }
    }

    /// The HTTP status it answers with.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// Its `error` code (`bad_input`, `not_found`, ...; see the table above).
    pub fn code(&self) -> &str {
        self.code
    }

    /// Its message, for people.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<dtasks::Error> for ApiError {
    fn from(e: dtasks::Error) -> Self {
        let (status, code) = if e.is_bad_input() {
            (StatusCode::BAD_REQUEST, "bad_input")
        } else if e.is_unknown_dtask() {
            (StatusCode::BAD_REQUEST, "unknown_dtask")
        } else if e.is_not_found() {
            (StatusCode::NOT_FOUND, "not_found")
        } else if e.is_finished() {
            (StatusCode::CONFLICT, "finished")
        } else if e.is_already_started() {
            (StatusCode::CONFLICT, "already_started")
        } else if e.is_transport() || e.is_store() {
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        } else {
            (StatusCode::INTERNAL_SERVER_ERROR, "internal")
        };
        Self {
            status,
            code,
            message: e.to_string(),
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = self.status.as_u16(), code = self.code, message = %self.message, "request failed");
        }
        let body = json!({ "error": self.code, "message": self.message });
        (self.status, Json(body)).into_response()
    }
}

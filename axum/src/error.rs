//! [`ApiError`]: what a route answers when it cannot do what it was asked, one HTTP status
//! per kind of [`dtasks::Error`].

use std::fmt;

use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::http::{Method, StatusCode, Uri};
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
/// | 413, 415, 422 | `bad_input` | a body that axum's `Json` extractor refuses ([`From<JsonRejection>`](#impl-From%3CJsonRejection%3E-for-ApiError)): past the body limit (2 MB by default, axum's `DefaultBodyLimit`), without `Content-Type: application/json`, or JSON that does not fit the handler's type |
/// | 404, 405 | `not_found`, `method_not_allowed` | a path no route serves, or a method it does not take, when the router uses [`fallback`](crate::fallback) and [`method_not_allowed`](crate::method_not_allowed) |
/// | 400 | `unknown_dtask` | a start names a DTask the client's registry does not have |
/// | 404 | `not_found` | no instance with this id is known (never started, started with `Client::call`, or purged) |
/// | 409 | `finished` | an event or a cancellation for an instance that has finished |
/// | 409 | `already_started` | a start under an id that was already started |
/// | 503 | `unavailable` | the broker or the instance store cannot be reached, or failed |
/// | 500 | `internal` | anything else (a misconfiguration, a stored value that does not decode) |
///
/// Its own handlers can return it too: `From<dtasks::Error>` makes `?` work on any dtasks
/// call, and `From<JsonRejection>` on a body taken as `Result<Json<T>, JsonRejection>`,
/// so that a refused body is answered in JSON like every other error (axum's own answer
/// is plain text).
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

impl From<JsonRejection> for ApiError {
    /// The status axum chose (400 for JSON that does not parse, 413, 415, 422), with the
    /// code `bad_input` and axum's explanation.
    fn from(e: JsonRejection) -> Self {
        Self {
            status: e.status(),
            code: "bad_input",
            message: e.body_text(),
        }
    }
}

impl From<BytesRejection> for ApiError {
    /// The status axum chose (413 past the body limit), with the code `bad_input`.
    fn from(e: BytesRejection) -> Self {
        Self {
            status: e.status(),
            code: "bad_input",
            message: e.body_text(),
        }
    }
}

/// A handler for [`Router::fallback`](axum::Router::fallback): a 404 `not_found` in JSON
/// for a path no route serves (axum's own answer has an empty body). Install it on the
/// application's router (after [`Api::routes`](crate::Api::routes) is merged), so that every
/// answer of the API is JSON.
pub async fn fallback(uri: Uri) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        code: "not_found",
        message: format!("no route serves `{}`", uri.path()),
    }
}

/// A handler for [`Router::method_not_allowed_fallback`](axum::Router::method_not_allowed_fallback):
/// a 405 `method_not_allowed` in JSON, as [`fallback`] is for unknown paths.
pub async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        code: "method_not_allowed",
        message: format!("`{}` does not take {method}", uri.path()),
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

//! The routes of [`Api::routes`]: an instance's status and result, listings, events and
//! cancellation.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use dtasks::store::{Cursor, Filter, Query as ListQuery};
use dtasks::{InstanceId, Status};
use serde_json::{json, Value};

use crate::api::Api;
use crate::error::ApiError;
use crate::json::{finished_json, instance_json, parse_time};
use crate::webhook::WEBHOOK_DTASK;

/// The longest `wait` a result request may ask for.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// The reason of a cancellation whose request gave none.
const DEFAULT_REASON: &str = "cancelled over HTTP";

impl Api {
    /// The routes, to merge into an application's router (or nest under the path given
    /// to [`Api::with_base_path`]); see the crate docs for what each answers.
    ///
    /// | method and path | answer |
    /// |---|---|
    /// | `GET /instances/{id}` | 200: the instance (id, name, status, times, waits) |
    /// | `GET /instances/{id}/result` | 200: the outcome once finished; 202 while it runs |
    /// | `GET /instances?status=&name=&prefix=&since=&until=&parent=&roots=&limit=&cursor=` | 200: a page of instances, newest first, and the cursor of the next (`parent=ID`: its children; `roots=true`: roots only) |
    /// | `POST /instances/{id}/signal/{name}` | 202: the JSON body was sent as the event `name` (for an instance started with a [`Webhook`](crate::Webhook), to the call it runs) |
    /// | `POST /instances/{id}/cancel` | 202: the cancellation was recorded |
    pub fn routes<S>(&self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        Router::new()
            .route("/instances", get(list))
            .route("/instances/{id}", get(status))
            .route("/instances/{id}/result", get(result))
            .route("/instances/{id}/signal/{name}", post(signal))
            .route("/instances/{id}/cancel", post(cancel))
            .with_state(self.clone())
    }
}

/// The id in a path, or a 400.
fn path_id(path: Result<Path<String>, PathRejection>) -> Result<InstanceId, ApiError> {
    let Path(id) = path.map_err(|e| ApiError::bad_input(e.body_text()))?;
    Ok(InstanceId::new(id)?)
}

/// The query's pairs, or a 400: also for a parameter given twice, but those of
/// `repeatable` (rather than one of the two values silently winning).
fn pairs(
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    repeatable: &[&str],
) -> Result<Vec<(String, String)>, ApiError> {
    let Query(pairs) = query.map_err(|e| ApiError::bad_input(e.body_text()))?;
    let mut seen = std::collections::HashSet::new();
    for (k, _) in &pairs {
        if !repeatable.contains(&k.as_str()) && !seen.insert(k.as_str()) {
            return Err(ApiError::bad_input(format!(
                "the query parameter `{k}` is given twice"
            )));
        }
    }
    Ok(pairs)
}

/// `GET /instances/{id}`.
async fn status(
    State(api): State<Api>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(id)?;
    let info = api.client().instance(&id).await?;
    Ok(Json(instance_json(api.base_path(), &info)))
}

/// `GET /instances/{id}/result[?wait=SECONDS]`.
async fn result(
    State(api): State<Api>,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let id = path_id(id)?;
    let mut wait = Duration::ZERO;
    for (k, v) in pairs(query, &[])? {
        match k.as_str() {
            "wait" => {
                let secs: f64 = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                    .ok_or_else(|| {
                        ApiError::bad_input(format!("`wait` takes seconds, not `{v}`"))
                    })?;
                wait = Duration::from_secs_f64(secs).min(MAX_WAIT);
            }
            other => return Err(unknown_parameter(other, "wait")),
        }
    }
    let client = api.client();
    let mut info = client.instance(&id).await?;
    if !info.status.is_finished() && !wait.is_zero() {
        // The finish, or the end of the wait: either way the store is read again below.
        let handle = client.handle::<()>(id.clone());
        let _ = tokio::time::timeout(wait, handle.result_bytes()).await;
        info = client.instance(&id).await?;
    }
    match finished_json(&info)? {
        Some(outcome) => Ok(Json(outcome).into_response()),
        None => {
            let body = json!({ "id": id.as_str(), "status": info.status.as_str() });
            Ok((
                StatusCode::ACCEPTED,
                [(header::RETRY_AFTER, "1")],
                Json(body),
            )
                .into_response())
        }
    }
}

/// `GET /instances?...`.
async fn list(
    State(api): State<Api>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let mut filter = Filter::new();
    let mut limit = None;
    let mut cursor = None;
    for (k, v) in pairs(query, &["status"])? {
        match k.as_str() {
            "status" => {
                for s in v.split(',').filter(|s| !s.is_empty()) {
                    filter = filter.status(s.parse::<Status>()?);
                }
            }
            "name" => filter = filter.name(v),
            "prefix" => filter = filter.id_prefix(v),
            "since" => filter = filter.started_after(parse_time("since", &v)?),
            "until" => filter = filter.started_before(parse_time("until", &v)?),
            "limit" => {
                let n: usize = v.parse().map_err(|_| {
                    ApiError::bad_input(format!("`limit` takes a number, not `{v}`"))
                })?;
                limit = Some(n);
            }
            "cursor" => cursor = Some(Cursor::parse(&v)?),
            "parent" => filter = filter.parent(InstanceId::new(v)?),
            "roots" => match v.as_str() {
                "true" | "1" => filter = filter.roots(),
                "false" | "0" => {}
                _ => {
                    return Err(ApiError::bad_input(format!(
                        "`roots` takes true or false, not `{v}`"
                    )))
                }
            },
            other => {
                return Err(unknown_parameter(
                    other,
                    "status, name, prefix, since, until, limit, cursor, parent, roots",
                ))
            }
        }
    }
    let mut query = ListQuery::new(filter);
    if let Some(n) = limit {
        query = query.limit(n)?;
    }
    if let Some(c) = cursor {
        query = query.after(c);
    }
    let page = api.client().list(&query).await?;
    let instances: Vec<Value> = page
        .instances
        .iter()
        .map(|info| instance_json(api.base_path(), info))
        .collect();
    Ok(Json(json!({
        "instances": instances,
        "next": page.next.map(|c| c.to_string()),
    })))
}

/// `POST /instances/{id}/signal/{name}` with a JSON body (empty: `null`).
async fn signal(
    State(api): State<Api>,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path((id, name)) = path.map_err(|e| ApiError::bad_input(e.body_text()))?;
    let body = body?;
    let id = InstanceId::new(id)?;
    let value = json_body(&body)?;
    let client = api.client();
    if client.instance(&id).await?.name == WEBHOOK_DTASK {
        // The call a webhook instance wraps runs as its child `{id}.0`, and waits there.
        let call = InstanceId::new(format!("{id}.0"))?;
        client.signal_child(&id, &call, &name, &value).await?;
    } else {
        client.signal(&id, &name, &value).await?;
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "id": id.as_str(), "event": name })),
    )
        .into_response())
}

/// `POST /instances/{id}/cancel` with an optional JSON body `{"reason": "..."}`.
async fn cancel(
    State(api): State<Api>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let id = path_id(id)?;
    let body = body?;
    let reason = match json_body(&body)? {
        Value::Null => DEFAULT_REASON.to_string(),
        Value::Object(mut fields) => match fields.remove("reason") {
            None | Some(Value::Null) if fields.is_empty() => DEFAULT_REASON.to_string(),
            Some(Value::String(r)) if fields.is_empty() => r,
            _ => return Err(cancel_body()),
        },
        _ => return Err(cancel_body()),
    };
    if !api.client().cancel(&id, reason.clone()).await? {
        return Err(ApiError::finished(id.as_str()));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "id": id.as_str(), "cancelled": true, "reason": reason })),
    )
        .into_response())
}

fn cancel_body() -> ApiError {
    ApiError::bad_input("a cancellation's body is empty or {\"reason\": \"<text>\"}")
}

/// A request body as JSON: `null` when empty, a 400 when it is not JSON.
fn json_body(body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_input(format!("the body is not JSON: {e}")))
}

fn unknown_parameter(name: &str, known: &str) -> ApiError {
    ApiError::bad_input(format!(
        "unknown query parameter `{name}` (this route takes: {known})"
    ))
}

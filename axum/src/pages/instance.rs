//! The instance page, `GET {base}/ui/instances/{id}`: status, what it waits for (events,
//! timers, the children it awaits), its timeline, its parent and children when the store
//! holds them, its result; and the forms that signal and cancel it
//! (`POST {base}/ui/instances/{id}/signal` and `/cancel`, answered with a redirect back).

use std::fmt::Write as _;
use std::time::SystemTime;

use axum::extract::rejection::{FormRejection, PathRejection, QueryRejection};
use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use dtasks::store::{Filter, InstanceInfo, Listing, Query as ListQuery};
use dtasks::{InstanceId, Wait};
use serde::Deserialize;
use serde_json::Value;

use super::html::{badge, esc, layout, message_page, respond, segment, wait, REFRESH_MS};
use super::timeline::{children as children_section, timeline};
use crate::api::Api;
use crate::error::ApiError;
use crate::json::{finished_json, instance_path};

/// The reason of a cancellation whose form left it empty.
const DEFAULT_REASON: &str = "cancelled from the web page";

/// A line above the page: what the last form did, or why it could not.
enum Banner {
    None,
    Notice(String),
    Error(String),
}

/// `GET {base}/ui/instances/{id}[?sent=EVENT | ?cancelled=1]`.
pub(super) async fn instance_page(
    State(api): State<Api>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let id = match path_id(path) {
        Ok(id) => id,
        Err(message) => return not_an_id(&api, &message),
    };
    // What the form before the redirect did; anything else in the query is ignored.
    let mut banner = Banner::None;
    for (k, v) in query.map(|Query(q)| q).unwrap_or_default() {
        match k.as_str() {
            "sent" => banner = Banner::Notice(format!("Event `{v}` sent.")),
            "cancelled" => banner = Banner::Notice("Cancellation recorded.".to_string()),
            _ => {}
        }
    }
    show(&api, &id, StatusCode::OK, banner).await
}

/// The page of `id` with `banner`, answered with `status` (or the store's error).
async fn show(api: &Api, id: &InstanceId, status: StatusCode, banner: Banner) -> Response {
    let base = api.base_path();
    let info = match api.client().instance(id).await {
        Ok(info) => info,
        Err(e) => {
            let e = ApiError::from(e);
            let title = if e.code() == "not_found" {
                "Unknown instance"
            } else {
                "The instance cannot be read"
            };
            return message_page(base, e.status(), title, e.message());
        }
    };
    // The children the store holds: a second read, by the parent index.
    let query = ListQuery::new(Filter::new().parent(id.clone()))
        .limit(CHILDREN)
        .map_err(|e| e.to_string());
    let children = match query {
        Ok(query) => api
            .client()
            .list(&query)
            .await
            .map_err(|e| ApiError::from(e).message().to_string()),
        Err(e) => Err(e),
    };
    respond(
        status,
        layout(base, id.as_str(), &render(base, &info, &children, &banner)),
    )
}

/// The most children the page lists (a link leads to the list page for the rest).
const CHILDREN: usize = 100;

/// The id in the path, or why it is not one.
fn path_id(path: Result<Path<String>, PathRejection>) -> Result<InstanceId, String> {
    let Path(id) = path.map_err(|e| e.body_text())?;
    InstanceId::new(id).map_err(|e| ApiError::from(e).message().to_string())
}

/// The page answered for a path that names no valid id.
fn not_an_id(api: &Api, message: &str) -> Response {
    message_page(
        api.base_path(),
        StatusCode::BAD_REQUEST,
        "Not an instance id",
        message,
    )
}

/// The body of the instance page.
fn render(
    base: &str,
    info: &InstanceInfo,
    children: &Result<Listing, String>,
    banner: &Banner,
) -> String {
    let now = SystemTime::now();
    let b = esc(base);
    let id = info.id.as_str();
    let seg = segment(id);
    let seg = esc(&seg);
    let finished = info.status.is_finished();
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<p class="crumbs"><a href="{b}/ui">Instances</a> /</p>
<h1><code>{eid}</code></h1>
"#,
        eid = esc(id),
    );
    match banner {
        Banner::None => {}
        Banner::Notice(text) => {
            let _ = writeln!(out, r#"<p class="notice">{}</p>"#, esc(text));
        }
        Banner::Error(text) => {
            let _ = writeln!(out, r#"<p class="error">{}</p>"#, esc(text));
        }
    }

    // What the live refresh replaces; `data-finished` flips once, and the page is then
    // loaded again whole (its forms go).
    let _ = write!(
        out,
        r#"<section id="live" data-refresh="{REFRESH_MS}" data-finished="{finished}">
<dl class="facts">
<dt>DTask</dt><dd><code>{name}</code></dd>
<dt>status</dt><dd>{badge}</dd>
<dt>waits for</dt><dd>"#,
        name = esc(&info.name),
        badge = badge(info.status),
    );
    if info.waits.is_empty() {
        out.push_str("nothing");
    } else {
        out.push_str(r#"<ul class="waits">"#);
        for w in &info.waits {
            let _ = write!(out, "<li>{}</li>", wait(w, now));
        }
        out.push_str("</ul>");
    }
    out.push_str("</dd>\n");
    if info.runs > 1 {
        // Continued as new: the run it is in.
        let _ = writeln!(out, "<dt>run</dt><dd>{}</dd>", info.runs);
    }
    if let Some(code) = info.fingerprint {
        let _ = writeln!(out, "<dt>code</dt><dd><code>{code:016x}</code></dd>");
    }
    if let Some(parent) = &info.parent {
        let _ = writeln!(
            out,
            r#"<dt>parent</dt><dd><a class="parent" href="{b}/ui/instances/{pseg}">{pid}</a></dd>"#,
            pseg = esc(&segment(parent.as_str())),
            pid = esc(parent.as_str()),
        );
    }
    out.push_str("</dl>\n");

    out.push_str("<h2>Timeline</h2>\n");
    out.push_str(&timeline(info, now));
    out.push_str(
        "<p class=\"meta\">Status changes are shown as workers reported them: the first \
         suspension, when a long wait (an event, a resume, a timer) begins or ends, the \
         finish; a change among children alone is not reported. Steps come from the journal \
         as the latest report summarised it, without times of their own (the snapshot model \
         keeps no journal).</p>\n",
    );
    out.push_str(&children_section(base, info, children));

    out.push_str("<h2>Result</h2>\n");
    match finished_json(info) {
        Ok(None) => out.push_str("<p>Not finished yet.</p>\n"),
        Ok(Some(outcome)) => render_outcome(&mut out, &outcome),
        Err(e) => {
            let _ = writeln!(out, r#"<p class="error">{}</p>"#, esc(e.message()));
        }
    }
    out.push_str("</section>\n");

    if !finished {
        let event = info.waits.iter().find_map(|w| match w {
            Wait::Event(name) => Some(name.as_str()),
            _ => None,
        });
        let _ = write!(
            out,
            r#"<section class="actions">
<form class="signal" method="post" action="{b}/ui/instances/{seg}/signal">
<h2>Send an event</h2>
<label>event <input name="event" required value="{event}" placeholder="approval"></label>
<label>value (JSON) <textarea name="value" rows="3" spellcheck="false">null</textarea></label>
<button type="submit">Send event</button>
</form>
<form class="cancel" method="post" action="{b}/ui/instances/{seg}/cancel">
<h2>Cancel</h2>
<label>reason <input name="reason" placeholder="{DEFAULT_REASON}"></label>
<button type="submit" class="danger">Cancel instance</button>
</form>
</section>
"#,
            event = esc(event.unwrap_or("")),
        );
    }
    let json = instance_path(base, &info.id);
    let json = esc(&json);
    let _ = write!(
        out,
        r#"<p class="meta">Read again every {secs} s while it runs. As JSON: <a href="{json}">status</a>, <a href="{json}/result">result</a></p>"#,
        secs = REFRESH_MS / 1000,
    );
    out
}

/// A finished instance's outcome: its value, or its failure.
fn render_outcome(out: &mut String, outcome: &Value) {
    if let Some(value) = outcome.get("value") {
        let text = serde_json::to_string_pretty(value).unwrap_or_default();
        let _ = writeln!(out, r#"<pre class="value">{}</pre>"#, esc(&text));
    } else if let Some(f) = outcome.get("failure") {
        let kind = f["kind"].as_str().unwrap_or("other");
        let message = f["message"].as_str().unwrap_or("");
        let _ = writeln!(
            out,
            r#"<p class="failure"><code>{}</code></p><pre class="message">{}</pre>"#,
            esc(kind),
            esc(message)
        );
    }
}

/// Refuses a form another site made the browser send: a state-changing POST answers only
/// forms of the pages' own origin (`Sec-Fetch-Site`, else `Origin` against `Host`;
/// requests without either, from programs rather than browsers, pass).
fn same_origin(headers: &HeaderMap) -> bool {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &header::HeaderValue| v.to_str().ok())
    };
    if let Some(site) = text("sec-fetch-site") {
        return matches!(site, "same-origin" | "none");
    }
    match (text(header::ORIGIN.as_str()), text(header::HOST.as_str())) {
        (Some(origin), Some(host)) => origin
            .split_once("://")
            .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host)),
        (Some(_), None) => false,
        (None, _) => true,
    }
}

fn cross_site(api: &Api) -> Response {
    message_page(
        api.base_path(),
        StatusCode::FORBIDDEN,
        "Refused",
        "This form was sent from another site.",
    )
}

/// The page `id` again after a form: its path with `query`.
fn back(api: &Api, id: &InstanceId, query: &str) -> Response {
    let to = format!(
        "{}/ui/instances/{}?{query}",
        api.base_path(),
        segment(id.as_str())
    );
    Redirect::to(&to).into_response()
}

/// What the cancel form sends.
#[derive(Deserialize)]
pub(super) struct CancelForm {
    #[serde(default)]
    reason: String,
}

/// `POST {base}/ui/instances/{id}/cancel`: cancels, then back to the page (303).
pub(super) async fn cancel(
    State(api): State<Api>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    form: Result<Form<CancelForm>, FormRejection>,
) -> Response {
    if !same_origin(&headers) {
        return cross_site(&api);
    }
    let id = match path_id(path) {
        Ok(id) => id,
        Err(message) => return not_an_id(&api, &message),
    };
    let reason = match form {
        Ok(Form(f)) if !f.reason.trim().is_empty() => f.reason.trim().to_string(),
        Ok(_) => DEFAULT_REASON.to_string(),
        Err(e) => return show(&api, &id, e.status(), Banner::Error(e.body_text())).await,
    };
    let e = match api.client().cancel(&id, reason).await {
        Ok(true) => return back(&api, &id, "cancelled=1"),
        Ok(false) => ApiError::finished(id.as_str()),
        Err(e) => ApiError::from(e),
    };
    show(
        &api,
        &id,
        e.status(),
        Banner::Error(e.message().to_string()),
    )
    .await
}

/// What the signal form sends.
#[derive(Deserialize)]
pub(super) struct SignalForm {
    event: String,
    #[serde(default)]
    value: String,
}

/// `POST {base}/ui/instances/{id}/signal`: sends the event, then back to the page (303).
pub(super) async fn signal(
    State(api): State<Api>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    form: Result<Form<SignalForm>, FormRejection>,
) -> Response {
    if !same_origin(&headers) {
        return cross_site(&api);
    }
    let id = match path_id(path) {
        Ok(id) => id,
        Err(message) => return not_an_id(&api, &message),
    };
    let refuse = |status: StatusCode, message: String| {
        let api = api.clone();
        let id = id.clone();
        async move { show(&api, &id, status, Banner::Error(message)).await }
    };
    let f = match form {
        Ok(Form(f)) => f,
        Err(e) => return refuse(e.status(), e.body_text()).await,
    };
    let event = f.event.trim();
    if event.is_empty() {
        return refuse(StatusCode::BAD_REQUEST, "An event needs a name.".into()).await;
    }
    let value: Value = match f.value.trim() {
        "" => Value::Null,
        text => match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                let message = format!("The value is not JSON: {e}");
                return refuse(StatusCode::BAD_REQUEST, message).await;
            }
        },
    };
    match api.client().signal(&id, event, &value).await {
        Ok(()) => back(
            &api,
            &id,
            &format!("sent={}", super::html::query_part(event)),
        ),
        Err(e) => {
            let e = ApiError::from(e);
            refuse(e.status(), e.message().to_string()).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_of_other_sites_are_refused() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, header::HeaderValue::from_static(v));
            }
            h
        };
        assert!(same_origin(&headers(&[])));
        assert!(same_origin(&headers(&[("sec-fetch-site", "same-origin")])));
        assert!(!same_origin(&headers(&[("sec-fetch-site", "cross-site")])));
        assert!(same_origin(&headers(&[
            ("origin", "http://127.0.0.1:3000"),
            ("host", "127.0.0.1:3000")
        ])));
        assert!(!same_origin(&headers(&[
            ("origin", "https://evil.example"),
            ("host", "127.0.0.1:3000")
        ])));
        assert!(!same_origin(&headers(&[("origin", "null"), ("host", "a")])));
    }
}

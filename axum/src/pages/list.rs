//! The list page, `GET {base}/ui`: the instances the store knows, newest first, filtered
//! by status, DTask name, id prefix, start time and parent (roots only unless asked),
//! read again every few seconds.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{NaiveDateTime, TimeZone as _, Utc};
use dtasks::store::{Cursor, Filter, Listing, Query as ListQuery};
use dtasks::Status;

use super::html::{ago, badge, esc, layout, query_part, respond, segment, waits_line, REFRESH_MS};
use crate::api::Api;
use crate::error::ApiError;
use crate::json::parse_time;

/// Instances on one page unless `limit` says otherwise.
const PAGE: usize = 50;

/// The filters as they were typed, to fill the form again and to carry to the next page.
#[derive(Debug, Default)]
struct Filters {
    statuses: Vec<String>,
    name: String,
    prefix: String,
    since: String,
    until: String,
    limit: String,
    cursor: String,
    /// `all`: children too; anything else (by default): roots only.
    show: String,
    /// Children of this instance (then `show` does not apply).
    parent: String,
}

impl Filters {
    fn from_pairs(pairs: Vec<(String, String)>) -> Result<Self, String> {
        let mut f = Self::default();
        for (k, v) in pairs {
            let v = v.trim().to_string();
            match k.as_str() {
                "status" => f
                    .statuses
                    .extend(v.split(',').filter(|s| !s.is_empty()).map(str::to_string)),
                "name" => f.name = v,
                "prefix" => f.prefix = v,
                "since" => f.since = v,
                "until" => f.until = v,
                "limit" => f.limit = v,
                "cursor" => f.cursor = v,
                "show" => f.show = v,
                "parent" => f.parent = v,
                other => {
                    return Err(format!(
                        "unknown filter `{other}` (this page takes: status, name, prefix, \
                         since, until, limit, cursor, show, parent)"
                    ))
                }
            }
        }
        Ok(f)
    }

    /// The store query they ask for; the message of the first filter that is wrong.
    fn query(&self, now: SystemTime) -> Result<ListQuery, String> {
        let bad = |e: dtasks::Error| ApiError::from(e).message().to_string();
        let mut filter = Filter::new();
        for s in &self.statuses {
            filter = filter.status(s.parse::<Status>().map_err(bad)?);
        }
        if !self.name.is_empty() {
            filter = filter.name(self.name.clone());
        }
        if !self.prefix.is_empty() {
            filter = filter.id_prefix(self.prefix.clone());
        }
        if !self.since.is_empty() {
            filter = filter.started_after(parse_when("since", &self.since, now)?);
        }
        if !self.until.is_empty() {
            filter = filter.started_before(parse_when("until", &self.until, now)?);
        }
        if !self.parent.is_empty() {
            filter = filter.parent(dtasks::InstanceId::new(self.parent.clone()).map_err(bad)?);
        } else if !self.all() {
            filter = filter.roots();
        }
        let limit = match self.limit.as_str() {
            "" => PAGE,
            n => n
                .parse()
                .map_err(|_| format!("`limit` takes a number, not `{n}`"))?,
        };
        let mut query = ListQuery::new(filter).limit(limit).map_err(bad)?;
        if !self.cursor.is_empty() {
            query = query.after(Cursor::parse(&self.cursor).map_err(bad)?);
        }
        Ok(query)
    }

    /// The query string of these filters without the cursor (`status=..&name=..`).
    fn query_string(&self) -> String {
        let mut pairs: Vec<(&str, &str)> = self
            .statuses
            .iter()
            .map(|s| ("status", s.as_str()))
            .collect();
        for (k, v) in [
            ("name", &self.name),
            ("prefix", &self.prefix),
            ("since", &self.since),
            ("until", &self.until),
            ("limit", &self.limit),
            ("show", &self.show),
            ("parent", &self.parent),
        ] {
            if !v.is_empty() {
                pairs.push((k, v));
            }
        }
        pairs
            .iter()
            .map(|(k, v)| format!("{k}={}", query_part(v)))
            .collect::<Vec<_>>()
            .join("&")
    }
}

impl Filters {
    /// Whether children are listed too, not roots only.
    fn all(&self) -> bool {
        self.show == "all"
    }

    /// The same filters for the JSON route (`?status=..&since=<ms>..`, or empty), which
    /// takes times as RFC 3339 or milliseconds only.
    fn json_query(&self, now: SystemTime) -> String {
        let mut pairs: Vec<String> = self
            .statuses
            .iter()
            .map(|s| format!("status={}", query_part(s)))
            .collect();
        for (k, v) in [
            ("name", &self.name),
            ("prefix", &self.prefix),
            ("parent", &self.parent),
        ] {
            if !v.is_empty() {
                pairs.push(format!("{k}={}", query_part(v)));
            }
        }
        if self.parent.is_empty() && !self.all() {
            pairs.push("roots=true".to_string());
        }
        for (k, v) in [("since", &self.since), ("until", &self.until)] {
            if let Ok(t) = parse_when(k, v, now) {
                pairs.push(format!("{k}={}", dtasks::store::millis(t)));
            }
        }
        if pairs.is_empty() {
            String::new()
        } else {
            format!("?{}", pairs.join("&"))
        }
    }
}

/// A time in a filter: a duration before `now` (`90s`, `15m`, `2h`, `7d`), RFC 3339,
/// milliseconds since the Unix epoch, or what a browser's date and time field sends
/// (`2025-05-01T12:00`, taken as UTC).
fn parse_when(what: &str, s: &str, now: SystemTime) -> Result<SystemTime, String> {
    if let Some(ago) = parse_ago(s) {
        return Ok(now.checked_sub(ago).unwrap_or(SystemTime::UNIX_EPOCH));
    }
    for format in ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, format) {
            return Ok(SystemTime::from(Utc.from_utc_datetime(&t)));
        }
    }
    parse_time(what, s).map_err(|_| {
        format!(
            "`{what}` takes a duration before now (90s, 15m, 2h, 7d), RFC 3339 or \
             milliseconds since the Unix epoch, not `{s}`"
        )
    })
}

/// `90s`, `15m`, `2h`, `7d`.
fn parse_ago(s: &str) -> Option<Duration> {
    let unit = s.chars().last()?;
    let n: u64 = s[..s.len() - unit.len_utf8()].parse().ok()?;
    let secs = match unit {
        's' => n,
        'm' => n.checked_mul(60)?,
        'h' => n.checked_mul(3_600)?,
        'd' => n.checked_mul(86_400)?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

/// `GET {base}/ui`.
pub(super) async fn list_page(
    State(api): State<Api>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let now = SystemTime::now();
    let parsed = match query {
        Ok(Query(pairs)) => Filters::from_pairs(pairs),
        Err(e) => Err(e.body_text()),
    };
    let (filters, listed) = match parsed {
        Ok(filters) => {
            let listed = match filters.query(now) {
                Ok(query) => api.client().list(&query).await.map_err(|e| {
                    let e = ApiError::from(e);
                    (e.status(), e.message().to_string())
                }),
                Err(message) => Err((StatusCode::BAD_REQUEST, message)),
            };
            (filters, listed)
        }
        Err(message) => (Filters::default(), Err((StatusCode::BAD_REQUEST, message))),
    };
    let status = listed.as_ref().err().map_or(StatusCode::OK, |(s, _)| *s);
    let body = render(
        api.base_path(),
        &filters,
        listed.as_ref().map_err(|e| &e.1),
        now,
    );
    respond(status, layout(api.base_path(), "Instances", &body))
}

/// The page's body: the filters' form, then the table (or what went wrong).
fn render(
    base: &str,
    filters: &Filters,
    listed: Result<&Listing, &String>,
    now: SystemTime,
) -> String {
    let b = esc(base);
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<h1>Instances</h1>
<form class="filters" method="get" action="{b}/ui">
<fieldset class="statuses"><legend>status</legend>"#
    );
    for s in Status::ALL {
        let name = s.as_str();
        let checked = if filters.statuses.iter().any(|f| f == name) {
            " checked"
        } else {
            ""
        };
        let _ = write!(
            out,
            r#"<label><input type="checkbox" name="status" value="{name}"{checked}> {name}</label>"#
        );
    }
    let _ = write!(
        out,
        r#"</fieldset>
<label>DTask <input name="name" value="{name}" placeholder="shop.process_order"></label>
<label>id prefix <input name="prefix" value="{prefix}" placeholder="refund-"></label>
<label>started since <input name="since" value="{since}" placeholder="15m, 2d or 2025-05-01T12:00"></label>
<label>until <input name="until" value="{until}" placeholder="RFC 3339 or 1h"></label>
<label>show <select name="show"><option value="roots"{roots}>roots</option><option value="all"{all}>roots and children</option></select></label>
<label>children of <input name="parent" value="{parent}" placeholder="an instance id"></label>
<input type="hidden" name="limit" value="{limit}">
<button type="submit">Filter</button> <a href="{b}/ui">clear</a>
</form>
"#,
        name = esc(&filters.name),
        prefix = esc(&filters.prefix),
        since = esc(&filters.since),
        until = esc(&filters.until),
        limit = esc(&filters.limit),
        roots = if filters.all() { "" } else { " selected" },
        all = if filters.all() { " selected" } else { "" },
        parent = esc(&filters.parent),
    );
    let listing = match listed {
        Ok(listing) => listing,
        Err(message) => {
            let _ = write!(out, r#"<p class="error">{}</p>"#, esc(message));
            return out;
        }
    };
    let _ = write!(
        out,
        r#"<section id="live" data-refresh="{REFRESH_MS}">
<table class="instances">
<thead><tr><th>id</th><th>DTask</th><th>status</th><th>waits for</th><th>parent</th><th>started</th><th>last change</th></tr></thead>
<tbody>
"#
    );
    for info in &listing.instances {
        let id = info.id.as_str();
        let parent = info.parent.as_ref().map_or(String::new(), |p| {
            format!(
                r#"<a class="parent" href="{b}/ui/instances/{}">{}</a>"#,
                esc(&segment(p.as_str())),
                esc(p.as_str())
            )
        });
        let _ = writeln!(
            out,
            r#"<tr data-id="{eid}"><td><a href="{b}/ui/instances/{seg}">{eid}</a></td><td><code>{name}</code></td><td>{badge}</td><td>{waits}</td><td>{parent}</td><td>{started}</td><td>{updated}</td></tr>"#,
            eid = esc(id),
            seg = esc(&segment(id)),
            name = esc(&info.name),
            badge = badge(info.status),
            waits = waits_line(&info.waits, now),
            started = ago(info.created_at, now),
            updated = ago(info.updated_at, now),
        );
    }
    out.push_str("</tbody>\n</table>\n");
    if listing.instances.is_empty() {
        out.push_str(r#"<p class="empty">No instance matches.</p>"#);
    }
    if let Some(next) = &listing.next {
        let mut q = filters.query_string();
        if !q.is_empty() {
            q.push('&');
        }
        let _ = write!(
            out,
            r#"<p class="pages"><a rel="next" href="{b}/ui?{q}cursor={c}">next page</a></p>"#,
            q = esc(&q),
            c = esc(&query_part(&next.to_string())),
        );
    }
    out.push_str("</section>\n");
    let _ = write!(
        out,
        r#"<p class="meta">Newest start first; {which}; read again every {secs} s. <a href="{b}/instances{q}">As JSON</a></p>"#,
        which = if !filters.parent.is_empty() {
            "the children of one instance"
        } else if filters.all() {
            "roots and the children the store holds"
        } else {
            "roots only (children are in the store only when their root's client records them)"
        },
        secs = REFRESH_MS / 1000,
        q = esc(&filters.json_query(now)),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_times_read_several_ways() {
        let now = dtasks::store::from_millis(1_746_100_800_000);
        let at = |s| parse_when("since", s, now).map(dtasks::store::millis);
        assert_eq!(at("90s"), Ok(1_746_100_800_000 - 90_000));
        assert_eq!(at("2h"), Ok(1_746_100_800_000 - 7_200_000));
        assert_eq!(at("2025-05-01T12:00"), Ok(1_746_100_800_000));
        assert_eq!(at("2025-05-01T14:00:00+02:00"), Ok(1_746_100_800_000));
        assert_eq!(at("1746100800000"), Ok(1_746_100_800_000));
        assert!(at("yesterday").unwrap_err().contains("`since` takes"));
    }

    #[test]
    fn filters_carry_to_the_next_page() {
        let pairs = [
            ("status", "failed,cancelled"),
            ("name", "a b"),
            ("since", ""),
        ];
        let f = Filters::from_pairs(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
        .unwrap();
        assert_eq!(
            f.query_string(),
            "status=failed&status=cancelled&name=a%20b"
        );
        assert!(f.query(SystemTime::now()).is_ok());
        let bad = Filters::from_pairs(vec![("colour".into(), "red".into())]).unwrap_err();
        assert!(bad.contains("unknown filter `colour`"));
    }
}

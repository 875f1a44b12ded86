//! What every page shares: escaping, percent-encoding, the layout and the answer's
//! headers, and the words for statuses, times and waits.

use std::fmt::{self, Write as _};
use std::time::{Duration, SystemTime};

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use dtasks::{Status, Wait};

use crate::json::format_time;

/// How often a page reads itself again (milliseconds), while it shows something that can
/// change.
pub(super) const REFRESH_MS: u64 = 2_000;

/// What the pages may load: their own stylesheet and script, and fetches of themselves.
/// No inline script runs, so markup that escaped escaping still could not run code; no
/// other site may frame the pages (their buttons cancel instances).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; form-action 'self'; base-uri 'none'; \
                   frame-ancestors 'none'";

/// Text made safe to put in HTML, in element content and in quoted attribute values
/// alike: `& < > " '` become character references. Everything a page shows that it did
/// not write itself goes through it: ids, DTask and event names, results, messages.
pub(super) struct Esc<'a>(&'a str);

impl fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        let mut last = 0;
        for (i, b) in s.bytes().enumerate() {
            let reference = match b {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                b'\'' => "&#39;",
                _ => continue,
            };
            f.write_str(&s[last..i])?;
            f.write_str(reference)?;
            last = i + 1;
        }
        f.write_str(&s[last..])
    }
}

/// `s`, escaped for HTML (see [`Esc`]).
pub(super) fn esc(s: &str) -> Esc<'_> {
    Esc(s)
}

/// `s` as one percent-encoded query component: every byte but ASCII letters, digits and
/// `-_.~` is `%XX`.
pub(super) fn query_part(s: &str) -> String {
    encode(s, b"-_.~")
}

/// `s` as one percent-encoded path segment (`:` may stay: instance ids have it).
pub(super) fn segment(s: &str) -> String {
    encode(s, b"-_.~:")
}

fn encode(s: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || keep.contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A whole page: `body` (HTML) under the title `title` (text), with the stylesheet and
/// the script served under `base`.
pub(super) fn layout(base: &str, title: &str, body: &str) -> String {
    let base = esc(base);
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · dtasks</title>
<link rel="stylesheet" href="{base}/ui/assets/page.css">
<script src="{base}/ui/assets/live.js" defer></script>
</head>
<body>
<header><a class="home" href="{base}/ui">dtasks</a><span>instances</span></header>
<main>
{body}
</main>
</body>
</html>
"#,
        title = esc(title),
    )
}

/// A page as an answer: HTML, the content security policy, never cached (it shows live
/// data).
pub(super) fn respond(status: StatusCode, html: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "same-origin"),
        ],
        html,
    )
        .into_response()
}

/// A page that only says `message` (text), with a way back to the list.
pub(super) fn message_page(base: &str, status: StatusCode, title: &str, message: &str) -> Response {
    let body = format!(
        r#"<h1>{title}</h1>
<p class="error">{message}</p>
<p><a href="{base}/ui">All instances</a></p>"#,
        title = esc(title),
        message = esc(message),
        base = esc(base),
    );
    respond(status, layout(base, title, &body))
}

/// A status as a badge: `<span class="status s-suspended" data-status="suspended">`.
pub(super) fn badge(status: Status) -> String {
    let s = esc(status.as_str());
    format!(r#"<span class="status s-{s}" data-status="{s}">{s}</span>"#)
}

/// A time: RFC 3339 in UTC, and how long ago (or ahead) it is from `now`.
pub(super) fn when(t: SystemTime, now: SystemTime) -> String {
    let at = format_time(t);
    format!(
        r#"<time datetime="{at}">{at}</time> <small>({rel})</small>"#,
        at = esc(&at),
        rel = esc(&relative(t, now)),
    )
}

/// A time in a few characters, how long ago (or ahead) it is from `now`, with the whole
/// time in its tooltip.
pub(super) fn ago(t: SystemTime, now: SystemTime) -> String {
    let at = format_time(t);
    format!(
        r#"<time datetime="{at}" title="{at}">{rel}</time>"#,
        at = esc(&at),
        rel = esc(&relative(t, now)),
    )
}

/// `3 s ago`, `in 59 min 12 s`.
fn relative(t: SystemTime, now: SystemTime) -> String {
    match now.duration_since(t) {
        Ok(ago) => format!("{} ago", span(ago)),
        Err(ahead) => format!("in {}", span(ahead.duration())),
    }
}

/// A duration in its largest two units: `3 s`, `12 min 5 s`, `2 h 10 min`, `3 d 4 h`.
fn span(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{} ms", d.as_millis()),
        1..=59 => format!("{s} s"),
        60..=3_599 => format!("{} min {} s", s / 60, s % 60),
        3_600..=86_399 => format!("{} h {} min", s / 3_600, s % 3_600 / 60),
        _ => format!("{} d {} h", s / 86_400, s % 86_400 / 3_600),
    }
}

/// What a suspended instance waits for, in words (HTML).
pub(super) fn wait(w: &Wait, now: SystemTime) -> String {
    match w {
        Wait::Event(name) => format!("the event <code>{}</code>", esc(name)),
        Wait::Resume => "a resume by token".to_string(),
        Wait::Timer { at_ms } => format!(
            "a timer due at {}",
            when(dtasks::store::from_millis(*at_ms), now)
        ),
        Wait::Children(1) => "the result of a child".to_string(),
        Wait::Children(n) => format!("the results of {n} children"),
        Wait::Yield => "a yield (about to resume)".to_string(),
        other => format!("<code>{}</code>", esc(&format!("{other:?}"))),
    }
}

/// What `waits` come to in one line of text (HTML): `the event approval, a timer due in
/// 59 min 12 s`, or `—` for none.
pub(super) fn waits_line(waits: &[Wait], now: SystemTime) -> String {
    if waits.is_empty() {
        return "—".to_string();
    }
    waits
        .iter()
        .map(|w| match w {
            Wait::Timer { at_ms } => format!(
                "a timer due {}",
                ago(dtasks::store::from_millis(*at_ms), now)
            ),
            other => wait(other, now),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_encoded() {
        assert_eq!(
            esc(r#"<script>alert("x" & 'y')</script>"#).to_string(),
            "&lt;script&gt;alert(&quot;x&quot; &amp; &#39;y&#39;)&lt;/script&gt;"
        );
        assert_eq!(esc("plain ünïcode").to_string(), "plain ünïcode");
        assert_eq!(query_part("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
        assert_eq!(segment("order:7.0"), "order:7.0");
        assert_eq!(segment("a/b?c#d"), "a%2Fb%3Fc%23d");
    }

    #[test]
    fn spans_read_in_two_units() {
        assert_eq!(span(Duration::from_millis(250)), "250 ms");
        assert_eq!(span(Duration::from_secs(725)), "12 min 5 s");
        assert_eq!(span(Duration::from_secs(7_800)), "2 h 10 min");
        assert_eq!(span(Duration::from_secs(3 * 86_400 + 4 * 3_600)), "3 d 4 h");
    }
}

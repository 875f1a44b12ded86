//! The parts of the instance page that show its history: the timeline (the start, each
//! status a worker reported, the journal's steps between them, the timers ahead) and the
//! children the store holds.

use std::fmt::Write as _;
use std::time::SystemTime;

use dtasks::store::{from_millis, InstanceInfo, Listing, StepKind, Steps};
use dtasks::{Status, Wait};

use super::html::{badge, esc, segment, waits_line, when};

/// The timeline of `info` as an ordered list (HTML).
///
/// Status changes carry the time their writer made them; steps carry none (the journal
/// keeps no times): each run of steps is shown before the first status change that
/// reported it, that is, it happened after the change before it and before that one.
pub(super) fn timeline(info: &InstanceInfo, now: SystemTime) -> String {
    let mut out = String::from("<ol class=\"timeline\">\n");
    let _ = writeln!(
        out,
        r#"<li class="change"><span class="at">{}</span> started {}</li>"#,
        when(info.created_at, now),
        badge(Status::Pending)
    );
    if info.history_dropped > 0 {
        let _ = writeln!(
            out,
            r#"<li class="dropped">{} earlier status changes are not kept (the store keeps the latest {})</li>"#,
            info.history_dropped,
            InstanceInfo::MAX_HISTORY
        );
    }
    // Steps before the first run summarised: a journal longer than the summary keeps.
    if let Some(first) = info.steps.first().filter(|r| r.first > 0) {
        let _ = writeln!(
            out,
            r#"<li class="dropped">steps 0 to {} are not summarised (a summary holds the latest {} runs)</li>"#,
            first.first - 1,
            Steps::MAX_RUNS
        );
    }
    let mut runs = info.steps.iter().peekable();
    for t in &info.history {
        while let Some(run) = runs.next_if(|r| r.first < t.steps) {
            out.push_str(&step_item(info, run, now));
        }
        let waits = if t.waits.is_empty() {
            String::new()
        } else {
            format!(", waiting for {}", waits_line(&t.waits, now))
        };
        let _ = writeln!(
            out,
            r#"<li class="change" data-status="{s}"><span class="at">{at}</span> {badge}{waits}</li>"#,
            s = esc(t.status.as_str()),
            at = when(from_millis(t.at_ms), now),
            badge = badge(t.status),
        );
    }
    for run in runs {
        out.push_str(&step_item(info, run, now));
    }
    if !info.status.is_finished() {
        for w in &info.waits {
            if let Wait::Timer { at_ms } = w {
                let _ = writeln!(
                    out,
                    r#"<li class="ahead"><span class="at">{}</span> a timer fires</li>"#,
                    when(from_millis(*at_ms), now)
                );
            }
        }
    }
    out.push_str("</ol>\n");
    out
}

/// One run of steps as a timeline item (HTML).
fn step_item(info: &InstanceInfo, run: &Steps, now: SystemTime) -> String {
    let positions = if run.count == 1 {
        format!("step {}", run.first)
    } else {
        format!("steps {}–{}", run.first, run.first + run.count - 1)
    };
    let what = match &run.kind {
        StepKind::Child(name) => {
            let first = info.id.child(run.first);
            let children = if run.count == 1 {
                format!("child <code>{}</code>", esc(first.as_str()))
            } else {
                format!("{} children", run.count)
            };
            format!("{children} of <code>{}</code>", esc(name))
        }
        StepKind::Timer(at_ms) => format!("a timer due at {}", when(from_millis(*at_ms), now)),
        StepKind::Event(name) => format!("waits for the event <code>{}</code>", esc(name)),
        StepKind::Resume => "waits for a resume by token".to_string(),
        StepKind::Yield => "a yield".to_string(),
        StepKind::Run => "a side effect (<code>DTask::run</code>)".to_string(),
        other => format!("<code>{}</code>", esc(&format!("{other:?}"))),
    };
    let state = match (run.done, run.failed) {
        (d, 0) if d == run.count => "done".to_string(),
        (0, _) => "waiting".to_string(),
        (d, 0) => format!("{d} of {} done", run.count),
        (d, f) => format!("{d} of {} done, {f} failed", run.count),
    };
    format!(
        "<li class=\"step\"><span class=\"at\">{}</span> {what}: {}</li>\n",
        esc(&positions),
        esc(&state)
    )
}

/// The children section: those the store holds, linked, or why there are none (HTML).
pub(super) fn children(
    base: &str,
    info: &InstanceInfo,
    listed: &Result<Listing, String>,
) -> String {
    let b = esc(base);
    let mut out = String::from("<h2>Children</h2>\n");
    let listing = match listed {
        Ok(listing) => listing,
        Err(message) => {
            let _ = writeln!(out, r#"<p class="error">{}</p>"#, esc(message));
            return out;
        }
    };
    if listing.instances.is_empty() {
        let started: u32 = info
            .steps
            .iter()
            .filter(|r| matches!(r.kind, StepKind::Child(_)))
            .map(|r| r.count)
            .sum();
        if started == 0 {
            out.push_str("<p class=\"empty\">None recorded.</p>\n");
        } else {
            let _ = writeln!(
                out,
                "<p class=\"empty\">{started} started (see the timeline), none in the store: \
                 children are recorded only under roots started by a client that records them \
                 (<code>Client::recording_children</code>).</p>"
            );
        }
        return out;
    }
    out.push_str(
        "<table class=\"instances children\">\n<thead><tr><th>id</th><th>DTask</th><th>status</th>\
         <th>waits for</th></tr></thead>\n<tbody>\n",
    );
    let now = SystemTime::now();
    for child in &listing.instances {
        let id = child.id.as_str();
        let _ = writeln!(
            out,
            r#"<tr data-id="{eid}"><td><a class="child" href="{b}/ui/instances/{seg}">{eid}</a></td><td><code>{name}</code></td><td>{badge}</td><td>{waits}</td></tr>"#,
            eid = esc(id),
            seg = esc(&segment(id)),
            name = esc(&child.name),
            badge = badge(child.status),
            waits = waits_line(&child.waits, now),
        );
    }
    out.push_str("</tbody>\n</table>\n");
    if listing.next.is_some() {
        let _ = writeln!(
            out,
            r#"<p class="pages"><a href="{b}/ui?parent={q}">all children</a></p>"#,
            q = esc(&super::html::query_part(info.id.as_str())),
        );
    }
    out
}

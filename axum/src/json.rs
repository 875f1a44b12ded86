//! The JSON forms the routes and the webhook speak: values (MessagePack inside dtasks),
//! times, instances, failures and outcomes.

use std::time::SystemTime;

use chrono::{DateTime, SecondsFormat, Utc};
use dtasks::store::InstanceInfo;
use dtasks::{Failure, InstanceId};
use serde_json::{json, Value};

use crate::error::ApiError;

pub(crate) use dtasks::json::{msgpack_to_json, value_to_json};

/// A time as RFC 3339 in UTC with milliseconds (`2025-05-01T12:00:00.250Z`).
pub(crate) fn format_time(t: SystemTime) -> String {
    DateTime::<Utc>::from(t).to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A time from RFC 3339 (any offset) or milliseconds since the Unix epoch.
pub(crate) fn parse_time(what: &str, s: &str) -> Result<SystemTime, ApiError> {
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(dtasks::store::from_millis(ms));
    }
    DateTime::parse_from_rfc3339(s)
        .map(|t| SystemTime::from(t.with_timezone(&Utc)))
        .map_err(|e| {
            ApiError::bad_input(format!(
                "`{what}` takes RFC 3339 or milliseconds since the Unix epoch, not `{s}`: {e}"
            ))
        })
}

/// The routes' paths under `base`: the instance's, and its result's.
pub(crate) fn instance_path(base: &str, id: &InstanceId) -> String {
    format!("{base}/instances/{id}")
}

/// An instance as the status and list routes answer it.
pub(crate) fn instance_json(base: &str, info: &InstanceInfo) -> Value {
    let path = instance_path(base, &info.id);
    json!({
        "id": info.id.as_str(),
        "name": info.name,
        "status": info.status.as_str(),
        "parent": info.parent.as_ref().map(|p| p.as_str()),
        "started": format_time(info.created_at),
        "updated": format_time(info.updated_at),
        "finished": info.finished_at().map(format_time),
        "waits": serde_json::to_value(&info.waits).unwrap_or(Value::Null),
        "duplicates": info.duplicate_results,
        "history": info.history.iter().map(|t| json!({
            "at": format_time(dtasks::store::from_millis(t.at_ms)),
            "status": t.status.as_str(),
            "waits": serde_json::to_value(&t.waits).unwrap_or(Value::Null),
            "steps": t.steps,
        })).collect::<Vec<_>>(),
        "history_dropped": info.history_dropped,
        "steps": serde_json::to_value(&info.steps).unwrap_or(Value::Null),
        "runs": info.runs,
        "fingerprint": info.fingerprint.map(|f| format!("{f:016x}")),
        "records_children": info.records_children,
        "result_url": format!("{path}/result"),
    })
}

/// The kind of a failure, by its predicates: `panic`, `nondeterminism`, `child_failure`,
/// `unknown_dtask`, `bad_input`, `state_too_large`, `stuck`, `misuse`, `code_changed`,
/// `cancelled`, `timeout` (or `other` for a kind this version does not know).
pub(crate) fn failure_kind(f: &Failure) -> &'static str {
    type Is = fn(&Failure) -> bool;
    let kinds: [(Is, &str); 11] = [
        (Failure::is_cancelled, "cancelled"),
        (Failure::is_timeout, "timeout"),
        (Failure::is_panic, "panic"),
        (Failure::is_child_failure, "child_failure"),
        (Failure::is_nondeterminism, "nondeterminism"),
        (Failure::is_unknown_dtask, "unknown_dtask"),
        (Failure::is_bad_input, "bad_input"),
        (Failure::is_state_too_large, "state_too_large"),
        (Failure::is_stuck, "stuck"),
        (Failure::is_misuse, "misuse"),
        (Failure::is_code_changed, "code_changed"),
    ];
    kinds
        .iter()
        .find(|(is, _)| is(f))
        .map_or("other", |(_, kind)| kind)
}

/// The outcome of a finished instance: `{"id", "status": "succeeded", "value"}`, or
/// `{"id", "status": "failed" | "cancelled", "failure": {"kind", "message"}}`.
pub(crate) fn outcome_json(id: &InstanceId, outcome: Result<Value, &Failure>) -> Value {
    match outcome {
        Ok(value) => json!({ "id": id.as_str(), "status": "succeeded", "value": value }),
        Err(f) => json!({
            "id": id.as_str(),
            "status": if f.is_cancelled() { "cancelled" } else { "failed" },
            "failure": { "kind": failure_kind(f), "message": f.message() },
        }),
    }
}

/// The outcome of `info` when it has finished (see [`outcome_json`]); `None` while it runs.
pub(crate) fn finished_json(info: &InstanceInfo) -> Result<Option<Value>, ApiError> {
    let Some(result) = info.result_bytes() else {
        return Ok(None);
    };
    let outcome = match result {
        Ok(bytes) => Ok(msgpack_to_json(&bytes).map_err(|e| {
            ApiError::internal(format!("the result of `{}` does not decode: {e}", info.id))
        })?),
        Err(e) => match e.failure() {
            Some(f) => return Ok(Some(outcome_json(&info.id, Err(f)))),
            None => return Err(e.into()),
        },
    };
    Ok(Some(outcome_json(&info.id, outcome)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_have_json_forms() {
        let t = dtasks::store::from_millis(1_746_100_800_250);
        assert_eq!(format_time(t), "2025-05-01T12:00:00.250Z");
        assert_eq!(
            parse_time("since", "2025-05-01T14:00:00.250+02:00").unwrap(),
            t
        );
        assert_eq!(parse_time("since", "1746100800250").unwrap(), t);
        let bad = parse_time("since", "yesterday").unwrap_err();
        assert_eq!((bad.status().as_u16(), bad.code()), (400, "bad_input"));
    }
}

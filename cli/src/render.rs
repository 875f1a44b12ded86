//! What the command line prints: instances as JSON or table rows, values between JSON and
//! MessagePack, and standard output that tolerates a closed pipe (`dtasks list | head`).

use std::io::Write;

use dtasks::store::{Cursor, InstanceInfo};
use dtasks::{Status, Wait};
use serde_json::{json, Value};

use crate::time::format_time;

/// Writes `line` and a newline to stdout; a closed pipe ends the output quietly.
pub(crate) fn out(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
}

/// A status as the command line spells it (lower case, as `--status` takes it).
pub(crate) fn status_name(s: Status) -> &'static str {
    s.as_str()
}

/// What a wait is, for people: `event approval`, `timer 2025-05-01T12:00:00.000Z`.
pub(crate) fn wait_text(w: &Wait) -> String {
    match w {
        Wait::Event(name) => format!("event {name}"),
        Wait::Resume => "resume".to_string(),
        Wait::Timer { at_ms } => {
            format!("timer {}", format_time(dtasks::store::from_millis(*at_ms)))
        }
        Wait::Children(1) => "1 child".to_string(),
        Wait::Children(n) => format!("{n} children"),
        Wait::Yield => "yield".to_string(),
        other => format!("{other:?}"),
    }
}

/// The waits of an instance, for people (`-` for none).
pub(crate) fn waits_text(waits: &[Wait]) -> String {
    if waits.is_empty() {
        "-".to_string()
    } else {
        waits.iter().map(wait_text).collect::<Vec<_>>().join(", ")
    }
}

/// An instance as a JSON object (the waits as the store's JSON: `{"Event": "approval"}`).
pub(crate) fn instance_json(info: &InstanceInfo) -> Value {
    json!({
        "id": info.id.as_str(),
        "name": info.name,
        "status": status_name(info.status),
        "parent": info.parent.as_ref().map(|p| p.as_str()),
        "started": format_time(info.created_at),
        "updated": format_time(info.updated_at),
        "finished": info.finished_at().map(format_time),
        "waits": serde_json::to_value(&info.waits).unwrap_or(Value::Null),
        "duplicates": info.duplicate_results,
        "runs": info.runs,
        "fingerprint": info.fingerprint.map(|f| format!("{f:016x}")),
        "records_children": info.records_children,
        "cursor": Cursor::of(info).to_string(),
    })
}

/// Rows of text in columns as wide as their widest cell, the first row a header.
pub(crate) fn table(rows: &[Vec<String>]) -> Vec<String> {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|r| {
            let mut line = String::new();
            for (c, cell) in r.iter().enumerate() {
                if c + 1 == cols {
                    line.push_str(cell);
                } else {
                    let pad = widths[c] - cell.chars().count();
                    line.push_str(cell);
                    line.push_str(&" ".repeat(pad + 2));
                }
            }
            line
        })
        .collect()
}

/// MessagePack as JSON (see [`dtasks::json`]).
pub(crate) fn msgpack_to_json(bytes: &[u8]) -> Result<Value, dtasks::Error> {
    dtasks::json::msgpack_to_json(bytes)
}

/// The JSON array `args` as the input of a DTask: the MessagePack tuple of its
/// arguments, which for a DTask without arguments is `()` (nil, not an empty array).
pub(crate) fn args_to_msgpack(args: &[Value]) -> Result<Vec<u8>, String> {
    if args.is_empty() {
        return rmp_serde::to_vec(&()).map_err(|e| e.to_string());
    }
    rmp_serde::to_vec(args).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;

    #[test]
    fn values_go_both_ways() {
        let v = json!([41, -3, 1.5, "x", null, true, {"a": [1, 2]}]);
        // An event value is encoded by the client as any serde value.
        let bytes = rmp_serde::to_vec(&v).unwrap();
        assert_eq!(msgpack_to_json(&bytes).unwrap(), v);
        // What a DTask decodes its arguments from: a tuple, `()` for none.
        let input = args_to_msgpack(&[json!(41), json!("a")]).unwrap();
        let (n, s): (u64, String) = rmp_serde::from_slice(&input).unwrap();
        assert_eq!((n, s.as_str()), (41, "a"));
        let none: () = rmp_serde::from_slice(&args_to_msgpack(&[]).unwrap()).unwrap();
        assert_eq!(none, ());
        // Enums: a JSON object of one variant, and back.
        #[derive(Debug, PartialEq, serde::Deserialize, Serialize)]
        enum Decision {
            Approve(String),
            Reject(String),
        }
        let bytes = rmp_serde::to_vec(&json!({"Approve": "Ada"})).unwrap();
        let d: Decision = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(d, Decision::Approve("Ada".into()));
        let back = rmp_serde::to_vec(&Decision::Reject("late".into())).unwrap();
        assert_eq!(msgpack_to_json(&back).unwrap(), json!({"Reject": "late"}));
        let ok: Result<String, String> = Ok("pay-17".into());
        let ok = rmp_serde::to_vec(&ok).unwrap();
        assert_eq!(msgpack_to_json(&ok).unwrap(), json!({"Ok": "pay-17"}));
    }

    #[test]
    fn tables_align_their_columns() {
        let rows = vec![
            vec!["ID".to_string(), "NAME".to_string()],
            vec!["a-long-id".to_string(), "x".to_string()],
        ];
        assert_eq!(table(&rows), vec!["ID         NAME", "a-long-id  x"]);
    }
}

//! An instance as a row: the columns of `dtasks_instances` and their conversions, and the
//! checks a fact passes before it is queued (so that a write never fails on its data).

use std::time::SystemTime;

use dtasks::store::{
    from_millis, millis, Fact, FactKind, InstanceInfo, StepKind, Steps, Transition,
};
use dtasks::{Error, InstanceId, Status, Wait};
use tokio_postgres::Row;

use crate::error::PgError;

/// The columns of an instance, in the order [`info_from_row`] reads them. `waits` is read
/// as text; `result` is as stored.
pub(crate) const COLUMNS: &str = "id, name, parent, status, waits::text, created_at, \
                                  updated_at, version, result, duplicate_results, \
                                  history::text, history_dropped, steps::text, runs, \
                                  fingerprint, records_children";

/// The same columns for the writer: `result` only says whether there is one (an empty
/// value stands for it), so that the writer never reads results back.
pub(crate) const WRITER_COLUMNS: &str = "id, name, parent, status, waits::text, created_at, \
     updated_at, version, CASE WHEN result IS NULL THEN NULL ELSE '\\x'::bytea END, \
     duplicate_results, history::text, history_dropped, steps::text, runs, fingerprint, \
     records_children";

/// The latest time a row holds (the last millisecond of the year 9999).
const MAX_MILLIS: u64 = 253_402_300_799_999;

/// The text of `status` in the `status` column.
pub(crate) fn status_text(status: Status) -> &'static str {
    status.as_str()
}

/// The status a `status` column holds.
pub(crate) fn parse_status(text: &str) -> Result<Status, PgError> {
    text.parse()
        .map_err(|_| PgError::Corrupt(format!("unknown status `{text}` in a row")))
}

/// The statuses of finished instances, as the `status` column holds them.
pub(crate) const FINISHED: [&str; 3] = ["succeeded", "failed", "cancelled"];

/// `waits` as the `waits` column holds it: a JSON array, in serde's form of [`Wait`].
pub(crate) fn waits_json(waits: &[Wait]) -> String {
    serde_json::to_string(waits).unwrap_or_else(|_| "[]".to_owned())
}

/// `history` as the `history` column holds it: a JSON array in serde's form of
/// [`Transition`].
pub(crate) fn history_json(history: &[Transition]) -> String {
    serde_json::to_string(history).unwrap_or_else(|_| "[]".to_owned())
}

/// `steps` as the `steps` column holds it: a JSON array in serde's form of [`Steps`].
pub(crate) fn steps_json(steps: &[Steps]) -> String {
    serde_json::to_string(steps).unwrap_or_else(|_| "[]".to_owned())
}

/// `t` as the store keeps it: to the millisecond, as cursors and listings order
/// instances.
pub(crate) fn to_row_time(t: SystemTime) -> SystemTime {
    from_millis(millis(t))
}

/// An instance from a row read with [`COLUMNS`] (or [`WRITER_COLUMNS`]).
pub(crate) fn info_from_row(row: &Row) -> Result<InstanceInfo, PgError> {
    let corrupt = |what: &str, e: &dyn std::fmt::Display| {
        PgError::Corrupt(format!("a row's {what} cannot be read: {e}"))
    };
    let id: String = row.try_get(0)?;
    let id = InstanceId::new(id).map_err(|e| corrupt("id", &e))?;
    let name: String = row.try_get(1)?;
    let parent: Option<String> = row.try_get(2)?;
    let parent = parent
        .map(InstanceId::new)
        .transpose()
        .map_err(|e| corrupt("parent", &e))?;
    let status = parse_status(row.try_get(3)?)?;
    let waits: String = row.try_get(4)?;
    let waits: Vec<Wait> = serde_json::from_str(&waits).map_err(|e| corrupt("waits", &e))?;
    let created_at: SystemTime = row.try_get(5)?;
    let updated_at: SystemTime = row.try_get(6)?;
    let version: i64 = row.try_get(7)?;
    let result: Option<Vec<u8>> = row.try_get(8)?;
    let duplicates: i64 = row.try_get(9)?;
    let history: String = row.try_get(10)?;
    let history = serde_json::from_str(&history).map_err(|e| corrupt("history", &e))?;
    let dropped: i64 = row.try_get(11)?;
    let steps: String = row.try_get(12)?;
    let steps = serde_json::from_str(&steps).map_err(|e| corrupt("steps", &e))?;
    let runs: i64 = row.try_get(13)?;
    let fingerprint: Option<i64> = row.try_get(14)?;
    let records_children: bool = row.try_get(15)?;

    // `InstanceInfo` is built by the core; an instance known from its start is the
    // starting point, then every column is set as read.
    let started = Fact::new(
        id,
        name,
        created_at,
        FactKind::Started {
            parent: parent.clone(),
        },
    );
    let mut info = InstanceInfo::from_fact(&started);
    info.parent = parent;
    info.status = status;
    info.waits = waits;
    info.created_at = created_at;
    info.updated_at = updated_at;
    info.version = u64::try_from(version).map_err(|e| corrupt("version", &e))?;
    info.result = result;
    info.duplicate_results = u32::try_from(duplicates.max(0)).unwrap_or(u32::MAX);
    info.history = history;
    info.history_dropped = u32::try_from(dropped.max(0)).unwrap_or(u32::MAX);
    info.steps = steps;
    info.runs = u32::try_from(runs.max(1)).unwrap_or(u32::MAX);
    // The column keeps the fingerprint's 64 bits as a signed number.
    info.fingerprint = fingerprint.map(|f| f as u64);
    info.records_children = records_children;
    Ok(info)
}

/// Checks that `fact` can be written as it is, and brings its time to the millisecond
/// (see [`to_row_time`]). Everything refused here is refused with
/// [`Error::is_bad_input`] before it reaches the writer, so a batch never fails on the
/// data of one of its facts.
pub(crate) fn checked(mut fact: Fact) -> Result<Fact, Error> {
    let bad = |what: String| {
        Err(Error::invalid(format!(
            "fact about `{}`: {what}",
            fact.instance
        )))
    };
    if fact.name.contains('\0') {
        return bad("a DTask name holds a NUL character".to_owned());
    }
    if millis(fact.at) > MAX_MILLIS {
        return bad(format!("its time {:?} is past the year 9999", fact.at));
    }
    let nul_step = fact.steps.iter().any(|s| match &s.kind {
        StepKind::Child(name) | StepKind::Event(name) => name.contains('\0'),
        _ => false,
    });
    if nul_step {
        return bad("a step's name holds a NUL character".to_owned());
    }
    match &fact.kind {
        FactKind::Started { .. } | FactKind::Finished { .. } => {}
        FactKind::Status { waits, version, .. } => {
            if i64::try_from(*version).is_err() {
                return bad(format!("its version {version} is over 2^63 - 1"));
            }
            let nul = waits
                .iter()
                .any(|w| matches!(w, Wait::Event(name) if name.contains('\0')));
            if nul {
                return bad("an event name holds a NUL character".to_owned());
            }
        }
        other => {
            return bad(format!(
                "the PostgreSQL store does not know the fact {other:?}"
            ))
        }
    }
    fact.at = to_row_time(fact.at);
    Ok(fact)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip() {
        for s in Status::ALL {
            let text = status_text(s);
            assert_eq!(parse_status(text).unwrap(), s);
            assert_eq!(FINISHED.contains(&text), s.is_finished(), "{s:?}");
        }
        assert!(parse_status("done").is_err());
    }

    #[test]
    fn waits_are_json_that_reads_back() {
        let waits = vec![
            Wait::Event("approval".into()),
            Wait::Resume,
            Wait::Timer { at_ms: 17 },
            Wait::Children(3),
            Wait::Yield,
        ];
        let json = waits_json(&waits);
        assert_eq!(
            json,
            r#"[{"Event":"approval"},"Resume",{"Timer":{"at_ms":17}},{"Children":3},"Yield"]"#
        );
        assert_eq!(serde_json::from_str::<Vec<Wait>>(&json).unwrap(), waits);
    }

    #[test]
    fn facts_with_data_a_row_cannot_hold_are_refused() {
        let id = InstanceId::new("a").unwrap();
        let now = SystemTime::now();
        let nul = Fact::new(id.clone(), "x\0y", now, FactKind::Started { parent: None });
        assert!(checked(nul).unwrap_err().is_bad_input());
        let huge = Fact::new(
            id.clone(),
            "x",
            now,
            FactKind::Status {
                status: Status::Running,
                waits: vec![],
                version: u64::MAX,
            },
        );
        assert!(checked(huge).unwrap_err().is_bad_input());
        let far = Fact::new(
            id.clone(),
            "x",
            from_millis(MAX_MILLIS + 1),
            FactKind::Started { parent: None },
        );
        assert!(checked(far).unwrap_err().is_bad_input());
        let fine = Fact::new(
            id,
            "x",
            from_millis(5) + std::time::Duration::from_micros(700),
            FactKind::Started { parent: None },
        );
        assert_eq!(checked(fine).unwrap().at, from_millis(5));
    }
}

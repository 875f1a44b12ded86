//! One batch of facts in one transaction.
//!
//! 1. Insert a `Pending` row for every instance of the batch that has none, from the
//!    instance's first fact in the batch (`ON CONFLICT DO NOTHING`): this is the state
//!    [`InstanceInfo::from_fact`] starts from, and it makes every row of the batch exist,
//!    so that step 2 can lock it.
//! 2. Lock and read those rows (`SELECT ... FOR UPDATE`, in id order; step 1 inserts in
//!    id order too). Another writer of the same instances, in this process or another,
//!    waits for the commit.
//! 3. Apply the facts, in order, with [`InstanceInfo::apply`]: the store's rules are
//!    the core's one definition of them, not a copy in SQL.
//! 4. Write back the rows that changed, in one `UPDATE ... FROM unnest(...)`; a result
//!    is written only where the row had none.
//! 5. Notify the ids that finished in this batch (delivered at commit), and commit.
//!
//! A batch of starts alone (what a client records before it publishes a start) takes
//! one statement instead, in one round trip and without a transaction of its own: a
//! start only ever makes a row or fills in its parent, an earlier start time and whether
//! the instance records its children, which the statement does itself (the one place where the SQL follows the rules rather than
//! running them: `tests/conformance.rs` holds both to the same reference).
//!
//! Five statements whatever the size of the batch, in two round trips: `BEGIN` and steps
//! 1 and 2 go out together (pipelined on the connection), then steps 4 and 5 with the
//! `COMMIT`. A statement that fails aborts the transaction, so that the statements
//! after it in the same round trip fail too (and a `COMMIT` rolls back): the caller
//! sees the first error and closes the connection. Results are never read back: the
//! writer reads an empty stand-in for a stored result, which is all
//! [`InstanceInfo::apply`] looks at, and step 4 keeps the stored one.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use deadpool_postgres::Object;
use dtasks::store::{Applied, Fact, FactKind, InstanceInfo};
use tokio_postgres::types::ToSql;

use crate::error::PgError;
use crate::row::{history_json, info_from_row, status_text, steps_json, waits_json};
use crate::sql::Sql;

/// Applies `facts` (already [`checked`](crate::row::checked)) in one transaction;
/// returns what each fact did, in order.
pub(crate) async fn apply(
    client: &Object,
    sql: &Sql,
    facts: &[&Fact],
) -> Result<Vec<Applied>, PgError> {
    if facts
        .iter()
        .all(|f| matches!(f.kind, FactKind::Started { .. }))
    {
        return starts(client, sql, facts).await;
    }
    // The first fact of each instance, by id.
    let mut first: HashMap<&str, &Fact> = HashMap::new();
    for fact in facts {
        first.entry(fact.instance.as_str()).or_insert(fact);
    }
    let mut ids: Vec<&str> = first.keys().copied().collect();
    ids.sort_unstable();
    let names: Vec<&str> = ids.iter().map(|id| first[id].name.as_str()).collect();
    let ats: Vec<SystemTime> = ids.iter().map(|id| first[id].at).collect();

    // Prepared once per connection (cached), before the transaction's round trips.
    let insert = client.prepare_cached(&sql.insert_missing).await?;
    let lock = client.prepare_cached(&sql.lock_rows).await?;
    let write = client.prepare_cached(&sql.write_back).await?;
    let notify = client.prepare_cached(&sql.notify).await?;
    let client: &tokio_postgres::Client = client;

    // Round trip 1: BEGIN, the missing rows, every row of the batch locked and read.
    let insert_params: [&(dyn ToSql + Sync); 3] = [&ids, &names, &ats];
    let lock_params: [&(dyn ToSql + Sync); 1] = [&ids];
    let (begun, inserted, rows) = tokio::join!(
        client.batch_execute("BEGIN"),
        client.execute(&insert, &insert_params),
        client.query(&lock, &lock_params),
    );
    begun?;
    inserted?;
    let rows = rows?;
    if rows.len() != ids.len() {
        return Err(PgError::Vanished);
    }
    let mut book: HashMap<String, (InstanceInfo, InstanceInfo)> = HashMap::new();
    for row in &rows {
        let info = info_from_row(row)?;
        book.insert(info.id.as_str().to_owned(), (info.clone(), info));
    }

    let mut applied = Vec::with_capacity(facts.len());
    for fact in facts {
        let (_, now) = book
            .get_mut(fact.instance.as_str())
            .ok_or(PgError::Vanished)?;
        applied.push(now.apply(fact));
    }

    let mut changed = Columns::default();
    let mut finished: Vec<&str> = Vec::new();
    for id in &ids {
        let (before, now) = &book[*id];
        if before == now {
            continue;
        }
        changed
            .push(now)
            .map_err(|e| PgError::Corrupt(e.to_string()))?;
        if before.result.is_none() && now.result.is_some() {
            finished.push(id);
        }
    }
    // Round trip 2: the changed rows written back, the finished ids notified, COMMIT.
    let written = async {
        if changed.ids.is_empty() {
            return Ok(0);
        }
        client
            .execute(
                &write,
                &[
                    &changed.ids,
                    &changed.parents,
                    &changed.statuses,
                    &changed.waits,
                    &changed.created,
                    &changed.updated,
                    &changed.versions,
                    &changed.results,
                    &changed.duplicates,
                    &changed.histories,
                    &changed.dropped,
                    &changed.steps,
                    &changed.runs,
                    &changed.fingerprints,
                    &changed.records_children,
                ],
            )
            .await
    };
    let notified = async {
        if finished.is_empty() {
            return Ok(0);
        }
        client.execute(&notify, &[&sql.channel, &finished]).await
    };
    let (written, notified, committed) =
        tokio::join!(written, notified, client.batch_execute("COMMIT"));
    written?;
    notified?;
    committed?;
    Ok(applied)
}

/// Records a batch of starts alone in one statement (see the module docs).
async fn starts(client: &Object, sql: &Sql, facts: &[&Fact]) -> Result<Vec<Applied>, PgError> {
    // One row per instance (a statement may touch a row once): its first name, its
    // first parent, its earliest time, whether any of its starts records children.
    let mut rows: BTreeMap<&str, (&str, Option<&str>, SystemTime, bool)> = BTreeMap::new();
    for fact in facts {
        let FactKind::Started { parent } = &fact.kind else {
            continue;
        };
        let parent = parent.as_ref().map(|p| p.as_str());
        rows.entry(fact.instance.as_str())
            .and_modify(|(_, p, at, records)| {
                if p.is_none() {
                    *p = parent;
                }
                *at = (*at).min(fact.at);
                *records |= fact.records_children;
            })
            .or_insert((fact.name.as_str(), parent, fact.at, fact.records_children));
    }
    let ids: Vec<&str> = rows.keys().copied().collect();
    let names: Vec<&str> = rows.values().map(|r| r.0).collect();
    let parents: Vec<Option<&str>> = rows.values().map(|r| r.1).collect();
    let ats: Vec<SystemTime> = rows.values().map(|r| r.2).collect();
    let records: Vec<bool> = rows.values().map(|r| r.3).collect();
    let statement = client.prepare_cached(&sql.start_rows).await?;
    client
        .execute(&statement, &[&ids, &names, &parents, &ats, &records])
        .await?;
    // A start changes nothing a reader waits on: the rules call it stale.
    Ok(vec![Applied::Stale; facts.len()])
}

/// The columns of the rows to write back, one array each.
#[derive(Default)]
struct Columns<'a> {
    ids: Vec<&'a str>,
    parents: Vec<Option<&'a str>>,
    statuses: Vec<&'static str>,
    waits: Vec<String>,
    created: Vec<SystemTime>,
    updated: Vec<SystemTime>,
    versions: Vec<i64>,
    results: Vec<Option<&'a [u8]>>,
    duplicates: Vec<i64>,
    histories: Vec<String>,
    dropped: Vec<i64>,
    steps: Vec<String>,
    runs: Vec<i64>,
    fingerprints: Vec<Option<i64>>,
    records_children: Vec<bool>,
}

impl<'a> Columns<'a> {
    fn push(&mut self, info: &'a InstanceInfo) -> Result<(), dtasks::Error> {
        self.ids.push(info.id.as_str());
        self.parents.push(info.parent.as_ref().map(|p| p.as_str()));
        self.statuses.push(status_text(info.status));
        self.waits.push(waits_json(&info.waits));
        self.created.push(info.created_at);
        self.updated.push(info.updated_at);
        self.versions
            .push(i64::try_from(info.version).unwrap_or(i64::MAX));
        self.results.push(info.result.as_deref());
        self.duplicates.push(i64::from(info.duplicate_results));
        self.histories.push(history_json(&info.history));
        self.dropped.push(i64::from(info.history_dropped));
        self.steps.push(steps_json(&info.steps));
        self.runs.push(i64::from(info.runs));
        // The column keeps the fingerprint's 64 bits as a signed number.
        self.fingerprints.push(info.fingerprint.map(|f| f as i64));
        self.records_children.push(info.records_children);
        Ok(())
    }
}

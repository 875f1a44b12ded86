//! The retention: a background task that removes instances finished longer ago than the
//! retention, with their claims and values, and claims older than the retention whose
//! instance is gone ([`PgStoreBuilder::retention`]); and, when asked
//! ([`PgStoreBuilder::orphan_retention`]), values stored out of band longer ago than that
//! which no instance owns.
//!
//! It runs every tenth of the shorter setting, removing at most 10,000 rows per
//! statement (repeated while there are more) so that no statement holds many locks for
//! long. "Finished at" is the row's `updated_at`, the time of its result; the cutoff is
//! this process's clock, like the facts' times.
//!
//! [`PgStoreBuilder::retention`]: crate::PgStoreBuilder::retention
//! [`PgStoreBuilder::orphan_retention`]: crate::PgStoreBuilder::orphan_retention

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use deadpool_postgres::Pool;
use dtasks::store::lineage;
use tokio::sync::watch;
use tracing::{debug, info};

use crate::error::PgError;
use crate::sql::Sql;

/// The most rows one statement of the retention removes.
const CHUNK: i64 = 10_000;

/// What the task removes, by age.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Keep {
    /// Instances finished longer ago than this (with their claims and values).
    pub(crate) finished: Option<Duration>,
    /// Values stored longer ago than this that no instance owns.
    pub(crate) orphans: Option<Duration>,
}

impl Keep {
    /// The shorter of the two settings: `None` when neither is set (no task).
    pub(crate) fn shortest(&self) -> Option<Duration> {
        match (self.finished, self.orphans) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Applies `keep` every `every` until `stop` is dropped.
pub(crate) async fn run(
    pool: Pool,
    sql: Arc<Sql>,
    keep: Keep,
    every: Duration,
    mut stop: watch::Receiver<()>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Where the reading of old values stopped: a run cut short by its time bound goes on
    // from there next time, so that values of long-lived instances at the front cannot
    // keep later ones from ever being read.
    let mut cursor = Cursor::start();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let now = SystemTime::now();
        let cutoff = |age: Option<Duration>| age.and_then(|a| now.checked_sub(a));
        let bounded = tokio::time::timeout(
            every.max(Duration::from_secs(30)),
            sweep(
                &pool,
                &sql,
                cutoff(keep.finished),
                cutoff(keep.orphans),
                &mut cursor,
            ),
        );
        match bounded.await {
            Ok(Ok((0, 0))) => {}
            Ok(Ok((finished, orphans))) => info!(
                finished,
                orphan_values = orphans,
                "finished instances and values of no instance past their retention removed"
            ),
            Ok(Err(e)) => debug!(error = %e, "the retention could not run; it runs again later"),
            Err(_) => debug!("the retention did not finish in time; it runs again later"),
        }
    }
}

/// Removes what finished before `finished` and the values of no instance stored before
/// `orphans` (each when given); returns how many instances, and how many values of no
/// instance.
async fn sweep(
    pool: &Pool,
    sql: &Sql,
    finished: Option<SystemTime>,
    orphans: Option<SystemTime>,
    cursor: &mut Cursor,
) -> Result<(u64, u64), PgError> {
    let client = pool.get().await?;
    let mut removed = 0u64;
    if let Some(cutoff) = finished {
        let expire = client.prepare_cached(&sql.expire).await?;
        loop {
            let row = client.query_one(&expire, &[&cutoff, &CHUNK]).await?;
            let n: i64 = row.try_get(0)?;
            removed += n.max(0) as u64;
            if n < CHUNK {
                break;
            }
        }
        let claims = client.prepare_cached(&sql.expire_claims).await?;
        client.execute(&claims, &[&cutoff]).await?;
    }
    let values = match orphans {
        Some(cutoff) => orphan_values(&client, sql, cutoff, cursor).await?,
        None => 0,
    };
    Ok((removed, values))
}

/// A position in the values, in the order they were stored: after the value stored at
/// `.0` under the key `.1`.
struct Cursor(SystemTime, String);

impl Cursor {
    /// Before every value.
    fn start() -> Self {
        Self(SystemTime::UNIX_EPOCH, String::new())
    }
}

/// Removes the values stored before `cutoff` that belong to no instance: neither the
/// instance that stored one nor any it descends from (`<root>.<n>…`) has a row. Values
/// of instances that have one stay, however old (a root that waits for months keeps its
/// values). Reads the old values a page at a time, in the order they were stored, from
/// `cursor`, which it moves past each page read; back to the start once it read them all.
async fn orphan_values(
    client: &deadpool_postgres::Object,
    sql: &Sql,
    cutoff: SystemTime,
    cursor: &mut Cursor,
) -> Result<u64, PgError> {
    let page = client.prepare_cached(&sql.old_payloads).await?;
    let present = client.prepare_cached(&sql.present).await?;
    let remove = client.prepare_cached(&sql.drop_payloads).await?;
    let mut removed = 0u64;
    loop {
        let rows = client
            .query(&page, &[&cutoff, &cursor.0, &cursor.1, &CHUNK])
            .await?;
        let mut values: Vec<(String, String)> = Vec::with_capacity(rows.len());
        for row in &rows {
            values.push((row.try_get(0)?, row.try_get(1)?));
        }
        let lines: HashSet<&str> = values
            .iter()
            .flat_map(|(_, instance)| lineage(instance))
            .collect();
        let lines: Vec<&str> = lines.into_iter().collect();
        let found: HashSet<String> = client
            .query(&present, &[&lines])
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        let orphans: Vec<&str> = values
            .iter()
            .filter(|(_, instance)| !lineage(instance).any(|id| found.contains(id)))
            .map(|(key, _)| key.as_str())
            .collect();
        if !orphans.is_empty() {
            removed += client.execute(&remove, &[&orphans, &cutoff]).await?;
        }
        match (rows.last(), values.pop()) {
            (Some(last), Some((key, _))) if (rows.len() as i64) == CHUNK => {
                *cursor = Cursor(last.try_get(2)?, key);
            }
            _ => {
                *cursor = Cursor::start();
                return Ok(removed);
            }
        }
    }
}

//! The retention: a background task that removes instances finished longer ago than the
//! retention, with their claims, and claims older than the retention whose instance is
//! gone.
//!
//! It runs every tenth of the retention (see [`PgStoreBuilder::retention`]), removing at
//! most 10,000 rows per statement (repeated while there are more) so that no statement
//! holds many locks for long. "Finished at" is the row's `updated_at`, the time of its
//! result; the cutoff is this process's clock, like the facts' times.
//!
//! [`PgStoreBuilder::retention`]: crate::PgStoreBuilder::retention

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use deadpool_postgres::Pool;
use tokio::sync::watch;
use tracing::{debug, info};

use crate::error::PgError;
use crate::sql::Sql;

/// The most rows one statement of the retention removes.
const CHUNK: i64 = 10_000;

/// Applies `keep` every `every` until `stop` is dropped.
pub(crate) async fn run(
    pool: Pool,
    sql: Arc<Sql>,
    keep: Duration,
    every: Duration,
    mut stop: watch::Receiver<()>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let Some(cutoff) = SystemTime::now().checked_sub(keep) else {
            continue;
        };
        let bounded = tokio::time::timeout(
            every.max(Duration::from_secs(30)),
            sweep(&pool, &sql, cutoff),
        );
        match bounded.await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => info!(removed = n, "finished instances past the retention removed"),
            Ok(Err(e)) => debug!(error = %e, "the retention could not run; it runs again later"),
            Err(_) => debug!("the retention did not finish in time; it runs again later"),
        }
    }
}

/// Removes what finished before `cutoff`; returns how many instances.
async fn sweep(pool: &Pool, sql: &Sql, cutoff: SystemTime) -> Result<u64, PgError> {
    let client = pool.get().await?;
    let expire = client.prepare_cached(&sql.expire).await?;
    let mut removed = 0u64;
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
    Ok(removed)
}

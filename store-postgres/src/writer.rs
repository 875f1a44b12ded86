//! The writer: one task per store that takes every caller's facts, in the order they
//! came, and writes as many as are waiting in one transaction ([`crate::apply`]), with
//! up to [`PgStoreBuilder::writers`](crate::PgStoreBuilder::writers) transactions in
//! flight at once.
//!
//! A caller's `record` resolves when the transaction holding its facts has committed.
//! Transactions in flight together may commit in any order: the store's rules make that
//! safe (a status carries its version and never goes backwards, the first result to
//! commit stands, and a caller's facts are never split), and each instance's facts are
//! causally ordered by their writers anyway (a step's facts are durable before the
//! messages that start its next step are acked). Batches lock their rows in id order,
//! so that two of them never deadlock on each other.
//!
//! While the database cannot be written (down, unreachable, a deadlock), a batch is
//! tried again with a growing pause (50 ms doubling up to 2 s) until each caller's write
//! timeout: then that caller gets [`Error::is_store`](dtasks::Error::is_store), and the
//! others wait on. An error about the statement or the data (never expected: facts are
//! checked before they are queued) fails the batch; when it holds several callers, each
//! is then written alone, so that only the one at fault fails.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Object, Pool};
use dtasks::store::{Applied, Fact};
use dtasks::Error;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::apply::apply;
use crate::error::PgError;
use crate::sql::Sql;

/// One caller's facts.
pub(crate) struct Request {
    /// The facts, checked.
    pub(crate) facts: Vec<Fact>,
    /// When the caller stops waiting for a database that cannot be written.
    pub(crate) deadline: Instant,
    /// Where the number of duplicate results goes.
    pub(crate) reply: oneshot::Sender<Result<u64, Error>>,
}

/// What the writer needs.
pub(crate) struct Writer {
    pub(crate) pool: Pool,
    pub(crate) sql: Arc<Sql>,
    /// The most facts in one transaction (a caller's facts are never split).
    pub(crate) max_batch: usize,
    /// The most transactions in flight at once (at least 1).
    pub(crate) in_flight: usize,
    /// The bound of one attempt.
    pub(crate) attempt_timeout: Duration,
    /// What it has done so far.
    pub(crate) counts: Arc<Counts>,
    /// The callers' requests, in the order they came.
    pub(crate) queue: tokio::sync::Mutex<mpsc::Receiver<Request>>,
    /// While the database cannot be written: one batch tries again for all.
    pub(crate) retry: std::sync::Mutex<Retry>,
}

/// While the database cannot be written, one batch (the retrier) tries again and takes
/// in the requests of every other batch that failed, and what the queue brings, so that
/// everything that waited goes out together once the database is back.
#[derive(Default)]
pub(crate) struct Retry {
    /// Whether a retrier is trying.
    active: bool,
    /// Requests of batches that failed while it was, for it to take in.
    parked: Vec<Request>,
}

/// The writer's counts, read by [`PgStore::write_stats`](crate::PgStore::write_stats).
#[derive(Debug, Default)]
pub(crate) struct Counts {
    pub(crate) transactions: AtomicU64,
    pub(crate) facts: AtomicU64,
    pub(crate) calls: AtomicU64,
    pub(crate) failed_attempts: AtomicU64,
    /// Attempts running now, and the most seen at once.
    pub(crate) in_flight: AtomicU64,
    pub(crate) most_in_flight: AtomicU64,
}

const FIRST_PAUSE: Duration = Duration::from_millis(50);
const MAX_PAUSE: Duration = Duration::from_secs(2);

/// How a batch ended.
enum Ended {
    /// Every caller of the batch was answered.
    Answered,
    /// An error retrying cannot help.
    Permanent(PgError),
}

impl Writer {
    /// Writes what the queue brings until every sender is gone and the queue is empty: a
    /// batch of what waits goes out as soon as fewer than `in_flight` are being written
    /// (one at a time while the database cannot be written).
    pub(crate) async fn run(self: Arc<Self>) {
        let mut running: JoinSet<()> = JoinSet::new();
        let mut open = true;
        while open || !running.is_empty() {
            let places = if self.retrying() { 1 } else { self.in_flight };
            tokio::select! {
                // Finished batches first: they free a place for the next.
                biased;
                Some(_) = running.join_next(), if !running.is_empty() => {}
                next = self.next_batch(), if open && running.len() < places => match next {
                    Some(batch) => {
                        running.spawn(self.clone().settle(batch));
                    }
                    None => open = false,
                },
            }
        }
    }

    /// The next request and what waits behind it; `None` once every sender is gone and
    /// the queue is empty.
    async fn next_batch(&self) -> Option<VecDeque<Request>> {
        let mut queue = self.queue.lock().await;
        let first = queue.recv().await?;
        let mut batch = VecDeque::from([first]);
        self.take_in(&mut batch, &mut queue);
        Some(batch)
    }

    fn retrying(&self) -> bool {
        lock(&self.retry).active
    }

    /// Writes one batch, and answers each of its callers.
    async fn settle(self: Arc<Self>, mut batch: VecDeque<Request>) {
        match self.write(&mut batch).await {
            Ended::Answered => {}
            Ended::Permanent(e) if batch.len() > 1 => {
                warn!(
                    error = %e,
                    callers = batch.len(),
                    "a batch of facts failed; writing each caller's facts alone"
                );
                for request in std::mem::take(&mut batch) {
                    let mut one = VecDeque::from([request]);
                    if let Ended::Permanent(e) = self.write(&mut one).await {
                        fail(&mut one, e.into_error());
                    }
                }
            }
            Ended::Permanent(e) => fail(&mut batch, e.into_error()),
        }
    }

    /// Writes `batch` until it commits, its callers' deadlines pass, or an error is
    /// permanent. After a first failure that may pass, the batch either becomes the
    /// retrier or, when there is one, hands its requests over to it
    /// ([`Ended::Answered`] then means handed over).
    async fn write(&self, batch: &mut VecDeque<Request>) -> Ended {
        let mut pause = FIRST_PAUSE;
        let mut last: Option<PgError> = None;
        let mut retrier = false;
        loop {
            if retrier {
                self.gather(batch);
            }
            expire(batch, last.as_ref());
            if batch.is_empty() {
                if retrier && !self.stop_retrying(batch) {
                    continue;
                }
                return Ended::Answered;
            }
            match self.attempt(batch).await {
                Ok(applied) => {
                    let c = &self.counts;
                    c.transactions.fetch_add(1, Ordering::Relaxed);
                    c.facts.fetch_add(applied.len() as u64, Ordering::Relaxed);
                    c.calls.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    answer(batch, &applied);
                    if retrier && !self.stop_retrying(batch) {
                        // Parked meanwhile: written next, at once.
                        continue;
                    }
                    return Ended::Answered;
                }
                Err(e) if e.is_transient() => {
                    self.counts.failed_attempts.fetch_add(1, Ordering::Relaxed);
                    if !retrier {
                        if !self.retry_or_park(batch) {
                            return Ended::Answered;
                        }
                        retrier = true;
                    }
                    debug!(
                        error = %e,
                        callers = batch.len(),
                        ?pause,
                        "the instance store cannot be written yet; trying again"
                    );
                    last = Some(e);
                    // Sleep no later than the first deadline, so that its caller is
                    // answered on time.
                    let until = batch
                        .front()
                        .map_or(Instant::now() + pause, |r| r.deadline)
                        .min(Instant::now() + pause);
                    tokio::time::sleep_until(until).await;
                    pause = (pause * 2).min(MAX_PAUSE);
                }
                Err(e) => {
                    if retrier {
                        // What was parked is written with this batch, each alone.
                        let mut retry = lock(&self.retry);
                        batch.extend(retry.parked.drain(..));
                        retry.active = false;
                    }
                    return Ended::Permanent(e);
                }
            }
        }
    }

    /// Makes `batch` the retrier (`true`), or parks its requests for the retrier there is
    /// (`false`, and `batch` is left empty).
    fn retry_or_park(&self, batch: &mut VecDeque<Request>) -> bool {
        let mut retry = lock(&self.retry);
        if retry.active {
            retry.parked.extend(batch.drain(..));
            false
        } else {
            retry.active = true;
            true
        }
    }

    /// The retrier takes in what was parked and what the queue holds, in the order the
    /// callers came (their deadlines).
    fn gather(&self, batch: &mut VecDeque<Request>) {
        batch.extend(lock(&self.retry).parked.drain(..));
        // Held by `run` only while it waits for a request: then the queue is empty.
        if let Ok(mut queue) = self.queue.try_lock() {
            self.take_in(batch, &mut queue);
        }
        batch.make_contiguous().sort_by_key(|r| r.deadline);
    }

    /// The retrier is done, unless requests were parked meanwhile: then `false`, and they
    /// are in `batch`.
    fn stop_retrying(&self, batch: &mut VecDeque<Request>) -> bool {
        let mut retry = lock(&self.retry);
        if retry.parked.is_empty() {
            retry.active = false;
            true
        } else {
            batch.extend(retry.parked.drain(..));
            false
        }
    }

    /// Moves waiting requests into `batch` while it holds fewer than `max_batch` facts.
    fn take_in(&self, batch: &mut VecDeque<Request>, queue: &mut mpsc::Receiver<Request>) {
        let mut facts: usize = batch.iter().map(|r| r.facts.len()).sum();
        while facts < self.max_batch {
            match queue.try_recv() {
                Ok(r) => {
                    facts += r.facts.len();
                    batch.push_back(r);
                }
                Err(_) => break,
            }
        }
    }

    /// One transaction of every fact of `batch`, bounded by the attempt timeout.
    async fn attempt(&self, batch: &VecDeque<Request>) -> Result<Vec<Applied>, PgError> {
        let facts: Vec<&Fact> = batch.iter().flat_map(|r| r.facts.iter()).collect();
        let c = &self.counts;
        let now = c.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        c.most_in_flight.fetch_max(now, Ordering::Relaxed);
        let _done = scopeguard(|| {
            c.in_flight.fetch_sub(1, Ordering::Relaxed);
        });
        let work = async {
            let client = Discard(Some(self.pool.get().await?));
            let result = match &client.0 {
                Some(c) => apply(c, &self.sql, &facts).await,
                None => Err(PgError::Vanished),
            };
            if result.is_ok() {
                client.keep();
            }
            result
        };
        match tokio::time::timeout(self.attempt_timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(PgError::Timeout(self.attempt_timeout)),
        }
    }
}

/// A connection in the middle of a transaction: closed when dropped (an attempt that
/// failed, or whose future was dropped at its timeout), so that the pool never hands out
/// a connection with a transaction open or half gone; back to the pool once
/// [`kept`](Discard::keep).
struct Discard(Option<Object>);

impl Discard {
    fn keep(mut self) {
        drop(self.0.take());
    }
}

impl Drop for Discard {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            drop(Object::take(client));
        }
    }
}

/// Runs `f` when dropped (also when the future holding it is).
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Answers every caller of a committed batch with its count of duplicate results.
fn answer(batch: &mut VecDeque<Request>, applied: &[Applied]) {
    let mut applied = applied.iter();
    for request in batch.drain(..) {
        let duplicates = applied
            .by_ref()
            .take(request.facts.len())
            .filter(|a| **a == Applied::Duplicate)
            .count() as u64;
        let _ = request.reply.send(Ok(duplicates));
    }
}

/// Fails every caller of `batch` with `error`.
fn fail(batch: &mut VecDeque<Request>, error: Error) {
    let text = error.to_string();
    let mut error = Some(error);
    for request in batch.drain(..) {
        let e = error.take().unwrap_or_else(|| Error::store(text.clone()));
        let _ = request.reply.send(Err(e));
    }
}

/// Fails the callers whose deadline has passed (the front of the batch: deadlines grow
/// in arrival order) with the last error seen.
fn expire(batch: &mut VecDeque<Request>, last: Option<&PgError>) {
    let now = Instant::now();
    while batch.front().is_some_and(|r| r.deadline <= now) {
        let Some(request) = batch.pop_front() else {
            break;
        };
        let why = last.map_or_else(
            || "they waited behind facts the database did not take".to_owned(),
            ToString::to_string,
        );
        warn!(
            facts = request.facts.len(),
            error = %why,
            "facts not recorded within the write timeout"
        );
        let _ = request.reply.send(Err(Error::store(format!(
            "the instance store could not be written within the write timeout: {why}"
        ))));
    }
}

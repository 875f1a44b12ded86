//! The DTasks of the worker-process tests: the `it-worker` binary registers them
//! ([`registry`]) and the tests start them, so both sides link the same code.
//!
//! Several of them report the id of the worker process that ran a step (a [`DTask::run`]
//! side effect, recorded in the journal: a replay reports the process that first ran it),
//! so that a test can tell which processes did the work.

use std::io::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dtasks::{dtask, DTask, Registry};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Appends `line` and a newline to the file at `path` with one `O_APPEND` write, so that
/// lines written by several processes at once never interleave.
pub fn append_line(path: &str, line: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("opening {path}: {e}"));
    f.write_all(format!("{line}\n").as_bytes())
        .unwrap_or_else(|e| panic!("appending to {path}: {e}"));
}

/// The id of the worker process that runs (ran, on a replay) this point of the instance.
async fn worker_pid() -> u32 {
    DTask::run(|| async { std::process::id() }).await
}

/// Returns `x + 1`.
#[dtask(name = "it.add_one")]
pub async fn add_one(x: u64) -> u64 {
    x + 1
}

/// Returns `(x + 1) * 2`, through a child.
#[dtask(name = "it.middle")]
pub async fn middle(x: u64) -> u64 {
    add_one(x).await * 2
}

/// A 3-deep chain: returns `(x + 1) * 2 + 100`.
#[dtask(name = "it.chain3")]
pub async fn chain3(x: u64) -> u64 {
    middle(x).await + 100
}

/// Returns `x + 1` and the id of the worker process that ran it.
#[dtask(name = "it.tagged")]
pub async fn tagged(x: u64) -> (u64, u32) {
    (x + 1, worker_pid().await)
}

/// A `when_all` of `n` [`tagged`] children: the sum of `1..=n` and, for each child in
/// order, the process that ran it.
#[dtask(name = "it.fan")]
pub async fn fan(n: u64) -> (u64, Vec<u32>) {
    let all = DTask::when_all((0..n).map(tagged)).await;
    assert!(
        all.iter().enumerate().all(|(i, (v, _))| *v == i as u64 + 1),
        "when_all returned results out of order"
    );
    (
        all.iter().map(|(v, _)| v).sum(),
        all.iter().map(|(_, pid)| *pid).collect(),
    )
}

/// A chain of `steps` sequential [`tagged`] children from `start`: returns
/// `start + steps` and the process that ran each step, in order.
#[dtask(name = "it.chain")]
pub async fn chain(start: u64, steps: u32) -> (u64, Vec<u32>) {
    let mut v = start;
    let mut pids = Vec::with_capacity(steps as usize);
    for _ in 0..steps {
        let (next, pid) = tagged(v).await;
        v = next;
        pids.push(pid);
    }
    (v, pids)
}

/// Waits `ms` on a durable timer, then returns `value`.
#[dtask(name = "it.sleep_then")]
pub async fn sleep_then(ms: u64, value: String) -> String {
    DTask::delay(Duration::from_millis(ms)).await;
    value
}

/// Waits `ms` on a durable timer, appends `slow` to the file `path`, returns `"slow"`.
#[dtask(name = "it.slow_loser")]
pub async fn slow_loser(ms: u64, path: String) -> String {
    DTask::delay(Duration::from_millis(ms)).await;
    DTask::run(move || async move { append_line(&path, "slow") }).await;
    "slow".to_string()
}

/// `when_any` of a [`slow_loser`] of `slow_ms` (which marks `path` when it ends) and a
/// [`sleep_then`] of `fast_ms`: `(1, "fast")` when the fast one wins.
#[dtask(name = "it.race")]
pub async fn race(slow_ms: u64, fast_ms: u64, path: String) -> (usize, String) {
    DTask::when_any([
        slow_loser(slow_ms, path),
        sleep_then(fast_ms, "fast".into()),
    ])
    .await
}

/// Spawns `add_one(9)`, waits `ms`, then awaits the handle twice: returns 20.
#[dtask(name = "it.spawn_then_delay")]
pub async fn spawn_then_delay(ms: u64) -> u64 {
    let handle = DTask::spawn(add_one(9));
    DTask::delay(Duration::from_millis(ms)).await;
    let again = handle.clone();
    handle.await + again.await
}

/// A payment: `Err` over 1000 cents.
#[dtask(name = "it.charge")]
pub async fn charge(cents: u64) -> Result<u64, String> {
    if cents > 1000 {
        Err(format!("{cents} is over the limit"))
    } else {
        Ok(cents)
    }
}

/// Awaits [`charge`] and passes its `Err` on with `?`.
#[dtask(name = "it.checkout")]
pub async fn checkout(cents: u64) -> Result<String, String> {
    let paid = charge(cents).await?;
    Ok(format!("paid {paid}"))
}

/// Panics when `x > 0`.
#[dtask(name = "it.explode")]
pub async fn explode(x: u64) -> u64 {
    if x > 0 {
        panic!("boom at {x}");
    }
    x
}

/// Awaits `explode(3)`, which panics: this instance fails with a child failure.
#[dtask(name = "it.awaits_explosion")]
pub async fn awaits_explosion() -> u64 {
    explode(3).await + 1
}

/// Records when it started, waits `ms` on a durable timer, records when it resumed.
#[dtask(name = "it.timed_delay")]
pub async fn timed_delay(ms: u64) -> (u64, u64) {
    let start = DTask::run(|| async { now_ms() }).await;
    DTask::delay(Duration::from_millis(ms)).await;
    let end = DTask::run(|| async { now_ms() }).await;
    (start, end)
}

/// A child that does `ms` of local work: appends `<pid> <i>` to the file `started` when
/// it starts (again when it is redone), then sleeps; returns `i * i` and its process.
#[dtask(name = "it.slow_child")]
pub async fn slow_child(i: u64, ms: u64, started: String) -> (u64, u32) {
    let pid = DTask::run(move || async move {
        let pid = std::process::id();
        append_line(&started, &format!("{pid} {i}"));
        pid
    })
    .await;
    tokio::time::sleep(Duration::from_millis(ms)).await;
    (i * i, pid)
}

/// A `when_all` of `n` [`slow_child`]ren, then a side effect that appends
/// `<sum> <pid>` to the file `done`: the test counts how many times the parent resumed
/// past its fan-in. Returns the sum of the squares `0..n`.
#[dtask(name = "it.fan_in_once")]
pub async fn fan_in_once(n: u64, ms: u64, started: String, done: String) -> u64 {
    let all = DTask::when_all((0..n).map(|i| slow_child(i, ms, started.clone()))).await;
    let sum: u64 = all.iter().map(|(v, _)| v).sum();
    DTask::run(move || async move {
        append_line(&done, &format!("{sum} {}", std::process::id()));
    })
    .await;
    sum
}

/// Waits `ms` on a durable timer, then returns `ms`.
#[dtask(name = "it.pause")]
pub async fn pause(ms: u64) -> u64 {
    DTask::delay(Duration::from_millis(ms)).await;
    ms
}

/// A `when_all` of `n` [`pause`] children of `ms`, `ms + 1`, …: their sum
/// ([`pauses_sum`]).
#[dtask(name = "it.pauses")]
pub async fn pauses(n: u64, ms: u64) -> u64 {
    DTask::when_all((0..n).map(|i| pause(ms + i)))
        .await
        .iter()
        .sum()
}

/// What [`pauses`]`(n, ms)` returns.
pub fn pauses_sum(n: u64, ms: u64) -> u64 {
    (0..n).map(|i| ms + i).sum()
}

/// Waits `ms` on a durable timer, appends `woke <pid>` to `file` (local work, before the
/// next distributed await), yields, then appends `finished`.
#[dtask(name = "it.cancel_nap")]
pub async fn cancel_nap(ms: u64, file: String) -> u64 {
    DTask::delay(Duration::from_millis(ms)).await;
    let f = file.clone();
    DTask::run(move || async move { append_line(&f, &format!("woke {}", std::process::id())) })
        .await;
    DTask::yield_now().await;
    DTask::run(move || async move { append_line(&file, "finished") }).await;
    ms
}

/// Waits on two [`cancel_nap`]s (in its mailbox); when that wait is cancelled, appends
/// `stopped <i>: <reason>` to `file`.
#[dtask(name = "it.cancel_branch")]
pub async fn cancel_branch(i: u64, ms: u64, file: String) -> u64 {
    let (a, b) = DTask::join((
        cancel_nap(ms, file.clone()).catch_failure(),
        cancel_nap(ms, file.clone()).catch_failure(),
    ))
    .await;
    if let (Err(f), _) | (_, Err(f)) = (a, b) {
        if f.is_cancelled() {
            let line = format!("stopped {i}: {}", f.message());
            DTask::run(move || async move { append_line(&file, &line) }).await;
        }
    }
    i
}

/// `n` [`cancel_branch`]es at once.
#[dtask(name = "it.cancel_tree")]
pub async fn cancel_tree(n: u64, ms: u64, file: String) -> Vec<u64> {
    DTask::when_all((0..n).map(|i| cancel_branch(i, ms, file.clone()))).await
}

/// Every DTask of this module.
pub fn registry() -> Registry {
    crate::registry![
        add_one,
        middle,
        chain3,
        tagged,
        fan,
        chain,
        sleep_then,
        slow_loser,
        race,
        spawn_then_delay,
        charge,
        checkout,
        explode,
        awaits_explosion,
        timed_delay,
        slow_child,
        fan_in_once,
        pause,
        pauses,
        cancel_nap,
        cancel_branch,
        cancel_tree,
    ]
}

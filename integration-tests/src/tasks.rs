//! The DTasks of the worker-process tests: the `it-worker` binary registers them
//! ([`registry`]) and the tests start them, so both sides link the same code.
//!
//! Several of them report the id of the worker process that ran a step (a [`DTask::run`]
//! side effect, recorded in the journal: a replay reports the process that first ran it),
//! so that a test can tell which processes did the work.

use std::io::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dtasks::{dtask, DTask, Registry, RetryPolicy};

/// Milliseconds since the Unix epoch: of the simulator's virtual clock on a simulator's
/// thread ([`dtasks::sim::now`]), else of the wall clock.
pub fn now_ms() -> u64 {
    dtasks::sim::now()
        .unwrap_or_else(SystemTime::now)
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

/// Appends `<tag> <pid>` to the file `path` (a [`DTask::run`] side effect: the test
/// counts how many times it ran), waits `ms` on a durable timer, and returns the process
/// that ran the side effect.
#[dtask(name = "it.once")]
pub async fn once(path: String, tag: String, ms: u64) -> u32 {
    let pid = DTask::run(move || async move {
        let pid = std::process::id();
        append_line(&path, &format!("{tag} {pid}"));
        pid
    })
    .await;
    DTask::delay(Duration::from_millis(ms)).await;
    pid
}

/// Takes the next event named `name` and records, with a [`DTask::run`] side effect, the
/// process that took it: appends its id to the file `log` (so that a test sees which
/// processes are merging events while it runs) and returns it.
async fn take_event(name: &str, log: &str) -> (u64, u32) {
    let value = DTask::event::<u64>(name.to_string()).await;
    let log = log.to_string();
    let pid = DTask::run(move || async move {
        let pid = std::process::id();
        append_line(&log, &pid.to_string());
        pid
    })
    .await;
    (value, pid)
}

/// Waits for `n` events named `name`, one at a time (replay model): returns their values
/// in the order taken and, for each, the process that took it (also appended to `log`).
#[dtask(name = "it.gather")]
pub async fn gather(n: u32, name: String, log: String) -> (Vec<u64>, Vec<u32>) {
    let mut values = Vec::with_capacity(n as usize);
    let mut pids = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let (value, pid) = take_event(&name, &log).await;
        values.push(value);
        pids.push(pid);
    }
    (values, pids)
}

/// [`gather`] in the snapshot model: the values and processes so far are saved locals.
#[dtask(snapshot, name = "it.gather_snap")]
pub async fn gather_snap(n: u32, name: String, log: String) -> (Vec<u64>, Vec<u32>) {
    let mut values: Vec<u64> = Vec::new();
    let mut pids: Vec<u32> = Vec::new();
    for _ in 0..n {
        let value: u64 = DTask::event(name.clone()).await;
        let path = log.clone();
        let pid = DTask::run(move || async move {
            let pid = std::process::id();
            append_line(&path, &pid.to_string());
            pid
        })
        .await;
        values.push(value);
        pids.push(pid);
    }
    (values, pids)
}

/// Suspends with [`DTask::suspend`], appending its resume token (text form) to the file
/// `tokens`, and returns the value it is resumed with.
#[dtask(name = "it.await_resume")]
pub async fn await_resume(tokens: String) -> String {
    DTask::suspend(move |token| async move { append_line(&tokens, &token.to_string()) }).await
}

/// Appends `napping <tag>` to `file`, waits `ms` on a durable timer, appends `woke <tag>`
/// (local work, before the next distributed await), yields, then appends `finished`.
#[dtask(name = "it.cancel_nap")]
pub async fn cancel_nap(ms: u64, file: String, tag: String) -> u64 {
    let (f, t) = (file.clone(), tag.clone());
    DTask::run(move || async move { append_line(&f, &format!("napping {t}")) }).await;
    DTask::delay(Duration::from_millis(ms)).await;
    let f = file.clone();
    DTask::run(move || async move { append_line(&f, &format!("woke {tag}")) }).await;
    DTask::yield_now().await;
    DTask::run(move || async move { append_line(&file, "finished") }).await;
    ms
}

/// Waits on two [`cancel_nap`]s (in its mailbox); when that wait is cancelled, appends
/// `stopped <i>: <reason>` to `file`.
#[dtask(name = "it.cancel_branch")]
pub async fn cancel_branch(i: u64, ms: u64, file: String) -> u64 {
    let (a, b) = DTask::join((
        cancel_nap(ms, file.clone(), format!("{i}.0")).catch_failure(),
        cancel_nap(ms, file.clone(), format!("{i}.1")).catch_failure(),
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
        once,
        gather,
        gather_snap,
        await_resume,
        retried_effect,
        retried_effect_snapshot,
        always_panics,
        retried_panics,
        cancel_nap,
        cancel_branch,
        cancel_tree,
        nest,
        nest_fan,
        sleep_forever,
        length,
        text,
        slow_first_step,
        // Loops continued as new (`tests/kill_continue.rs`).
        crate::evolve::renew,
        crate::evolve::renew_snap,
        // A DTask started with a completion webhook, and the webhook (`tests/kill_webhook.rs`).
        crate::http::double,
        dtasks_axum::webhook,
    ]
}

/// Three attempts, 3 s then 6 s apart: long enough to kill a worker during a wait.
fn slow_retries() -> RetryPolicy {
    RetryPolicy::new()
        .with_max_attempts(3)
        .with_initial_delay(Duration::from_secs(3))
        .with_backoff_factor(2.0)
}

/// One attempt of a side effect that always fails: appends `pid now` to the file at
/// `path` and returns the number of lines so far as the error.
fn failing_attempt(path: &str) -> Result<(), String> {
    append_line(path, &format!("{} {}", std::process::id(), now_ms()));
    let lines = std::fs::read_to_string(path).map_or(0, |t| t.lines().count());
    Err(format!("attempt {lines} failed"))
}

/// A side effect that always fails, retried as `slow_retries` says: returns its last
/// error.
#[dtask(name = "it.retried_effect")]
pub async fn retried_effect(path: String) -> Result<(), String> {
    DTask::run_with_retry(slow_retries(), move || {
        let path = path.clone();
        async move { failing_attempt(&path) }
    })
    .await
}

/// [`retried_effect`] in the snapshot model.
#[dtask(name = "it.retried_effect_snapshot", snapshot)]
pub async fn retried_effect_snapshot(path: String) -> Result<(), String> {
    DTask::run_with_retry(slow_retries(), move || {
        let path = path.clone();
        async move { failing_attempt(&path) }
    })
    .await
}

/// Appends `pid now` to the file at `path`, then panics.
#[dtask(name = "it.always_panics")]
pub async fn always_panics(path: String) {
    let _ = failing_attempt(&path);
    panic!("always panics");
}

/// A child that always panics, retried as `slow_retries` says; its failure is a value.
#[dtask(name = "it.retried_panics")]
pub async fn retried_panics(path: String) -> Result<(), String> {
    always_panics(path)
        .retry(slow_retries())
        .catch_failure()
        .await
        .map_err(|f| f.to_string())
}

/// A recursion of child awaits `d` levels deep (each level an instance of its own).
#[dtask(name = "it.nest")]
pub async fn nest(d: u64) -> u64 {
    if d == 0 {
        0
    } else {
        nest(d - 1).await + 1
    }
}

/// A fan-in at every level, `d` levels deep: each level waits in a mailbox of its own,
/// named after an id that grows with the depth.
#[dtask(name = "it.nest_fan")]
pub async fn nest_fan(d: u64) -> u64 {
    if d == 0 {
        return 0;
    }
    let (below, one) = DTask::join((nest_fan(d - 1), add_one(0))).await;
    below + one
}

/// Waits on a timer longer than the longest supported.
#[dtask(name = "it.sleep_forever")]
pub async fn sleep_forever() {
    DTask::delay(Duration::MAX).await;
}

/// A text of `n` bytes: a large result (stored out of band past the payload threshold).
#[dtask(name = "it.text")]
pub async fn text(n: usize) -> String {
    "t".repeat(n)
}

/// The length of its argument.
#[dtask(name = "it.length")]
pub async fn length(data: Vec<u8>) -> usize {
    data.len()
}

/// A first step long enough (100 ms) to report `Running` before its outputs.
#[dtask(name = "it.slow_first_step")]
pub async fn slow_first_step() -> u64 {
    tokio::time::sleep(Duration::from_millis(100)).await;
    1
}

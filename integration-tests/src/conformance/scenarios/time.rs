//! Delays, and what replay does across them: `run` once, nondeterminism detected.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context as _;
use dtasks::{dtask, DTask, Status};

use super::{add_one, ms, ship, workers, Parcel, SOON};
use crate::conformance::{epoch_ms, eventually, Clock, Env, Outcome};
use crate::registry;
use crate::tasks::now_ms;

/// Records when it started (once, in the journal), waits, and records when it resumed.
#[dtask]
async fn timed_delay(ms: u64) -> (u64, u64) {
    let start = DTask::run(|| async { now_ms() }).await;
    DTask::delay(Duration::from_millis(ms)).await;
    let end = DTask::run(|| async { now_ms() }).await;
    (start, end)
}

/// Delays from 1 ms to 1.9 s resume no earlier than asked (and, under virtual time, at
/// exactly their time).
pub async fn a_delay_is_never_early<E: Env>(env: E) -> Outcome {
    let w = workers(&env, 1, registry![timed_delay]).await?;
    let c = env.client().await?;
    let mut handles = Vec::new();
    for delay in [1u64, 37, 250, 1_000, 1_900] {
        handles.push((delay, c.start(timed_delay(delay)).await?));
    }
    match env.clock() {
        Clock::Virtual => {
            // Every timer was set at one instant of the clock: step it to 1 ms short of
            // each, then onto it. (The journal's wall-clock times tell nothing here.)
            let mut passed = 0;
            for (delay, h) in &handles {
                env.advance(ms(delay - 1 - passed)).await;
                assert_eq!(
                    h.try_result().await?,
                    None,
                    "a {delay} ms delay resumed early"
                );
                env.advance(ms(1)).await;
                passed = *delay;
                let done = h.try_result().await?;
                assert!(done.is_some(), "a {delay} ms delay did not resume on time");
            }
        }
        Clock::Real => {
            for (delay, h) in handles {
                let (start, end) = h.result().await?;
                assert!(
                    end >= start + delay,
                    "a {delay} ms delay resumed after {} ms",
                    end - start
                );
                println!("delay {delay} ms: resumed after {} ms", end - start);
            }
        }
    }
    w.stop().await?;
    env.cleanup().await
}

#[dtask]
async fn until_deadline(at_ms: u64) -> (u64, u64) {
    DTask::delay_until(UNIX_EPOCH + Duration::from_millis(at_ms)).await;
    let seen = DTask::run(|| async { now_ms() }).await;
    (at_ms, seen)
}

/// `delay_until` resumes at its deadline, not before; a deadline in the past fires at
/// once.
pub async fn delay_until_a_deadline<E: Env>(env: E) -> Outcome {
    let w = workers(&env, 1, registry![until_deadline]).await?;
    let c = env.client().await?;
    let at = epoch_ms(env.now()) + 1_500;
    let h = c.start(until_deadline(at)).await?;
    // The last millisecond before the deadline under virtual time; on a real clock, with a
    // margin for the time the check itself takes.
    let short = match env.clock() {
        Clock::Virtual => 1_499,
        Clock::Real => 1_000,
    };
    env.advance(ms(short)).await;
    assert_eq!(h.try_result().await?, None);
    env.advance(ms(1_500 - short)).await;
    let (due, seen) = h.result().await?;
    assert_eq!(due, at);
    // `seen` is the wall clock's, which a virtual deadline is not on.
    if env.clock() == Clock::Real {
        assert!(seen >= at, "resumed {} ms early", at - seen);
    }
    // A deadline in the past fires at once.
    let (due, seen) = c.start(until_deadline(1)).await?.result().await?;
    assert_eq!(due, 1);
    assert!(seen > 1);
    w.stop().await?;
    env.cleanup().await
}

static RUNS: AtomicUsize = AtomicUsize::new(0);

#[dtask]
async fn side_effect_once() -> u64 {
    let v = DTask::run(|| async {
        RUNS.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(5)).await;
        7u64
    })
    .await;
    // Three suspensions: each resume replays, and the run is not executed again.
    DTask::yield_now().await;
    DTask::delay(Duration::from_millis(50)).await;
    DTask::yield_now().await;
    v * 6
}

/// `DTask::run` executes once; every later step replays its recorded result.
pub async fn run_executes_once_and_replays_the_recorded_result<E: Env>(env: E) -> Outcome {
    let w = workers(&env, 1, registry![side_effect_once]).await?;
    let h = env.client().await?.start(side_effect_once()).await?;
    env.advance(ms(50)).await;
    assert_eq!(h.result().await?, 42);
    assert_eq!(RUNS.load(Ordering::SeqCst), 1);
    w.stop().await?;
    env.cleanup().await
}

static FLIP: AtomicBool = AtomicBool::new(false);

#[dtask]
async fn nondeterministic() -> u64 {
    // Branches on process state that changes between steps: a determinism violation.
    let v = if FLIP.load(Ordering::SeqCst) {
        ship(Parcel { id: 1 }).await.id as u64
    } else {
        add_one(1).await
    };
    DTask::delay(Duration::from_millis(1_500)).await;
    v
}

/// A body that takes another branch on replay fails, naming the position and both
/// operations.
pub async fn a_nondeterministic_dtask_is_detected<E: Env>(env: E) -> Outcome {
    let w = workers(&env, 1, registry![nondeterministic, add_one, ship]).await?;
    let h = env.client().await?.start(nondeterministic()).await?;
    // Flip once the first branch is recorded and the instance waits on its timer.
    env.advance(ms(300)).await;
    eventually(&env, SOON, "the instance waits on its timer", || async {
        Ok(h.status().await? == Status::Suspended)
    })
    .await?;
    FLIP.store(true, Ordering::SeqCst);
    env.advance(ms(1_200)).await;
    let err = h.result().await.unwrap_err();
    let f = err.failure().context("failed")?;
    assert!(f.is_nondeterminism(), "{f}");
    assert!(f.message().contains("position 0"), "{f}");
    assert!(f.message().contains("call `add_one`"), "{f}");
    assert!(f.message().contains("call `ship`"), "{f}");
    w.stop().await?;
    env.cleanup().await
}

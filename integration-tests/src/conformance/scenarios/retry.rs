//! Retries: `DTask::run_with_retry` and `call.retry(policy)`, in both execution models,
//! with their waits never early.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use dtasks::{dtask, DTask, RetryPolicy};

use super::{ms, workers};
use crate::conformance::{Clock, Env, Outcome};
use crate::registry;
use crate::tasks::now_ms;

/// The wall-clock times of the attempts made so far, by tag.
static ATTEMPTS: Mutex<Option<HashMap<String, Vec<u64>>>> = Mutex::new(None);

fn attempt(tag: &str) -> usize {
    let mut all = ATTEMPTS.lock().unwrap_or_else(|p| p.into_inner());
    let times = all
        .get_or_insert_with(HashMap::new)
        .entry(tag.to_string())
        .or_default();
    times.push(now_ms());
    times.len()
}

fn attempts(tag: &str) -> Vec<u64> {
    let all = ATTEMPTS.lock().unwrap_or_else(|p| p.into_inner());
    all.as_ref()
        .and_then(|m| m.get(tag).cloned())
        .unwrap_or_default()
}

/// Three attempts, 300 ms then 600 ms apart.
fn policy() -> RetryPolicy {
    RetryPolicy::new()
        .with_max_attempts(3)
        .with_initial_delay(ms(300))
        .with_backoff_factor(2.0)
}

async fn flaky_effect(tag: String, fails: usize) -> Result<usize, String> {
    let n = attempt(&tag);
    if n <= fails {
        Err(format!("attempt {n} failed"))
    } else {
        Ok(n)
    }
}

#[dtask]
async fn retried_run(tag: String, fails: usize) -> Result<usize, String> {
    DTask::run_with_retry(policy(), move || flaky_effect(tag.clone(), fails)).await
}

#[dtask(snapshot)]
async fn retried_run_snapshot(tag: String, fails: usize) -> Result<usize, String> {
    DTask::run_with_retry(policy(), move || flaky_effect(tag.clone(), fails)).await
}

#[dtask]
async fn panics_until(tag: String, fails: usize) -> usize {
    let n = attempt(&tag);
    assert!(n > fails, "attempt {n} panics");
    n
}

#[dtask]
async fn retried_call(tag: String, fails: usize) -> usize {
    panics_until(tag, fails).retry(policy()).await
}

#[dtask(snapshot)]
async fn retried_call_snapshot(tag: String, fails: usize) -> usize {
    panics_until(tag, fails).retry(policy()).await
}

/// A side effect and a child call that fail twice succeed at the third attempt, in both
/// models; the attempts are exactly three, and the waits between them (300 ms, 600 ms)
/// are never early (under virtual time, each attempt happens at exactly its instant).
pub async fn retries_wait_between_attempts_and_count_them<E: Env>(env: E) -> Outcome {
    let w = workers(
        &env,
        2,
        registry![
            retried_run,
            retried_run_snapshot,
            panics_until,
            retried_call,
            retried_call_snapshot
        ],
    )
    .await?;
    let c = env.client().await?;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let tags: Vec<String> = ["run", "run_snapshot", "call", "call_snapshot"]
        .iter()
        .map(|k| format!("{run}-{k}"))
        .collect();
    let h_run = c.start(retried_run(tags[0].clone(), 2)).await?;
    let h_run_s = c.start(retried_run_snapshot(tags[1].clone(), 2)).await?;
    let h_call = c.start(retried_call(tags[2].clone(), 2)).await?;
    let h_call_s = c.start(retried_call_snapshot(tags[3].clone(), 2)).await?;
    if env.clock() == Clock::Virtual {
        env.advance(Duration::ZERO).await;
        // Attempt 2 at 300 ms, attempt 3 at 900 ms: not a millisecond before.
        for (before, at) in [(1usize, 300u64), (2, 600)] {
            env.advance(ms(at - 1)).await;
            for tag in &tags {
                assert_eq!(attempts(tag).len(), before, "{tag}: an attempt came early");
            }
            env.advance(ms(1)).await;
            for tag in &tags {
                assert_eq!(attempts(tag).len(), before + 1, "{tag}: an attempt is late");
            }
        }
    }
    assert_eq!(h_run.result().await?, Ok(3));
    assert_eq!(h_run_s.result().await?, Ok(3));
    assert_eq!(h_call.result().await?, 3);
    assert_eq!(h_call_s.result().await?, 3);
    for tag in &tags {
        let times = attempts(tag);
        assert_eq!(times.len(), 3, "{tag}: attempts {times:?}");
        if env.clock() == Clock::Real {
            assert!(times[1] >= times[0] + 300, "{tag}: early retry {times:?}");
            assert!(times[2] >= times[1] + 600, "{tag}: early retry {times:?}");
        }
    }
    w.stop().await?;
    env.cleanup().await
}

/// When the attempts run out: a side effect's last error is its result, a child's last
/// failure fails the caller with a message that names the attempts; nothing is tried a
/// fourth time.
pub async fn exhausted_retries_report_the_attempts<E: Env>(env: E) -> Outcome {
    let w = workers(
        &env,
        1,
        registry![retried_run_snapshot, panics_until, retried_call],
    )
    .await?;
    let c = env.client().await?;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let (t_run, t_call) = (format!("{run}-run"), format!("{run}-call"));
    let h_run = c.start(retried_run_snapshot(t_run.clone(), 99)).await?;
    let h_call = c.start(retried_call(t_call.clone(), 99)).await?;
    // The waits, one after the other (a virtual clock fires each timer at its instant).
    env.advance(ms(300)).await;
    env.advance(ms(600)).await;
    assert_eq!(h_run.result().await?, Err("attempt 3 failed".to_string()));
    let err = h_call.result().await.expect_err("the attempts ran out");
    let f = err.failure().expect("the instance failed");
    assert!(f.is_child_failure(), "{f}");
    assert!(f.message().contains("failed 3 attempts"), "{f}");
    assert!(f.message().contains("attempt 3 panics"), "{f}");
    env.advance(ms(5_000)).await;
    assert_eq!(attempts(&t_run).len(), 3);
    assert_eq!(attempts(&t_call).len(), 3);
    w.stop().await?;
    env.cleanup().await
}

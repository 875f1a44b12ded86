//! Calls, children and their combinators; errors and panics of children.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use dtasks::{dtask, DTask, Failure, Status};
use serde::{Deserialize, Serialize};

use super::{add_one, ms, ship, sleep_then, workers, Parcel, SOON};
use crate::conformance::{eventually, Clock, Env, Outcome};
use crate::registry;

#[dtask]
async fn chain3(x: u64) -> u64 {
    middle(x).await + 100
}

#[dtask]
async fn middle(x: u64) -> u64 {
    add_one(x).await * 2
}

/// A call returns its result, and its status then reads `Succeeded`.
pub async fn a_call_returns_its_result<E: Env>(env: E) -> Outcome {
    let w = workers(&env, 1, registry![add_one]).await?;
    let h = env.client().await?.start(add_one(41)).await?;
    assert_eq!(h.result().await?, 42);
    assert_eq!(h.status().await?, Status::Succeeded);
    w.stop().await?;
    env.cleanup().await
}

/// A child of a child of the root: each result reaches its parent.
pub async fn a_three_deep_chain_of_children<E: Env>(env: E) -> Outcome {
    let w = workers(&env, 1, registry![chain3, middle, add_one]).await?;
    let h = env.client().await?.start(chain3(4)).await?;
    assert_eq!(h.result().await?, (4 + 1) * 2 + 100);
    w.stop().await?;
    env.cleanup().await
}

#[dtask]
async fn fan_out(n: u64) -> u64 {
    let all = DTask::when_all((0..n).map(add_one)).await;
    assert_eq!(all.len() as u64, n);
    // Order is preserved.
    assert!(all.windows(2).all(|w| w[0] + 1 == w[1]));
    all.iter().sum()
}

/// `when_all` of 100 children on three workers: results in order, nothing dead-lettered,
/// and every worker took part where the transport shares a queue's deliveries among its
/// consumers.
pub async fn when_all_of_100_children_on_three_workers<E: Env>(env: E) -> Outcome {
    let w = workers(&env, 3, registry![fan_out, add_one]).await?;
    let h = env.client().await?.start(fan_out(100)).await?;
    assert_eq!(h.result().await?, (1..=100).sum::<u64>());
    if env.shares_deliveries() {
        let stats = w.stats();
        assert!(stats.iter().all(|s| s.processed > 0), "{stats:?}");
    }
    let dead = env.dead_letters().await?;
    assert!(dead.is_empty(), "{dead:?}");
    w.stop().await?;
    env.cleanup().await
}

/// `when_all` of no children is empty, at once.
pub async fn when_all_of_nothing_is_empty<E: Env>(env: E) -> Outcome {
    let w = workers(&env, 1, registry![fan_out, add_one]).await?;
    let c = env.client().await?;
    assert_eq!(c.start(fan_out(0)).await?.result().await?, 0);
    w.stop().await?;
    env.cleanup().await
}

static LOSER_DONE: AtomicUsize = AtomicUsize::new(0);

#[dtask]
async fn slow_loser(ms: u64) -> String {
    DTask::delay(Duration::from_millis(ms)).await;
    LOSER_DONE.fetch_add(1, Ordering::SeqCst);
    "slow".to_string()
}

#[dtask]
async fn race() -> (usize, String) {
    DTask::when_any([slow_loser(2_500), sleep_then(300, "fast".into())]).await
}

/// `when_any` returns the first child's result; the others are not cancelled, and their
/// late results are dropped (not dead-lettered).
pub async fn when_any_returns_the_first_and_leaves_the_rest_running<E: Env>(env: E) -> Outcome {
    let w = workers(&env, 1, registry![race, sleep_then, slow_loser]).await?;
    let h = env.client().await?.start(race()).await?;
    // On a broker in real time a busy machine may finish the race between two looks at
    // its status: past the wait counts too.
    eventually(&env, SOON, "the race waits on its children", || async {
        Ok(matches!(
            h.status().await?,
            Status::Suspended | Status::Succeeded
        ))
    })
    .await?;
    env.advance(ms(300)).await;
    assert_eq!(h.result().await?, (1, "fast".to_string()));
    // The loser was not cancelled: it finishes later, and its result is dropped.
    assert_eq!(LOSER_DONE.load(Ordering::SeqCst), 0);
    env.advance(ms(2_200)).await;
    eventually(&env, SOON * 3, "the loser finishes", || async {
        Ok(LOSER_DONE.load(Ordering::SeqCst) == 1)
    })
    .await?;
    // The loser's late result went to the finished parent's mailbox and was dropped
    // there, not dead-lettered.
    env.advance(ms(300)).await;
    let dead = env.dead_letters().await?;
    assert!(dead.is_empty(), "{dead:?}");
    assert_eq!(h.result().await?, (1, "fast".to_string()));
    w.stop().await?;
    env.cleanup().await
}

#[dtask]
async fn mixed() -> (u64, String, Parcel) {
    DTask::join((
        add_one(1),
        sleep_then(200, "x".into()),
        ship(Parcel { id: 7 }),
    ))
    .await
}

/// `join` of children with different result types.
pub async fn join_of_mixed_types<E: Env>(env: E) -> Outcome {
    let w = workers(&env, 1, registry![mixed, add_one, sleep_then, ship]).await?;
    let h = env.client().await?.start(mixed()).await?;
    env.advance(ms(200)).await;
    assert_eq!(h.result().await?, (2, "x".to_string(), Parcel { id: 7 }));
    w.stop().await?;
    env.cleanup().await
}

#[dtask]
async fn spawn_then_delay() -> u64 {
    let handle = DTask::spawn(add_one(9));
    DTask::delay(Duration::from_millis(800)).await;
    let again = handle.clone();
    handle.await + again.await
}

/// A spawned child's handle, awaited (twice) after a delay, gives its result; the delay is
/// not cut short.
pub async fn a_spawned_handle_is_awaited_after_a_delay<E: Env>(env: E) -> Outcome {
    let w = workers(&env, 1, registry![spawn_then_delay, add_one]).await?;
    let started = env.now();
    let h = env.client().await?.start(spawn_then_delay()).await?;
    // On a real clock the result waits for the delay by itself: the time measured around
    // it then tells whether the delay was cut short.
    if env.clock() == Clock::Virtual {
        env.advance(ms(799)).await;
        assert_eq!(h.try_result().await?, None);
        env.advance(ms(1)).await;
    }
    assert_eq!(h.result().await?, 20);
    let took = env.now().duration_since(started)?;
    assert!(took >= ms(800), "{took:?}");
    w.stop().await?;
    env.cleanup().await
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
enum PayError {
    Declined(String),
}

#[dtask]
async fn charge(cents: u64) -> Result<u64, PayError> {
    if cents > 1000 {
        Err(PayError::Declined(format!("{cents} is over the limit")))
    } else {
        Ok(cents)
    }
}

#[dtask]
async fn checkout(cents: u64) -> Result<String, PayError> {
    let paid = charge(cents).await?;
    Ok(format!("paid {paid}"))
}

/// A child's `Err` reaches its parent as a value, for `?`.
pub async fn a_child_error_reaches_the_parent_as_a_value<E: Env>(env: E) -> Outcome {
    let w = workers(&env, 1, registry![checkout, charge]).await?;
    let c = env.client().await?;
    assert_eq!(
        c.start(checkout(5)).await?.result().await?,
        Ok("paid 5".into())
    );
    assert_eq!(
        c.start(checkout(5000)).await?.result().await?,
        Err(PayError::Declined("5000 is over the limit".into()))
    );
    w.stop().await?;
    env.cleanup().await
}

#[dtask]
async fn explode(x: u64) -> u64 {
    if x > 0 {
        panic!("boom at {x}");
    }
    x
}

#[dtask]
async fn awaits_explosion() -> u64 {
    explode(3).await + 1
}

#[dtask]
async fn catches_explosion() -> String {
    match explode(4).catch_failure().await {
        Ok(v) => format!("ok {v}"),
        Err(f) => format!("caught: {}", f.is_child_failure()),
    }
}

/// A child's panic fails its parent (or is caught there), and the workers live on.
pub async fn a_child_panic_fails_the_parent_instead_of_hanging<E: Env>(env: E) -> Outcome {
    let w = workers(
        &env,
        1,
        registry![awaits_explosion, catches_explosion, explode],
    )
    .await?;
    let c = env.client().await?;
    let err = c
        .start(awaits_explosion())
        .await?
        .result()
        .await
        .unwrap_err();
    let failure = err.failure().context("the instance failed")?;
    assert!(failure.is_child_failure(), "{failure}");
    assert!(failure.message().contains("boom at 3"), "{failure}");
    let caught = c.start(catches_explosion()).await?.result().await?;
    assert_eq!(caught, "caught: true");
    // The panicking instance itself, started directly, fails as a panic.
    let err = c.start(explode(1)).await?.result().await.unwrap_err();
    assert!(err.failure().is_some_and(Failure::is_panic), "{err}");
    assert!(w.running());
    w.stop().await?;
    env.cleanup().await
}

#[dtask]
async fn local_futures() -> u64 {
    tokio::time::sleep(Duration::from_millis(10)).await;
    let j = tokio::spawn(async { 20u64 });
    let from_task = j.await.expect("task ran");
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let _ = tx.send(2u64);
    });
    let child = add_one(19).await;
    from_task + rx.await.expect("sent") + child
}

/// Timers, spawned tasks and channels of tokio work inside a DTask, next to a child.
pub async fn ordinary_futures_work_inside_a_dtask<E: Env>(env: E) -> Outcome {
    let w = workers(&env, 1, registry![local_futures, add_one]).await?;
    let c = env.client().await?;
    assert_eq!(c.start(local_futures()).await?.result().await?, 42);
    w.stop().await?;
    env.cleanup().await
}

#[dtask]
async fn never_wakes() -> u64 {
    std::future::pending::<()>().await;
    1
}

/// A body waiting on something that can never wake it fails as stuck instead of hanging.
pub async fn a_future_that_can_never_wake_fails_as_stuck<E: Env>(env: E) -> Outcome {
    let w = workers(&env, 1, registry![never_wakes]).await?;
    let c = env.client().await?;
    let err = c.start(never_wakes()).await?.result().await.unwrap_err();
    assert!(err.failure().is_some_and(Failure::is_stuck), "{err}");
    w.stop().await?;
    env.cleanup().await
}

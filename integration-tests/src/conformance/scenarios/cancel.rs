//! Cancellation: `Client::cancel` of a tree, `DTask::race` losers, and what cancelling an
//! unknown or finished instance says.

use std::sync::Mutex;
use std::time::Duration;

use dtasks::{dtask, DTask, InstanceId, Status};

use super::{add_one, workers, SOON};
use crate::conformance::{eventually, Env, Outcome};
use crate::registry;

/// The branches that were stopped by a cancellation, with the reason (tagged per run).
static STOPPED: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn stopped(tag: &str) -> Vec<String> {
    let all = STOPPED.lock().unwrap_or_else(|p| p.into_inner());
    all.iter().filter(|l| l.starts_with(tag)).cloned().collect()
}

#[dtask]
async fn nap(secs: u64) -> u64 {
    DTask::delay(Duration::from_secs(secs)).await;
    secs
}

/// Waits on two hour-long children (in its mailbox); notes when it was cancelled.
#[dtask]
async fn limb(tag: String, i: u64) -> u64 {
    let (a, b) = DTask::join((nap(3600).catch_failure(), nap(3600).catch_failure())).await;
    if let (Err(f), _) | (_, Err(f)) = (a, b) {
        if f.is_cancelled() {
            let line = format!("{tag} {i}: {}", f.message());
            DTask::run(move || async move {
                STOPPED.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            })
            .await;
        }
    }
    i
}

#[dtask]
async fn crown(tag: String, n: u64) -> Vec<u64> {
    DTask::when_all((0..n).map(|i| limb(tag.clone(), i))).await
}

#[dtask]
async fn sprint(tag: String) -> (usize, u64) {
    DTask::race([limb(tag, 99), add_one(1)]).await
}

/// A cancelled tree stops at once where its instances wait in their mailboxes, every
/// level of it, and reads `Cancelled` with the reason; a race's loser is cancelled, told
/// who won; cancelling an unknown id is "not found", a finished one changes nothing.
pub async fn cancel_stops_a_tree_and_race_losers<E: Env>(env: E) -> Outcome {
    let w = workers(&env, 2, registry![nap, limb, crown, sprint, add_one]).await?;
    let c = env.client().await?;
    let tag = format!("crown-{}", InstanceId::random());
    let h = c.start(crown(tag.clone(), 4)).await?;
    eventually(&env, SOON, "the tree waits on its children", || async {
        Ok(h.status().await? == Status::Suspended)
    })
    .await?;
    assert!(c.cancel(h.id(), "changed my mind").await?);
    let err = h.result().await.unwrap_err();
    assert!(err.is_cancelled(), "{err}");
    assert_eq!(err.failure().expect("failed").message(), "changed my mind");
    assert_eq!(h.status().await?, Status::Cancelled);
    eventually(&env, SOON, "every branch stops", || async {
        Ok(stopped(&tag).len() == 4)
    })
    .await?;
    assert!(
        stopped(&tag)
            .iter()
            .all(|l| l.ends_with(": changed my mind")),
        "{:?}",
        stopped(&tag)
    );
    assert!(!c.cancel(h.id(), "again").await?, "a finished instance");

    let tag = format!("sprint-{}", InstanceId::random());
    let (won, v) = c.start(sprint(tag.clone())).await?.result().await?;
    assert_eq!((won, v), (1, 2));
    eventually(&env, SOON, "the race's loser stops", || async {
        Ok(stopped(&tag).len() == 1)
    })
    .await?;
    assert!(
        stopped(&tag)[0].contains("lost DTask::race to part 1"),
        "{:?}",
        stopped(&tag)
    );

    let err = c
        .cancel(&InstanceId::new(format!("{tag}-unknown"))?, "who?")
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");
    let dead = env.dead_letters().await?;
    assert!(dead.is_empty(), "{dead:?}");
    w.stop().await?;
    env.cleanup().await
}

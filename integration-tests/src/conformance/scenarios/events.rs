//! The outside world reaching a running instance: named events, suspensions resumed by a
//! token, waits with a timeout.

use std::sync::Mutex;
use std::time::Duration;

use dtasks::{dtask, DTask, Handle, ResumeToken, Status};

use super::{workers, SOON};
use crate::conformance::{Env, Outcome};
use crate::{registry, wait_for};

#[dtask]
async fn gather(n: u32) -> Vec<u32> {
    let mut got = Vec::new();
    for _ in 0..n {
        got.push(DTask::event::<u32>("n").await);
    }
    got
}

#[dtask(snapshot)]
async fn gather_snap(n: u32) -> Vec<u32> {
    let mut got = Vec::new();
    let mut i = 0;
    while i < n {
        let v: u32 = DTask::event("n").await;
        got.push(v);
        i += 1;
    }
    got
}

async fn suspended<T>(h: &Handle<T>) -> Outcome {
    wait_for(SOON, || async {
        Ok(h.status().await? == Status::Suspended)
    })
    .await
}

/// Events sent before the instance waits are kept; all arrive in the order sent, one per
/// wait, on two workers, in both models; an event for a finished instance is refused.
pub async fn events_arrive_once_in_the_order_sent<E: Env>(env: E) -> Outcome {
    let w = workers(&env, 2, registry![gather, gather_snap]).await?;
    let c = env.client().await?;
    for snapshot in [false, true] {
        let h = if snapshot {
            c.start(gather_snap(6)).await?
        } else {
            c.start(gather(6)).await?
        };
        for v in 1..=3u32 {
            c.signal(h.id(), "n", &v).await?;
        }
        suspended(&h).await?;
        // From a second client, as another process would.
        let c2 = env.client().await?;
        for v in 4..=6u32 {
            c2.signal(h.id(), "n", &v).await?;
        }
        assert_eq!(
            h.result().await?,
            vec![1, 2, 3, 4, 5, 6],
            "snapshot: {snapshot}"
        );
        let late = c.signal(h.id(), "n", &7u32).await.unwrap_err();
        assert!(late.is_finished(), "{late}");
    }
    w.stop().await?;
    env.cleanup().await
}

static TOKENS: Mutex<Vec<ResumeToken>> = Mutex::new(Vec::new());

#[dtask]
async fn hold_for_signature(order: u32) -> String {
    let who: String = DTask::suspend(|t| async move { TOKENS.lock().unwrap().push(t) }).await;
    format!("order {order} signed by {who}")
}

/// A suspension is resumed by its token, sent as text to another client; a second resume
/// with the same token changes nothing.
pub async fn a_token_resumes_its_suspension_from_another_client<E: Env>(env: E) -> Outcome {
    let w = workers(&env, 2, registry![hold_for_signature]).await?;
    let c = env.client().await?;
    let order = std::process::id() % 100_000;
    let h = c.start(hold_for_signature(order)).await?;
    let found = std::sync::Arc::new(Mutex::new(None::<String>));
    wait_for(SOON, || {
        let found = found.clone();
        let id = h.id().clone();
        async move {
            let mut tokens = TOKENS.lock().unwrap();
            if let Some(i) = tokens.iter().position(|t| *t.instance() == id) {
                *found.lock().unwrap() = Some(tokens.remove(i).to_string());
            }
            Ok(found.lock().unwrap().is_some())
        }
    })
    .await?;
    let text = found.lock().unwrap().take();
    let token: ResumeToken = text.expect("found").parse()?;
    let other = env.client().await?;
    other.resume(&token, "Ada").await?;
    other.resume(&token, "Mallory").await?;
    assert_eq!(h.result().await?, format!("order {order} signed by Ada"));
    w.stop().await?;
    env.cleanup().await
}

#[dtask]
async fn approve_within(ms: u64) -> Option<bool> {
    DTask::event::<bool>("approval")
        .within(Duration::from_millis(ms))
        .await
}

/// `within`: the event in time is returned; none in time is `None` after the timer.
pub async fn an_event_within_a_timeout<E: Env>(env: E) -> Outcome {
    let w = workers(&env, 1, registry![approve_within]).await?;
    let c = env.client().await?;
    let h = c.start(approve_within(60_000)).await?;
    suspended(&h).await?;
    c.signal(h.id(), "approval", &true).await?;
    assert_eq!(h.result().await?, Some(true));
    let h = c.start(approve_within(300)).await?;
    suspended(&h).await?;
    env.advance(Duration::from_millis(400)).await;
    assert_eq!(h.result().await?, None);
    w.stop().await?;
    env.cleanup().await
}

//! What clients and workers do around the instances: starting by name, bad input, the
//! state budget, results read by id, starting a chosen id once, poison messages, a
//! graceful stop.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use dtasks::{dtask, DTask, InstanceId, Status, WorkerConfig};

use super::{add_one, ms, workers, SOON};
use crate::conformance::{eventually, Env, Outcome, Registers};
use crate::registry;

/// Unknown names and inputs that do not decode fail at the start, clearly; by name, with
/// the right input, a DTask runs; only calls can be started.
pub async fn unknown_names_and_bad_input_are_clear_errors<E: Env>(env: E) -> Outcome {
    let reg = registry![add_one];
    let w = workers(&env, 1, reg.clone()).await?;
    let c = env.checking_client(reg).await?;
    let err = c
        .start_by_name("no_such_dtask", vec![0x90])
        .await
        .unwrap_err();
    assert!(err.is_unknown_dtask(), "{err}");
    assert!(err.to_string().contains("no_such_dtask"));
    // `add_one` takes one u64; a string is bad input.
    let input = rmp_serde::to_vec(&("forty-one",))?;
    let err = c.start_by_name("add_one", input).await.unwrap_err();
    assert!(err.is_bad_input(), "{err}");
    // By name, with the right input.
    let input = rmp_serde::to_vec(&(41u64,))?;
    let h = c.start_by_name("add_one", input).await?;
    let bytes = h.result_bytes().await?;
    assert_eq!(rmp_serde::from_slice::<u64>(&bytes)?, 42);
    // Only calls can be started: `c.start(DTask::delay(..))` does not compile
    // (core/tests/ui/start_a_delay.rs).
    w.stop().await?;
    env.cleanup().await
}

#[dtask]
async fn grows(n: u64) -> u64 {
    let mut total = 0;
    for i in 0..n {
        total += DTask::run(move || async move { vec![i as u8; 1024] })
            .await
            .len() as u64;
        DTask::yield_now().await;
    }
    total
}

/// An instance whose state outgrows the workers' budget fails, naming the budget; one
/// within it runs.
pub async fn a_state_past_the_budget_fails_clearly<E: Env>(env: E) -> Outcome {
    let config = WorkerConfig::new()
        .registry(&registry![grows])
        .state_budget(16 * 1024);
    let w = env.workers(1, config).await?;
    let c = env.client().await?;
    assert_eq!(c.start(grows(3)).await?.result().await?, 3 * 1024);
    let err = c.start(grows(100)).await?.result().await.unwrap_err();
    let f = err.failure().context("failed")?;
    assert!(f.is_state_too_large(), "{f}");
    assert!(f.message().contains("16384"), "{f}");
    w.stop().await?;
    env.cleanup().await
}

#[dtask]
async fn later(ms: u64) -> String {
    DTask::delay(Duration::from_millis(ms)).await;
    "later".to_string()
}

/// An instance started under a chosen id: its status and result, read by id from the
/// starting client and from another one, any number of times; unknown ids stay unknown
/// (asking creates nothing); a second start of the id is refused and the first result
/// stands; a start nobody serves is pending.
pub async fn results_by_id_from_a_second_client_and_status<E: Env>(env: E) -> Outcome {
    let w = workers(&env, 1, registry![later]).await?;
    let c = env.client().await?;
    let id = InstanceId::new(format!("order-{}", InstanceId::random()))?;
    let h = c.start_with_id(id.clone(), later(1_500)).await?;
    assert_eq!(h.id(), &id);
    eventually(&env, SOON, "the instance waits on its timer", || async {
        Ok(c.status(&id).await? == Status::Suspended)
    })
    .await?;
    let unknown = InstanceId::new(format!("nobody-{}", InstanceId::random()))?;
    assert!(c.status(&unknown).await.unwrap_err().is_not_found());
    // Asking creates nothing: the id stays unknown, also after reading its result, and
    // waiting for its result is not found at once rather than waiting forever.
    let unknown_handle = c.handle::<String>(unknown.clone());
    assert!(unknown_handle
        .try_result()
        .await
        .unwrap_err()
        .is_not_found());
    let waited = tokio::time::timeout(Duration::from_secs(10), unknown_handle.result())
        .await
        .context("waiting for the result of an unknown id must end")?;
    assert!(waited.unwrap_err().is_not_found());
    assert!(c.status(&unknown).await.unwrap_err().is_not_found());
    assert_eq!(env.registers(&unknown).await?, Registers::default());
    // Another process, knowing only the id.
    let other = env.client().await?;
    let handle = other.handle::<String>(id.clone());
    assert_eq!(handle.try_result().await?, None);
    env.advance(ms(1_500)).await;
    assert_eq!(handle.result().await?, "later");
    assert_eq!(other.status(&id).await?, Status::Succeeded);
    // Another handle of the first client, made from the id alone.
    assert_eq!(c.handle::<String>(id.clone()).result().await?, "later");
    // Reading does not consume: again, from the first handle.
    assert_eq!(h.result().await?, "later");
    assert_eq!(c.status(&id).await?, Status::Succeeded);
    // Starting the same id again is refused: the first result stands.
    let again = c.start_with_id(id.clone(), later(1)).await.unwrap_err();
    assert!(again.is_already_started(), "{again}");
    assert_eq!(h.result().await?, "later");
    assert!(InstanceId::new("bad id with spaces").is_err());
    // Roots keep no queue of their own: the facts are in the instance store.
    assert_eq!(env.registers(&id).await?, Registers::default());
    // A start no worker serves yet is pending; reading its status leaves nothing behind.
    // Last, as its message stays queued: a transport that tells when it is idle never is
    // again.
    let waiting = c.start_by_name("nobody.serves.this", vec![0x90]).await?;
    assert_eq!(waiting.status().await?, Status::Pending);
    assert_eq!(waiting.status().await?, Status::Pending);
    assert_eq!(env.registers(waiting.id()).await?, Registers::default());
    w.stop().await?;
    env.cleanup().await
}

/// How many times the side effect of `counted_once(tag, ..)` ran in this process, by tag
/// (every scenario's workers run here, and each start uses a tag of its own).
static COUNTED: LazyLock<Mutex<HashMap<String, usize>>> = LazyLock::new(Mutex::default);

fn counted(tag: &str) -> usize {
    COUNTED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(tag)
        .copied()
        .unwrap_or(0)
}

/// Counts one run of its side effect under `tag`, waits `ms` on a durable timer, then
/// returns `tag`.
#[dtask]
async fn counted_once(tag: String, ms: u64) -> String {
    let t = tag.clone();
    DTask::run(move || async move {
        *COUNTED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(t)
            .or_default() += 1;
    })
    .await;
    DTask::delay(Duration::from_millis(ms)).await;
    tag
}

/// A chosen id starts once: of two clients starting it at once, one wins and the other
/// is refused with `is_already_started`; later starts of the id, while it runs and after
/// it finished, are refused too; its side effect runs once and the workers drop each
/// refused start without running it. A start whose client died before claiming its id
/// runs once and keeps the id. A claimed start nobody serves yet is pending.
pub async fn a_chosen_id_starts_once_and_later_starts_are_refused<E: Env>(env: E) -> Outcome {
    let w = workers(&env, 2, registry![counted_once]).await?;
    let (c1, c2) = (env.client().await?, env.client().await?);
    let id = InstanceId::new(format!("once-{}", InstanceId::random()))?;
    let tag = id.to_string();
    let (a, b) = tokio::join!(
        c1.start_with_id(id.clone(), counted_once(tag.clone(), 1_500)),
        c2.start_with_id(id.clone(), counted_once(tag.clone(), 1_500)),
    );
    let (winner, loser) = match (a, b) {
        (Ok(h), Err(e)) | (Err(e), Ok(h)) => (h, e),
        (a, b) => anyhow::bail!(
            "not one winner: {:?} and {:?}",
            a.map(|_| ()),
            b.map(|_| ())
        ),
    };
    assert!(loser.is_already_started(), "{loser}");
    assert!(loser.to_string().contains(id.as_str()), "{loser}");
    eventually(&env, SOON, "the instance waits on its timer", || async {
        Ok(winner.status().await? == Status::Suspended)
    })
    .await?;
    let running = c1
        .start_with_id(id.clone(), counted_once(tag.clone(), 1))
        .await;
    assert!(running.unwrap_err().is_already_started());
    env.advance(ms(1_500)).await;
    assert_eq!(winner.result().await?, tag);
    let finished = c2
        .start_with_id(id.clone(), counted_once(tag.clone(), 1))
        .await;
    assert!(finished.unwrap_err().is_already_started());
    assert_eq!(c2.handle::<String>(id.clone()).result().await?, tag);

    // A client killed between publishing a start and claiming its id.
    let orphan = InstanceId::new(format!("orphan-{}", InstanceId::random()))?;
    let orphan_tag = orphan.to_string();
    let h = dtasks::test_util::start_without_claim(
        &c1,
        orphan.clone(),
        counted_once(orphan_tag.clone(), 0),
    )
    .await?;
    assert_eq!(h.result().await?, orphan_tag);
    let late = c2.start_with_id(orphan.clone(), counted_once(orphan_tag.clone(), 0));
    assert!(late.await.unwrap_err().is_already_started());

    // Every refused start reached a worker, which dropped it without running it.
    eventually(&env, SOON, "four starts dropped", || async {
        Ok(w.stats().iter().map(|s| s.duplicate_starts).sum::<u64>() == 4)
    })
    .await?;
    assert_eq!(counted(&tag), 1, "the side effect of {id} ran again");
    assert_eq!(counted(&orphan_tag), 1, "the orphan start did not run once");

    // Claimed, queued, not yet run: pending, and the id is taken. Last, as its message
    // stays queued (a transport that tells when it is idle never is again).
    let queued = InstanceId::new(format!("queued-{}", InstanceId::random()))?;
    let h = c1
        .start_by_name_with_id(queued.clone(), "nobody.serves.this", vec![0x90])
        .await?;
    assert_eq!(h.status().await?, Status::Pending);
    let again = c2
        .start_by_name_with_id(queued.clone(), "nobody.serves.this", vec![0x90])
        .await;
    assert!(again.unwrap_err().is_already_started());
    assert_eq!(h.status().await?, Status::Pending);
    w.stop().await?;
    env.cleanup().await
}

/// Messages on a task queue that are no envelope, of a revision no build writes (0), or
/// that do not decode are dead-lettered with the reason, and the worker keeps serving. (A
/// revision above this build's is handed back for a newer worker first: `rolling.rs`.)
pub async fn poison_messages_are_dead_lettered_and_the_worker_keeps_serving<E: Env>(
    env: E,
) -> Outcome {
    let w = workers(&env, 1, registry![add_one]).await?;
    for body in [
        b"not an envelope".to_vec(),
        vec![b'D', b'T', 0, 1, 0],
        vec![b'D', b'T', 1, 1, 0xc1, 0xff],
    ] {
        env.inject_raw("add_one", body).await?;
    }
    let h = env.client().await?.start(add_one(1)).await?;
    assert_eq!(h.result().await?, 2);
    eventually(&env, SOON, "three dead letters", || async {
        Ok(env.dead_letters().await?.len() == 3)
    })
    .await?;
    let dead = env.dead_letters().await?;
    assert_eq!(dead.len(), 3, "{dead:?}");
    // The worker handles deliveries concurrently: dead letters come in any order.
    let reason_of = |body: &[u8]| -> anyhow::Result<String> {
        let d = dead
            .iter()
            .find(|d| d.body == body)
            .with_context(|| format!("{body:?} was not dead-lettered"))?;
        // Where the transport records the queue a dead letter came from, it is the task
        // queue the message was put on.
        assert_eq!(d.queue, env.task_queue("add_one"));
        Ok(d.reason.clone())
    };
    let magic = reason_of(b"not an envelope")?;
    assert!(magic.contains("magic"), "{magic}");
    let version = reason_of(&[b'D', b'T', 0, 1, 0])?;
    assert!(version.contains("version 0"), "{version}");
    let garbage = reason_of(&[b'D', b'T', 1, 1, 0xc1, 0xff])?;
    assert!(garbage.contains("decode"), "{garbage}");
    // Still serving.
    let h = env.client().await?.start(add_one(2)).await?;
    assert_eq!(h.result().await?, 3);
    assert!(w.running());
    w.stop().await?;
    env.cleanup().await
}

/// Stopping the workers after a call ends them cleanly, and (where the transport counts
/// consumers) leaves no consumer on their queue.
pub async fn shutdown_stops_the_workers_and_leaves_no_consumer<E: Env>(env: E) -> Outcome {
    let w = workers(&env, 2, registry![add_one]).await?;
    let c = env.client().await?;
    assert_eq!(c.start(add_one(1)).await?.result().await?, 2);
    w.stop().await?;
    eventually(&env, SOON, "no consumer left", || async {
        Ok(matches!(env.consumers("add_one").await?, None | Some(0)))
    })
    .await?;
    env.cleanup().await
}

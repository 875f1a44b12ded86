//! The DTasks the workloads run.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dtasks::{dtask, DTask};
use serde_bytes::ByteBuf;

/// The byte every payload is filled with; a step checks it, so a corrupted payload fails
/// the instance instead of passing unnoticed.
pub(crate) const PAD_BYTE: u8 = 0xA5;

/// A payload of `len` bytes.
pub(crate) fn pad(len: u32) -> ByteBuf {
    ByteBuf::from(vec![PAD_BYTE; len as usize])
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One step of a chain: returns its input + 1. Carries a payload, like the raw baseline's
/// messages, and checks it.
#[dtask(name = "bench.step")]
pub(crate) async fn step(x: u64, payload: ByteBuf) -> u64 {
    assert!(
        payload.iter().all(|b| *b == PAD_BYTE),
        "the payload of step {x} arrived corrupted"
    );
    x + 1
}

/// W1: awaits `steps` child steps in sequence; returns `start + steps`.
#[dtask(name = "bench.chain")]
pub(crate) async fn chain(start: u64, steps: u32, payload_len: u32) -> u64 {
    let payload = pad(payload_len);
    let mut v = start;
    for _ in 0..steps {
        v = step(v, payload.clone()).await;
    }
    v
}

/// W2: starts `width` child steps with `when_all` and sums them;
/// returns `width * base + width * (width + 1) / 2`.
#[dtask(name = "bench.fan")]
pub(crate) async fn fan(base: u64, width: u32, payload_len: u32) -> u64 {
    let payload = pad(payload_len);
    let all = DTask::when_all((0..u64::from(width)).map(|i| step(base + i, payload.clone()))).await;
    assert_eq!(all.len(), width as usize, "when_all lost results");
    all.iter().sum()
}

/// The sum `fan(base, width, _)` must return.
pub(crate) fn fan_expected(base: u64, width: u32) -> u64 {
    let w = u64::from(width);
    w * base + w * (w + 1) / 2
}

/// W3: a durable timer of `delay_ms` taken from the first step. Returns the intended wake
/// time and the time the instance actually resumed (epoch ms). The intended time is read
/// with `DTask::run` (recorded, so replays reuse it) and the timer is
/// `DTask::delay_until(it + delay_ms)`: the same timer path as `DTask::delay`, with the
/// intended wake known exactly.
#[dtask(name = "bench.timer")]
pub(crate) async fn timer(delay_ms: u64) -> (u64, u64) {
    let t0 = DTask::run(|| async { now_ms() }).await;
    let due = t0 + delay_ms;
    DTask::delay_until(UNIX_EPOCH + Duration::from_millis(due)).await;
    let woke = DTask::run(|| async { now_ms() }).await;
    (due, woke)
}

/// The DTask name of E1.
pub(crate) const E1_AWAIT: &str = "bench.await_event";

/// The event E1's instances wait for.
pub(crate) const E1_EVENT: &str = "go";

/// E1: waits for the event [`E1_EVENT`] and returns its tag and the event's value.
#[dtask(name = "bench.await_event")]
pub(crate) async fn await_event(tag: u64) -> (u64, u64) {
    let value: u64 = DTask::event(E1_EVENT).await;
    (tag, value)
}

/// The DTask names of M1.
pub(crate) const M1_STEP: &str = "bench.m1.step";
pub(crate) const M1_REPLAY: &str = "bench.m1.replay";
pub(crate) const M1_SNAPSHOT: &str = "bench.m1.snapshot";

/// When each M1 step ran: `(run tag, index, time)`, pushed by the step itself (the
/// workers of the RabbitMQ and in-memory environments run in this process).
pub(crate) static M1_RAN: std::sync::Mutex<Vec<(u64, u32, std::time::Instant)>> =
    std::sync::Mutex::new(Vec::new());

/// One M1 step's function: order-sensitive, so a lost, repeated or reordered result
/// changes the loop's final value.
pub(crate) fn m1_mix(v: u64, i: u32) -> u64 {
    v.rotate_left(5) ^ (u64::from(i) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The value an M1 loop of `n` awaits from `seed` must return.
pub(crate) fn m1_expected(seed: u64, n: u32) -> u64 {
    (0..n).fold(seed, m1_mix)
}

/// M1: one child step of the long-lived loop; records when it ran.
#[dtask(name = "bench.m1.step")]
pub(crate) async fn m1_step(tag: u64, i: u32, v: u64) -> u64 {
    M1_RAN
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((tag, i, std::time::Instant::now()));
    m1_mix(v, i)
}

/// M1 in the replay model: `n` sequential child awaits.
#[dtask(name = "bench.m1.replay")]
pub(crate) async fn m1_replay(tag: u64, n: u32, seed: u64) -> u64 {
    let mut v = seed;
    for i in 0..n {
        v = m1_step(tag, i, v).await;
    }
    v
}

/// M1 in the snapshot model: the same loop, compiled into a serializable state machine.
#[dtask(snapshot, name = "bench.m1.snapshot")]
pub(crate) async fn m1_snapshot(tag: u64, n: u32, seed: u64) -> u64 {
    let mut v = seed;
    for i in 0..n {
        v = m1_step(tag, i, v).await;
    }
    v
}

/// The DTask names of E2.
pub(crate) const E2_FAN: &str = "bench.e2.fan";
pub(crate) const E2_JOB: &str = "bench.e2.job";

/// The event E2's children wait for (never sent: they end by cancellation).
pub(crate) const E2_EVENT: &str = "done";

/// Which E2 children ran their first step: `(round tag, child index)`, pushed by the
/// child itself (the workers run in this process).
pub(crate) static E2_STARTED: std::sync::Mutex<Vec<(u64, u32)>> = std::sync::Mutex::new(Vec::new());

/// E2: one child of the fan-out. Records that it started, then waits in its mailbox for
/// the event [`E2_EVENT`], as a job waiting for an outside system's answer does.
#[dtask(name = "bench.e2.job")]
pub(crate) async fn e2_job(tag: u64, i: u32) -> u64 {
    DTask::run(move || async move {
        E2_STARTED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((tag, i));
    })
    .await;
    DTask::event::<u64>(E2_EVENT).await
}

/// E2: starts `width` children with `when_all` and sums their values.
#[dtask(name = "bench.e2.fan")]
pub(crate) async fn e2_fan(tag: u64, width: u32) -> u64 {
    let all = DTask::when_all((0..width).map(|i| e2_job(tag, i))).await;
    all.iter().sum()
}

//! A snapshot records the fingerprint of the code that saved it: resuming under changed
//! code is refused (unless the new code accepts the old fingerprint), and corrupt or
//! truncated state is an error, never a panic.

use dtasks::test_util::{resume_snapshot, suspend_snapshot, tamper, Op, World};
use dtasks::{dtask, DTask, Failure};
use proptest::prelude::*;

#[dtask]
async fn inc(x: u64) -> u64 {
    x + 1
}

#[dtask(snapshot)]
async fn versioned(n: u64) -> (u64, String) {
    let mut total = 0;
    let mut names = Vec::new();
    for i in 0..n {
        let v = inc(i).await;
        total += v;
        names.push(format!("step {i}"));
    }
    DTask::yield_now().await;
    (total, names.join(","))
}

#[dtask(snapshot, accepts = "00000000000000aa", accepts = "0xbb")]
async fn tolerant(n: u64) -> u64 {
    DTask::yield_now().await;
    let a = inc(n).await;
    let b = inc(a).await;
    a + b
}

struct Inc;

impl World for Inc {
    fn resolve(&mut self, op: &Op) -> Result<Vec<u8>, Failure> {
        Ok(match &op.name {
            Some(_) => {
                // A resumed run does not know the inputs of the children called before.
                let (x,): (u64,) = rmp_serde::from_slice(&op.input).unwrap_or((0,));
                rmp_serde::to_vec(&(x + 1))
            }
            None => rmp_serde::to_vec(&()),
        }
        .expect("encodes"))
    }
    fn pick(&mut self, _: &[u32]) -> usize {
        0
    }
}

fn input(n: u64) -> Vec<u8> {
    rmp_serde::to_vec(&(n,)).expect("encodes")
}

#[tokio::test]
async fn an_untouched_snapshot_resumes() {
    // The fourth suspension is at the yield, after the three children.
    let (_, msg) = suspend_snapshot("versioned", input(3), &mut Inc, 4).await;
    let msg = msg.expect("suspended");
    let done = resume_snapshot("versioned", &msg, &mut Inc).await;
    let want = rmp_serde::to_vec(&(6u64, "step 0,step 1,step 2".to_string())).unwrap();
    assert_eq!(done.result, Ok(want));
}

#[tokio::test]
async fn resuming_under_changed_code_is_refused() {
    let (_, msg) = suspend_snapshot("versioned", input(3), &mut Inc, 4).await;
    let mut old = 0;
    let msg = tamper(&msg.expect("suspended"), |t| {
        // As if an earlier build of the function had saved it.
        t.fingerprint ^= 0x5a5a;
        old = t.fingerprint;
    })
    .expect("a snapshot");
    let done = resume_snapshot("versioned", &msg, &mut Inc).await;
    let f = done.result.expect_err("refused");
    assert!(f.is_code_changed(), "{f}");
    let current = dtasks::test_util::fingerprint("versioned").expect("a snapshot DTask");
    assert!(f.message().contains(&format!("{old:016x}")), "{f}");
    assert!(f.message().contains(&format!("{current:016x}")), "{f}");
    assert!(f.message().contains("accepts"), "{f}");
    // Nothing ran: no operation was issued by the refused step.
    assert!(done.ops.is_empty());
}

#[tokio::test]
async fn declared_compatible_fingerprints_resume() {
    for accepted in [0xaa_u64, 0xbb] {
        let (_, msg) = suspend_snapshot("tolerant", input(1), &mut Inc, 1).await;
        let msg = tamper(&msg.expect("suspended"), |t| t.fingerprint = accepted).unwrap();
        let done = resume_snapshot("tolerant", &msg, &mut Inc).await;
        assert_eq!(done.result, Ok(rmp_serde::to_vec(&(2u64 + 3)).unwrap()));
    }
    let (_, msg) = suspend_snapshot("tolerant", input(1), &mut Inc, 1).await;
    let msg = tamper(&msg.expect("suspended"), |t| t.fingerprint = 0xcc).unwrap();
    let done = resume_snapshot("tolerant", &msg, &mut Inc).await;
    assert!(done.result.expect_err("refused").is_code_changed());
}

#[test]
fn the_fingerprint_is_fixed_by_the_code() {
    let a = dtasks::test_util::fingerprint("versioned").expect("registered");
    let b = dtasks::test_util::fingerprint("tolerant").expect("registered");
    assert_ne!(a, b);
    assert_eq!(Some(a), dtasks::test_util::fingerprint("versioned"));
}

#[tokio::test]
async fn an_unknown_await_index_is_an_error() {
    let (_, msg) = suspend_snapshot("versioned", input(3), &mut Inc, 2).await;
    let msg = tamper(&msg.expect("suspended"), |t| t.point = 99).unwrap();
    let f = resume_snapshot("versioned", &msg, &mut Inc)
        .await
        .result
        .expect_err("refused");
    assert!(f.is_bad_input(), "{f}");
    assert!(f.message().contains("await 99"), "{f}");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn corrupt_or_truncated_locals_are_errors_not_panics(
        steps in 1usize..5,
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        truncate in any::<bool>(),
    ) {
        let rt = runtime();
        let (_, msg) = rt.block_on(suspend_snapshot("versioned", input(3), &mut Inc, steps));
        let msg = msg.expect("suspended");
        let msg = tamper(&msg, |t| {
            if t.locals.is_empty() {
                return;
            }
            if truncate {
                let n = cut.index(t.locals.len());
                t.locals.truncate(n);
            } else {
                let i = flip.index(t.locals.len());
                t.locals[i] ^= byte | 1;
            }
        })
        .expect("a snapshot");
        // Whatever the damage: a result or a failure, never a panic.
        let done = rt.block_on(resume_snapshot("versioned", &msg, &mut Inc));
        if let Err(f) = &done.result {
            prop_assert!(f.is_bad_input(), "{}", f);
        }
    }

    #[test]
    fn corrupt_messages_are_errors_not_panics(
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
    ) {
        let rt = runtime();
        let (_, msg) = rt.block_on(suspend_snapshot("versioned", input(2), &mut Inc, 2));
        let mut msg = msg.expect("suspended");
        let i = flip.index(msg.len());
        msg[i] ^= 0xff;
        let n = cut.index(msg.len() + 1);
        let done = rt.block_on(resume_snapshot("versioned", &msg[..n.max(1)], &mut Inc));
        prop_assert!(done.result.is_ok() || done.result.is_err());
    }
}

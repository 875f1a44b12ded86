//! Differential tests of the snapshot model: for every shape of the corpus, the original
//! async body run directly and the generated machine, serialized and resumed at every
//! suspension, give the same result, issue the same distributed operations in the same
//! order and perform the same side effects in the same order.

mod snapshot_corpus;

use std::future::Future;

use dtasks::test_util::{run_direct, run_snapshot, Op, Trace, World};
use dtasks::Failure;
use proptest::prelude::*;
use serde::Serialize;

use snapshot_corpus::*;

/// Resolves children with their real results, timers and yields with `()`, and completes
/// outstanding operations in an order given by `seed`.
struct Seeded {
    seed: u64,
}

impl World for Seeded {
    fn resolve(&mut self, op: &Op) -> Result<Vec<u8>, Failure> {
        match &op.name {
            Some(name) => child_result(name, &op.input),
            None => Ok(rmp_serde::to_vec(&()).expect("encodes")),
        }
    }

    fn pick(&mut self, outstanding: &[u32]) -> usize {
        let key = |seq: u32| {
            let mut h = self.seed ^ (u64::from(seq).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            h ^= h >> 31;
            h.wrapping_mul(0xbf58_476d_1ce4_e5b9)
        };
        (0..outstanding.len())
            .min_by_key(|i| key(outstanding[*i]))
            .unwrap_or(0)
    }
}

fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(f)
}

/// Runs both versions and compares everything observable.
fn same<A, T, F>(name: &str, args: A, direct: F, seed: u64) -> Result<Trace, TestCaseError>
where
    A: Serialize,
    T: Serialize,
    F: Future<Output = T> + Send + 'static,
{
    take_log();
    let d = block_on(run_direct(direct, &mut Seeded { seed }));
    let direct_log = take_log();
    let input = rmp_serde::to_vec(&args).expect("encodes");
    let s = block_on(run_snapshot(name, input, &mut Seeded { seed }));
    let snapshot_log = take_log();
    prop_assert_eq!(&d.result, &s.result, "{}: results differ", name);
    prop_assert_eq!(&d.ops, &s.ops, "{}: distributed operations differ", name);
    prop_assert_eq!(&direct_log, &snapshot_log, "{}: side effects differ", name);
    // The machine really was suspended, encoded and resumed.
    prop_assert!(s.ops.is_empty() || s.steps > 1 || s.result.is_err());
    Ok(s)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn nested_and_labelled_loops(rows in 0u64..4, cols in 0u64..4, seed in any::<u64>()) {
        same("nested_loops", (rows, cols), nested_loops_direct(rows, cols), seed)?;
    }

    #[test]
    fn shadowing_survives(x in 0u64..1000, seed in any::<u64>()) {
        same("shadowing", (x,), shadowing_direct(x), seed)?;
    }

    #[test]
    fn match_with_awaits_in_arms(k in 0u8..4, g in 0u64..50, a in 0u64..20, b in 0u64..20, n in 0u64..5, seed in any::<u64>()) {
        let kind = match k {
            0 => Kind::Gift(g),
            1 => Kind::Plain,
            _ => Kind::Split { a, b },
        };
        same("matching", (kind.clone(), n), matching_direct(kind, n), seed)?;
    }

    #[test]
    fn question_mark_on_result(xs in proptest::collection::vec(0u64..30, 0..6), seed in any::<u64>()) {
        same("tries", (xs.clone(),), tries_direct(xs), seed)?;
    }

    #[test]
    fn question_mark_on_option(a in 0u64..12, b in 0u64..12, seed in any::<u64>()) {
        same("option_try", (a, b), option_try_direct(a, b), seed)?;
    }

    #[test]
    fn early_return(n in 1u64..8, stop in 0u64..10, seed in any::<u64>()) {
        same("early_return", (n, stop), early_return_direct(n, stop), seed)?;
    }

    #[test]
    fn break_with_value(n in 0u64..40, seed in any::<u64>()) {
        same("break_value", (n,), break_value_direct(n), seed)?;
    }

    #[test]
    fn assignments(n in 0u64..5, seed in any::<u64>()) {
        same("assigns", (n,), assigns_direct(n), seed)?;
    }

    #[test]
    fn combinators(n in 0u64..6, seed in any::<u64>()) {
        same("combinators", (n,), combinators_direct(n), seed)?;
    }

    #[test]
    fn local_work_between_awaits(n in 0u64..5, seed in any::<u64>()) {
        same("local_work", (n,), local_work_direct(n), seed)?;
    }

    #[test]
    fn typed_lets(n in 0u64..30, seed in any::<u64>()) {
        same("typed_lets", (n,), typed_lets_direct(n), seed)?;
    }

    #[test]
    fn if_chains(n in 0u64..30, seed in any::<u64>()) {
        same("if_chains", (n,), if_chains_direct(n), seed)?;
    }
}

//! `DTask::when_any` decided within one step, through the replay model.

use std::time::{Duration, UNIX_EPOCH};

use crate::dtask::DTask;
use crate::error::{Failure, FailureKind};
use crate::exec::run_step;
use crate::protocol::codec::{decode_value, encode_value};
use crate::protocol::state::{InstanceId, InstanceState, Outcome, ReplyTo};
use crate::registry::Registry;
use crate::step::StepEnd;
use dtasks_macros::dtask;

#[dtask(name = "tests.any.leg")]
async fn leg(x: u64) -> u64 {
    x
}

#[dtask(name = "tests.any.race")]
async fn race() -> (usize, u64) {
    DTask::when_any([leg(1), leg(2)]).await
}

/// Runs `tests.any.race` to its suspension on both legs, records `first` and then
/// `second` (by leg index) before driving it again — both merged in one step — and
/// returns how that step ended.
async fn race_with(results: [(usize, Outcome); 2]) -> StepEnd {
    let mut registry = Registry::new();
    registry.register(race).expect("registered");
    let model = registry.get("tests.any.race").expect("registered").run;
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let mut state = InstanceState::new(
        InstanceId::new("race").expect("valid"),
        "tests.any.race".into(),
        encode_value(&()).expect("encodes"),
        ReplyTo::Root,
    );
    for round in 0..2 {
        let end = run_step(model, &mut state, now, None).await.end;
        if round == 1 {
            return end;
        }
        assert!(matches!(end, StepEnd::Suspended));
        let open = state.outstanding_seqs();
        assert_eq!(open.len(), 2, "both legs outstanding");
        for (leg, outcome) in results.clone() {
            assert!(state.record(open[leg], outcome));
        }
    }
    unreachable!()
}

fn failed() -> Outcome {
    Outcome::Failed(Failure::new(FailureKind::Panic, "leg broke"))
}

#[tokio::test]
async fn a_loser_that_failed_after_the_winner_in_the_same_step_is_a_loser() {
    let end = race_with([
        (1, Outcome::Ok(encode_value(&20u64).expect("encodes"))),
        (0, failed()),
    ])
    .await;
    match end {
        StepEnd::Completed(bytes) => {
            assert_eq!(
                decode_value::<(usize, u64)>(&bytes).expect("decodes"),
                (1, 20)
            );
        }
        other => panic!("expected the winner's result, got {other:?}"),
    }
}

#[tokio::test]
async fn a_failure_recorded_first_wins_the_race_and_fails_the_instance() {
    let end = race_with([
        (0, failed()),
        (1, Outcome::Ok(encode_value(&20u64).expect("encodes"))),
    ])
    .await;
    match end {
        StepEnd::Failed(f) => {
            assert!(f.is_child_failure(), "{f}");
            assert!(f.message().contains("leg broke"), "{f}");
        }
        other => panic!("expected the first leg's failure, got {other:?}"),
    }
}

//! The replay execution model: the body runs from the top at every step, and the journal
//! answers every operation already recorded (checking that the code issued the same one).

use std::time::SystemTime;

use super::{drive_state, RunFn, StepOutput};
use crate::protocol::state::InstanceState;
use crate::step::{Clock, Exec};

/// Runs one step of a replay-model instance.
pub(super) async fn run_step(
    run: RunFn,
    state: &mut InstanceState,
    now: SystemTime,
    clock: Option<Clock>,
) -> StepOutput {
    let first_new = state.next_seq();
    let mut body = match run(&state.input) {
        Ok(b) => b,
        Err(f) => return StepOutput::failed(f, first_new),
    };
    let journal = std::mem::take(&mut state.journal);
    let exec =
        Exec::replay(state.id.clone(), journal, state.base, state.recorded, now).with_clock(clock);
    let (end, child_inputs, cancelled_children) = drive_state(&mut body, state, exec, |ex| {
        std::mem::take(&mut ex.child_inputs)
    })
    .await;
    StepOutput {
        end,
        first_new,
        child_inputs,
        cancelled_children,
    }
}

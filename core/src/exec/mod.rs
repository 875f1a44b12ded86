//! The execution models: how one step of an instance runs, behind one entry, [`run_step`].
//!
//! - [`replay`]: the body runs from the top at every step; the journal answers the
//!   operations already recorded and checks that the code issues the same ones.
//! - [`snapshot`]: a `#[dtask(snapshot)]` machine resumes at the await it saved; nothing is
//!   replayed.
//! - [`macro_support`]: the hidden API the snapshot machines the macro generates call.
//!
//! Both models number their distributed operations the same way, so what a step produced
//! ([`StepOutput`]) means the same to the engine whichever model ran it.

pub mod macro_support;
mod migrate;
mod replay;
mod snapshot;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

pub use migrate::MigrateFn;
pub use migrate::SavedMachine;
pub(crate) use snapshot::Resume;
pub(crate) use snapshot::SnapshotRunFn;

use crate::error::Failure;
use crate::protocol::state::{InstanceState, Seq};
use crate::step::{drive, BodyFuture, CancelChild, Clock, Exec, StepEnd};

/// The generated function that starts a replay-model body from encoded arguments.
pub(crate) type RunFn = fn(&[u8]) -> Result<BodyFuture, Failure>;

/// How a registered DTask runs its steps.
#[derive(Clone, Copy)]
pub(crate) enum Model {
    /// The replay model: the body is started from the top at every step.
    Replay(RunFn),
    /// The snapshot model: a generated machine, resumed from its saved state; the
    /// fingerprint of its code is checked before resuming.
    Snapshot {
        run: SnapshotRunFn,
        fingerprint: u64,
        /// Fingerprints of earlier code declared compatible (`accepts = "..."`).
        accepts: &'static [u64],
        /// Migrations from earlier code (`migrate(from = "...", with = f)`).
        migrations: &'static [(u64, MigrateFn)],
    },
}

impl Model {
    /// Builds the body of a first step from encoded arguments (without polling it).
    pub(crate) fn start(&self, input: &[u8]) -> Result<BodyFuture, Failure> {
        match self {
            Model::Replay(run) => run(input),
            Model::Snapshot { run, .. } => run(input, None),
        }
    }
}

/// What one step produced.
#[derive(Debug)]
pub(crate) struct StepOutput {
    /// How it ended.
    pub(crate) end: StepEnd,
    /// The first position the step could issue: the operations at or past it are new.
    pub(crate) first_new: Seq,
    /// The encoded inputs of the child calls the step issued, by position.
    pub(crate) child_inputs: BTreeMap<Seq, Vec<u8>>,
    /// The running children the step cancelled (its cancellation, a race's losers).
    pub(crate) cancelled_children: Vec<CancelChild>,
}

impl StepOutput {
    fn failed(f: Failure, first_new: Seq) -> Self {
        Self {
            end: StepEnd::Failed(f),
            first_new,
            child_inputs: BTreeMap::new(),
            cancelled_children: Vec::new(),
        }
    }
}

/// Runs one step of `state` under `model`: its journal and saved machine are updated in
/// place; `clock` is read when the step issues a relative timer (default: `now`).
pub(crate) async fn run_step(
    model: Model,
    state: &mut InstanceState,
    now: SystemTime,
    clock: Option<Clock>,
) -> StepOutput {
    match model {
        Model::Replay(run) => replay::run_step(run, state, now, clock).await,
        Model::Snapshot {
            run,
            fingerprint,
            accepts,
            migrations,
        } => {
            let code = snapshot::Code {
                fingerprint,
                accepts,
                migrations,
            };
            snapshot::run_step(run, code, state, now, clock).await
        }
    }
}

/// Drives `body` to quiescence in `exec`, which holds the journal taken from `state`
/// (and the instance's cancellation), then moves the journal, the count of recorded
/// results and the children started in clean-up scopes back into `state`, and hands the
/// rest of the context to `rest`; also returns the running children the step cancelled.
async fn drive_state<R>(
    body: &mut BodyFuture,
    state: &mut InstanceState,
    mut exec: Exec,
    rest: impl FnOnce(&mut Exec) -> R,
) -> (StepEnd, R, Vec<CancelChild>) {
    exec.dtask.clone_from(&state.name);
    exec.inbox = std::mem::take(&mut state.inbox);
    let exec = exec.with_cancel(state.cancelled.clone(), std::mem::take(&mut state.shielded));
    let exec = Arc::new(Mutex::new(exec));
    let end = drive(body, &exec).await;
    let mut ex = exec.lock().unwrap_or_else(|p| p.into_inner());
    state.journal = std::mem::take(&mut ex.journal);
    state.inbox = std::mem::take(&mut ex.inbox);
    state.recorded = ex.recorded;
    state.shielded = std::mem::take(&mut ex.cancel.shielded);
    let cancelled = std::mem::take(&mut ex.cancel.children);
    (end, rest(&mut ex), cancelled)
}

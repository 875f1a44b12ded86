//! The end of a run that continues as new: the messages that hand the instance to its next
//! run (section 14 of the architecture).

use std::collections::BTreeMap;
use std::time::SystemTime;

use tracing::debug;

use super::Engine;
use crate::protocol::outgoing::Outgoing;
use crate::protocol::state::{InstanceState, Seq};

impl Engine {
    /// The messages that end the instance's run and hand it to its next run, with
    /// `input` (`DTask::continue_as_new`); `detached` are the inputs of the children this
    /// step started, which run detached as at a finish.
    pub(super) fn continue_as_new(
        &self,
        state: &mut InstanceState,
        detached: BTreeMap<Seq, Vec<u8>>,
        input: Vec<u8>,
        now: SystemTime,
    ) -> Vec<Outgoing> {
        let mut outputs = Self::start_detached(state, detached, now);
        state.continue_as_new(input);
        debug!(instance = %state.id, run = state.run + 1, "continued as new");
        // One message carries the next run: to the task queue, in mailbox mode too (the
        // mailbox holds no state meanwhile, like a merged state handed over; replies that
        // arrive wait for the next run's first suspension, or drop out there).
        outputs.push(Outgoing::next_run(state));
        outputs
    }
}

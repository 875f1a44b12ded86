//! Messages a worker cannot handle: what they cause besides their dead letter.
//!
//! A message that fails at every delivery (up to the worker's redelivery budget), or that
//! cannot be read, goes to the dead-letter queue; the instance it belongs to must not wait
//! for it forever. A task message carries its instance's state, so the instance ends with
//! a [`Failure::is_dead_lettered`] failure the way a failed step ends it: a root's result
//! is recorded (its waiter and its status see it), a child's failure goes to its parent.
//! A mailbox item that cannot be read fails the instance whose mailbox holds it, at the
//! drain that finds it beside the state.

use std::collections::BTreeMap;
use std::time::SystemTime;

use tracing::warn;

use super::{Engine, MailboxPlan, Settlement};
use crate::error::{Failure, FailureKind};
use crate::protocol::message::TaskMessage;
use crate::protocol::outgoing::Outgoing;
use crate::protocol::probe::Probe;
use crate::protocol::state::{InstanceState, Outcome};

/// The failure of an instance one of whose messages was dead-lettered for `reason`.
fn dead_lettered(reason: &str) -> Failure {
    Failure::new(
        FailureKind::DeadLettered,
        format!("a message of this instance was moved to the dead-letter queue: {reason}"),
    )
}

/// Why a drain must fail its instance: the first item it could not read, if any.
pub(super) fn unreadable(settle: &[(Settlement, String)]) -> Option<String> {
    settle
        .iter()
        .find(|(how, _)| *how == Settlement::DeadLetter)
        .map(|(_, reason)| format!("a mailbox item could not be read ({reason})"))
}

impl Engine {
    /// The plan of a drain that found an item it could not read beside `state`: the
    /// instance fails (the item is dead-lettered, the rest acked).
    pub(super) fn fail_unreadable(
        &self,
        state: &InstanceState,
        reason: &str,
        settle: Vec<(Settlement, String)>,
        now: SystemTime,
    ) -> MailboxPlan {
        let failure = dead_lettered(reason);
        warn!(instance = %state.id, dtask = %state.name, %failure, "instance failed");
        MailboxPlan {
            outputs: self.fail_state(state, failure, now),
            settle,
            waiting_for_state: false,
            delete: false,
        }
    }

    /// The messages that end, as failed for `reason`, the instance of a task message of a
    /// newer build of which only the frozen fields (`probe`) could be read: its result for
    /// a root, its reply for a child whose parent keeps its state in its mailbox; nothing
    /// when who waits cannot be read that way.
    pub(crate) fn fail_newer(&self, probe: Probe, reason: &str, now: SystemTime) -> Vec<Outgoing> {
        let Some(reply) = probe.reply else {
            return Vec::new();
        };
        let mut state = InstanceState::new(probe.id, probe.name, Vec::new(), reply);
        state.notify = probe.notify;
        let failure = dead_lettered(reason);
        warn!(instance = %state.id, dtask = %state.name, %failure, "instance failed");
        self.fail_state(&state, failure, now)
    }

    /// The messages that end the instance of `msg`, a task message dead-lettered for
    /// `reason`, as failed. A `Forward` (a timer for an instance in mailbox mode, which
    /// could not be put in the mailbox) causes nothing: its instance's state is in that
    /// mailbox, out of reach for the same reason.
    pub(crate) fn fail_dead_lettered(
        &self,
        msg: TaskMessage,
        reason: &str,
        now: SystemTime,
    ) -> Vec<Outgoing> {
        match msg {
            TaskMessage::Step { state, .. } => {
                let failure = dead_lettered(reason);
                warn!(instance = %state.id, dtask = %state.name, %failure, "instance failed");
                self.fail_state(&state, failure, now)
            }
            TaskMessage::Forward { instance, .. } => {
                warn!(%instance, %reason, "a timer for a mailbox was dead-lettered; its instance waits in that mailbox");
                Vec::new()
            }
        }
    }

    /// The messages that end `state` with `failure`.
    fn fail_state(
        &self,
        state: &InstanceState,
        failure: Failure,
        now: SystemTime,
    ) -> Vec<Outgoing> {
        self.finish(state, Outcome::Failed(failure), BTreeMap::new(), now)
    }
}

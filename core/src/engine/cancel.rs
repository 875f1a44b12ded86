//! Cancellation in the engine: which instance a step finds cancelled, how a cancelled
//! instance ends, and the messages that carry the cancellation to its running children.
//!
//! An instance is cancelled when a cancel record names it or an ancestor in its cancel
//! scope (the transport's [`CancelBook`](crate::transport::CancelBook)), or when a cancel
//! item reaches its mailbox. The step marks its state (`cancelled`, kept for the rest of
//! its life); from then on its awaits outside clean-up scopes fail as cancelled
//! (`step::context`), and it ends `Cancelled`.

use super::Engine;
use crate::error::{Failure, FailureKind};
use crate::protocol::outgoing::Outgoing;
use crate::protocol::state::{Command, InstanceState, Seq};
use crate::step::{CancelChild, StepEnd};

impl Engine {
    /// Marks `state` cancelled when a record names it or an ancestor in its scope.
    pub(super) fn check_cancelled(&self, state: &mut InstanceState) {
        if state.cancelled.is_some() {
            return;
        }
        if let Some(reason) = self.cancels.as_ref().and_then(|book| book.find(state)) {
            tracing::debug!(instance = %state.id, %reason, "instance cancelled");
            state.cancelled = Some(reason);
        }
    }

    /// Whether a timer of `state` that came before its time is to end its sleep: a record
    /// cancels the instance, which was not cancelled when the sleep began (a sleep that
    /// began after is in a clean-up scope).
    pub(super) fn cancel_wakes(&self, state: &InstanceState) -> bool {
        state.cancelled.is_none()
            && self
                .cancels
                .as_ref()
                .is_some_and(|book| book.find(state).is_some())
    }

    /// Follows the cancel records of `book`.
    pub(crate) fn with_cancels(mut self, book: crate::transport::CancelBook) -> Self {
        self.cancels = Some(book);
        self
    }
}

/// Merges a cancel item (its reason) drained from the mailbox; true when it is news (the
/// step must run now).
pub(super) fn merge(state: &mut InstanceState, reason: Option<String>) -> bool {
    match reason {
        Some(reason) if state.cancelled.is_none() => {
            state.cancelled = Some(reason);
            true
        }
        _ => false,
    }
}

/// How a step of a cancelled instance ends: whatever the body did, an end is
/// `Cancelled` with the reason (a failure that is already a cancellation is kept).
pub(super) fn end_of(state: &InstanceState, end: StepEnd) -> StepEnd {
    match (&state.cancelled, end) {
        (_, StepEnd::Suspended) => StepEnd::Suspended,
        (Some(_), StepEnd::Failed(f)) if f.is_cancelled() => StepEnd::Failed(f),
        (Some(reason), _) => StepEnd::Failed(Failure::new(FailureKind::Cancelled, reason)),
        (None, end) => end,
    }
}

/// The messages that carry a cancellation to running children: for each child the step
/// cancelled, a cancel item in its mailbox (and, for a race's loser, its own cancel
/// record); when a cancelled instance ended (`ended`), the same for every child it left
/// running outside clean-up scopes. Children started in this step (`first_new..`) were
/// never published.
pub(super) fn tell_children(
    state: &InstanceState,
    cancelled: &[CancelChild],
    first_new: Seq,
    ended: bool,
) -> Vec<Outgoing> {
    let mut out = Vec::new();
    let name_of = |seq: Seq| match state.entry(seq).map(|e| &e.cmd) {
        Some(Command::Child { name, .. }) => Some(name.clone()),
        _ => None,
    };
    for c in cancelled {
        let Some(name) = name_of(c.seq) else { continue };
        let id = state.id.child(c.seq);
        if c.record {
            out.push(Outgoing::cancel_record(&id, &c.reason));
        }
        out.push(Outgoing::cancel_item(&id, &name, &c.reason));
    }
    if let (true, Some(reason)) = (ended, &state.cancelled) {
        for seq in state.outstanding_seqs() {
            if seq >= first_new || state.shielded.contains(&seq) {
                continue;
            }
            if let Some(name) = name_of(seq) {
                out.push(Outgoing::cancel_item(&state.id.child(seq), &name, reason));
            }
        }
    }
    out
}

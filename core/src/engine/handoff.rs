//! The hand-off of a step: the one message that continues its instance's work (a
//! child's start carrying the parent, a result carrying the parent back), kept for
//! running the next step inline.

use crate::protocol::message::TaskMessage;
use crate::protocol::state::{InstanceId, InstanceState, Outcome, ReplyTo, Seq};

/// The one message of a step that hands its instance on to a next step, kept for running
/// that step inline. It is built after the budget check, from the state the step leaves.
pub(super) enum HandOff {
    None,
    /// The start of the child `id` at `seq`, the parent's state riding in it.
    Child {
        id: InstanceId,
        seq: Seq,
        name: String,
        input: Vec<u8>,
    },
    /// The parent's resume with this result, its state riding back.
    Parent(Outcome),
}

impl HandOff {
    pub(super) fn into_message(self, state: InstanceState) -> Option<TaskMessage> {
        match self {
            HandOff::None => None,
            HandOff::Child {
                id,
                seq,
                name,
                input,
            } => {
                let scope = state.child_scope(seq);
                let records_children = state.records_children;
                let reply = ReplyTo::Continuation {
                    parent: Box::new(state),
                    seq,
                };
                let mut child = InstanceState::new(id, name, input, reply);
                child.cancel_scope = scope;
                child.records_children = records_children;
                Some(TaskMessage::Step {
                    state: Box::new(child),
                    completion: None,
                })
            }
            HandOff::Parent(outcome) => match state.reply {
                ReplyTo::Continuation { parent, seq } => Some(TaskMessage::Step {
                    state: parent,
                    completion: Some((seq, outcome)),
                }),
                _ => None,
            },
        }
    }
}

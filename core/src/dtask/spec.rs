//! The structure of a DTask, for saving a pending await in a snapshot.

use super::LeafOp;
use crate::protocol::state::{Seq, Shape};

/// The structure of a DTask, known when it is built (positions are claimed later).
#[derive(Clone, Debug)]
pub(crate) enum Spec {
    /// A leaf that claims the next position on its first poll.
    Claim {
        catch: bool,
    },
    /// A spawn handle: a position claimed before.
    Handle {
        seq: Seq,
        catch: bool,
    },
    All(Vec<Spec>),
    Any(Vec<Spec>),
    /// `task.within(timeout)`: the task, then its timer.
    Within(Box<Spec>),
    /// `DTask::cleanup` of a part.
    Cleanup(Box<Spec>),
    /// `DTask::race`.
    Race(Vec<Spec>),
    /// `DTask::timeout` of a task: the task's positions, then the delay's.
    Timeout(Box<Spec>),
    /// Something a snapshot cannot hold (a closure, an unserializable value).
    Unsaveable(&'static str),
    /// A retry (`DTask::run_with_retry`, `Call::retry`): saved only by an await whose
    /// expression builds it, which a resume evaluates again (see `exec::snapshot`).
    Retry,
}

impl Spec {
    /// The shape of this structure when its first poll claimed positions from `*next`
    /// on, in poll order (depth first: every combinator polls all its parts in order).
    pub(crate) fn assign(&self, next: &mut Seq) -> Result<Shape, String> {
        Ok(match self {
            Spec::Claim { catch } => {
                let seq = *next;
                *next += 1;
                Shape::Op { seq, catch: *catch }
            }
            Spec::Handle { seq, catch } => Shape::Op {
                seq: *seq,
                catch: *catch,
            },
            Spec::All(parts) => Shape::All(
                parts
                    .iter()
                    .map(|p| p.assign(next))
                    .collect::<Result<_, _>>()?,
            ),
            Spec::Any(parts) => Shape::Any(
                parts
                    .iter()
                    .map(|p| p.assign(next))
                    .collect::<Result<_, _>>()?,
            ),
            Spec::Within(task) => {
                let task = task.assign(next)?;
                let timer = *next;
                *next += 1;
                Shape::Within {
                    task: Box::new(task),
                    timer,
                }
            }
            Spec::Cleanup(part) => Shape::Cleanup(Box::new(part.assign(next)?)),
            Spec::Race(parts) => Shape::Race(
                parts
                    .iter()
                    .map(|p| p.assign(next))
                    .collect::<Result<_, _>>()?,
            ),
            Spec::Timeout(task) => {
                let task = Box::new(task.assign(next)?);
                let delay = *next;
                *next += 1;
                Shape::Timeout { task, delay }
            }
            Spec::Unsaveable(what) => {
                return Err(format!(
                    "it combines {what}, which a snapshot cannot hold; apply it after the await"
                ))
            }
            Spec::Retry => {
                return Err(
                    "a retry (`DTask::run_with_retry`, `.retry(policy)`) waiting for \
                     its next attempt can only be saved by an await that builds it in its own \
                     expression (`DTask::run_with_retry(..).await`, `call.retry(p).await`), \
                     because a resume builds it again from there"
                        .to_string(),
                )
            }
        })
    }
}

impl Spec {
    pub(super) fn of_leaf(op: &LeafOp, catch: bool) -> Self {
        match op {
            LeafOp::Handle { seq, .. } => Spec::Handle { seq: *seq, catch },
            _ => Spec::Claim { catch },
        }
    }
}

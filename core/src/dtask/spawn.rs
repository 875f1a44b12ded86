//! `DTask::spawn`: start an operation now, await its serializable handle later.

use std::fmt;
use std::future::IntoFuture;
use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{DTask, Kind, LeafOp};
use crate::error::{Failure, FailureKind};
use crate::protocol::state::{InstanceId, Seq};
use crate::step::with;

impl DTask<()> {
    /// Starts `task` now without awaiting it and returns a handle to await later, even
    /// after further suspensions: the handle is serializable and may be kept in locals.
    ///
    /// `task` must be a call of a `#[dtask]` function or a delay; anything else fails the
    /// instance with a misuse error.
    ///
    /// # Panics
    /// Outside of a DTask's execution.
    pub fn spawn<T>(task: DTask<T>) -> SpawnHandle<T> {
        with(|ex| {
            let instance = ex.instance.clone();
            let seq = match task.kind {
                Kind::Op(mut leaf, _) if !matches!(leaf.op, LeafOp::Handle { .. }) => {
                    let seq = leaf.claim(ex);
                    if let Some(snapshot) = &mut ex.snapshot {
                        // Pinned beside the journal at the suspension (see `exec`).
                        snapshot.spawned.extend(seq);
                    }
                    seq
                }
                _ => {
                    ex.fail(Failure::new(
                        FailureKind::Misuse,
                        "DTask::spawn accepts a call of a #[dtask] function or a delay",
                    ));
                    None
                }
            };
            SpawnHandle {
                instance,
                seq: seq.unwrap_or(Seq::MAX),
                _t: PhantomData,
            }
        })
    }
}

/// A handle to an operation started with [`DTask::spawn`].
///
/// Await it (it implements [`IntoFuture`]) to get the operation's result; awaiting it
/// several times gives the same result. Handles are serializable, so they can be kept
/// across suspensions and in the snapshot model's locals.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct SpawnHandle<T> {
    instance: InstanceId,
    seq: Seq,
    #[serde(skip)]
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for SpawnHandle<T> {
    fn clone(&self) -> Self {
        Self {
            instance: self.instance.clone(),
            seq: self.seq,
            _t: PhantomData,
        }
    }
}

impl<T> fmt::Debug for SpawnHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpawnHandle")
            .field("instance", &self.instance)
            .field("seq", &self.seq)
            .finish()
    }
}

impl<T> SpawnHandle<T> {
    /// The id of the child instance, when the spawned operation is a child call.
    pub fn child_id(&self) -> InstanceId {
        self.instance.child(self.seq)
    }

    /// The handle as a DTask, to pass to the combinators.
    pub fn dtask(&self) -> DTask<T> {
        DTask::op(LeafOp::Handle {
            instance: self.instance.clone(),
            seq: self.seq,
        })
    }
}

impl<T: DeserializeOwned + Send + 'static> IntoFuture for SpawnHandle<T> {
    type Output = T;
    type IntoFuture = DTask<T>;

    fn into_future(self) -> DTask<T> {
        self.dtask()
    }
}

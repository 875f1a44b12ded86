//! `DTask::spawn`: start an operation now, await its serializable handle later.

use std::fmt;
use std::future::IntoFuture;
use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::call::sealed::Sealed;
use super::{Call, DTask, IntoDTask, Leaf, LeafOp};
use crate::error::Failure;
use crate::protocol::state::{InstanceId, Seq};
use crate::step::with;

impl DTask<()> {
    /// Starts the call `task` now without awaiting it and returns a handle to await later,
    /// even after further suspensions: the handle is serializable and may be kept in
    /// locals. Only a call of a `#[dtask]` function can be spawned (a combinator is a
    /// compile error).
    ///
    /// # Panics
    /// Outside of a DTask's execution.
    pub fn spawn<T>(task: Call<T>) -> SpawnHandle<T> {
        let (name, input) = task.into_parts();
        let mut leaf = Leaf::new(LeafOp::Child {
            name: name.into(),
            input,
        });
        with(|ex| {
            let instance = ex.instance.clone();
            let seq = leaf.claim(ex);
            if let (Some(seq), Some(reason)) = (seq, ex.cancelling()) {
                // A cancelled instance starts nothing new, and stops what it started.
                ex.cancel_op(seq, &reason, false);
            }
            if let Some(snapshot) = &mut ex.snapshot {
                // Pinned beside the journal at the suspension (see `exec`).
                snapshot.spawned.extend(seq);
            }
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

    /// The handle as a DTask (the combinators also take the handle itself).
    pub fn dtask(&self) -> DTask<T> {
        DTask::op(self.op())
    }

    fn op(&self) -> LeafOp {
        LeafOp::Handle {
            instance: self.instance.clone(),
            seq: self.seq,
        }
    }
}

impl<T: DeserializeOwned + Send + 'static> SpawnHandle<T> {
    /// Awaits the spawned call with its failure as a value; see [`Call::catch_failure`].
    pub fn catch_failure(&self) -> DTask<Result<T, Failure>> {
        DTask::catch_leaf(self.op())
    }
}

impl<T: DeserializeOwned + Send + 'static> IntoFuture for SpawnHandle<T> {
    type Output = T;
    type IntoFuture = DTask<T>;

    fn into_future(self) -> DTask<T> {
        self.dtask()
    }
}

impl<T> Sealed for SpawnHandle<T> {}

impl<T: DeserializeOwned + Send + 'static> IntoDTask for SpawnHandle<T> {
    type Output = T;
    fn into_dtask(self) -> DTask<T> {
        self.dtask()
    }
}

impl<T: DeserializeOwned + Send + 'static> Call<T> {
    /// Starts the call now without awaiting it; see [`DTask::spawn`].
    pub fn spawn(self) -> SpawnHandle<T> {
        DTask::spawn(self)
    }
}

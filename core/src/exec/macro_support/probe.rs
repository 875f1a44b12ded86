//! The types a generated machine uses to tell its kinds of awaits apart at compile time
//! (a distributed await of a `DTask`, a local await of any other future) and to connect
//! the inferred types of its saved locals.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use serde::de::DeserializeOwned;

use crate::dtask::DTask;

/// A type, carried as a value so that inference can connect the places that save
/// and restore one local (one `Ty` per saved local).
pub struct Ty<T>(PhantomData<fn() -> T>);

impl<T> Ty<T> {
    /// A type to be inferred.
    pub fn new() -> Self {
        Ty(PhantomData)
    }
}

impl<T> Default for Ty<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Clone for Ty<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Ty<T> {}

/// An await of a `DTask<T>`: a distributed await, saved when pending.
pub struct Dist<T>(PhantomData<fn() -> T>);

/// An await of any other future (local work, never saved) with output `O`.
pub struct Local<O>(PhantomData<fn() -> O>);

/// Classifies the future of an await at compile time (see [`ProbeDist`]).
pub struct Probe<'a, F>(pub &'a F);

/// Picked by method resolution for `(&Probe(&f)).__dtask_kind()` when `f` is a
/// `DTask<T>`.
pub trait ProbeDist {
    /// [`Dist`].
    type Kind;
    /// The kind of the await.
    fn __dtask_kind(&self) -> Self::Kind;
}

impl<T> ProbeDist for Probe<'_, DTask<T>> {
    type Kind = Dist<T>;
    fn __dtask_kind(&self) -> Dist<T> {
        Dist(PhantomData)
    }
}

/// Picked (one auto-reference later) for every other future.
pub trait ProbeLocal {
    /// [`Local`].
    type Kind;
    /// The kind of the await.
    fn __dtask_kind(&self) -> Self::Kind;
}

impl<F: Future> ProbeLocal for &Probe<'_, F> {
    type Kind = Local<F::Output>;
    fn __dtask_kind(&self) -> Local<F::Output> {
        Local(PhantomData)
    }
}

/// Connects a value to an inferred type.
pub fn tie<T>(_: &Ty<T>, _: &T) {}

/// The kinds of awaits.
pub trait Kind: Sized {
    /// The future awaited.
    type Fut;
    /// Whether awaits of this kind are saved.
    const DISTRIBUTED: bool;
}

impl<T: DeserializeOwned + Send + 'static> Kind for Dist<T> {
    type Fut = DTask<T>;
    const DISTRIBUTED: bool = true;
}

impl<O> Kind for Local<O> {
    type Fut = NeverLocal<O>;
    const DISTRIBUTED: bool = false;
}

/// Stands for the future of a local await that a snapshot names (never built).
pub struct NeverLocal<O>(PhantomData<fn() -> O>);

impl<O> Future for NeverLocal<O> {
    type Output = O;
    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<O> {
        Poll::Pending
    }
}

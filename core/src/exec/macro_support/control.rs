//! The control flow a generated machine needs around its awaits: polling a point once,
//! parking until woken, and `for` loops whose remaining items are saved.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use serde::{Deserialize, Serialize};

/// Polls a point once and tells whether it is ready, so that the generated code can
/// save its frame before returning `Pending`.
pub fn poll_once<F: Future + Unpin>(f: &mut F) -> PollOnce<'_, F> {
    PollOnce(f)
}

/// See [`poll_once`].
pub struct PollOnce<'a, F>(&'a mut F);

impl<F: Future + Unpin> Future for PollOnce<'_, F> {
    type Output = Poll<F::Output>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(Pin::new(&mut *self.0).poll(cx))
    }
}

/// Returns `Pending` once, without waking: whoever made the point pending wakes the
/// machine (or nothing local can, and the step suspends).
pub fn park() -> Park {
    Park(false)
}

/// See [`park`].
pub struct Park(bool);

impl Future for Park {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            Poll::Pending
        }
    }
}

/// What a `for` loop with a distributed await in its body may iterate over.
#[diagnostic::on_unimplemented(
    message = "a `for` loop over `{Self}` cannot be saved across a distributed await in a #[dtask(snapshot)] function",
    label = "the loop's position is saved in the snapshot",
    note = "iterate over a range (`0..n`, `a..=b`) or an owned `Vec`/`VecDeque` (e.g. `.collect::<Vec<_>>()` first)"
)]
pub trait ForIter {
    /// The saved iterator.
    type State: Iterator;
    /// Starts the iteration.
    fn start(self) -> Self::State;
}

/// The iterator of a `for` loop with a distributed await in its body.
pub fn for_iter<I: ForIter>(items: I) -> I::State {
    items.start()
}

impl<T> ForIter for std::ops::Range<T>
where
    std::ops::Range<T>: Iterator,
{
    type State = Self;
    fn start(self) -> Self {
        self
    }
}

impl<T> ForIter for std::ops::RangeInclusive<T>
where
    std::ops::RangeInclusive<T>: Iterator,
{
    type State = Self;
    fn start(self) -> Self {
        self
    }
}

impl<T> ForIter for Vec<T> {
    type State = Items<T>;
    fn start(self) -> Items<T> {
        Items(self.into())
    }
}

impl<T> ForIter for VecDeque<T> {
    type State = Items<T>;
    fn start(self) -> Items<T> {
        Items(self)
    }
}

/// The remaining items of a `for` loop over an owned collection.
#[derive(Serialize, Deserialize)]
#[serde(transparent)]
pub struct Items<T>(VecDeque<T>);

impl<T> Iterator for Items<T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        self.0.pop_front()
    }
}

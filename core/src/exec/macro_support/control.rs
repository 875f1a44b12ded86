//! Polling a point of a generated machine once, and parking it until woken.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

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

//! Cancellation in a DTask's body: clean-up scopes (`DTask::cleanup`), races that cancel
//! their losers (`DTask::race`) and timeouts (`DTask::timeout`).

use std::ops::Range;
use std::task::{Context, Poll};
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::{fail_now, DTask, IntoDTask, Spec};
use crate::error::{Failure, FailureKind};
use crate::protocol::state::{Command, Seq};
use crate::step::{with, Exec};

impl DTask<()> {
    /// Awaits `task` in a **clean-up scope**: its awaits are exempt from the instance's
    /// cancellation, so a cancelled instance can still call children and wait for timers
    /// to undo what it did (compensation), and the children it starts are not cancelled
    /// with the instance.
    ///
    /// The rule: once an instance is cancelled, every distributed await it makes fails with
    /// a cancelled failure ([`Failure::is_cancelled`]) — except inside `DTask::cleanup`.
    /// Catch the failure where compensation is needed
    /// ([`Call::catch_failure`](super::Call::catch_failure)) and run the compensation in a
    /// clean-up scope; the instance still ends `Cancelled` when it returns. Outside of a
    /// cancelled instance, `cleanup(task)` is just `task`.
    ///
    /// ```
    /// use dtasks::{dtask, DTask};
    ///
    /// #[dtask]
    /// async fn charge(cents: u64) -> u64 { cents }
    /// #[dtask]
    /// async fn refund(cents: u64) -> u64 { cents }
    /// #[dtask]
    /// async fn ship() -> () {}
    ///
    /// #[dtask]
    /// async fn order(cents: u64) -> bool {
    ///     let charged = charge(cents).await;
    ///     match ship().catch_failure().await {
    ///         Ok(()) => true,
    ///         Err(f) if f.is_cancelled() => {
    ///             // Cancelled while shipping: give the money back, then end cancelled.
    ///             DTask::cleanup(refund(charged)).await;
    ///             false
    ///         }
    ///         Err(f) => panic!("{f}"),
    ///     }
    /// }
    /// ```
    pub fn cleanup<T, D>(task: D) -> DTask<T>
    where
        T: DeserializeOwned + Send + 'static,
        D: IntoDTask<Output = T>,
    {
        let mut inner = task.into_dtask();
        let spec = Spec::Cleanup(Box::new(inner.spec.clone()));
        DTask::from_future(
            std::future::poll_fn(move |cx| {
                with(|ex| ex.cancel.shield += 1);
                let polled = inner.poll_ordered(cx);
                with(|ex| ex.cancel.shield = ex.cancel.shield.saturating_sub(1));
                polled
            }),
            spec,
        )
    }

    /// [`DTask::when_any`] that **cancels the losers**: when the first of `tasks` finishes,
    /// the children the others started are cancelled (each gets a cancel record, reaching
    /// its own children too; the reason names the winner), and their results are dropped.
    ///
    /// `when_any` itself leaves its losers running, as it always did (instances already
    /// suspended in a `when_any` keep that meaning after an upgrade); choose `race` where
    /// a loser's work is wasted. A spawn handle given to `race` is not cancelled: it may
    /// still be awaited later.
    ///
    /// ```
    /// use dtasks::{dtask, DTask};
    ///
    /// #[dtask]
    /// async fn lookup(region: String) -> String { region }
    ///
    /// #[dtask]
    /// async fn nearest() -> String {
    ///     let (_, region) = DTask::race([lookup("eu".into()), lookup("us".into())]).await;
    ///     region
    /// }
    /// ```
    pub fn race<T, I>(tasks: I) -> DTask<(usize, T)>
    where
        T: DeserializeOwned + Send + 'static,
        I: IntoIterator,
        I::Item: IntoDTask<Output = T>,
    {
        let mut parts: Vec<DTask<T>> = tasks.into_iter().map(IntoDTask::into_dtask).collect();
        let spec = Spec::Race(parts.iter().map(|p| p.spec.clone()).collect());
        let mut done: Vec<Option<(Result<T, Failure>, u32)>> = parts.iter().map(|_| None).collect();
        let mut claimed: Vec<Option<Range<Seq>>> = parts.iter().map(|_| None).collect();
        DTask::from_future(
            std::future::poll_fn(move |cx| {
                if parts.is_empty() {
                    fail_now(Failure::new(
                        FailureKind::Misuse,
                        "DTask::race of no tasks can never finish",
                    ));
                    return Poll::Pending;
                }
                for ((part, slot), range) in parts.iter_mut().zip(&mut done).zip(&mut claimed) {
                    if slot.is_none() {
                        if let Poll::Ready(v) = poll_claiming(range, |cx| part.poll_settled(cx), cx)
                        {
                            *slot = Some(v);
                        }
                    }
                }
                let winner = done
                    .iter()
                    .enumerate()
                    .filter_map(|(i, s)| s.as_ref().map(|(_, o)| (*o, i)))
                    .min();
                let Some((order, i)) = winner else {
                    return Poll::Pending;
                };
                with(|ex| {
                    let reason = format!(
                        "lost DTask::race to part {i}{}",
                        named(ex, claimed[i].as_ref())
                    );
                    for (j, range) in claimed.iter().enumerate() {
                        if j != i {
                            cancel_started(ex, range.clone().into_iter().flatten(), &reason);
                        }
                    }
                });
                match done[i].take().expect("the winner is done") {
                    (Ok(v), _) => Poll::Ready(((i, v), order)),
                    (Err(f), _) => {
                        fail_now(f);
                        Poll::Pending
                    }
                }
            }),
            spec,
        )
    }

    /// Awaits `task` for at most `duration` (a durable timer): `Ok(value)` when the task
    /// finishes first; `Err(failure)` with [`Failure::is_timeout`] when the time is up
    /// first, and then the children the task started are cancelled (as a
    /// [`race`](DTask::race)'s losers are). A failure of the task itself fails the
    /// instance as an awaited child's does (await `call.catch_failure()` to get it as a
    /// value).
    ///
    /// ```
    /// use std::time::Duration;
    /// use dtasks::{dtask, DTask};
    ///
    /// #[dtask]
    /// async fn approve(order: u64) -> bool { order % 2 == 0 }
    ///
    /// #[dtask]
    /// async fn checkout(order: u64) -> bool {
    ///     match DTask::timeout(Duration::from_secs(3600), approve(order)).await {
    ///         Ok(approved) => approved,
    ///         Err(f) if f.is_timeout() => false,
    ///         Err(f) => panic!("{f}"),
    ///     }
    /// }
    /// ```
    pub fn timeout<T, D>(duration: Duration, task: D) -> DTask<Result<T, Failure>>
    where
        T: DeserializeOwned + Send + 'static,
        D: IntoDTask<Output = T>,
    {
        let mut task = task.into_dtask();
        let mut delay = DTask::delay(duration);
        let spec = Spec::Timeout(Box::new(task.spec.clone()));
        let mut task_done: Option<(Result<T, Failure>, u32)> = None;
        let mut delay_done: Option<u32> = None;
        let mut claimed: Option<Range<Seq>> = None;
        DTask::from_future(
            std::future::poll_fn(move |cx| {
                if task_done.is_none() {
                    if let Poll::Ready(v) =
                        poll_claiming(&mut claimed, |cx| task.poll_settled(cx), cx)
                    {
                        task_done = Some(v);
                    }
                }
                if delay_done.is_none() {
                    if let Poll::Ready((_, order)) = delay.poll_ordered(cx) {
                        delay_done = Some(order);
                    }
                }
                let task_first = match (&task_done, delay_done) {
                    (Some((_, t)), Some(d)) => *t < d,
                    (Some(_), None) => true,
                    (None, Some(_)) => false,
                    (None, None) => return Poll::Pending,
                };
                if task_first {
                    return match task_done.take().expect("the task is done") {
                        (Ok(v), order) => Poll::Ready((Ok(v), order)),
                        (Err(f), _) => {
                            fail_now(f);
                            Poll::Pending
                        }
                    };
                }
                let failure = timed_out(duration);
                with(|ex| {
                    let seqs = claimed.clone().into_iter().flatten();
                    cancel_started(ex, seqs, failure.message());
                });
                Poll::Ready((Err(failure), delay_done.unwrap_or(0)))
            }),
            spec,
        )
    }
}

/// The failure of a timeout of `duration`.
pub(crate) fn timed_out(duration: Duration) -> Failure {
    Failure::new(
        FailureKind::Timeout,
        format!("timed out after {} ms", duration.as_millis()),
    )
}

/// Polls a part, noting on its first poll the positions it claimed.
pub(super) fn poll_claiming<R>(
    range: &mut Option<Range<Seq>>,
    poll: impl FnOnce(&mut Context<'_>) -> Poll<R>,
    cx: &mut Context<'_>,
) -> Poll<R> {
    if range.is_some() {
        return poll(cx);
    }
    let start = with(|ex| ex.next_seq);
    let polled = poll(cx);
    *range = Some(start..with(|ex| ex.next_seq));
    polled
}

/// Cancels the children at `seqs` that this instance started itself (not spawned ones)
/// and that are still running, each with a cancel record of its own.
pub(crate) fn cancel_started(ex: &mut Exec, seqs: impl IntoIterator<Item = Seq>, reason: &str) {
    for seq in seqs {
        if ex.started_here(seq) {
            ex.cancel_op(seq, reason, true);
        }
    }
}

/// ` (child <id>)` when the positions of a winning part are one child call.
pub(crate) fn named(ex: &Exec, seqs: Option<&Range<Seq>>) -> String {
    match seqs {
        Some(r) if r.len() == 1 => match ex.entry(r.start).map(|e| &e.cmd) {
            Some(Command::Child { name, .. }) => {
                format!(" (`{name}`, {})", ex.instance.child(r.start))
            }
            _ => String::new(),
        },
        _ => String::new(),
    }
}

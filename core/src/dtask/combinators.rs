//! The combinators over DTasks (`when_all`, `when_any`, `join`, `map`), catching a leaf's
//! failure, and `DTask::run`, the journaled local side effect.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{fail_now, DTask, IntoDTask, Leaf, LeafOp, Spec};
use crate::error::{Failure, FailureKind};
use crate::protocol::codec::{decode_value, encode_value};
use crate::protocol::state::{Command, Seq};
use crate::step::with;

impl<T: DeserializeOwned + Send + 'static> DTask<T> {
    /// Maps the result with `f`, which runs locally in the awaiting instance (it must be
    /// deterministic, like all code between distributed awaits in the replay model).
    pub fn map<U, F>(mut self, f: F) -> DTask<U>
    where
        U: Send + 'static,
        F: FnOnce(T) -> U + Send + 'static,
    {
        let mut f = Some(f);
        DTask::from_future(
            std::future::poll_fn(move |cx| {
                self.poll_ordered(cx).map(|(v, order)| {
                    let f = f.take().expect("DTask::map polled after completion");
                    (f(v), order)
                })
            }),
            Spec::Unsaveable("`DTask::map`"),
        )
    }
}

impl<T: DeserializeOwned + Send + 'static> DTask<T> {
    /// A leaf operation whose failure is a value: see [`Call::catch_failure`](super::Call::catch_failure).
    pub(super) fn catch_leaf(op: LeafOp) -> DTask<Result<T, Failure>> {
        let mut leaf = Leaf::new(op);
        leaf.catch = true;
        let spec = Spec::of_leaf(&leaf.op, true);
        DTask::from_future(
            std::future::poll_fn(move |_| {
                leaf.poll_raw().map(|(r, order)| {
                    let r = r.and_then(|bytes| {
                        decode_value::<T>(&bytes).map_err(|e| {
                            Failure::new(
                                FailureKind::BadInput,
                                format!("a result does not decode: {e}"),
                            )
                        })
                    });
                    (r.map_err(|f| leaf.child_failure(&f)), order)
                })
            }),
            spec,
        )
    }
}

impl DTask<()> {
    /// Awaits all of `tasks` concurrently and returns their results in order.
    ///
    /// Each child runs as its own instance, possibly in other workers; their replies are
    /// merged into the awaiting instance's durable state one at a time. For mixed result
    /// types use [`DTask::join`].
    pub fn when_all<T, I>(tasks: I) -> DTask<Vec<T>>
    where
        T: DeserializeOwned + Send + 'static,
        I: IntoIterator,
        I::Item: IntoDTask<Output = T>,
    {
        let mut parts: Vec<DTask<T>> = tasks.into_iter().map(IntoDTask::into_dtask).collect();
        let spec = Spec::All(parts.iter().map(|p| p.spec.clone()).collect());
        let mut done: Vec<Option<(T, u32)>> = parts.iter().map(|_| None).collect();
        DTask::from_future(
            std::future::poll_fn(move |cx| {
                let mut all = true;
                for (part, slot) in parts.iter_mut().zip(done.iter_mut()) {
                    if slot.is_none() {
                        match part.poll_ordered(cx) {
                            Poll::Ready(v) => *slot = Some(v),
                            Poll::Pending => all = false,
                        }
                    }
                }
                if !all {
                    return Poll::Pending;
                }
                let mut order = 0;
                let values = done
                    .drain(..)
                    .map(|slot| {
                        let (v, o) = slot.expect("every part is done");
                        order = order.max(o);
                        v
                    })
                    .collect();
                Poll::Ready((values, order))
            }),
            spec,
        )
    }

    /// Awaits the first of `tasks` to finish and returns its index and result.
    ///
    /// "First" is the first result recorded in the instance's journal, so the choice is
    /// the same on every replay. A child call that failed first fails the instance like
    /// an awaited child; one that failed after the winner is a loser like any other. The
    /// others are **not cancelled**: they run to completion
    /// and their results are recorded and dropped. To await one of them later, spawn it
    /// with [`DTask::spawn`] and pass its handle (`handle.into_future()`) here instead.
    ///
    /// An empty `tasks` fails the instance with a misuse error.
    pub fn when_any<T, I>(tasks: I) -> DTask<(usize, T)>
    where
        T: DeserializeOwned + Send + 'static,
        I: IntoIterator,
        I::Item: IntoDTask<Output = T>,
    {
        let mut parts: Vec<DTask<T>> = tasks.into_iter().map(IntoDTask::into_dtask).collect();
        let spec = Spec::Any(parts.iter().map(|p| p.spec.clone()).collect());
        let mut done: Vec<Option<(Result<T, Failure>, u32)>> = parts.iter().map(|_| None).collect();
        DTask::from_future(
            std::future::poll_fn(move |cx| {
                if parts.is_empty() {
                    fail_now(Failure::new(
                        FailureKind::Misuse,
                        "DTask::when_any of no tasks can never finish",
                    ));
                    return Poll::Pending;
                }
                for (part, slot) in parts.iter_mut().zip(done.iter_mut()) {
                    if slot.is_none() {
                        if let Poll::Ready(v) = part.poll_settled(cx) {
                            *slot = Some(v);
                        }
                    }
                }
                // The first recorded result wins, a failure included; a child that failed
                // after the winner (even when both are merged in the same step) is a loser
                // like any other.
                let winner = done
                    .iter()
                    .enumerate()
                    .filter_map(|(i, s)| s.as_ref().map(|(_, o)| (*o, i)))
                    .min();
                if let Some((_, w)) = winner {
                    for (j, part) in parts.iter().enumerate() {
                        if j != w && done[j].is_none() {
                            part.retire();
                        }
                    }
                }
                match winner {
                    Some((order, i)) => match done[i].take().expect("winner is done") {
                        (Ok(v), _) => Poll::Ready(((i, v), order)),
                        (Err(f), _) => {
                            fail_now(f);
                            Poll::Pending
                        }
                    },
                    None => Poll::Pending,
                }
            }),
            spec,
        )
    }

    /// Awaits a tuple of DTasks of mixed result types concurrently: the tuple form of
    /// [`DTask::when_all`]. Tuples of 2 to 6 DTasks are supported.
    pub fn join<J: Join>(tasks: J) -> DTask<J::Output> {
        tasks.into_dtask()
    }

    /// Runs a local side effect once and records its result; replays return the recorded
    /// result without running `f` again.
    ///
    /// The effect runs in the worker executing the step. If that worker crashes before the
    /// instance's next suspension is durable, the effect runs again (at least once).
    pub fn run<T, F, Fut>(f: F) -> DTask<T>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T> + Send + 'static,
    {
        let mut f = Some(f);
        let mut fut: Option<Pin<Box<Fut>>> = None;
        let mut seq: Option<Seq> = None;
        DTask::from_future(
            std::future::poll_fn(move |cx| {
                let s = match seq {
                    Some(s) => s,
                    None => match with(|ex| ex.claim(Command::Run)) {
                        Some(s) => {
                            seq = Some(s);
                            s
                        }
                        None => return Poll::Pending,
                    },
                };
                if fut.is_none() {
                    if let Some((recorded, order)) = with(|ex| ex.result(s)) {
                        let decoded = recorded
                            .map_err(|f| f.to_string())
                            .and_then(|b| decode_value::<T>(&b));
                        return match decoded {
                            Ok(v) => Poll::Ready((v, order)),
                            Err(e) => {
                                fail_now(Failure::new(
                                    FailureKind::BadInput,
                                    format!(
                                    "the recorded result of DTask::run at {s} does not decode: {e}"
                                ),
                                ));
                                Poll::Pending
                            }
                        };
                    }
                    let make = f.take().expect("DTask::run polled after completion");
                    fut = Some(Box::pin(make()));
                }
                let Some(running) = fut.as_mut() else {
                    return Poll::Pending;
                };
                match running.as_mut().poll(cx) {
                    Poll::Ready(v) => match encode_value(&v) {
                        Ok(bytes) => {
                            let order = with(|ex| ex.record_local(s, bytes));
                            fut = None;
                            Poll::Ready((v, order))
                        }
                        Err(e) => {
                            fail_now(Failure::new(
                                FailureKind::BadInput,
                                format!("the result of DTask::run cannot be encoded: {e}"),
                            ));
                            Poll::Pending
                        }
                    },
                    Poll::Pending => Poll::Pending,
                }
            }),
            Spec::Claim { catch: false },
        )
    }
}

/// Tuples of DTasks that [`DTask::join`] awaits together.
pub trait Join: sealed::Sealed {
    /// The tuple of results.
    type Output;
    #[doc(hidden)]
    fn into_dtask(self) -> DTask<Self::Output>;
}

mod sealed {
    pub trait Sealed {}
}

macro_rules! impl_join {
    ($($t:ident $v:ident $s:ident),+) => {
        impl<$($t: IntoDTask),+> sealed::Sealed for ($($t,)+) {}
        impl<$($t: IntoDTask),+> Join for ($($t,)+) {
            type Output = ($($t::Output,)+);
            fn into_dtask(self) -> DTask<Self::Output> {
                let ($($v,)+) = self;
                $(let mut $v = $v.into_dtask();)+
                let spec = Spec::All(vec![$($v.spec.clone()),+]);
                $(let mut $s: Option<($t::Output, u32)> = None;)+
                DTask::from_future(std::future::poll_fn(move |cx| {
                    let mut all = true;
                    $(
                        if $s.is_none() {
                            match $v.poll_ordered(cx) {
                                Poll::Ready(r) => $s = Some(r),
                                Poll::Pending => all = false,
                            }
                        }
                    )+
                    if !all {
                        return Poll::Pending;
                    }
                    let mut order = 0;
                    let out = ($({
                        let (r, o) = $s.take().expect("part is done");
                        order = order.max(o);
                        r
                    },)+);
                    Poll::Ready((out, order))
                }), spec)
            }
        }
    };
}

impl_join!(A a sa, B b sb);
impl_join!(A a sa, B b sb, C c sc);
impl_join!(A a sa, B b sb, C c sc, D d sd);
impl_join!(A a sa, B b sb, C c sc, D d sd, E e se);
impl_join!(A a sa, B b sb, C c sc, D d sd, E e se, F f sf);

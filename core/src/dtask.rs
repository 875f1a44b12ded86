//! The [`DTask`] type and its operations.

use std::borrow::Cow;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::codec::{decode_value, encode_value};
use crate::context::{with, Exec};
use crate::error::{Failure, FailureKind};
use crate::snapshot::{Shape, Spec};
use crate::state::{stable_hash, to_millis, Command, InstanceId, Seq};

type OrderedFuture<T> = Pin<Box<dyn Future<Output = (T, u32)> + Send>>;

/// A distributed task: an awaitable whose await may suspend the calling instance and
/// resume it later, possibly in another process.
///
/// A `DTask<T>` is a description until it is awaited inside a `#[dtask]` function (or
/// spawned with [`DTask::spawn`], or started from outside with
/// [`Client::start`](crate::Client::start)). Calling a `#[dtask]` function returns one;
/// so do [`DTask::delay`], [`DTask::yield_now`], [`DTask::when_all`], [`DTask::when_any`],
/// [`DTask::join`] and [`DTask::run`].
///
/// Awaiting outside of a DTask panics with a message saying so: distributed operations
/// need the instance's journal.
#[must_use = "a DTask does nothing unless it is awaited, spawned or started"]
pub struct DTask<T> {
    kind: Kind<T>,
    /// The structure of a combinator, for saving it in a snapshot.
    spec: Spec,
}

enum Kind<T> {
    Op(Leaf, PhantomData<fn() -> T>),
    Ready(Option<T>),
    Future(OrderedFuture<T>),
}

// `DTask` never pins `T` in place: values are moved out of `Option`s and inner futures
// are boxed.
impl<T> Unpin for DTask<T> {}

impl<T> fmt::Debug for DTask<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Op(leaf, _) => f.debug_tuple("DTask").field(&leaf.op).finish(),
            Kind::Ready(_) => f.write_str("DTask(Ready)"),
            Kind::Future(_) => f.write_str("DTask(Combinator)"),
        }
    }
}

pub(crate) struct Leaf {
    pub(crate) op: LeafOp,
    seq: Option<Seq>,
    catch: bool,
}

pub(crate) enum LeafOp {
    Child {
        name: Cow<'static, str>,
        input: Result<Vec<u8>, String>,
    },
    Delay(Duration),
    DelayUntil(SystemTime),
    Yield,
    Handle {
        instance: InstanceId,
        seq: Seq,
    },
}

impl fmt::Debug for LeafOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeafOp::Child { name, .. } => write!(f, "call `{name}`"),
            LeafOp::Delay(d) => write!(f, "delay {d:?}"),
            LeafOp::DelayUntil(t) => write!(f, "delay until {t:?}"),
            LeafOp::Yield => f.write_str("yield"),
            LeafOp::Handle { seq, .. } => write!(f, "spawned operation {seq}"),
        }
    }
}

impl Spec {
    fn of_leaf(op: &LeafOp, catch: bool) -> Self {
        match op {
            LeafOp::Handle { seq, .. } => Spec::Handle { seq: *seq, catch },
            _ => Spec::Claim { catch },
        }
    }
}

impl Leaf {
    fn new(op: LeafOp) -> Self {
        Self {
            op,
            seq: None,
            catch: false,
        }
    }

    /// Takes this operation's journal position, issuing its command when new.
    fn claim(&mut self, ex: &mut Exec) -> Option<Seq> {
        if let Some(seq) = self.seq {
            return Some(seq);
        }
        let cmd = match &mut self.op {
            LeafOp::Child { name, input } => match input {
                Ok(bytes) => {
                    let seq = ex.claim_child(name, stable_hash(bytes))?;
                    if seq as usize >= ex.replayed {
                        ex.child_inputs.insert(seq, std::mem::take(bytes));
                    }
                    self.seq = Some(seq);
                    return Some(seq);
                }
                Err(e) => {
                    let msg = format!("the input of a call to `{name}` cannot be encoded: {e}");
                    ex.fail(Failure::new(FailureKind::BadInput, msg));
                    return None;
                }
            },
            LeafOp::Delay(d) => Command::Delay {
                millis: d.as_millis().min(u128::from(u64::MAX)) as u64,
                fire_at_ms: to_millis(ex.issue_time() + *d),
            },
            LeafOp::DelayUntil(t) => Command::DelayUntil {
                at_ms: to_millis(*t),
            },
            LeafOp::Yield => Command::Yield,
            LeafOp::Handle { instance, seq } => {
                let valid = *instance == ex.instance
                    && ex.entry(*seq).is_some_and(|e| e.cmd.is_distributed());
                if !valid {
                    let msg = format!(
                        "a spawn handle of instance `{instance}` (operation {seq}) was awaited in \
                         instance `{}`; handles can only be awaited by the instance that spawned them",
                        ex.instance
                    );
                    ex.fail(Failure::new(FailureKind::Misuse, msg));
                    return None;
                }
                self.seq = Some(*seq);
                return Some(*seq);
            }
        };
        let seq = ex.claim(cmd)?;
        self.seq = Some(seq);
        Some(seq)
    }

    fn poll_raw(&mut self) -> Poll<(Result<Vec<u8>, Failure>, u32)> {
        with(|ex| {
            if ex.failure.is_some() {
                return Poll::Pending;
            }
            let Some(seq) = self.claim(ex) else {
                return Poll::Pending;
            };
            match ex.result(seq) {
                Some(r) => Poll::Ready(r),
                None => {
                    ex.blocked += 1;
                    Poll::Pending
                }
            }
        })
    }

    fn child_failure(&self, f: &Failure) -> Failure {
        let what = match &self.op {
            LeafOp::Child { name, .. } => format!("`{name}`"),
            other => format!("{other:?}"),
        };
        let child = with(|ex| self.seq.map(|s| ex.instance.child(s).to_string()));
        Failure::new(
            FailureKind::ChildFailed,
            format!(
                "child {what} ({}) failed: {f}",
                child.as_deref().unwrap_or("?")
            ),
        )
    }
}

fn fail_now(failure: Failure) {
    with(|ex| ex.fail(failure));
}

impl<T: DeserializeOwned + Send + 'static> DTask<T> {
    /// Polls for the value and the order in which its result was recorded; a failed
    /// child fails the instance.
    pub(crate) fn poll_ordered(&mut self, cx: &mut Context<'_>) -> Poll<(T, u32)> {
        match self.poll_settled(cx) {
            Poll::Ready((Ok(v), order)) => Poll::Ready((v, order)),
            Poll::Ready((Err(f), _)) => {
                fail_now(f);
                Poll::Pending
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// Like `poll_ordered`, but a failed child call is returned with its order instead of
    /// failing the instance at once, so that a race can tell whether it failed before or
    /// after the winner. A failure inside a combinator still fails the instance at once.
    fn poll_settled(&mut self, cx: &mut Context<'_>) -> Poll<(Result<T, Failure>, u32)> {
        match &mut self.kind {
            Kind::Op(leaf, _) => match leaf.poll_raw() {
                Poll::Ready((Err(f), order)) => Poll::Ready((Err(leaf.child_failure(&f)), order)),
                Poll::Ready((Ok(bytes), order)) => match decode_value::<T>(&bytes) {
                    Ok(v) => Poll::Ready((Ok(v), order)),
                    Err(e) => {
                        fail_now(Failure::new(
                            FailureKind::BadInput,
                            format!(
                                "the result of {:?} does not decode as {}: {e}",
                                leaf.op,
                                std::any::type_name::<T>()
                            ),
                        ));
                        Poll::Pending
                    }
                },
                Poll::Pending => Poll::Pending,
            },
            Kind::Ready(v) => match v.take() {
                Some(v) => Poll::Ready((Ok(v), 0)),
                None => panic!("a DTask was polled after it completed"),
            },
            Kind::Future(f) => f.as_mut().poll(cx).map(|(v, order)| (Ok(v), order)),
        }
    }
}

impl<T: DeserializeOwned + Send + 'static> Future for DTask<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        self.get_mut().poll_ordered(cx).map(|(v, _)| v)
    }
}

impl<T> DTask<T> {
    pub(crate) fn call(name: Cow<'static, str>, input: Result<Vec<u8>, String>) -> Self {
        Self::op(LeafOp::Child { name, input })
    }

    fn op(op: LeafOp) -> Self {
        let spec = Spec::of_leaf(&op, false);
        Self {
            kind: Kind::Op(Leaf::new(op), PhantomData),
            spec,
        }
    }

    /// How this DTask, pending after its first poll, is written into a snapshot:
    /// `first..end` are the positions its first poll claimed.
    pub(crate) fn shape(&self, first: Seq, end: Seq) -> Result<Shape, String> {
        match &self.kind {
            Kind::Op(leaf, _) => match leaf.seq {
                Some(seq) => Ok(Shape::Op { seq, catch: false }),
                None => Err("the operation was not issued".to_string()),
            },
            Kind::Ready(_) => Err("`DTask::ready` is complete at once".to_string()),
            Kind::Future(_) => {
                let mut next = first;
                let shape = self.spec.assign(&mut next)?;
                if next != end {
                    return Err(format!(
                        "the combinator claimed positions {first}..{end} but its structure \
                         has {} operations",
                        next - first
                    ));
                }
                Ok(shape)
            }
        }
    }

    /// The DTask name and encoded input, when this is a call of a `#[dtask]` function.
    pub(crate) fn into_call(self) -> Option<(String, Result<Vec<u8>, String>)> {
        match self.kind {
            Kind::Op(
                Leaf {
                    op: LeafOp::Child { name, input },
                    seq: None,
                    ..
                },
                _,
            ) => Some((name.into_owned(), input)),
            _ => None,
        }
    }

    fn from_future<F>(f: F, spec: Spec) -> Self
    where
        F: Future<Output = (T, u32)> + Send + 'static,
    {
        Self {
            kind: Kind::Future(Box::pin(f)),
            spec,
        }
    }
}

impl DTask<()> {
    /// A durable timer: suspends the instance for `duration`, then resumes it (possibly in
    /// another process). Survives restarts of workers and of the broker.
    ///
    /// The fire time is fixed when the delay is first awaited: `duration` after that moment,
    /// by the transport's clock (local work earlier in the same step does not shorten it);
    /// replays reuse it.
    pub fn delay(duration: Duration) -> DTask<()> {
        DTask::op(LeafOp::Delay(duration))
    }

    /// A durable timer that fires at `deadline` (at once when it has passed).
    pub fn delay_until(deadline: SystemTime) -> DTask<()> {
        DTask::op(LeafOp::DelayUntil(deadline))
    }

    /// Suspends the instance and resumes it at once, possibly in another worker. Use it to
    /// checkpoint long computations or let other instances run.
    pub fn yield_now() -> DTask<()> {
        DTask::op(LeafOp::Yield)
    }
}

impl<T: Send + 'static> DTask<T> {
    /// A DTask that is complete with `value` (useful with the combinators).
    pub fn ready(value: T) -> DTask<T> {
        DTask {
            kind: Kind::Ready(Some(value)),
            spec: Spec::Unsaveable("`DTask::ready`"),
        }
    }
}

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

    /// Turns a failure of this operation (a child that panicked, was non-deterministic,
    /// ...) into an `Err` value instead of failing the awaiting instance.
    ///
    /// Applies to a child call, a delay or a spawn handle. On a combinator it fails the
    /// instance with a misuse error: catch each part before combining instead, e.g.
    /// `DTask::when_all(items.map(|i| ship(i).catch_failure()))`.
    pub fn catch_failure(self) -> DTask<Result<T, Failure>> {
        match self.kind {
            Kind::Op(mut leaf, _) => {
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
            Kind::Ready(v) => DTask {
                kind: Kind::Ready(v.map(Ok)),
                spec: Spec::Unsaveable("`DTask::ready`"),
            },
            Kind::Future(_) => DTask::from_future(
                std::future::poll_fn(|_| {
                    fail_now(Failure::new(
                        FailureKind::Misuse,
                        "catch_failure applies to a child call, a delay or a spawn handle; \
                         catch each part before combining them",
                    ));
                    Poll::Pending
                }),
                Spec::Unsaveable("`catch_failure` of a combinator"),
            ),
        }
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
        I: IntoIterator<Item = DTask<T>>,
    {
        let mut parts: Vec<DTask<T>> = tasks.into_iter().collect();
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
        I: IntoIterator<Item = DTask<T>>,
    {
        let mut parts: Vec<DTask<T>> = tasks.into_iter().collect();
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
                    ex.spawned.extend(seq);
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
        impl<$($t),+> sealed::Sealed for ($(DTask<$t>,)+) {}
        impl<$($t: DeserializeOwned + Send + 'static),+> Join for ($(DTask<$t>,)+) {
            type Output = ($($t,)+);
            fn into_dtask(self) -> DTask<Self::Output> {
                let ($(mut $v,)+) = self;
                let spec = Spec::All(vec![$($v.spec.clone()),+]);
                $(let mut $s: Option<($t, u32)> = None;)+
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, UNIX_EPOCH};

    use crate::codec::{decode_value, encode_value};
    use crate::context::Exec;
    use crate::driver::{drive, StepEnd};
    use crate::error::{Failure, FailureKind};
    use crate::registry::{Registration, Run};
    use crate::state::{InstanceId, InstanceState, Outcome, ReplyTo};
    use crate::{dtask, DTask};

    #[dtask(name = "tests.any.leg")]
    async fn leg(x: u64) -> u64 {
        x
    }

    #[dtask(name = "tests.any.race")]
    async fn race() -> (usize, u64) {
        DTask::when_any([leg(1), leg(2)]).await
    }

    /// Runs `tests.any.race` to its suspension on both legs, records `first` and then
    /// `second` (by leg index) before driving it again — both merged in one step — and
    /// returns how that step ended.
    async fn race_with(results: [(usize, Outcome); 2]) -> StepEnd {
        let reg = inventory::iter::<Registration>
            .into_iter()
            .find(|r| r.name == "tests.any.race")
            .expect("registered");
        let Run::Replay(run) = reg.run else {
            panic!("a replay DTask")
        };
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut state = InstanceState::new(
            InstanceId::new("race").expect("valid"),
            "tests.any.race".into(),
            encode_value(&()).expect("encodes"),
            ReplyTo::Root,
        );
        for round in 0..2 {
            let mut body = run(&state.input).expect("starts");
            let exec = Arc::new(Mutex::new(Exec::new(
                state.id.clone(),
                std::mem::take(&mut state.journal),
                state.recorded,
                now,
            )));
            let end = drive(&mut body, &exec).await;
            drop(body);
            {
                let mut ex = exec.lock().unwrap_or_else(|p| p.into_inner());
                state.journal = std::mem::take(&mut ex.journal);
                state.recorded = ex.recorded;
            }
            if round == 1 {
                return end;
            }
            assert!(matches!(end, StepEnd::Suspended));
            let open = state.outstanding_seqs();
            assert_eq!(open.len(), 2, "both legs outstanding");
            for (leg, outcome) in results.clone() {
                assert!(state.record(open[leg], outcome));
            }
        }
        unreachable!()
    }

    fn failed() -> Outcome {
        Outcome::Failed(Failure::new(FailureKind::Panic, "leg broke"))
    }

    #[tokio::test]
    async fn a_loser_that_failed_after_the_winner_in_the_same_step_is_a_loser() {
        let end = race_with([
            (1, Outcome::Ok(encode_value(&20u64).expect("encodes"))),
            (0, failed()),
        ])
        .await;
        match end {
            StepEnd::Completed(bytes) => {
                assert_eq!(
                    decode_value::<(usize, u64)>(&bytes).expect("decodes"),
                    (1, 20)
                );
            }
            other => panic!("expected the winner's result, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_failure_recorded_first_wins_the_race_and_fails_the_instance() {
        let end = race_with([
            (0, failed()),
            (1, Outcome::Ok(encode_value(&20u64).expect("encodes"))),
        ])
        .await;
        match end {
            StepEnd::Failed(f) => {
                assert!(f.is_child_failure(), "{f}");
                assert!(f.message().contains("leg broke"), "{f}");
            }
            other => panic!("expected the first leg's failure, got {other:?}"),
        }
    }
}

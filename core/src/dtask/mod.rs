//! The [`DTask`] type: its leaf operations (child calls, timers, yields, spawn handles)
//! here, the combinators and `run` in [`combinators`], `spawn` and its handle in
//! [`spawn`], retries in [`retry`], and the structure a snapshot saves in [`spec`].

mod call;
mod cancel;
mod combinators;
mod evolve;
mod external;
mod retry;
mod spawn;
mod spec;

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use serde::de::DeserializeOwned;

pub use call::{Call, IntoDTask};
pub(crate) use cancel::{cancel_started, named, timed_out};
pub use combinators::Join;
pub(crate) use external::within_reason;
pub use external::ResumeToken;
pub use retry::{RetryCall, RetryPolicy};
pub use spawn::SpawnHandle;
pub(crate) use spec::Spec;

use crate::error::{Failure, FailureKind};
use crate::protocol::codec::decode_value;
use crate::protocol::state::{stable_hash, to_millis, Command, InstanceId, Seq, Shape};
use crate::step::{with, Exec};

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
    /// Wait for the next external event named `name`.
    Event(Cow<'static, str>),
}

impl fmt::Debug for LeafOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeafOp::Child { name, .. } => write!(f, "call `{name}`"),
            LeafOp::Delay(d) => write!(f, "delay {d:?}"),
            LeafOp::DelayUntil(t) => write!(f, "delay until {t:?}"),
            LeafOp::Yield => f.write_str("yield"),
            LeafOp::Handle { seq, .. } => write!(f, "spawned operation {seq}"),
            LeafOp::Event(name) => write!(f, "event `{name}`"),
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
                        ex.note_child(seq);
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
            LeafOp::Delay(d) if *d > DTask::MAX_DELAY => {
                let msg = format!(
                    "a delay of {d:?} is longer than the longest supported, DTask::MAX_DELAY \
                     (100 years)"
                );
                ex.fail(Failure::new(FailureKind::LimitExceeded, msg));
                return None;
            }
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
            LeafOp::Event(name) => {
                let seq = ex.claim(Command::Event {
                    name: name.to_string(),
                })?;
                // An event received before the wait is taken at once.
                ex.take_event(seq, name);
                self.seq = Some(seq);
                return Some(seq);
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
            if let Some(r) = ex.result(seq) {
                return Poll::Ready(r);
            }
            // Cancelled: an await outside a clean-up scope fails now, and its result is
            // recorded as that failure (replays see the same).
            if let Some(reason) = ex.cancelling() {
                ex.cancel_op(seq, &reason, false);
                if let Some(r) = ex.result(seq) {
                    return Poll::Ready(r);
                }
            }
            ex.blocked += 1;
            Poll::Pending
        })
    }

    fn child_failure(&self, f: &Failure) -> Failure {
        if f.is_cancelled() {
            // Distinct and matchable, with the reason as given.
            return f.clone();
        }
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
                        let what = match &leaf.op {
                            LeafOp::Event(name) => format!("the value of event `{name}`"),
                            op => format!("the result of {op:?}"),
                        };
                        fail_now(Failure::new(
                            FailureKind::BadInput,
                            format!(
                                "{what} does not decode as {}: {e}",
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

    /// A wait for an event that lost a race is retired, so that later events of its name
    /// go to the next wait.
    pub(crate) fn retire(&self) {
        if let Kind::Op(
            Leaf {
                op: LeafOp::Event(_),
                seq: Some(seq),
                ..
            },
            _,
        ) = &self.kind
        {
            with(|ex| ex.retire_wait(*seq));
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
    /// The longest [`DTask::delay`]: 100 years (of 365.25 days). A longer one fails the
    /// instance at the await with [`Failure::is_limit_exceeded`].
    pub const MAX_DELAY: Duration = Duration::from_secs(36_525 * 86_400);

    /// A durable timer: suspends the instance for `duration`, then resumes it (possibly in
    /// another process). Survives restarts of workers and of the broker.
    ///
    /// The fire time is fixed when the delay is first awaited: `duration` after that moment,
    /// by the transport's clock (local work earlier in the same step does not shorten it);
    /// replays reuse it. A `duration` past [`DTask::MAX_DELAY`] fails the instance with
    /// [`Failure::is_limit_exceeded`].
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

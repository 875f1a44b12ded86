//! The snapshot execution model: `#[dtask(snapshot)]` functions compiled into explicit,
//! serializable state machines.
//!
//! The macro turns the body into one async block that can start at the top or at any of
//! its distributed awaits ("points"). While the block is pending at a point, the point
//! writes a [`Frame`] into the step's context: its index, the locals the rest of the body
//! uses (serialized) and the pending operation as a [`Shape`] (journal positions, no
//! closures). When the step suspends, the engine keeps that frame in the instance state
//! ([`Snapshot`]) and drops the future. To resume, the generated run function decodes
//! the locals and starts the block at that point; the point reads its result from the
//! journal. Nothing is replayed, so no determinism is required and a resume costs the
//! same whatever the instance's history.
//!
//! Journal positions (`seq`) are shared with the replay model, so the messaging protocol
//! (ride-along continuation, mailbox merge by `seq`) is unchanged. Entries the machine no
//! longer needs are compacted at each suspension.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::SystemTime;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::context::{with, Exec, Saved};
use crate::driver::{drive, StepEnd};
use crate::error::{Failure, FailureKind};
use crate::registry::BodyFuture;
use crate::state::{Command, Entry, InstanceState, Outcome, Seq};
use crate::DTask;

/// The generated function that starts (`None`) or resumes a snapshot machine.
pub(crate) type SnapshotRunFn = fn(&[u8], Option<Resume<'_>>) -> Result<BodyFuture, Failure>;

/// The saved machine of a suspended snapshot-model instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Snapshot {
    /// The fingerprint of the function's code that saved it.
    pub(crate) fingerprint: u64,
    /// The index of the await the machine is suspended at.
    pub(crate) point: u32,
    /// The saved locals, in the order the generated code writes them.
    #[serde(with = "serde_bytes")]
    pub(crate) locals: Vec<u8>,
    /// The operation the await waits for.
    pub(crate) pending: Shape,
    /// The entries of spawned operations, kept beside the journal: their handles may be
    /// awaited at any time.
    pub(crate) pinned: Vec<(Seq, Entry)>,
}

/// What a point saves while it is pending.
#[derive(Debug)]
pub(crate) struct Frame {
    pub(crate) point: u32,
    pub(crate) locals: Vec<u8>,
    pub(crate) pending: Shape,
}

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
    /// Something a snapshot cannot hold (a closure, an unserializable value).
    Unsaveable(&'static str),
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
            Spec::Unsaveable(what) => {
                return Err(format!(
                    "it combines {what}, which a snapshot cannot hold; apply it after the await"
                ))
            }
        })
    }
}

/// A pending distributed operation as saved in a snapshot: journal positions only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Shape {
    /// One operation; with `catch`, a failure is a value (`catch_failure`).
    Op { seq: Seq, catch: bool },
    /// `when_all` / `join`: every part, as an array.
    All(Vec<Shape>),
    /// `when_any`: the part recorded first, as `(index, value)`.
    Any(Vec<Shape>),
}

impl Shape {
    fn seqs(&self, out: &mut Vec<Seq>) {
        match self {
            Shape::Op { seq, .. } => out.push(*seq),
            Shape::All(parts) | Shape::Any(parts) => parts.iter().for_each(|p| p.seqs(out)),
        }
    }
}

enum Eval {
    Pending,
    Ready(Vec<u8>, u32),
    Failed(Failure),
}

/// Evaluates a saved operation against the journal, like the live combinators do.
fn eval(shape: &Shape, ex: &mut Exec) -> Eval {
    match shape {
        Shape::Op { seq, catch } => {
            let Some(e) = ex
                .entry(*seq)
                .filter(|e| e.cmd.is_distributed() || e.cmd == Command::Run)
            else {
                return Eval::Failed(corrupt(format!(
                    "the snapshot waits on operation {seq}, which the journal does not hold"
                )));
            };
            let order = e.order;
            match &e.result {
                None => {
                    ex.blocked += 1;
                    Eval::Pending
                }
                Some(Outcome::Ok(bytes)) if *catch => Eval::Ready(wrap_ok(bytes), order),
                Some(Outcome::Ok(bytes)) => Eval::Ready(bytes.clone(), order),
                Some(Outcome::Failed(f)) => {
                    let what = match &e.cmd {
                        Command::Child { name, .. } => format!("`{name}`"),
                        other => other.to_string(),
                    };
                    let child = Failure::new(
                        FailureKind::ChildFailed,
                        format!("child {what} ({}) failed: {f}", ex.instance.child(*seq)),
                    );
                    if *catch {
                        Eval::Ready(wrap_err(&child), order)
                    } else {
                        Eval::Failed(child)
                    }
                }
            }
        }
        Shape::All(parts) => {
            let evals: Vec<Eval> = parts.iter().map(|p| eval(p, ex)).collect();
            let mut out = Vec::new();
            let _ = rmp::encode::write_array_len(&mut out, parts.len() as u32);
            let mut order = 0;
            let mut pending = false;
            for e in evals {
                match e {
                    Eval::Failed(f) => return Eval::Failed(f),
                    Eval::Pending => pending = true,
                    Eval::Ready(bytes, o) => {
                        order = order.max(o);
                        out.extend_from_slice(&bytes);
                    }
                }
            }
            if pending {
                Eval::Pending
            } else {
                Eval::Ready(out, order)
            }
        }
        Shape::Any(parts) => {
            if parts.is_empty() {
                return Eval::Failed(Failure::new(
                    FailureKind::Misuse,
                    "DTask::when_any of no tasks can never finish",
                ));
            }
            let mut winner: Option<(u32, usize, Vec<u8>)> = None;
            for (i, p) in parts.iter().enumerate() {
                match eval(p, ex) {
                    Eval::Failed(f) => return Eval::Failed(f),
                    Eval::Pending => {}
                    Eval::Ready(bytes, o) => {
                        if winner.as_ref().is_none_or(|(wo, _, _)| o < *wo) {
                            winner = Some((o, i, bytes));
                        }
                    }
                }
            }
            match winner {
                Some((order, i, bytes)) => {
                    let mut out = Vec::new();
                    let _ = rmp::encode::write_array_len(&mut out, 2);
                    let _ = rmp::encode::write_uint(&mut out, i as u64);
                    out.extend_from_slice(&bytes);
                    Eval::Ready(out, order)
                }
                None => Eval::Pending,
            }
        }
    }
}

/// `Ok(value)` around an encoded value, as serde encodes `Result` in MessagePack.
fn wrap_ok(bytes: &[u8]) -> Vec<u8> {
    let mut out = crate::codec::encode_value(&Ok::<(), ()>(())).unwrap_or_default();
    out.pop(); // the encoded `()`
    out.extend_from_slice(bytes);
    out
}

fn wrap_err(f: &Failure) -> Vec<u8> {
    crate::codec::encode_value(&Err::<(), &Failure>(f)).unwrap_or_default()
}

fn corrupt(msg: String) -> Failure {
    Failure::new(
        FailureKind::BadInput,
        format!("corrupt snapshot state: {msg}"),
    )
}

/// Runs one step of a snapshot-model instance: resumes its machine (or starts it), drives
/// it to quiescence and, when it suspends, saves the machine into `state.snapshot` and
/// compacts the journal. Returns how the step ended, the first position it issued and
/// the inputs of the children it called.
pub(crate) async fn run_step(
    run: SnapshotRunFn,
    fingerprint: u64,
    accepts: &[u64],
    state: &mut InstanceState,
    now: SystemTime,
    clock: Option<crate::context::Clock>,
) -> (StepEnd, usize, HashMap<Seq, Vec<u8>>) {
    let first_new = state.next_seq() as usize;
    let fail = |f: Failure| (StepEnd::Failed(f), first_new, HashMap::new());
    let mut snapshot = state.snapshot.take();
    let mut pinned = Vec::new();
    let body = match &mut snapshot {
        None => run(&state.input, None),
        Some(s) => {
            if s.fingerprint != fingerprint && !accepts.contains(&s.fingerprint) {
                return fail(Failure::new(
                    FailureKind::CodeChanged,
                    format!(
                        "instance `{}` of `{}` was suspended by code with fingerprint \
                         {:016x}, but this worker runs fingerprint {fingerprint:016x}: the \
                         function's code changed, so its saved state cannot be resumed \
                         safely. Finish such instances with the old build, or declare the \
                         new code compatible with \
                         #[dtask(snapshot, accepts = \"{:016x}\")] after checking that its \
                         awaits and saved locals are unchanged",
                        state.id, state.name, s.fingerprint, s.fingerprint
                    ),
                ));
            }
            let mut seqs = Vec::new();
            s.pending.seqs(&mut seqs);
            let known = |q: &Seq| {
                state.entry(*q).is_some_and(|e| e.cmd != Command::Compacted)
                    || s.pinned.iter().any(|(p, _)| p == q)
            };
            if let Some(bad) = seqs.iter().find(|q| !known(q)) {
                return fail(corrupt(format!(
                    "the snapshot waits on operation {bad}, which the journal does not hold"
                )));
            }
            pinned = std::mem::take(&mut s.pinned);
            run(
                &state.input,
                Some(Resume {
                    point: s.point,
                    locals: &s.locals,
                    pending: &s.pending,
                }),
            )
        }
    };
    let mut body = match body {
        Ok(b) => b,
        Err(f) => return fail(f),
    };
    let journal = std::mem::take(&mut state.journal);
    let mut exec = Exec::with_base(
        state.id.clone(),
        journal,
        state.base,
        true,
        state.recorded,
        now,
    );
    exec.pinned = pinned;
    exec.clock = clock;
    let exec = Arc::new(Mutex::new(exec));
    let end = drive(&mut body, &exec).await;
    let mut ex = exec.lock().unwrap_or_else(|p| p.into_inner());
    state.journal = std::mem::take(&mut ex.journal);
    state.recorded = ex.recorded;
    let mut pinned = std::mem::take(&mut ex.pinned);
    // Spawned operations move beside the journal, which can then be compacted freely.
    for seq in std::mem::take(&mut ex.spawned) {
        let i = seq.checked_sub(state.base).map(|i| i as usize);
        if let Some(e) = i.and_then(|i| state.journal.get_mut(i)) {
            let hole = Entry {
                cmd: Command::Compacted,
                result: None,
                order: 0,
            };
            pinned.push((seq, std::mem::replace(e, hole)));
        }
    }
    let inputs = std::mem::take(&mut ex.child_inputs);
    let saved = std::mem::replace(&mut ex.saved, Saved::Nothing);
    drop(ex);
    let end = match end {
        StepEnd::Suspended => match saved {
            Saved::Frame(frame) => {
                state.snapshot = Some(Snapshot {
                    fingerprint,
                    point: frame.point,
                    locals: frame.locals,
                    pending: frame.pending,
                    pinned,
                });
                compact(state, first_new as Seq);
                StepEnd::Suspended
            }
            Saved::Unsaveable(why) => StepEnd::Failed(Failure::new(FailureKind::Misuse, why)),
            Saved::Nothing => StepEnd::Failed(Failure::new(
                FailureKind::Misuse,
                "the instance waits on a distributed operation outside of an await of its \
                 #[dtask(snapshot)] function (a DTask polled by a local future or a spawned \
                 task): a snapshot can only be taken at the function's own awaits",
            )),
        },
        other => other,
    };
    (end, first_new, inputs)
}

/// Drops the journal entries the saved machine can no longer read: everything except the
/// pending operation and the operations issued in this step that are still outstanding
/// (they are published now; their results are dropped when they arrive). Spawned
/// operations were moved beside the journal before.
fn compact(state: &mut InstanceState, first_new: Seq) {
    let Some(snap) = &state.snapshot else {
        return;
    };
    let mut keep = Vec::new();
    snap.pending.seqs(&mut keep);
    let base = state.base;
    for (i, e) in state.journal.iter_mut().enumerate() {
        let seq = base + i as Seq;
        let fresh = seq >= first_new && e.cmd.is_distributed() && e.result.is_none();
        if !fresh && !keep.contains(&seq) {
            *e = Entry {
                cmd: Command::Compacted,
                result: None,
                order: 0,
            };
        }
    }
    let dead = state
        .journal
        .iter()
        .take_while(|e| e.cmd == Command::Compacted)
        .count();
    state.journal.drain(..dead);
    state.base += dead as Seq;
}

/// Where a snapshot machine resumes: given to the generated run function.
#[derive(Debug, Clone, Copy)]
pub struct Resume<'a> {
    point: u32,
    locals: &'a [u8],
    pending: &'a Shape,
}

/// The API that `#[dtask(snapshot)]` expansions use. Not a public API.
pub mod api {
    use super::*;

    pub use super::Resume;
    pub use crate::{__dtask_point as point, __dtask_resume as resume_point};

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

    enum Slot<F> {
        Live(Pin<Box<F>>),
        Saved(Shape),
        /// A resumed point reached twice (the generated code never does this).
        Missing,
        Done,
    }

    /// One await of a snapshot machine.
    pub struct Point<K, F> {
        slot: Slot<F>,
        /// Positions claimed by the first poll of a live DTask.
        claimed: Option<(Seq, Seq)>,
        _k: PhantomData<K>,
    }

    impl<T: DeserializeOwned + Send + 'static> Dist<T> {
        /// The point that awaits `f`; ties the point's kind to `k`.
        pub fn point(self, k: &Ty<Self>, f: DTask<T>) -> Point<Self, DTask<T>> {
            tie(k, &self);
            Point {
                slot: Slot::Live(Box::pin(f)),
                claimed: None,
                _k: PhantomData,
            }
        }
    }

    impl<O> Local<O> {
        /// The point that awaits `f`; ties the point's kind to `k`.
        pub fn point<F: Future<Output = O>>(self, k: &Ty<Self>, f: F) -> Point<Self, F> {
            tie(k, &self);
            Point {
                slot: Slot::Live(Box::pin(f)),
                claimed: None,
                _k: PhantomData,
            }
        }
    }

    /// The point a machine resumes at, waiting for the saved operation (taken from
    /// `pending`, which the generated code holds in a loop's scope).
    pub fn resume<K: Kind>(_: &Ty<K>, pending: &mut Option<Pending>) -> Point<K, K::Fut> {
        Point {
            slot: match pending.take() {
                Some(p) => Slot::Saved(p.0),
                None => Slot::Missing,
            },
            claimed: None,
            _k: PhantomData,
        }
    }

    impl<T: DeserializeOwned + Send + 'static> Future for Point<Dist<T>, DTask<T>> {
        type Output = T;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
            let this = self.get_mut();
            let polled = match &mut this.slot {
                Slot::Live(f) => {
                    if this.claimed.is_none() {
                        let start = with(|ex| ex.next_seq);
                        let r = f.as_mut().poll(cx);
                        this.claimed = Some((start, with(|ex| ex.next_seq)));
                        r
                    } else {
                        f.as_mut().poll(cx)
                    }
                }
                Slot::Saved(shape) => {
                    let evaluated = with(|ex| {
                        if ex.failure.is_some() {
                            return Eval::Pending;
                        }
                        eval(shape, ex)
                    });
                    match evaluated {
                        Eval::Pending => Poll::Pending,
                        Eval::Failed(f) => {
                            with(|ex| ex.fail(f));
                            Poll::Pending
                        }
                        Eval::Ready(bytes, _) => match crate::codec::decode_value::<T>(&bytes) {
                            Ok(v) => Poll::Ready(v),
                            Err(e) => {
                                with(|ex| {
                                    ex.fail(Failure::new(
                                        FailureKind::BadInput,
                                        format!(
                                            "a saved await's result does not decode as {}: {e}",
                                            std::any::type_name::<T>()
                                        ),
                                    ))
                                });
                                Poll::Pending
                            }
                        },
                    }
                }
                Slot::Missing => {
                    with(|ex| ex.fail(corrupt("a resumed await was reached twice".to_string())));
                    Poll::Pending
                }
                Slot::Done => panic!("a snapshot await was polled after it completed"),
            };
            if polled.is_ready() {
                this.slot = Slot::Done;
                with(|ex| ex.saved = Saved::Nothing);
            }
            polled
        }
    }

    impl<O, F: Future<Output = O>> Future for Point<Local<O>, F> {
        type Output = O;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<O> {
            let this = self.get_mut();
            match &mut this.slot {
                Slot::Live(f) => {
                    let polled = f.as_mut().poll(cx);
                    if polled.is_ready() {
                        this.slot = Slot::Done;
                        with(|ex| ex.saved = Saved::Nothing);
                    }
                    polled
                }
                Slot::Saved(_) | Slot::Missing => {
                    with(|ex| {
                        ex.fail(corrupt(
                            "the snapshot resumes at an await of a local future".to_string(),
                        ))
                    });
                    Poll::Pending
                }
                Slot::Done => panic!("a snapshot await was polled after it completed"),
            }
        }
    }

    impl<T: DeserializeOwned + Send + 'static> Point<Dist<T>, DTask<T>> {
        /// Starts saving the frame of pending point `index` (written at `at`).
        pub fn saver(&self, index: u32, at: &'static str) -> Saver<Dist<T>> {
            let pending = match &self.slot {
                Slot::Live(f) => {
                    let (first, end) = self.claimed.unwrap_or((0, 0));
                    f.shape(first, end)
                }
                Slot::Saved(shape) => Ok(shape.clone()),
                Slot::Missing | Slot::Done => Err("the await is complete".to_string()),
            };
            Saver {
                index,
                at,
                pending,
                buf: Vec::new(),
                error: None,
                _k: PhantomData,
            }
        }
    }

    impl<O, F> Point<Local<O>, F> {
        /// A local await is never saved: the saver records that the machine is pending
        /// on local work.
        pub fn saver(&self, index: u32, at: &'static str) -> Saver<Local<O>> {
            Saver {
                index,
                at,
                pending: Err(String::new()),
                buf: Vec::new(),
                error: None,
                _k: PhantomData,
            }
        }
    }

    /// Writes the frame of a pending point into the step's context.
    pub struct Saver<K> {
        index: u32,
        at: &'static str,
        pending: Result<Shape, String>,
        buf: Vec<u8>,
        error: Option<String>,
        _k: PhantomData<K>,
    }

    /// How one local is saved at one point: checked once, where the macro declares it
    /// (so that an unserializable local gets one error, at its name).
    pub struct Codec<T> {
        put: fn(&T, &mut Vec<u8>) -> Result<(), String>,
        take: fn(Source<'_, '_>) -> Result<T, String>,
    }

    /// The codec of a local of type `T` saved at a point of kind `K`.
    pub fn codec<K, T: Held<K>>(_: &Ty<K>, _: &Ty<T>) -> Codec<T> {
        Codec {
            put: <T as Held<K>>::put,
            take: <T as Held<K>>::take,
        }
    }

    impl<K: Kind> Saver<K> {
        /// Saves one local.
        pub fn put<T>(&mut self, codec: &Codec<T>, value: &T) {
            if self.error.is_none() {
                if let Err(e) = (codec.put)(value, &mut self.buf) {
                    self.error = Some(e);
                }
            }
        }

        /// Records the frame.
        pub fn save(self) {
            let at = self.at;
            let saved = if !K::DISTRIBUTED {
                Saved::Unsaveable(format!(
                    "the instance suspended while awaiting a local future ({at}) that waits \
                     on a DTask; in a #[dtask(snapshot)] function, await DTasks directly in \
                     the function's body (a local future, such as an async helper that \
                     awaits DTasks, cannot be saved)"
                ))
            } else if let Some(e) = self.error {
                Saved::Unsaveable(format!("a local saved at {at} cannot be serialized: {e}"))
            } else {
                match self.pending {
                    Ok(pending) => Saved::Frame(Frame {
                        point: self.index,
                        locals: self.buf,
                        pending,
                    }),
                    Err(e) => Saved::Unsaveable(format!(
                        "the await at {at} cannot be saved in a snapshot: {e}"
                    )),
                }
            };
            with(|ex| ex.saved = saved);
        }
    }

    /// The saved operation of the point a machine resumes at.
    pub struct Pending(Shape);

    impl<'a> Resume<'a> {
        /// The index of the point.
        pub fn point(&self) -> u32 {
            self.point
        }

        /// The saved operation.
        pub fn pending(&self) -> Pending {
            Pending(self.pending.clone())
        }

        /// Reads the saved locals of a point of kind `K`.
        pub fn reader<K>(&self, _: &Ty<K>) -> Reader<'a, K> {
            Reader {
                de: rmp_serde::Deserializer::new(std::io::Cursor::new(self.locals)),
                len: self.locals.len(),
                _k: PhantomData,
            }
        }
    }

    /// A snapshot that names a point this function does not have.
    pub fn bad_point(point: u32) -> Failure {
        corrupt(format!(
            "the snapshot names await {point}, which does not exist"
        ))
    }

    /// The reader of saved locals.
    pub struct Reader<'a, K> {
        de: LocalsDe<'a>,
        len: usize,
        _k: PhantomData<K>,
    }

    type LocalsDe<'a> =
        rmp_serde::Deserializer<rmp_serde::decode::ReadReader<std::io::Cursor<&'a [u8]>>>;

    /// Where a saved local is read from.
    pub struct Source<'r, 'a>(&'r mut LocalsDe<'a>);

    impl<'a, K> Reader<'a, K> {
        /// Reads the next local.
        pub fn take<T>(&mut self, codec: &Codec<T>) -> Result<T, Failure> {
            (codec.take)(Source(&mut self.de)).map_err(|e| corrupt(format!("a saved local: {e}")))
        }

        /// Checks that every byte was read.
        pub fn finish(self) -> Result<(), Failure> {
            if self.de.position() as usize == self.len {
                Ok(())
            } else {
                Err(corrupt("trailing bytes after the saved locals".to_string()))
            }
        }
    }

    /// A value that may be saved at a point of kind `K`: any value at a local await, a
    /// serializable value at a distributed await.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be held across a distributed await in a #[dtask(snapshot)] function: it is not serializable",
        label = "used after the await, so it is saved in the instance's snapshot",
        note = "a snapshot saves every local the rest of the function uses; derive `Serialize` and `Deserialize` for `{Self}`, or create the value after the await, or keep a serializable form of it (an id, a `String`, a `Vec`)"
    )]
    pub trait Held<K>: Sized {
        /// Appends the value's encoding.
        fn put(&self, buf: &mut Vec<u8>) -> Result<(), String>;
        /// Reads a value.
        fn take(src: Source<'_, '_>) -> Result<Self, String>;
    }

    impl<T: Serialize + DeserializeOwned, X> Held<Dist<X>> for T {
        fn put(&self, buf: &mut Vec<u8>) -> Result<(), String> {
            rmp_serde::encode::write(buf, self).map_err(|e| e.to_string())
        }
        fn take(src: Source<'_, '_>) -> Result<Self, String> {
            T::deserialize(src.0).map_err(|e| e.to_string())
        }
    }

    impl<T, O> Held<Local<O>> for T {
        fn put(&self, _: &mut Vec<u8>) -> Result<(), String> {
            Ok(())
        }
        fn take(_: Source<'_, '_>) -> Result<Self, String> {
            Err("locals are not saved at local awaits".to_string())
        }
    }

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
}

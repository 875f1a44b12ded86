//! The API that `#[dtask(snapshot)]` expansions call: the points (awaits) of a generated
//! machine, how they save their frame while pending, and how a resumed machine reads its
//! saved locals. Reached as `dtasks::__private::snapshot`; not a public API.

use std::collections::VecDeque;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::snapshot::{corrupt, eval, Eval};
use crate::dtask::DTask;
use crate::error::{Failure, FailureKind};
use crate::protocol::codec::decode_value;
use crate::protocol::state::{Seq, Shape};
use crate::step::{with, Frame, Saved};

mod control;
mod probe;

pub use super::snapshot::Resume;
pub use crate::{
    __dtask_point as point, __dtask_rebuild_point as rebuild_point,
    __dtask_rebuild_resume as rebuild_resume_point, __dtask_resume as resume_point,
};
pub use control::*;
pub use probe::*;

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
    /// For an await whose expression a resume builds again (a retry).
    rebuild: Option<Rebuild>,
    _k: PhantomData<K>,
}

/// An await built again at a resume: its locals, encoded before its expression ran, and
/// (when resumed) the positions its DTask replays.
struct Rebuild {
    locals: Presave,
    replay: Option<Result<(Seq, Seq), String>>,
}

/// The locals of an await whose expression a resume builds again, encoded before the
/// expression runs (it may move them).
pub struct Presave {
    buf: Vec<u8>,
    error: Option<String>,
}

impl Presave {
    /// Nothing encoded yet.
    pub fn new() -> Self {
        Self {
            buf: Vec::new(),
            error: None,
        }
    }

    /// Encodes one local.
    pub fn put<T>(&mut self, codec: &Codec<T>, value: &T) {
        if self.error.is_none() {
            if let Err(e) = (codec.put)(value, &mut self.buf) {
                self.error = Some(e);
            }
        }
    }
}

impl Default for Presave {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: DeserializeOwned + Send + 'static> Dist<T> {
    /// The point that awaits `f`; ties the point's kind to `k`.
    pub fn point(self, k: &Ty<Self>, f: DTask<T>) -> Point<Self, DTask<T>> {
        tie(k, &self);
        Point {
            slot: Slot::Live(Box::pin(f)),
            claimed: None,
            rebuild: None,
            _k: PhantomData,
        }
    }

    /// The point that awaits `f`, an expression a resume builds again; `locals` were
    /// encoded before it was evaluated.
    pub fn rebuild_point(
        self,
        k: &Ty<Self>,
        f: DTask<T>,
        locals: Presave,
    ) -> Point<Self, DTask<T>> {
        let mut p = self.point(k, f);
        p.rebuild = Some(Rebuild {
            locals,
            replay: None,
        });
        p
    }

    /// The point a machine resumes at whose expression was built again (`f`): it replays
    /// the positions the saved operation names, then goes on live.
    pub fn resume_rebuild(
        self,
        k: &Ty<Self>,
        pending: &mut Option<Pending>,
        f: DTask<T>,
        locals: Presave,
    ) -> Point<Self, DTask<T>> {
        let replay = match pending.take() {
            Some(Pending(Shape::Replay { first, end })) => Ok((first, end)),
            Some(_) => Err("the snapshot saved this await as one that is not built again".into()),
            None => Err("a resumed await was reached twice".into()),
        };
        let mut p = self.point(k, f);
        p.rebuild = Some(Rebuild {
            locals,
            replay: Some(replay),
        });
        p
    }
}

impl<O> Local<O> {
    /// The point that awaits `f`; ties the point's kind to `k`.
    pub fn point<F: Future<Output = O>>(self, k: &Ty<Self>, f: F) -> Point<Self, F> {
        tie(k, &self);
        Point {
            slot: Slot::Live(Box::pin(f)),
            claimed: None,
            rebuild: None,
            _k: PhantomData,
        }
    }

    /// A local await is never saved, so nothing is built again: a plain point.
    pub fn rebuild_point<F: Future<Output = O>>(
        self,
        k: &Ty<Self>,
        f: F,
        _: Presave,
    ) -> Point<Self, F> {
        self.point(k, f)
    }

    /// A machine never resumes at a local await (its snapshot is refused when saved).
    pub fn resume_rebuild<F: Future<Output = O>>(
        self,
        k: &Ty<Self>,
        pending: &mut Option<Pending>,
        _: F,
        _: Presave,
    ) -> Point<Self, F> {
        tie(k, &self);
        Point {
            slot: match pending.take() {
                Some(p) => Slot::Saved(p.0),
                None => Slot::Missing,
            },
            claimed: None,
            rebuild: None,
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
        rebuild: None,
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
                    let replay = this.rebuild.as_ref().and_then(|r| r.replay.clone());
                    match replay {
                        Some(Err(e)) => {
                            with(|ex| ex.fail(corrupt(e)));
                            return Poll::Pending;
                        }
                        Some(Ok((first, end))) => with(|ex| ex.rewind(first, end)),
                        None => {}
                    }
                    let start = with(|ex| ex.next_seq);
                    let r = f.as_mut().poll(cx);
                    let reached = with(|ex| ex.next_seq);
                    this.claimed = Some((start, reached));
                    if let Some(Ok((first, end))) = replay {
                        if reached < end {
                            with(|ex| {
                                ex.fail(Failure::new(
                                    FailureKind::NonDeterminism,
                                    format!(
                                        "the await built again at a resume issued the \
                                         operations {first}..{reached}, but the journal records \
                                         {first}..{end}"
                                    ),
                                ))
                            });
                            return Poll::Pending;
                        }
                    }
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
                    Eval::Ready(bytes, _) => match decode_value::<T>(&bytes) {
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
            set_saved(Saved::Nothing);
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
                    set_saved(Saved::Nothing);
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
        if let (Some(rebuild), Slot::Live(_)) = (&self.rebuild, &self.slot) {
            // All the positions claimed since its first poll are its own: the await is
            // the only code of the machine that runs while it is pending.
            let (first, _) = self.claimed.unwrap_or((0, 0));
            let end = with(|ex| ex.next_seq);
            return Saver {
                index,
                at,
                pending: Ok(Shape::Replay { first, end }),
                buf: rebuild.locals.buf.clone(),
                error: rebuild.locals.error.clone(),
                _k: PhantomData,
            };
        }
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
        set_saved(saved);
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

/// Records what the machine's pending point saved (the snapshot model's context only).
fn set_saved(saved: Saved) {
    with(|ex| {
        if let Some(snapshot) = &mut ex.snapshot {
            snapshot.saved = saved;
        }
    });
}

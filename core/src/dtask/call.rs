//! [`Call`], what calling a `#[dtask]` function returns, and [`IntoDTask`], what the
//! combinators accept.

use std::borrow::Cow;
use std::fmt;
use std::future::IntoFuture;
use std::marker::PhantomData;

use serde::de::DeserializeOwned;

use super::{DTask, LeafOp};
use crate::error::{Error, Failure};

/// A call of a `#[dtask]` function: what calling the function returns.
///
/// Await it inside a DTask to run the function as a child instance and get its result;
/// pass it to [`DTask::spawn`] to start it now and await it later; combine it with
/// [`DTask::when_all`], [`DTask::when_any`] and [`DTask::join`]; start it from any process
/// with [`Client::start`](crate::Client::start) or [`Client::call`](crate::Client::call).
/// Only a call can be started by a client or spawned, so starting a delay or a combinator
/// is a compile error, not a failure at run time.
#[must_use = "a call does nothing unless it is awaited, spawned or started"]
pub struct Call<T> {
    name: Cow<'static, str>,
    /// The encoded argument tuple, or why it could not be encoded.
    input: Result<Vec<u8>, String>,
    _t: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for Call<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Call").field(&self.name).finish()
    }
}

impl<T> Call<T> {
    pub(crate) fn new(name: Cow<'static, str>, input: Result<Vec<u8>, String>) -> Self {
        Self {
            name,
            input,
            _t: PhantomData,
        }
    }

    /// The DTask name and the encoded input.
    pub(crate) fn into_parts(self) -> (String, Result<Vec<u8>, String>) {
        (self.name.into_owned(), self.input)
    }

    /// The name the called function is registered under.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A call of the DTask registered as `name` with `input`, the MessagePack encoding of
    /// the tuple of its arguments (what [`Call::into_encoded`] gives back). The result type
    /// `T` is the caller's word: a result that does not decode as `T` fails the instance
    /// that awaits it (bad input).
    ///
    /// For code that passes calls through as data, such as a DTask that runs a call it
    /// was given by name; `#[dtask]` functions return typed calls.
    ///
    /// ```
    /// # use dtasks::{dtask, Call, Runtime, WorkerConfig};
    /// #[dtask]
    /// async fn add(a: u64, b: u64) -> u64 { a + b }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), dtasks::Error> {
    /// let (name, input) = add(40, 2).into_encoded()?;
    /// let again: Call<u64> = Call::from_encoded(name, input);
    /// let rt = Runtime::new(WorkerConfig::new().register(add))?;
    /// assert_eq!(rt.client().call(again).await?, 42);
    /// # Ok(()) }
    /// ```
    pub fn from_encoded(name: impl Into<String>, input: Vec<u8>) -> Self {
        Self::new(Cow::Owned(name.into()), Ok(input))
    }

    /// The DTask name and the MessagePack encoding of the argument tuple, to keep or
    /// send a call as data ([`Call::from_encoded`] makes it again); [`Error::is_bad_input`]
    /// when an argument could not be encoded.
    pub fn into_encoded(self) -> Result<(String, Vec<u8>), Error> {
        let (name, input) = self.into_parts();
        let input =
            input.map_err(|e| Error::bad_input(format!("the input cannot be encoded: {e}")))?;
        Ok((name, input))
    }

    fn op(self) -> LeafOp {
        LeafOp::Child {
            name: self.name,
            input: self.input,
        }
    }
}

impl<T: DeserializeOwned + Send + 'static> Call<T> {
    /// The call as a [`DTask`], to combine it with DTasks of other kinds.
    pub fn into_dtask(self) -> DTask<T> {
        DTask::op(self.op())
    }

    /// Maps the result with `f`, which runs locally in the awaiting instance (see
    /// [`DTask::map`]).
    pub fn map<U, F>(self, f: F) -> DTask<U>
    where
        U: Send + 'static,
        F: FnOnce(T) -> U + Send + 'static,
    {
        self.into_dtask().map(f)
    }

    /// Turns a failure of the child (it panicked, was non-deterministic, ...) into an
    /// `Err` value instead of failing the awaiting instance. A child's own `Err(E)`
    /// result is a value either way.
    ///
    /// To catch the failures of a fan-out, catch each call before combining:
    /// `DTask::when_all(items.map(|i| ship(i).catch_failure()))`.
    pub fn catch_failure(self) -> DTask<Result<T, Failure>> {
        DTask::catch_leaf(self.op())
    }

    /// Waits for this call at most `timeout`: [`DTask::within`] of it (`None`, and the
    /// child cancelled, when the timer fires first).
    pub fn within(self, timeout: std::time::Duration) -> DTask<Option<T>> {
        DTask::from(self).within(timeout)
    }
}

impl<T: DeserializeOwned + Send + 'static> IntoFuture for Call<T> {
    type Output = T;
    type IntoFuture = DTask<T>;

    fn into_future(self) -> DTask<T> {
        self.into_dtask()
    }
}

impl<T: DeserializeOwned + Send + 'static> From<Call<T>> for DTask<T> {
    fn from(call: Call<T>) -> Self {
        call.into_dtask()
    }
}

/// What the combinators accept: a [`DTask`], a [`Call`] or a
/// [`SpawnHandle`](crate::SpawnHandle).
pub trait IntoDTask: sealed::Sealed {
    /// The result type.
    type Output: DeserializeOwned + Send + 'static;

    /// The DTask that awaits it.
    fn into_dtask(self) -> DTask<Self::Output>;
}

pub(super) mod sealed {
    pub trait Sealed {}
}

impl<T> sealed::Sealed for DTask<T> {}
impl<T> sealed::Sealed for Call<T> {}

impl<T: DeserializeOwned + Send + 'static> IntoDTask for DTask<T> {
    type Output = T;
    fn into_dtask(self) -> DTask<T> {
        self
    }
}

impl<T: DeserializeOwned + Send + 'static> IntoDTask for Call<T> {
    type Output = T;
    fn into_dtask(self) -> DTask<T> {
        Call::into_dtask(self)
    }
}

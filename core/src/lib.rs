//! # dtasks: async/await for distributed, long-running work
//!
//! A [`DTask<T>`] is an awaitable like a future, but awaiting it may suspend the task and
//! resume it later in another process: `DTask::delay(one_day).await`, awaiting a child
//! DTask, [`DTask::when_all`] / [`DTask::when_any`] fan-out and fan-in, [`DTask::spawn`].
//! Write a DTask as an `async fn` marked [`#[dtask]`](macro@dtask); run it on the embedded
//! [`Runtime`] (in-memory, the default) or on RabbitMQ with `dtasks-amqp` workers.
//!
//! ```
//! use std::time::Duration;
//! use dtasks::{dtask, DTask, Runtime, WorkerConfig};
//!
//! #[dtask]
//! async fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! #[dtask]
//! async fn sum_of_squares(n: u64) -> u64 {
//!     // Fan-out to n child instances, fan-in their results.
//!     let squares = DTask::when_all((1..=n).map(square)).await;
//!     // A durable timer: the instance suspends; no worker holds it meanwhile.
//!     DTask::delay(Duration::from_millis(10)).await;
//!     squares.iter().sum()
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), dtasks::Error> {
//! let rt = Runtime::new(WorkerConfig::new().register(square).register(sum_of_squares))?;
//! let handle = rt.client().start(sum_of_squares(3)).await?;
//! assert_eq!(handle.result().await?, 1 + 4 + 9);
//! # Ok(()) }
//! ```
//!
//! The execution model (replay of a journal), its guarantees and its limits are described
//! in `docs/architecture.md`.
#![doc(test(attr(deny(warnings))))]

// Lets `#[dtask]` expansions name `::dtasks` inside this crate's own tests.
#[allow(unused_extern_crates)]
extern crate self as dtasks;

// The rooms, lowest first: each imports only from those above it (`.ci/acyclic` checks).
mod client;
mod dtask;
mod engine;
mod error;
mod exec;
#[cfg(feature = "json")]
pub mod json;
pub mod metrics;
mod protocol;
mod registry;
mod runtime;
#[cfg(feature = "sim")]
pub mod sim;
mod step;
pub mod store;
#[cfg(feature = "test-util")]
pub mod test_util;
pub mod trace;
pub mod transport;

pub use client::{Client, Handle, Untyped};
pub use dtask::{Call, DTask, IntoDTask, Join, ResumeToken, RetryCall, RetryPolicy, SpawnHandle};
pub use dtasks_macros::dtask;
pub use error::{Error, Failure};
pub use exec::SavedMachine;
pub use protocol::{InstanceId, Status, Wait, ENVELOPE_VERSION, OLDEST_ENVELOPE_VERSION};
pub use registry::{DTaskFn, Registry};
pub use runtime::{
    Runtime, RuntimeBuilder, Worker, WorkerConfig, WorkerStats, DEFAULT_INLINE_STEPS,
};
pub use transport::{
    DeadLetter, IntoTransport, MemoryTransport, MemoryTransportBuilder, Transport,
};

/// One fresh await of a `#[dtask(snapshot)]` machine (generated code). Not a public API.
#[doc(hidden)]
#[macro_export]
macro_rules! __dtask_point {
    ($index:expr, $kind:ident, $fut:expr, $line:expr, [$($codec:ident => $local:ident),*]) => {{
        #[allow(unused_imports)]
        use $crate::__private::snapshot::{ProbeDist as _, ProbeLocal as _};
        let f = ::core::future::IntoFuture::into_future($fut);
        let kind = (&$crate::__private::snapshot::Probe(&f)).__dtask_kind();
        let p = kind.point(&$kind, f);
        $crate::__dtask_await!(p, $index, $line, [$($codec => $local),*])
    }};
}

/// The await a `#[dtask(snapshot)]` machine resumes at (generated code). Not a public API.
#[doc(hidden)]
#[macro_export]
macro_rules! __dtask_resume {
    ($index:expr, $kind:ident, $pending:ident, $line:expr, [$($codec:ident => $local:ident),*]) => {{
        let p = $crate::__private::snapshot::resume(&$kind, &mut $pending);
        $crate::__dtask_await!(p, $index, $line, [$($codec => $local),*])
    }};
}

/// A fresh await whose expression a resume builds again (a retry): its saved locals are
/// encoded before the expression runs (generated code). Not a public API.
#[doc(hidden)]
#[macro_export]
macro_rules! __dtask_rebuild_point {
    ($index:expr, $kind:ident, $fut:expr, $line:expr, [$($codec:ident => $local:ident),*]) => {{
        #[allow(unused_imports)]
        use $crate::__private::snapshot::{ProbeDist as _, ProbeLocal as _};
        #[allow(unused_mut)]
        let mut pre = $crate::__private::snapshot::Presave::new();
        $(pre.put(&$codec, &$local);)*
        let f = ::core::future::IntoFuture::into_future($fut);
        let kind = (&$crate::__private::snapshot::Probe(&f)).__dtask_kind();
        let p = kind.rebuild_point(&$kind, f, pre);
        $crate::__dtask_await!(p, $index, $line, [])
    }};
}

/// The await a machine resumes at whose expression is built again (generated code). Not a
/// public API.
#[doc(hidden)]
#[macro_export]
macro_rules! __dtask_rebuild_resume {
    ($index:expr, $kind:ident, $pending:ident, $fut:expr, $line:expr, [$($codec:ident => $local:ident),*]) => {{
        #[allow(unused_imports)]
        use $crate::__private::snapshot::{ProbeDist as _, ProbeLocal as _};
        #[allow(unused_mut)]
        let mut pre = $crate::__private::snapshot::Presave::new();
        $(pre.put(&$codec, &$local);)*
        let f = ::core::future::IntoFuture::into_future($fut);
        let kind = (&$crate::__private::snapshot::Probe(&f)).__dtask_kind();
        let p = kind.resume_rebuild(&$kind, &mut $pending, f, pre);
        $crate::__dtask_await!(p, $index, $line, [])
    }};
}

/// Polls a point; while it is pending, saves its frame and returns `Pending`.
#[doc(hidden)]
#[macro_export]
macro_rules! __dtask_await {
    ($p:ident, $index:expr, $line:expr, [$($codec:ident => $local:ident),*]) => {{
        let mut p = $p;
        loop {
            if let ::core::task::Poll::Ready(v) =
                $crate::__private::snapshot::poll_once(&mut p).await
            {
                break v;
            }
            #[allow(unused_mut)]
            let mut saver = p.saver($index, ::core::concat!(::core::file!(), ":", $line));
            $(saver.put(&$codec, &$local);)*
            saver.save();
            $crate::__private::snapshot::park().await;
        }
    }};
}

/// Support for the code `#[dtask]` generates. Not a public API.
#[doc(hidden)]
pub mod __private {
    use std::any::TypeId;
    use std::future::Future;

    use serde::de::DeserializeOwned;
    use serde::Serialize;

    pub use crate::exec::macro_support as snapshot;
    pub use crate::exec::MigrateFn;
    pub use crate::registry::Registration;
    pub use inventory;

    use crate::dtask::Call;
    use crate::error::{Failure, FailureKind};
    use crate::protocol::codec::{decode_value, encode_value};

    /// The boxed body future stored in a [`Registration`].
    pub type BodyFuture = crate::step::BodyFuture;

    /// A call of the DTask `name` with the encoded argument tuple.
    pub fn call<T, A: Serialize>(name: &'static str, args: &A) -> Call<T> {
        Call::new(name.into(), encode_value(args))
    }

    /// Decodes the argument tuple of a DTask.
    pub fn decode_args<A: DeserializeOwned>(name: &str, input: &[u8]) -> Result<A, Failure> {
        decode_value(input).map_err(|e| {
            Failure::new(
                FailureKind::BadInput,
                format!(
                    "the input does not decode as the arguments of `{name}` ({}): {e}",
                    std::any::type_name::<A>()
                ),
            )
        })
    }

    /// Boxes a DTask body, encoding its output.
    pub fn body<T, F>(f: F) -> BodyFuture
    where
        T: Serialize,
        F: Future<Output = T> + Send + 'static,
    {
        Box::pin(async move {
            let out = f.await;
            encode_value(&out).map_err(|e| {
                Failure::new(
                    FailureKind::BadInput,
                    format!("the result cannot be encoded: {e}"),
                )
            })
        })
    }

    /// The `TypeId` of a function item, to find its registration.
    pub fn type_id_of<F: 'static>(_: &F) -> TypeId {
        TypeId::of::<F>()
    }
}

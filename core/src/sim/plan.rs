//! [`Plan`]: what a simulated run does from the outside — the roots it starts, the events
//! and cancellations it sends, when, and the result each root must have.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use serde::Serialize;

use super::rng::Rng;
use crate::client::Client;
use crate::dtask::Call;
use crate::error::Error;
use crate::protocol::codec::encode_value;
use crate::protocol::InstanceId;

/// A root a [`Plan`] starts: pass it to [`Plan::expect`], [`Plan::signal`],
/// [`Plan::cancel`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Root(pub(super) usize);

/// What a root's result must be.
#[derive(Clone, Debug)]
pub(super) enum Expect {
    /// The reference model's result (the body run as plain async code).
    Reference,
    /// This encoded value.
    Value(Vec<u8>),
    /// A cancelled failure.
    Cancelled,
}

#[derive(Clone, Debug)]
pub(super) struct RootSpec {
    pub(super) name: String,
    pub(super) input: Vec<u8>,
    pub(super) expect: Expect,
}

type Send_ = Arc<dyn Fn(Client, InstanceId) -> BoxFuture<'static, Result<(), Error>> + Send + Sync>;

#[derive(Clone)]
pub(super) enum Act {
    Start(Root),
    Signal(Root, String, Send_),
    Cancel(Root, String),
}

impl fmt::Debug for Act {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Act::Start(r) => write!(f, "start root #{}", r.0),
            Act::Signal(r, name, _) => write!(f, "signal `{name}` to root #{}", r.0),
            Act::Cancel(r, reason) => write!(f, "cancel root #{} ({reason})", r.0),
        }
    }
}

/// What a simulated run does from the outside: built for each seed by the closure given
/// to [`Sim::run`](super::Sim::run). Roots are started by a client process that faults
/// never hit; every root must finish, with the result the plan expects (by default the
/// reference model's: its body run as plain async code).
pub struct Plan {
    seed: u64,
    rng: Rng,
    pub(super) roots: Vec<RootSpec>,
    pub(super) acts: Vec<(Duration, Act)>,
    pub(super) problems: Vec<String>,
}

impl fmt::Debug for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plan")
            .field("seed", &self.seed)
            .field("roots", &self.roots)
            .field("acts", &self.acts)
            .finish()
    }
}

impl Plan {
    pub(super) fn new(seed: u64) -> Self {
        Self {
            seed,
            rng: Rng::new(seed ^ 0x00de_c0de_0bad_cafe),
            roots: Vec::new(),
            acts: Vec::new(),
            problems: Vec::new(),
        }
    }

    /// The run's seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// A number in `0..n` drawn from the seed (0 when `n` is 0): for plans that vary
    /// their workload by seed.
    pub fn random(&mut self, n: u64) -> u64 {
        self.rng.below(n)
    }

    /// Starts `call` as a root at the beginning of the run; its result must be the
    /// reference model's unless [`Plan::expect`] says otherwise.
    pub fn start<T>(&mut self, call: Call<T>) -> Root {
        self.start_at(Duration::ZERO, call)
    }

    /// Starts `call` as a root `at` (virtual time) into the run.
    pub fn start_at<T>(&mut self, at: Duration, call: Call<T>) -> Root {
        let (name, input) = call.into_parts();
        let input = input.unwrap_or_else(|e| {
            self.problems
                .push(format!("the input of `{name}` cannot be encoded: {e}"));
            Vec::new()
        });
        let root = Root(self.roots.len());
        self.roots.push(RootSpec {
            name,
            input,
            expect: Expect::Reference,
        });
        self.acts.push((at, Act::Start(root)));
        root
    }

    /// `root`'s result must be `Ok(value)`.
    pub fn expect<V: Serialize + ?Sized>(&mut self, root: Root, value: &V) {
        match encode_value(value) {
            Ok(bytes) => self.roots[root.0].expect = Expect::Value(bytes),
            Err(e) => self
                .problems
                .push(format!("the expected value cannot be encoded: {e}")),
        }
    }

    /// `root` must end cancelled ([`Failure::is_cancelled`](crate::Failure::is_cancelled)).
    pub fn expect_cancelled(&mut self, root: Root) {
        self.roots[root.0].expect = Expect::Cancelled;
    }

    /// Sends `root` the event `name` with `value` at `at` (virtual time into the run;
    /// after its start), as [`Client::signal`] does.
    pub fn signal<V: Serialize + Send + Sync + 'static>(
        &mut self,
        root: Root,
        at: Duration,
        name: &str,
        value: V,
    ) {
        let value = Arc::new(value);
        let event = name.to_string();
        let send: Send_ = Arc::new(move |client: Client, id: InstanceId| {
            let value = value.clone();
            let event = event.clone();
            async move { client.signal(&id, &event, &*value).await }.boxed()
        });
        self.acts
            .push((at, Act::Signal(root, name.to_string(), send)));
    }

    /// Cancels `root` at `at` (virtual time into the run), as [`Client::cancel`] does.
    pub fn cancel(&mut self, root: Root, at: Duration, reason: &str) {
        self.acts.push((at, Act::Cancel(root, reason.to_string())));
    }
}

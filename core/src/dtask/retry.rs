//! Retries: [`RetryPolicy`], [`DTask::run_with_retry`] for local side effects and
//! [`Call::retry`] for child calls.
//!
//! A retry is built from the operations the journal already has: every attempt is an
//! operation of its own (a `DTask::run` whose recorded result is the attempt's
//! `Result<T, E>`, or a child call whose failure is recorded), and every wait between two
//! attempts is a durable timer (`DTask::delay`). The attempts made and their outcomes are
//! therefore in the instance's journal, and a worker killed during a wait loses neither the
//! wait nor the count. See `docs/architecture.md` (section 10).

use std::fmt;
use std::future::{Future, IntoFuture};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::call::sealed::Sealed;
use super::{Call, DTask, IntoDTask, Leaf, LeafOp, Spec};
use crate::error::{Failure, FailureKind};
use crate::protocol::codec::decode_value;
use crate::step::with;

/// How often, and how far apart, an operation is tried: at most
/// [`max_attempts`](RetryPolicy::max_attempts) attempts, the first at once, each later one
/// after a durable wait that starts at [`initial_delay`](RetryPolicy::initial_delay) and
/// grows by [`backoff_factor`](RetryPolicy::backoff_factor) up to
/// [`max_delay`](RetryPolicy::max_delay).
///
/// The wait after the `n`-th failed attempt is
/// `min(initial_delay × backoff_factor^(n-1), max_delay)`. The defaults
/// ([`RetryPolicy::default`], [`RetryPolicy::new`]) are 3 attempts, 1 s initial delay,
/// factor 2, at most 60 s: waits of 1 s and 2 s.
///
/// Which errors are retried is not part of the policy, which is plain data (a
/// `#[dtask(snapshot)]` function may keep it in its saved locals): every error is retried
/// unless [`DTask::run_with_retry_if`] or [`RetryCall::retry_if`] give a predicate.
///
/// **Invalid values are clamped, not refused**, so that a policy is always usable:
/// `max_attempts` of 0 counts as 1 (one attempt, no retry); a `backoff_factor` below 1 or
/// NaN counts as 1 (constant waits); a `max_delay` below the initial delay caps every wait
/// at `max_delay`. The getters return the clamped values.
///
/// ```
/// use std::time::Duration;
/// use dtasks::RetryPolicy;
///
/// let policy = RetryPolicy::new()
///     .with_max_attempts(5)
///     .with_initial_delay(Duration::from_millis(200))
///     .with_backoff_factor(3.0)
///     .with_max_delay(Duration::from_secs(2));
/// // Waits after attempts 1, 2, 3 and 4:
/// assert_eq!(policy.delay_after(1), Duration::from_millis(200));
/// assert_eq!(policy.delay_after(2), Duration::from_millis(600));
/// assert_eq!(policy.delay_after(3), Duration::from_millis(1800));
/// assert_eq!(policy.delay_after(4), Duration::from_secs(2));
///
/// // Clamped: no attempt at all is one attempt; a shrinking backoff is constant.
/// let odd = RetryPolicy::new().with_max_attempts(0).with_backoff_factor(0.5);
/// assert_eq!(odd.max_attempts(), 1);
/// assert_eq!(odd.backoff_factor(), 1.0);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    max_attempts: u32,
    initial_delay: Duration,
    backoff_factor: f64,
    max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_delay: Duration::from_secs(1),
            backoff_factor: 2.0,
            max_delay: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The default policy: 3 attempts, waits from 1 s growing by a factor of 2, at most 60 s.
    pub fn new() -> Self {
        Self::default()
    }

    /// At most `n` attempts in all (the first included); 0 counts as 1.
    pub fn with_max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// The wait after the first failed attempt.
    pub fn with_initial_delay(mut self, d: Duration) -> Self {
        self.initial_delay = d;
        self
    }

    /// How much each wait grows over the one before; below 1 or NaN counts as 1.
    pub fn with_backoff_factor(mut self, factor: f64) -> Self {
        self.backoff_factor = if factor >= 1.0 { factor } else { 1.0 };
        self
    }

    /// The longest wait between two attempts.
    pub fn with_max_delay(mut self, d: Duration) -> Self {
        self.max_delay = d;
        self
    }

    /// The most attempts made (at least 1).
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts.max(1)
    }

    /// The wait after the first failed attempt (before the cap of `max_delay`).
    pub fn initial_delay(&self) -> Duration {
        self.initial_delay
    }

    /// The growth of the waits (at least 1).
    pub fn backoff_factor(&self) -> f64 {
        if self.backoff_factor >= 1.0 {
            self.backoff_factor
        } else {
            1.0
        }
    }

    /// The longest wait.
    pub fn max_delay(&self) -> Duration {
        self.max_delay
    }

    /// The wait after failed attempt `attempt` (1-based) before the next one:
    /// `min(initial_delay × backoff_factor^(attempt-1), max_delay)`.
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(i32::MAX as u32) as i32;
        let secs = self.initial_delay.as_secs_f64() * self.backoff_factor().powi(exp);
        let max = self.max_delay;
        if !secs.is_finite() || secs >= max.as_secs_f64() {
            return max;
        }
        Duration::try_from_secs_f64(secs).map_or(max, |d| d.min(max))
    }
}

type Predicate<E> = Arc<dyn Fn(&E) -> bool + Send + Sync>;

impl DTask<()> {
    /// Runs a fallible local side effect, and tries it again after a durable wait when it
    /// returns `Err`, as `policy` says; returns the first `Ok`, or the last `Err` once the
    /// attempts run out.
    ///
    /// Each attempt is a [`DTask::run`]: its `Result` is recorded in the journal, so replays
    /// reuse it and the count of attempts survives any crash. The waits are durable timers
    /// ([`DTask::delay`]): the instance suspends between attempts and may resume in another
    /// worker. An attempt that was running when its worker crashed runs again (at least
    /// once, like `DTask::run`).
    ///
    /// The result is the closure's own `Result<T, E>`: after the last attempt its error is
    /// a value the code handles like any other (`?` works), not a failure of the instance.
    /// To retry only some errors, use [`DTask::run_with_retry_if`].
    ///
    /// In a `#[dtask(snapshot)]` function, write the call in the await itself
    /// (`DTask::run_with_retry(..).await`): a resume after a wait builds the closure again
    /// from that expression, so the locals it uses are saved with the snapshot (they must be
    /// serializable).
    ///
    /// ```
    /// use std::time::Duration;
    /// use dtasks::{dtask, DTask, RetryPolicy};
    ///
    /// #[dtask]
    /// async fn notify(user: u64) -> Result<u32, String> {
    ///     let policy = RetryPolicy::new().with_initial_delay(Duration::from_millis(100));
    ///     // Tried up to 3 times, 100 ms and 200 ms apart (durable waits).
    ///     let code = DTask::run_with_retry(policy, move || async move {
    ///         if user == 0 { Err(format!("no user")) } else { Ok(200u32) }
    ///     })
    ///     .await?;
    ///     Ok(code)
    /// }
    /// ```
    pub fn run_with_retry<T, E, F, Fut>(policy: RetryPolicy, f: F) -> DTask<Result<T, E>>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        E: Serialize + DeserializeOwned + Send + 'static,
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        Self::run_with_retry_if(policy, |_: &E| true, f)
    }

    /// [`DTask::run_with_retry`] that retries only the errors for which `retryable`
    /// returns true; any other error is returned at once.
    ///
    /// ```
    /// use dtasks::{dtask, DTask, RetryPolicy};
    ///
    /// #[derive(serde::Serialize, serde::Deserialize, Debug)]
    /// enum PayError { Timeout, Declined }
    ///
    /// #[dtask]
    /// async fn pay(cents: u64) -> Result<u64, PayError> {
    ///     DTask::run_with_retry_if(
    ///         RetryPolicy::new().with_max_attempts(5),
    ///         |e: &PayError| matches!(e, PayError::Timeout), // a decline is final
    ///         move || async move { if cents > 0 { Ok(cents) } else { Err(PayError::Declined) } },
    ///     )
    ///     .await
    /// }
    /// ```
    pub fn run_with_retry_if<T, E, P, F, Fut>(
        policy: RetryPolicy,
        retryable: P,
        f: F,
    ) -> DTask<Result<T, E>>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        E: Serialize + DeserializeOwned + Send + 'static,
        P: Fn(&E) -> bool + Send + Sync + 'static,
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let f = Arc::new(Mutex::new(f));
        let body = async move {
            let mut attempt = 1;
            loop {
                let make = Arc::clone(&f);
                let mut run = DTask::run(move || {
                    let mut make = make.lock().unwrap_or_else(|p| p.into_inner());
                    (*make)()
                });
                let (result, order) = std::future::poll_fn(|cx| run.poll_ordered(cx)).await;
                match result {
                    Err(e) if attempt < policy.max_attempts() && retryable(&e) => {
                        DTask::delay(policy.delay_after(attempt)).await;
                        attempt += 1;
                    }
                    done => return (done, order),
                }
            }
        };
        DTask::from_future(body, Spec::Retry)
    }
}

impl<T: DeserializeOwned + Send + 'static> Call<T> {
    /// Retries the call as `policy` says when the child **fails** (it panicked, was
    /// non-deterministic, got bad input, ...: see [`Failure`]): each attempt is a new child
    /// instance, started after a durable wait. A child's own `Err(E)` result is a value, not
    /// a failure, and is not retried (retry inside the child, with
    /// [`DTask::run_with_retry`], for that).
    ///
    /// When the attempts run out, the awaiting instance fails with a child failure that
    /// names the attempts and quotes the last failure
    /// ([`RetryCall::catch_failure`] makes it a value). [`RetryCall::retry_if`] limits which
    /// failures are retried.
    ///
    /// In a `#[dtask(snapshot)]` function, write the call in the await itself
    /// (`charge(order).retry(policy).await`): a resume after a wait builds the call again
    /// from that expression, so the locals it uses are saved with the snapshot.
    ///
    /// ```
    /// use std::time::Duration;
    /// use dtasks::{dtask, RetryPolicy};
    ///
    /// #[dtask]
    /// async fn flaky(x: u64) -> u64 {
    ///     x * 2
    /// }
    ///
    /// #[dtask]
    /// async fn caller(x: u64) -> u64 {
    ///     let policy = RetryPolicy::new().with_initial_delay(Duration::from_millis(50));
    ///     flaky(x).retry(policy).retry_if(|f| f.is_panic()).await
    /// }
    /// ```
    pub fn retry(self, policy: RetryPolicy) -> RetryCall<T> {
        RetryCall {
            call: self,
            policy,
            retryable: Arc::new(|_: &Failure| true),
        }
    }
}

/// A [`Call`] tried again when the child fails, as a [`RetryPolicy`] says: what
/// [`Call::retry`] returns.
///
/// Await it (it implements [`IntoFuture`]), combine it (it is [`IntoDTask`]), or catch its
/// final failure with [`RetryCall::catch_failure`].
#[must_use = "a call does nothing unless it is awaited"]
pub struct RetryCall<T> {
    call: Call<T>,
    policy: RetryPolicy,
    retryable: Predicate<Failure>,
}

impl<T> fmt::Debug for RetryCall<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryCall")
            .field("call", &self.call)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl<T: DeserializeOwned + Send + 'static> RetryCall<T> {
    /// Retries only the failures for which `retryable` returns true (it sees the child's
    /// own failure: [`Failure::is_panic`], [`Failure::is_bad_input`], ...); any other
    /// failure ends the retries at once.
    pub fn retry_if<P>(mut self, retryable: P) -> Self
    where
        P: Fn(&Failure) -> bool + Send + Sync + 'static,
    {
        self.retryable = Arc::new(retryable);
        self
    }

    /// The retried call as a [`DTask`] whose final failure (the attempts ran out, or a
    /// failure that is not retried) is an `Err` value instead of failing the awaiting
    /// instance. The failure is a child failure that names the attempts.
    pub fn catch_failure(self) -> DTask<Result<T, Failure>> {
        self.build()
    }

    /// The retried call as a [`DTask`], to combine it with DTasks of other kinds.
    pub fn into_dtask(self) -> DTask<T> {
        let mut caught = self.build();
        DTask::from_future(
            std::future::poll_fn(move |cx| match caught.poll_ordered(cx) {
                std::task::Poll::Ready((Ok(v), order)) => std::task::Poll::Ready((v, order)),
                std::task::Poll::Ready((Err(f), _)) => {
                    super::fail_now(f);
                    std::task::Poll::Pending
                }
                std::task::Poll::Pending => std::task::Poll::Pending,
            }),
            Spec::Retry,
        )
    }

    fn build(self) -> DTask<Result<T, Failure>> {
        let RetryCall {
            call,
            policy,
            retryable,
        } = self;
        let (name, input) = call.into_parts();
        let body = async move {
            let mut attempt = 1;
            let mut children = Vec::new();
            loop {
                let mut leaf = Leaf::new(LeafOp::Child {
                    name: name.clone().into(),
                    input: input.clone(),
                });
                let (raw, order) = std::future::poll_fn(|_| leaf.poll_raw()).await;
                let child = with(|ex| leaf.seq.map(|s| ex.instance.child(s).to_string()))
                    .unwrap_or_else(|| "?".to_string());
                children.push(child);
                let failure = match raw {
                    Ok(bytes) => {
                        let r = decode_value::<T>(&bytes).map_err(|e| {
                            Failure::new(
                                FailureKind::BadInput,
                                format!(
                                    "the result of `{name}` does not decode as {}: {e}",
                                    std::any::type_name::<T>()
                                ),
                            )
                        });
                        return (r, order);
                    }
                    Err(f) => f,
                };
                let retried = retryable(&failure);
                if retried && attempt < policy.max_attempts() {
                    DTask::delay(policy.delay_after(attempt)).await;
                    attempt += 1;
                    continue;
                }
                let why = if retried {
                    format!("failed {attempt} attempts")
                } else {
                    format!("failed at attempt {attempt} with a failure the retry does not retry")
                };
                let msg = format!(
                    "child `{name}` {why} ({}); the last failure: {failure}",
                    children.join(", ")
                );
                return (Err(Failure::new(FailureKind::ChildFailed, msg)), order);
            }
        };
        DTask::from_future(body, Spec::Retry)
    }
}

impl<T: DeserializeOwned + Send + 'static> IntoFuture for RetryCall<T> {
    type Output = T;
    type IntoFuture = DTask<T>;

    fn into_future(self) -> DTask<T> {
        self.into_dtask()
    }
}

impl<T> Sealed for RetryCall<T> {}

impl<T: DeserializeOwned + Send + 'static> IntoDTask for RetryCall<T> {
    type Output = T;
    fn into_dtask(self) -> DTask<T> {
        RetryCall::into_dtask(self)
    }
}

//! What lets an instance live for months while its code changes: ending a run and
//! continuing as a fresh one ([`DTask::continue_as_new`]), and the markers that let
//! changed replay code take the branch each instance's journal was written by
//! ([`DTask::patched`], [`DTask::deprecate_patch`]).

use std::future::poll_fn;
use std::task::Poll;

use serde::de::DeserializeOwned;

use super::{Call, DTask, Spec};
use crate::error::{Failure, FailureKind};
use crate::protocol::state::{Command, Entry, Outcome};
use crate::step::{with, Exec};

impl<T: DeserializeOwned + Send + 'static> DTask<T> {
    /// Ends the instance's current run and continues as a fresh run of the same DTask
    /// with the arguments of `call` (a call of the function itself: `billing(customer,
    /// month + 1)`): same id, new input, empty journal, fresh locals. The await never
    /// completes: make it the function's tail (`DTask::continue_as_new(f(..)).await`), or
    /// `return` it from a branch.
    ///
    /// An endless loop (a subscription billed every month, a poller) so keeps a bounded
    /// state, in both execution models: each run's state holds only that run's work.
    /// Whoever waits for the instance ([`Client::call`](crate::Client::call), a
    /// [`Handle`](crate::Handle), a read by id) sees only the result of the last run;
    /// [`InstanceInfo::runs`](crate::store::InstanceInfo::runs) counts the runs.
    ///
    /// The hand-off is one message, published with the step's other outputs before the
    /// step's own message is acked: a crash before that ack redoes the step (as any
    /// step), and the next run's message has a deterministic id, so a run is neither lost
    /// nor started twice. Events sent to the instance and not yet taken by a wait are
    /// kept for the next run. Children started in this step and not awaited run
    /// detached; replies of the run's earlier operations that still arrive are dropped.
    ///
    /// `call` must be a call of the instance's own DTask (else the instance fails with
    /// a misuse failure); an argument that cannot be encoded fails it with bad input.
    ///
    /// ```
    /// use std::time::Duration;
    /// use dtasks::{dtask, DTask, Runtime, WorkerConfig};
    ///
    /// /// Bills a customer every month, for ever; each month is a run of its own.
    /// #[dtask]
    /// async fn subscription(customer: String, month: u32, until: u32) -> u32 {
    ///     DTask::delay(Duration::from_millis(1)).await; // a month, in a real deployment
    ///     if month == until {
    ///         return month;
    ///     }
    ///     DTask::continue_as_new(subscription(customer, month + 1, until)).await
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), dtasks::Error> {
    /// let rt = Runtime::new(WorkerConfig::new().register(subscription))?;
    /// let handle = rt.client().start(subscription("ada".into(), 1, 12)).await?;
    /// assert_eq!(handle.result().await?, 12);
    /// let info = rt.client().instance(handle.id()).await?;
    /// assert_eq!(info.runs, 12);
    /// # Ok(()) }
    /// ```
    pub fn continue_as_new(call: Call<T>) -> DTask<T> {
        let (name, input) = call.into_parts();
        let mut input = Some(input);
        let future = poll_fn(move |_| {
            with(|ex| {
                if ex.failure.is_some() || ex.continued.is_some() {
                    return;
                }
                if name != ex.dtask {
                    ex.fail(Failure::new(
                        FailureKind::Misuse,
                        format!(
                            "DTask::continue_as_new of a call of `{name}` in an instance of \
                             `{}`: an instance continues as a new run of its own DTask only",
                            ex.dtask
                        ),
                    ));
                    return;
                }
                match input.take() {
                    Some(Ok(bytes)) => ex.continued = Some(bytes),
                    Some(Err(e)) => ex.fail(Failure::new(
                        FailureKind::BadInput,
                        format!("the input of the next run of `{name}` cannot be encoded: {e}"),
                    )),
                    None => {}
                }
            });
            Poll::<(T, u32)>::Pending
        });
        DTask::from_future(future, Spec::Unsaveable("`DTask::continue_as_new`"))
    }
}

impl DTask<()> {
    /// Whether this instance runs the code of the change `id` at this point: `true` for an
    /// instance that reaches it under code that has the change, `false` for an instance
    /// whose journal was written, up to here, by code before the change (Temporal's
    /// `patched`). Lets a replay-model DTask change the operations it issues while older
    /// instances are suspended:
    ///
    /// ```
    /// # use dtasks::{dtask, DTask};
    /// # #[dtask] async fn charge(amount: u64) -> u64 { amount }
    /// # #[dtask] async fn charge_with_tax(amount: u64) -> u64 { amount }
    /// #[dtask]
    /// async fn order(amount: u64) -> u64 {
    ///     if DTask::patched("tax-1234") {
    ///         charge_with_tax(amount).await
    ///     } else {
    ///         charge(amount).await
    ///     }
    /// }
    /// ```
    ///
    /// The first time an instance reaches the call under such code, a marker is recorded
    /// in its journal and the answer is `true`; its replays find the marker and answer
    /// `true` again. A replay that finds another operation recorded at this position (the
    /// journal was written by the old code) answers `false` and records nothing, so the
    /// old branch replays as it ran. An instance that started under the old code but had
    /// not reached this point yet takes the new branch: nothing it recorded depends on it.
    ///
    /// Retire the old branch in two deployments: once no instance that may take it is left
    /// (none started before the patch is still running), replace `patched` by
    /// [`DTask::deprecate_patch`] and keep only the new branch; once no instance started
    /// under the `patched` code is left, remove the call.
    ///
    /// In a `#[dtask(snapshot)]` function nothing is replayed and the answer is always
    /// `true` (its code changes are governed by fingerprints and migrations).
    ///
    /// # Panics
    /// Outside of a DTask's execution, like every DTask operation.
    pub fn patched(id: &str) -> bool {
        with(|ex| patched(ex, id, true))
    }

    /// The second stage of retiring a [`DTask::patched`] branch: the code keeps only the
    /// new branch, and this call stands where `patched(id)` stood. A replay of an instance
    /// whose journal holds the marker of `id` here takes it (so the instance replays
    /// without a non-determinism failure); any other instance records nothing.
    ///
    /// Deploy it once no instance started before the patch is left; remove it once no
    /// instance started under the `patched` code is left. Always a no-op in a
    /// `#[dtask(snapshot)]` function.
    ///
    /// # Panics
    /// Outside of a DTask's execution, like every DTask operation.
    pub fn deprecate_patch(id: &str) {
        with(|ex| {
            patched(ex, id, false);
        });
    }
}

/// `DTask::patched(id)` (`record`) or `DTask::deprecate_patch(id)` at the next position.
fn patched(ex: &mut Exec, id: &str, record: bool) -> bool {
    if ex.snapshot.is_some() || ex.failure.is_some() {
        return true;
    }
    let seq = ex.next_seq;
    match ex.entry(seq).map(|e| &e.cmd) {
        Some(Command::Patch { id: recorded }) if recorded == id => {
            ex.next_seq += 1;
            true
        }
        // Written by code from before the change: the old branch.
        Some(_) => false,
        None if record => {
            ex.journal.push(Entry {
                cmd: Command::Patch { id: id.to_string() },
                result: Some(Outcome::Ok(vec![0xc3])),
                order: 0,
            });
            ex.next_seq += 1;
            true
        }
        None => true,
    }
}

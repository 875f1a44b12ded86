//! Test utilities (feature `test-util`): a deterministic single-instance executor for
//! testing a DTask's body, in either execution model, against plain async. It runs one
//! body, and whenever the body is blocked on distributed operations, resolves one of them
//! (chosen by the caller) with a result the caller computes. The differential tests and
//! the benchmark use it.
//!
//! Also [`start_without_claim`]: the start a client killed halfway through
//! [`Client::start_with_id`] leaves behind, for tests of that crash; and
//! [`as_next_revision`]: a task message as a build of the next envelope revision could
//! write it, for tests of rolling upgrades.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use serde::Serialize;

use crate::client::{ClaimId, Client, Handle};
use crate::dtask::Call;
use crate::error::{Error, Failure, FailureKind};
use crate::exec::{run_step, Model, StepOutput};
use crate::protocol::codec::{decode, encode};
use crate::protocol::message::TaskMessage;
use crate::protocol::state::{Command, Entry, InstanceId, InstanceState, Outcome, ReplyTo, Seq};
use crate::registry::Registration;
use crate::step::{drive, Exec, StepEnd};
use crate::store::{
    Fact, FactKind, Filter, InstanceInfo, InstanceStore, Listing, PayloadStore, Query,
};

/// A distributed operation the body issued, as the resolver sees it.
#[derive(Debug, Clone)]
pub struct Op {
    /// Its journal position.
    pub seq: u32,
    /// The DTask called, for child calls.
    pub name: Option<String>,
    /// The encoded arguments, for child calls.
    pub input: Vec<u8>,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    /// The encoded result, or the failure.
    pub result: Result<Vec<u8>, Failure>,
    /// Every distributed operation issued, in order, as `seq: command`.
    pub ops: Vec<String>,
    /// How many times the body was driven to quiescence.
    pub steps: usize,
    /// The largest encoded task message carrying the state (snapshot and replay runs).
    pub max_message: usize,
    /// The size of the task message carrying the state at each suspension.
    pub message_sizes: Vec<usize>,
    /// How long each step took (building or resuming the body, driving it, encoding the
    /// state).
    pub step_times: Vec<Duration>,
    /// The size of the task message that starts each next run, after a
    /// [`DTask::continue_as_new`](crate::DTask::continue_as_new) (replay and snapshot
    /// runs): entry `i` starts run `i + 2`.
    pub run_sizes: Vec<usize>,
}

/// Resolves operations and chooses which outstanding one completes next.
pub trait World {
    /// The result of `op` (MessagePack), or its failure.
    fn resolve(&mut self, op: &Op) -> Result<Vec<u8>, Failure>;
    /// Chooses, among the outstanding positions (ascending), the one to complete next.
    fn pick(&mut self, outstanding: &[u32]) -> usize;
}

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn outstanding(journal: &[Entry], base: Seq) -> Vec<u32> {
    journal
        .iter()
        .enumerate()
        .filter(|(_, e)| e.cmd.is_distributed() && e.result.is_none())
        .map(|(i, _)| base + i as Seq)
        .collect()
}

fn op_of(seq: Seq, cmd: &Command, inputs: &HashMap<Seq, Vec<u8>>) -> Op {
    Op {
        seq,
        name: match cmd {
            Command::Child { name, .. } => Some(name.clone()),
            _ => None,
        },
        input: inputs.get(&seq).cloned().unwrap_or_default(),
    }
}

fn outcome(r: Result<Vec<u8>, Failure>) -> Outcome {
    match r {
        Ok(b) => Outcome::Ok(b),
        Err(f) => Outcome::Failed(f),
    }
}

const MAX_STEPS: usize = 100_000;

/// Runs `fut` as plain async code: one future, polled again after each resolution, never
/// serialized.
pub async fn run_direct<T, F>(fut: F, world: &mut dyn World) -> Trace
where
    T: Serialize,
    F: Future<Output = T> + Send + 'static,
{
    let mut body = crate::__private::body(fut);
    let exec = Arc::new(Mutex::new(Exec::snapshot(
        InstanceId::new("direct").expect("valid id"),
        Vec::new(),
        0,
        Vec::new(),
        0,
        now(),
    )));
    let mut trace = failed(Failure::new(FailureKind::Stuck, "did not finish"));
    let mut inputs = HashMap::new();
    let mut seen = 0;
    while trace.steps < MAX_STEPS {
        let end = drive(&mut body, &exec).await;
        trace.steps += 1;
        let mut ex = exec.lock().unwrap_or_else(|p| p.into_inner());
        for (i, e) in ex.journal.iter().enumerate().skip(seen) {
            if e.cmd.is_distributed() {
                trace.ops.push(format!("{i}: {}", e.cmd));
            }
        }
        seen = ex.journal.len();
        inputs.extend(std::mem::take(&mut ex.child_inputs));
        match end {
            StepEnd::Completed(bytes) => {
                trace.result = Ok(bytes);
                return trace;
            }
            StepEnd::Failed(f) => {
                trace.result = Err(f);
                return trace;
            }
            StepEnd::Continued(_) => {
                let msg = "DTask::continue_as_new needs a registered DTask (run_model)";
                trace.result = Err(Failure::new(FailureKind::Misuse, msg));
                return trace;
            }
            StepEnd::Suspended => {
                let open = outstanding(&ex.journal, 0);
                if open.is_empty() {
                    trace.result = Err(Failure::new(FailureKind::Stuck, "nothing to resolve"));
                    return trace;
                }
                let seq = open[world.pick(&open).min(open.len() - 1)];
                let op = op_of(seq, &ex.journal[seq as usize].cmd, &inputs);
                let r = world.resolve(&op);
                ex.recorded += 1;
                let order = ex.recorded;
                let e = &mut ex.journal[seq as usize];
                e.result = Some(outcome(r));
                e.order = order;
            }
        }
    }
    trace
}

/// Runs the `#[dtask(snapshot)]` function registered as `name` on `input`: at every
/// suspension its state is encoded into a task message, the machine is dropped, and the
/// decoded state resumes it.
pub async fn run_snapshot(name: &str, input: Vec<u8>, world: &mut dyn World) -> Trace {
    let state = InstanceState::new(
        InstanceId::new("snap").expect("valid id"),
        name.to_string(),
        input,
        ReplyTo::Root,
    );
    drive_model(name, true, state, world, usize::MAX).await.0
}

/// Like [`run_snapshot`], but stops at the `suspensions`-th suspension and returns the
/// task message that carries the suspended instance (`None` when it finished before).
pub async fn suspend_snapshot(
    name: &str,
    input: Vec<u8>,
    world: &mut dyn World,
    suspensions: usize,
) -> (Trace, Option<Vec<u8>>) {
    let state = InstanceState::new(
        InstanceId::new("snap").expect("valid id"),
        name.to_string(),
        input,
        ReplyTo::Root,
    );
    drive_model(name, true, state, world, suspensions).await
}

/// Resumes the instance carried by `message` (from [`suspend_snapshot`]) with the code
/// registered as `name`, as a worker running that code would.
pub async fn resume_snapshot(name: &str, message: &[u8], world: &mut dyn World) -> Trace {
    match decode::<TaskMessage>(message) {
        Ok(TaskMessage::Step { state, .. }) => {
            drive_model(name, true, *state, world, usize::MAX).await.0
        }
        Ok(_) => failed(Failure::new(FailureKind::BadInput, "not a step message")),
        Err(e) => failed(Failure::new(FailureKind::BadInput, e.to_string())),
    }
}

/// The parts of a suspended snapshot that tests tamper with.
#[derive(Debug)]
pub struct Tamper {
    /// The fingerprint of the code that saved it.
    pub fingerprint: u64,
    /// The await it is suspended at.
    pub point: u32,
    /// The saved locals.
    pub locals: Vec<u8>,
}

/// Applies `f` to the snapshot inside `message` (a task message from
/// [`suspend_snapshot`]) and encodes the result; `None` when it carries no snapshot.
pub fn tamper(message: &[u8], f: impl FnOnce(&mut Tamper)) -> Option<Vec<u8>> {
    let Ok(TaskMessage::Step {
        mut state,
        completion,
    }) = decode::<TaskMessage>(message)
    else {
        return None;
    };
    let snap = state.snapshot.as_mut()?;
    let mut t = Tamper {
        fingerprint: snap.fingerprint,
        point: snap.point,
        locals: std::mem::take(&mut snap.locals),
    };
    f(&mut t);
    snap.fingerprint = t.fingerprint;
    snap.point = t.point;
    snap.locals = t.locals;
    Some(encode(&TaskMessage::Step { state, completion }))
}

fn failed(f: Failure) -> Trace {
    Trace {
        result: Err(f),
        ops: Vec::new(),
        steps: 0,
        max_message: 0,
        message_sizes: Vec::new(),
        step_times: Vec::new(),
        run_sizes: Vec::new(),
    }
}

/// Runs the DTask registered as `name` from `state` the way workers do, in the model it
/// was declared with (`snapshot`: which one is expected): at every suspension the state is
/// encoded into a task message and decoded, and the `stop_after`-th suspension stops the
/// run with that message.
async fn drive_model(
    name: &str,
    snapshot: bool,
    mut state: InstanceState,
    world: &mut dyn World,
    stop_after: usize,
) -> (Trace, Option<Vec<u8>>) {
    let mut trace = failed(Failure::new(FailureKind::Stuck, "did not finish"));
    let model = match model_of(name) {
        Ok(model) if matches!(model, Model::Snapshot { .. }) == snapshot => model,
        Ok(_) if snapshot => {
            trace.result = Err(Failure::new(FailureKind::Misuse, "not a snapshot DTask"));
            return (trace, None);
        }
        Ok(_) => {
            trace.result = Err(Failure::new(FailureKind::Misuse, "not a replay DTask"));
            return (trace, None);
        }
        Err(f) => {
            trace.result = Err(f);
            return (trace, None);
        }
    };
    let mut inputs = HashMap::new();
    while trace.steps < MAX_STEPS {
        let started = Instant::now();
        let StepOutput {
            end,
            first_new,
            child_inputs,
            ..
        } = run_step(model, &mut state, now(), None).await;
        trace.steps += 1;
        inputs.extend(child_inputs);
        for seq in first_new..state.next_seq() {
            if let Some(e) = state.entry(seq).filter(|e| e.cmd.is_distributed()) {
                trace.ops.push(format!("{seq}: {}", e.cmd));
            }
        }
        match end {
            StepEnd::Completed(bytes) => {
                trace.result = Ok(bytes);
                return (trace, None);
            }
            StepEnd::Failed(f) => {
                trace.result = Err(f);
                return (trace, None);
            }
            StepEnd::Continued(input) => {
                state.continue_as_new(input);
                let bytes = encode(&TaskMessage::Step {
                    state: Box::new(state),
                    completion: None,
                });
                trace.run_sizes.push(bytes.len());
                state = match decode::<TaskMessage>(&bytes) {
                    Ok(TaskMessage::Step { state, .. }) => *state,
                    _ => {
                        trace.result = Err(Failure::new(FailureKind::BadInput, "round trip"));
                        return (trace, None);
                    }
                };
                continue;
            }
            StepEnd::Suspended => {
                // The round trip: the state as it travels in a message.
                let bytes = encode(&TaskMessage::Step {
                    state: Box::new(state),
                    completion: None,
                });
                trace.step_times.push(started.elapsed());
                trace.message_sizes.push(bytes.len());
                trace.max_message = trace.max_message.max(bytes.len());
                if trace.steps >= stop_after {
                    return (trace, Some(bytes));
                }
                state = match decode::<TaskMessage>(&bytes) {
                    Ok(TaskMessage::Step { state, .. }) => *state,
                    _ => {
                        trace.result = Err(Failure::new(FailureKind::BadInput, "round trip"));
                        return (trace, None);
                    }
                };
                let open = state.outstanding_seqs();
                if open.is_empty() {
                    trace.result = Err(Failure::new(FailureKind::Stuck, "nothing to resolve"));
                    return (trace, None);
                }
                let seq = open[world.pick(&open).min(open.len() - 1)];
                let Some(cmd) = state.entry(seq).map(|e| e.cmd.clone()) else {
                    continue;
                };
                let op = op_of(seq, &cmd, &inputs);
                let r = world.resolve(&op);
                state.record(seq, outcome(r));
            }
        }
    }
    (trace, None)
}

/// Runs the replay-model `#[dtask]` function registered as `name` on `input` the way
/// workers do: every step builds the body anew and replays the journal, and at every
/// suspension the state is encoded into a task message and decoded. For comparing the
/// models (resume cost per step, message size).
pub async fn run_replay(name: &str, input: Vec<u8>, world: &mut dyn World) -> Trace {
    let state = InstanceState::new(
        InstanceId::new("replay").expect("valid id"),
        name.to_string(),
        input,
        ReplyTo::Root,
    );
    drive_model(name, false, state, world, usize::MAX).await.0
}

/// The fingerprint of the `#[dtask(snapshot)]` function registered as `name`.
pub fn fingerprint(name: &str) -> Option<u64> {
    match model_of(name) {
        Ok(Model::Snapshot { fingerprint, .. }) => Some(fingerprint),
        _ => None,
    }
}

/// How the `#[dtask]` function registered as `name` runs.
fn model_of(name: &str) -> Result<Model, Failure> {
    inventory::iter::<Registration>
        .into_iter()
        .find(|r| r.name == name)
        .map(|r| r.run)
        .ok_or_else(|| Failure::new(FailureKind::UnknownDTask, name.to_string()))
}

/// Publishes the start of `task` under `id` as [`Client::start_with_id`] does, and stops
/// before claiming the id: what a client killed between publishing a start and claiming
/// its id leaves behind. A worker claims the id for this start and runs it, so it runs
/// once, and a later start of `id` is refused with [`Error::is_already_started`].
///
/// ```
/// # use dtasks::{dtask, InstanceId, Runtime, WorkerConfig};
/// #[dtask]
/// async fn add_one(x: u64) -> u64 { x + 1 }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), dtasks::Error> {
/// let rt = Runtime::new(WorkerConfig::new().register(add_one))?;
/// let id = InstanceId::new("left-behind")?;
/// let h = dtasks::test_util::start_without_claim(&rt.client(), id.clone(), add_one(1)).await?;
/// assert_eq!(h.result().await?, 2);
/// let again = rt.client().start_with_id(id, add_one(1)).await.unwrap_err();
/// assert!(again.is_already_started());
/// # Ok(()) }
/// ```
pub async fn start_without_claim<T>(
    client: &Client,
    id: InstanceId,
    task: Call<T>,
) -> Result<Handle<T>, Error> {
    let (name, input) = task.into_parts();
    let input = input.map_err(|e| Error::bad_input(format!("the input cannot be encoded: {e}")))?;
    client
        .publish_start(id, name, input, ClaimId::PublishOnly)
        .await
}

/// The task message `bytes` (a whole envelope of a `Step`) as a build of the next envelope
/// revision could write it: one more field at the end of the step and of its state, under
/// revision [`ENVELOPE_VERSION`](crate::ENVELOPE_VERSION)` + 1`. This build cannot decode
/// it ([`Error::is_newer`]); its workers hand it back (see
/// [`WorkerConfig::newer_message_patience`](crate::WorkerConfig::newer_message_patience)).
/// `None` when `bytes` are not a step message.
pub fn as_next_revision(bytes: &[u8]) -> Option<Vec<u8>> {
    crate::protocol::codec::as_next_revision(bytes)
}

/// An instance store that refuses every status write ([`FactKind::Status`]) and hands
/// every other call to the store it wraps: a store that fails whenever a root reports
/// `Running` or `Suspended`, for tests of what workers do when their store fails. Every
/// method is forwarded, those with a default too ([`InstanceStore::read_finished`],
/// [`InstanceStore::replies_while_recording`], [`InstanceStore::reports_duplicates`],
/// [`InstanceStore::payloads`]), so the wrapped store behaves as it does alone.
///
/// ```
/// # use std::sync::Arc;
/// # use std::time::SystemTime;
/// # use dtasks::store::{Fact, FactKind, InstanceStore, MemoryStore};
/// # use dtasks::test_util::RefuseStatus;
/// # use dtasks::{InstanceId, Status};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), dtasks::Error> {
/// let store = RefuseStatus(Arc::new(MemoryStore::new()));
/// let id = InstanceId::new("refused")?;
/// let fact = |kind| Fact::new(id.clone(), "work", SystemTime::now(), kind);
/// store.record(vec![fact(FactKind::Started { parent: None })]).await?;
/// let running = FactKind::Status { status: Status::Running, waits: Vec::new(), version: 1 };
/// let e = store.record(vec![fact(running)]).await.unwrap_err();
/// assert!(e.to_string().contains("status writes are refused"));
/// assert_eq!(store.get(&id).await?.map(|i| i.status), Some(Status::Pending));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RefuseStatus(pub Arc<dyn InstanceStore>);

impl std::fmt::Debug for RefuseStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefuseStatus").finish_non_exhaustive()
    }
}

impl InstanceStore for RefuseStatus {
    fn record(&self, facts: Vec<Fact>) -> BoxFuture<'_, Result<u64, Error>> {
        if facts
            .iter()
            .any(|f| matches!(f.kind, FactKind::Status { .. }))
        {
            return Box::pin(async { Err(Error::store("status writes are refused")) });
        }
        self.0.record(facts)
    }

    fn get<'a>(&'a self, id: &'a InstanceId) -> BoxFuture<'a, Result<Option<InstanceInfo>, Error>> {
        self.0.get(id)
    }

    fn list<'a>(&'a self, query: &'a Query) -> BoxFuture<'a, Result<Listing, Error>> {
        self.0.list(query)
    }

    fn purge<'a>(&'a self, filter: &'a Filter) -> BoxFuture<'a, Result<u64, Error>> {
        self.0.purge(filter)
    }

    fn claim<'a>(&'a self, id: &'a InstanceId, nonce: u64) -> BoxFuture<'a, Result<bool, Error>> {
        self.0.claim(id, nonce)
    }

    fn wait_finished<'a>(
        &'a self,
        id: &'a InstanceId,
    ) -> BoxFuture<'a, Result<InstanceInfo, Error>> {
        self.0.wait_finished(id)
    }

    fn read_finished<'a>(
        &'a self,
        id: &'a InstanceId,
    ) -> BoxFuture<'a, Result<InstanceInfo, Error>> {
        self.0.read_finished(id)
    }

    fn replies_while_recording(&self) -> bool {
        self.0.replies_while_recording()
    }

    fn reports_duplicates(&self) -> bool {
        self.0.reports_duplicates()
    }

    fn payloads(&self) -> Option<Arc<dyn PayloadStore>> {
        self.0.payloads()
    }
}

//! Facts about root instances, as workers and clients record them in the instance store.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::codec::{encode, encode_as, Enveloped, Kind};
use super::message::{ResultRecord, Status, Wait};
use super::state::{to_millis, Command, InstanceId, InstanceState, Outcome};
use crate::error::Error;

/// One fact about a root instance, as workers and clients record it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Fact {
    /// The instance.
    pub instance: InstanceId,
    /// Its DTask name.
    pub name: String,
    /// When the fact was made (the writer's clock).
    pub at: SystemTime,
    /// What it says.
    pub kind: FactKind,
    /// For a status or a finish: the instance's journal as the writer saw it, in runs of
    /// steps (empty for the snapshot model, whose journal is not kept, and for other
    /// facts). Older facts, written without it, read as empty.
    #[serde(default)]
    pub steps: Vec<Steps>,
    /// The run the writer's state was in (1 for an instance that never continued as new,
    /// see [`DTask::continue_as_new`](crate::DTask::continue_as_new)); 0 when the fact
    /// does not say (a start, a purge, a fact of an older writer).
    #[serde(default)]
    pub runs: u32,
    /// On the status of a suspended snapshot-model instance: the fingerprint of the code
    /// that saved its machine, which only that code (or code that accepts or migrates
    /// from it) can resume. `None` otherwise.
    #[serde(default)]
    pub fingerprint: Option<u64>,
    /// On a start: the instance records its children in the store (it is a root started
    /// by a client made with [`Client::recording_children`](crate::Client::recording_children),
    /// or a descendant of one), so that they are listed with their statuses and the code
    /// their snapshot machines hold. `false` on other facts and on starts written before
    /// the store kept it.
    #[serde(default)]
    pub records_children: bool,
}

/// A run of consecutive steps of one kind in an instance's journal, as a status or finish
/// fact summarises it: `count` steps from position `first`, of which `done` have their
/// result (`failed` of those a failure).
///
/// Runs merge steps of the same kind and name (a fan-out of a thousand children of one
/// DTask is one run), and a fact carries at most [`Steps::MAX_RUNS`] of them, the latest:
/// a journal longer than that shows its end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Steps {
    /// The journal position of the run's first step.
    pub first: u32,
    /// How many steps the run holds.
    pub count: u32,
    /// What each step does.
    pub kind: StepKind,
    /// How many of them have their result recorded.
    pub done: u32,
    /// How many of those results are failures.
    pub failed: u32,
}

/// What a journal step does (see [`Steps`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum StepKind {
    /// Starts (and awaits, unless spawned) a child of this DTask name.
    Child(String),
    /// A durable timer, due at this time (milliseconds since the Unix epoch).
    Timer(u64),
    /// Waits for the next event of this name.
    Event(String),
    /// Waits for a resume by token.
    Resume,
    /// A yield.
    Yield,
    /// A side effect run in the step and recorded (`DTask::run`).
    Run,
}

impl Steps {
    /// The most runs a fact carries.
    pub const MAX_RUNS: usize = 64;

    /// `count` steps of `kind` from position `first`, none of them done yet.
    pub fn new(first: u32, count: u32, kind: StepKind) -> Self {
        Self {
            first,
            count,
            kind,
            done: 0,
            failed: 0,
        }
    }

    /// The same run with `done` steps done, `failed` of them failures.
    pub fn with_done(mut self, done: u32, failed: u32) -> Self {
        self.done = done;
        self.failed = failed;
        self
    }

    /// The journal position after the last step of `runs` (0 for none).
    pub fn end(runs: &[Steps]) -> u32 {
        runs.last().map_or(0, |r| r.first.saturating_add(r.count))
    }

    /// The runs of `state`'s journal (none for a snapshot-model instance: its journal
    /// holds only what it still awaits).
    pub(crate) fn of(state: &InstanceState) -> Vec<Steps> {
        if state.snapshot.is_some() || state.base > 0 {
            return Vec::new();
        }
        let mut runs: Vec<Steps> = Vec::new();
        for (i, entry) in state.journal.iter().enumerate() {
            let kind = match &entry.cmd {
                Command::Child { name, .. } => StepKind::Child(name.clone()),
                c @ (Command::Delay { .. } | Command::DelayUntil { .. }) => {
                    StepKind::Timer(c.fire_at().map_or(0, to_millis))
                }
                Command::Event { name } => StepKind::Event(name.clone()),
                Command::Suspend => StepKind::Resume,
                Command::Yield => StepKind::Yield,
                Command::Run => StepKind::Run,
                Command::Compacted | Command::Patch { .. } => continue,
            };
            let done = u32::from(entry.result.is_some());
            let failed = u32::from(matches!(entry.result, Some(Outcome::Failed(_))));
            let pos = u32::try_from(i).unwrap_or(u32::MAX);
            match runs.last_mut() {
                Some(last) if last.kind == kind && last.first + last.count == pos => {
                    last.count += 1;
                    last.done += done;
                    last.failed += failed;
                }
                _ => runs.push(Steps {
                    first: pos,
                    count: 1,
                    kind,
                    done,
                    failed,
                }),
            }
        }
        if runs.len() > Self::MAX_RUNS {
            runs.drain(..runs.len() - Self::MAX_RUNS);
        }
        runs
    }
}

/// What a [`Fact`] says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum FactKind {
    /// The instance was started (recorded by the client before the start is published):
    /// from then on it is known, and `Pending` until a worker reports on it.
    Started {
        /// The instance that started it, when it is not a client.
        parent: Option<InstanceId>,
    },
    /// A worker reports a status (`Running` or `Suspended`, with what it waits for).
    Status {
        /// The status.
        status: Status,
        /// What a suspended instance waits for.
        waits: Vec<Wait>,
        /// The version of the state that wrote it: a status of an older version than
        /// the one recorded is stale.
        version: u64,
    },
    /// The instance finished (`Succeeded`, `Failed` or `Cancelled`) with `result`, the
    /// encoded outcome (a store's reads decode it).
    Finished {
        /// The final status.
        status: Status,
        /// The encoded outcome.
        #[serde(with = "serde_bytes")]
        result: Vec<u8>,
    },
    /// The finished instance was purged: a store that keeps a log of facts forgets it
    /// when it reads this (nothing happens to an instance that has not finished).
    Purged,
}

impl Enveloped for Fact {
    const KIND: Kind = Kind::Fact;
}

/// Several facts in one message (see [`Fact::batch_to_bytes`]).
#[derive(Serialize, Deserialize)]
#[serde(transparent)]
struct FactBatch(Vec<Fact>);

impl Enveloped for FactBatch {
    const KIND: Kind = Kind::Facts;
}

impl Fact {
    /// A fact about `instance` of DTask `name`, made at `at`.
    pub fn new(
        instance: InstanceId,
        name: impl Into<String>,
        at: SystemTime,
        kind: FactKind,
    ) -> Self {
        Self {
            instance,
            name: name.into(),
            at,
            kind,
            steps: Vec::new(),
            runs: 0,
            fingerprint: None,
            records_children: false,
        }
    }

    /// The same fact, saying whether its instance records its children (see
    /// [`Fact::records_children`]; for a start).
    pub fn with_records_children(mut self, records: bool) -> Self {
        self.records_children = records;
        self
    }

    /// The same fact, saying that its instance is in run `runs` and, when suspended in
    /// the snapshot model, holds a machine saved by the code `fingerprint`.
    pub fn with_run(mut self, runs: u32, fingerprint: Option<u64>) -> Self {
        self.runs = runs;
        self.fingerprint = fingerprint;
        self
    }

    /// The fact with the journal summary `steps` (see [`Fact::steps`]).
    pub fn with_steps(mut self, steps: Vec<Steps>) -> Self {
        self.steps = steps;
        self
    }

    /// The fact in the wire format (for stores that keep facts as bytes).
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(self)
    }

    /// A fact from [`Fact::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        super::codec::decode(bytes)
    }

    /// Several facts in one message of the wire format (for stores that write facts in
    /// batches); [`Fact::all_from_bytes`] reads it back.
    ///
    /// ```
    /// use std::time::SystemTime;
    /// use dtasks::store::{Fact, FactKind};
    /// use dtasks::InstanceId;
    ///
    /// let facts: Vec<Fact> = ["a", "b"]
    ///     .into_iter()
    ///     .map(|id| {
    ///         let kind = FactKind::Started { parent: None };
    ///         Fact::new(InstanceId::new(id).unwrap(), "order", SystemTime::UNIX_EPOCH, kind)
    ///     })
    ///     .collect();
    /// let bytes = Fact::batch_to_bytes(&facts);
    /// assert_eq!(Fact::all_from_bytes(&bytes).unwrap(), facts);
    /// // One fact's own bytes read as a batch of one.
    /// assert_eq!(Fact::all_from_bytes(&facts[0].to_bytes()).unwrap(), &facts[..1]);
    /// ```
    pub fn batch_to_bytes(facts: &[Fact]) -> Vec<u8> {
        encode_as(Kind::Facts, facts)
    }

    /// The facts of a message of [`Fact::batch_to_bytes`] or of [`Fact::to_bytes`] (one
    /// fact); an error for anything else.
    pub fn all_from_bytes(bytes: &[u8]) -> Result<Vec<Self>, Error> {
        match bytes.get(3) {
            Some(&k) if k == Kind::Fact as u8 => Ok(vec![Self::from_bytes(bytes)?]),
            _ => Ok(super::codec::decode::<FactBatch>(bytes)?.0),
        }
    }

    /// The finish of `state` with `outcome`.
    pub(crate) fn finished(state: &InstanceState, at: SystemTime, outcome: Outcome) -> Self {
        let status = match &outcome {
            Outcome::Ok(_) => Status::Succeeded,
            Outcome::Failed(f) if f.is_cancelled() => Status::Cancelled,
            Outcome::Failed(_) => Status::Failed,
        };
        let result = encode(&ResultRecord { outcome });
        Self::new(
            state.id.clone(),
            state.name.clone(),
            at,
            FactKind::Finished { status, result },
        )
        .with_steps(Steps::of(state))
    }
}

//! An instance's state: its id, input, journal, where its result goes and, for the
//! snapshot model, its saved machine.
//!
//! Serialized with rmp-serde inside the protocol's versioned envelope. Field order is part
//! of the wire format: add fields only at the end of a struct, with `#[serde(default)]`,
//! or bump the envelope version.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::Failure;

/// Position of an operation in an instance's journal.
pub(crate) type Seq = u32;

pub use super::id::InstanceId;

/// A fresh claim nonce for a start under a chosen id: 62 random bits, never 0 (below
/// 2^62, so that a transport may store it as a non-negative signed 64-bit number).
pub(crate) fn new_claim_nonce() -> u64 {
    let bits = super::hooks::random_u128() as u64;
    (bits & ((1 << 62) - 1)).max(1)
}

/// Milliseconds since the Unix epoch.
pub(crate) fn to_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis().min(u64::MAX as u128) as u64)
        .unwrap_or(0)
}

pub(crate) fn from_millis(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// The entry at position `seq` of a journal that starts at position `base`, or of the
/// spawned operations `pinned` beside it (a compacted position holds none).
pub(crate) fn entry_at<'a>(
    journal: &'a [Entry],
    base: Seq,
    pinned: &'a [(Seq, Entry)],
    seq: Seq,
) -> Option<&'a Entry> {
    let i = seq.checked_sub(base).map(|i| i as usize);
    match i.and_then(|i| journal.get(i)) {
        Some(e) if e.cmd != Command::Compacted => Some(e),
        _ => pinned.iter().find(|(s, _)| *s == seq).map(|(_, e)| e),
    }
}

/// [`entry_at`], for changing the entry.
pub(crate) fn entry_at_mut<'a>(
    journal: &'a mut [Entry],
    base: Seq,
    pinned: Option<&'a mut Vec<(Seq, Entry)>>,
    seq: Seq,
) -> Option<&'a mut Entry> {
    let i = seq.checked_sub(base).map(|i| i as usize);
    let in_journal = i
        .and_then(|i| journal.get(i))
        .is_some_and(|e| e.cmd != Command::Compacted);
    if in_journal {
        return i.and_then(|i| journal.get_mut(i));
    }
    pinned?.iter_mut().find(|(s, _)| *s == seq).map(|(_, e)| e)
}

/// A distributed operation as recorded in the journal. Two commands at the same position
/// must match on replay, else the instance fails with a non-determinism error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Command {
    /// Start a child instance of DTask `name` with input whose hash is `input_hash`.
    Child { name: String, input_hash: u64 },
    /// A relative timer; `fire_at_ms` is fixed when the command is first issued.
    Delay { millis: u64, fire_at_ms: u64 },
    /// An absolute timer.
    DelayUntil { at_ms: u64 },
    /// Suspend and resume at once, possibly elsewhere.
    Yield,
    /// A local side effect whose result is recorded.
    Run,
    /// A position whose operation a snapshot-model instance no longer needs (its result
    /// was consumed). Results that arrive for it are dropped.
    Compacted,
    /// Wait for the next external event (signal) named `name`.
    Event { name: String },
    /// Wait until a client resumes this position with a value (a resume token).
    Suspend,
    /// The marker of a code change, `DTask::patched(id)`: the instance reached this point
    /// under code that has the change (its result is always `true`). A replay of a
    /// journal without it takes the old branch. New in the journal: a worker of a build
    /// before it cannot decode a state that holds one.
    Patch { id: String },
}

impl Command {
    /// Whether a command issued on replay matches the recorded one.
    pub(crate) fn matches(&self, new: &Command) -> bool {
        match (self, new) {
            // A relative timer's fire time depends on when it was first issued.
            (Command::Delay { millis: a, .. }, Command::Delay { millis: b, .. }) => a == b,
            (a, b) => a == b,
        }
    }

    pub(crate) fn fire_at(&self) -> Option<SystemTime> {
        match self {
            Command::Delay { fire_at_ms, .. } => Some(from_millis(*fire_at_ms)),
            Command::DelayUntil { at_ms } => Some(from_millis(*at_ms)),
            _ => None,
        }
    }

    pub(crate) fn is_distributed(&self) -> bool {
        !matches!(
            self,
            Command::Run | Command::Compacted | Command::Patch { .. }
        )
    }

    /// Whether the operation waits for something from outside (an event, a resume): no
    /// message is published for it, and its instance waits in its mailbox.
    pub(crate) fn is_external(&self) -> bool {
        matches!(self, Command::Event { .. } | Command::Suspend)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Child { name, input_hash } => {
                write!(f, "call `{name}` (input hash {input_hash:016x})")
            }
            Command::Delay { millis, .. } => write!(f, "delay {millis} ms"),
            Command::DelayUntil { at_ms } => write!(f, "delay until {at_ms} ms after epoch"),
            Command::Yield => f.write_str("yield"),
            Command::Run => f.write_str("run (local side effect)"),
            Command::Compacted => f.write_str("compacted"),
            Command::Event { name } => write!(f, "wait for event `{name}`"),
            Command::Suspend => f.write_str("suspend until resumed"),
            Command::Patch { id } => write!(f, "patch marker `{id}`"),
        }
    }
}

/// The result of an operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Outcome {
    /// The operation's value, MessagePack-encoded.
    Ok(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The operation (a child) failed.
    Failed(Failure),
}

/// One journal entry: the command issued at this position and, once known, its result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub(crate) cmd: Command,
    pub(crate) result: Option<Outcome>,
    /// The order in which results were recorded (1-based); decides `when_any` winners
    /// deterministically on replay.
    pub(crate) order: u32,
}

/// Where an instance's result goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ReplyTo {
    /// A root instance: the result goes to the result register.
    Root,
    /// The parent is suspended on this child alone; its state rides along and comes back
    /// with the reply.
    Continuation {
        parent: Box<InstanceState>,
        seq: Seq,
    },
    /// The parent keeps its state in its mailbox; the reply is merged there.
    Mailbox {
        parent: InstanceId,
        parent_name: String,
        seq: Seq,
    },
    /// Nobody awaits the result (a spawned child whose parent finished first).
    Detached,
    /// A root started with [`Client::call`](crate::Client::call): the result goes to the
    /// reply queue `client` of the calling client; the instance has no registers.
    Client { client: String },
}

/// The state of a replay-model instance: its input plus the journal of operations.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct InstanceState {
    pub(crate) id: InstanceId,
    pub(crate) name: String,
    #[serde(with = "serde_bytes")]
    pub(crate) input: Vec<u8>,
    pub(crate) journal: Vec<Entry>,
    pub(crate) reply: ReplyTo,
    /// Once an instance waits on several operations at once, its state lives in its
    /// mailbox for the rest of its life.
    pub(crate) mailbox: bool,
    /// Incremented at every write of the state to the mailbox; the highest wins.
    pub(crate) version: u64,
    /// Number of results recorded so far (source of [`Entry::order`]).
    pub(crate) recorded: u32,
    /// Set on the tombstone written to the mailbox when the instance finished.
    pub(crate) finished: bool,
    /// The saved state machine of a snapshot-model instance (`#[dtask(snapshot)]`) while
    /// it is suspended; `None` for the replay model.
    #[serde(default)]
    pub(crate) snapshot: Option<Snapshot>,
    /// The position of `journal[0]`: a snapshot-model instance drops the entries it no
    /// longer needs from the front of its journal; in either model, a run continued as
    /// new (`run`) starts its journal where the run before stopped.
    #[serde(default)]
    pub(crate) base: Seq,
    /// Mailbox mode: when the pending keep-alive of the mailbox fires (0: none pending).
    #[serde(default)]
    pub(crate) touch_at_ms: u64,
    /// How many steps the instance has run (the number of its next step).
    #[serde(default)]
    pub(crate) steps: u32,
    /// Events received and not yet consumed by a wait, in the order they arrived.
    #[serde(default)]
    pub(crate) inbox: Vec<Signal>,
    /// The ids of the last [`SEEN_SIGNALS`] events received, so that an event delivered
    /// again (a merge redone after a crash) is not received twice.
    #[serde(default)]
    pub(crate) seen: Vec<String>,
    /// Whether the last status written shows a long wait (an event, a resume, a timer), so
    /// that the status is written again when the instance waits for something else.
    #[serde(default)]
    pub(crate) shown_long: bool,
    /// The random nonce of a start under a chosen id ([`new_claim_nonce`]): before the
    /// root's first step, the worker runs it only if the id's claim register holds this
    /// nonce. `None` for every other instance.
    #[serde(default)]
    pub(crate) claim: Option<u64>,
    /// Set, with the reason, once a step found the instance cancelled: from then on its
    /// distributed awaits outside a clean-up scope fail as cancelled, and it ends
    /// `Cancelled` (see `engine::cancel`).
    #[serde(default)]
    pub(crate) cancelled: Option<String>,
    /// The outermost instance whose cancellation cancels this one: the ancestors that
    /// count are this id and every id between it and the instance's own (`None`: only
    /// the instance's own id, as for roots and children started in a clean-up scope).
    #[serde(default)]
    pub(crate) cancel_scope: Option<InstanceId>,
    /// The positions of the children started inside a clean-up scope
    /// ([`DTask::cleanup`](crate::DTask::cleanup)): they are not cancelled with this
    /// instance.
    #[serde(default)]
    pub(crate) shielded: Vec<Seq>,
    /// The reply queue of the client that started this root with `start`: its result goes
    /// there as well as to the instance store, so the starting process needs no lookup.
    #[serde(default)]
    pub(crate) notify: Option<String>,
    /// Mailbox mode: the positions of the operations published with their reply to the
    /// mailbox (children, timers, yields) whose reply has not arrived yet, results recorded
    /// otherwise (a race's loser, a compacted position) included. A finished instance's
    /// mailbox is kept until they have come (`engine::reap`).
    #[serde(default)]
    pub(crate) awaiting: Vec<Seq>,
    /// Mailbox mode: the delay of the pending keep-alive (0: none scheduled yet); each
    /// next one waits twice as long, up to a quarter of the mailbox retention.
    #[serde(default)]
    pub(crate) touch_every_ms: u64,
    /// The tombstone: from when its mailbox may be deleted (ms since the epoch), once the
    /// replies in `awaiting` are in it.
    #[serde(default)]
    pub(crate) reap_at_ms: u64,
    /// Mailbox mode: how many mailbox messages the drains that wrote this state took,
    /// over its life. Orders two states of one version: a drain redone after its worker
    /// died before its write was confirmed takes everything the first took (none of it
    /// was acked) and what came since, so its state is the later one (section 4).
    #[serde(default)]
    pub(crate) drained: u64,
    /// Set on a root whose client asked for its children to be recorded
    /// ([`Client::recording_children`](crate::Client::recording_children)), and on every
    /// descendant: such an instance reports its start, statuses and finish to the
    /// instance store as a root does, with its parent.
    #[serde(default)]
    pub(crate) records_children: bool,
    /// How many times the instance continued as a new run of itself
    /// ([`DTask::continue_as_new`](crate::DTask::continue_as_new)): it is in run `run + 1`.
    /// Each run starts with an empty journal at the position the run before stopped at,
    /// so that its operations' ids never meet an earlier run's.
    #[serde(default)]
    pub(crate) run: u32,
    /// The field the next envelope revision adds (feature `next-revision`: a build that
    /// stands for the next one in tests of rolling upgrades).
    #[cfg(feature = "next-revision")]
    #[serde(default)]
    pub(crate) next: Option<String>,
}

/// The most states one message carries nested in each other (a chain of parents each
/// waiting for its child alone, section 4 of the architecture): a parent whose child would
/// carry more waits in its mailbox instead. Encoding, decoding and dropping a state
/// recurse once per nested state, so this bounds the stack a message needs, whatever the
/// depth of the instances' nesting (and the decoder's depth limit,
/// `codec::DECODE_DEPTH`, refuses anything deeper that others send).
pub(crate) const MAX_RIDING: usize = 16;

/// How many event ids an instance remembers to drop redelivered events.
pub(crate) const SEEN_SIGNALS: usize = 4096;

/// An external event sent to an instance ([`Client::signal`](crate::Client::signal)).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Signal {
    /// Unique per send: a redelivered copy has the same id.
    pub(crate) id: String,
    /// The event's name.
    pub(crate) name: String,
    /// The MessagePack-encoded value.
    #[serde(with = "serde_bytes")]
    pub(crate) value: Vec<u8>,
}

impl InstanceState {
    pub(crate) fn new(id: InstanceId, name: String, input: Vec<u8>, reply: ReplyTo) -> Self {
        Self {
            id,
            name,
            input,
            journal: Vec::new(),
            reply,
            mailbox: false,
            version: 0,
            recorded: 0,
            finished: false,
            snapshot: None,
            base: 0,
            touch_at_ms: 0,
            steps: 0,
            inbox: Vec::new(),
            seen: Vec::new(),
            shown_long: false,
            claim: None,
            cancelled: None,
            cancel_scope: None,
            shielded: Vec::new(),
            notify: None,
            awaiting: Vec::new(),
            touch_every_ms: 0,
            reap_at_ms: 0,
            drained: 0,
            records_children: false,
            run: 0,
            #[cfg(feature = "next-revision")]
            next: None,
        }
    }

    /// Takes in `signal` unless it was received before; returns whether it is new.
    pub(crate) fn receive(&mut self, signal: Signal) -> bool {
        if self.seen.contains(&signal.id) {
            return false;
        }
        if self.seen.len() >= SEEN_SIGNALS {
            self.seen.remove(0);
        }
        self.seen.push(signal.id.clone());
        self.inbox.push(signal);
        true
    }

    /// Whether the instance waits for something that may take long: an event, a resume or
    /// a timer (its status is written when this begins or ends).
    pub(crate) fn waits_long(&self) -> bool {
        self.outstanding_seqs().into_iter().any(|seq| {
            self.entry(seq)
                .is_some_and(|e| e.cmd.is_external() || e.cmd.fire_at().is_some())
        })
    }

    /// Gives the events in the inbox to the waits for them, oldest event to the earliest
    /// wait of its name; returns how many were given.
    pub(crate) fn deliver_events(&mut self) -> usize {
        let mut given = 0;
        for seq in self.outstanding_seqs() {
            let Some(Command::Event { name }) = self.entry(seq).map(|e| e.cmd.clone()) else {
                continue;
            };
            if let Some(i) = self.inbox.iter().position(|s| s.name == name) {
                let signal = self.inbox.remove(i);
                if self.record(seq, Outcome::Ok(signal.value)) {
                    given += 1;
                }
            }
        }
        given
    }

    /// How many ancestors' states ride inside this instance's messages: the parent waiting
    /// for it alone, that parent's own such parent, and so on (see [`MAX_RIDING`]).
    pub(crate) fn riding(&self) -> usize {
        let mut n = 0;
        let mut reply = &self.reply;
        while let ReplyTo::Continuation { parent, .. } = reply {
            n += 1;
            reply = &parent.reply;
        }
        n
    }

    /// The cancel scope of the child this instance starts at `seq`: none for a child
    /// started in a clean-up scope, else this instance's own scope.
    pub(crate) fn child_scope(&self, seq: Seq) -> Option<InstanceId> {
        if self.shielded.contains(&seq) {
            None
        } else {
            Some(self.cancel_scope.clone().unwrap_or_else(|| self.id.clone()))
        }
    }

    /// The new child `name(input)` this instance starts at `seq`, replying to `reply`.
    pub(crate) fn new_child(&self, seq: Seq, name: String, input: Vec<u8>, reply: ReplyTo) -> Self {
        let mut child = Self::new(self.id.child(seq), name, input, reply);
        child.cancel_scope = self.child_scope(seq);
        child.records_children = self.records_children;
        child
    }

    /// The ids whose cancellation cancels this instance: its scope's outermost id, each
    /// id between that one and its own, and its own. Child ids are `parent.seq`, so the
    /// ids in between are the prefixes of its own id that end before a `.` after the
    /// scope's id (exact even when a root's id contains `.`).
    pub(crate) fn cancel_ids(&self) -> Vec<&str> {
        let own = self.id.as_str();
        let mut ids = Vec::new();
        if let Some(scope) = &self.cancel_scope {
            let scope = scope.as_str();
            if own.len() > scope.len() && own.starts_with(scope) {
                ids.push(scope);
                let rest = &own[scope.len()..];
                for (i, b) in rest.bytes().enumerate().skip(1) {
                    if b == b'.' {
                        ids.push(&own[..scope.len() + i]);
                    }
                }
            }
        }
        ids.push(own);
        ids
    }

    /// The journal entry at position `seq` (for a snapshot-model instance, also the
    /// entries of spawned operations kept beside its compacted journal).
    pub(crate) fn entry(&self, seq: Seq) -> Option<&Entry> {
        let pinned = self.snapshot.as_ref().map_or(&[][..], |s| &s.pinned[..]);
        entry_at(&self.journal, self.base, pinned, seq)
    }

    fn entry_mut(&mut self, seq: Seq) -> Option<&mut Entry> {
        let pinned = self.snapshot.as_mut().map(|s| &mut s.pinned);
        entry_at_mut(&mut self.journal, self.base, pinned, seq)
    }

    /// The positions of the operations issued whose results are still unknown.
    pub(crate) fn outstanding_seqs(&self) -> Vec<Seq> {
        let open = |e: &Entry| e.cmd.is_distributed() && e.result.is_none();
        let mut seqs: Vec<Seq> = self
            .journal
            .iter()
            .enumerate()
            .filter(|(_, e)| open(e))
            .map(|(i, _)| self.base + i as Seq)
            .collect();
        if let Some(snap) = &self.snapshot {
            seqs.extend(snap.pinned.iter().filter(|(_, e)| open(e)).map(|(s, _)| *s));
        }
        seqs.sort_unstable();
        seqs
    }

    /// The position the next new operation takes.
    pub(crate) fn next_seq(&self) -> Seq {
        self.base + self.journal.len() as Seq
    }

    /// Records `outcome` as the result of operation `seq`. Returns false when the result
    /// is already known or `seq` is not an outstanding operation (a duplicate).
    pub(crate) fn record(&mut self, seq: Seq, outcome: Outcome) -> bool {
        let order = self.recorded + 1;
        match self.entry_mut(seq) {
            Some(e) if e.result.is_none() && e.cmd.is_distributed() => {
                e.result = Some(outcome);
                e.order = order;
                self.recorded = order;
                true
            }
            _ => false,
        }
    }

    /// Whether this instance's facts go to the instance store: a root's do, and those of
    /// every instance under a root that records its children.
    pub(crate) fn reports(&self) -> bool {
        self.reply == ReplyTo::Root || self.records_children
    }

    /// Operations issued whose results are still unknown.
    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding_seqs().len()
    }

    /// The tombstone of this finished instance, for its mailbox: it keeps the replies the
    /// instance still awaits, and its mailbox may be deleted from `reap_at_ms` on.
    pub(crate) fn tombstone(&self, reap_at_ms: u64) -> Self {
        Self {
            id: self.id.clone(),
            name: self.name.clone(),
            input: Vec::new(),
            journal: Vec::new(),
            reply: ReplyTo::Root,
            mailbox: true,
            version: self.version + 1,
            recorded: self.recorded,
            finished: true,
            snapshot: None,
            base: 0,
            touch_at_ms: 0,
            steps: self.steps,
            inbox: Vec::new(),
            seen: Vec::new(),
            shown_long: false,
            claim: None,
            cancelled: self.cancelled.clone(),
            cancel_scope: None,
            shielded: Vec::new(),
            notify: None,
            awaiting: self.awaiting.clone(),
            touch_every_ms: 0,
            reap_at_ms,
            drained: self.drained,
            records_children: self.records_children,
            run: self.run,
            #[cfg(feature = "next-revision")]
            next: None,
        }
    }
}

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

/// A pending distributed operation as saved in a snapshot: journal positions only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Shape {
    /// One operation; with `catch`, a failure is a value (`catch_failure`).
    Op { seq: Seq, catch: bool },
    /// `when_all` / `join`: every part, as an array.
    All(Vec<Shape>),
    /// `when_any`: the part recorded first, as `(index, value)`.
    Any(Vec<Shape>),
    /// `task.within(timeout)`: `Some(value)` when the task was recorded before the timer
    /// at `timer`, else `None`.
    Within { task: Box<Shape>, timer: Seq },
    /// An await whose expression a resume builds again (a retry): the rebuilt DTask is
    /// replayed over the operations it issued, at positions `first..end`, then goes on.
    Replay { first: Seq, end: Seq },
    /// `DTask::cleanup`: the part's awaits are exempt from the instance's cancellation.
    Cleanup(Box<Shape>),
    /// `DTask::race`: as `Any`, and the children the losers started are cancelled.
    Race(Vec<Shape>),
    /// `DTask::timeout`: the task, or a timeout failure when the delay is recorded first
    /// (the task's children are then cancelled), as a `Result`.
    Timeout { task: Box<Shape>, delay: Seq },
}

impl Shape {
    pub(crate) fn seqs(&self, out: &mut Vec<Seq>) {
        match self {
            Shape::Op { seq, .. } => out.push(*seq),
            Shape::Within { task, timer } => {
                task.seqs(out);
                out.push(*timer);
            }
            Shape::Replay { first, end } => out.extend(*first..*end),
            Shape::All(parts) | Shape::Any(parts) | Shape::Race(parts) => {
                parts.iter().for_each(|p| p.seqs(out))
            }
            Shape::Cleanup(part) => part.seqs(out),
            Shape::Timeout { task, delay } => {
                task.seqs(out);
                out.push(*delay);
            }
        }
    }
}

/// 64-bit FNV-1a: a stable hash for recording inputs in the journal.
pub(crate) fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

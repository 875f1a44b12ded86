//! The execution context of one step of an instance (replay or snapshot model).
//!
//! The driver installs the context in a thread-local slot for the duration of each poll of
//! the instance's future; DTask leaf futures reach it from there. That keeps the API free
//! of an explicit context parameter, as in plain async/await.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::error::{Failure, FailureKind};
use crate::protocol::state::{
    entry_at, entry_at_mut, Command, Entry, InstanceId, Outcome, Seq, Shape, Signal,
};

/// The context of one step: the journal DTask operations claim positions in and read
/// results from, and what the step issued.
pub(crate) struct Exec {
    pub(crate) instance: InstanceId,
    pub(crate) journal: Vec<Entry>,
    /// The position of `journal[0]` (non-zero for compacted snapshot journals and for the
    /// runs after a continue-as-new).
    pub(crate) base: Seq,
    /// The first position of this step: entries at or past it were issued now.
    pub(crate) replayed: usize,
    /// What only the snapshot model keeps (`None` in the replay model).
    pub(crate) snapshot: Option<SnapshotCtx>,
    pub(crate) recorded: u32,
    pub(crate) next_seq: Seq,
    /// Leaf operations that reported `Pending` for want of a result in the last poll.
    pub(crate) blocked: u32,
    pub(crate) failure: Option<Failure>,
    pub(crate) now: SystemTime,
    /// The transport's clock, read when a relative timer is issued (`None`: `now`).
    pub(crate) clock: Option<Clock>,
    /// Encoded inputs of the child calls issued in this step, by position.
    pub(crate) child_inputs: BTreeMap<Seq, Vec<u8>>,
    /// The instance's DTask name (for resume tokens).
    pub(crate) dtask: String,
    /// Events received and not yet taken by a wait, moved in from the state.
    pub(crate) inbox: Vec<Signal>,
    /// Snapshot model: claims of positions below this one replay the journal (an await
    /// built again at a resume, see [`Exec::rewind`]).
    pub(crate) replay_until: Seq,
    /// What cancellation means in this step (see [`Cancel`]).
    pub(crate) cancel: Cancel,
    /// The input of the next run, once the body asked to continue as new
    /// ([`DTask::continue_as_new`](crate::DTask::continue_as_new)): the step ends there.
    pub(crate) continued: Option<Vec<u8>>,
}

/// The cancellation state of one step.
#[derive(Default)]
pub(crate) struct Cancel {
    /// The reason, once the instance is cancelled.
    pub(crate) reason: Option<String>,
    /// How many clean-up scopes ([`DTask::cleanup`](crate::DTask::cleanup)) are being
    /// polled: their awaits are exempt.
    pub(crate) shield: u32,
    /// The positions of the children started in a clean-up scope (the state's, plus those
    /// claimed in this step).
    pub(crate) shielded: Vec<Seq>,
    /// The running children this step cancelled (their entries now hold a cancelled
    /// failure): the engine tells them.
    pub(crate) children: Vec<CancelChild>,
}

/// A running child that a step cancelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CancelChild {
    pub(crate) seq: Seq,
    pub(crate) reason: String,
    /// Whether the child needs a cancel record of its own (a race's loser); a child
    /// cancelled with its parent is covered by an ancestor's record.
    pub(crate) record: bool,
}

/// A clock: the current time of a transport (real or virtual).
pub(crate) type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// The context only the snapshot model keeps: operations are always new (nothing is
/// replayed or checked), and the machine saves its frame here.
#[derive(Default)]
pub(crate) struct SnapshotCtx {
    /// What the await the machine is pending on saved, if anything.
    pub(crate) saved: Saved,
    /// Positions claimed by `DTask::spawn` in this step.
    pub(crate) spawned: Vec<Seq>,
    /// Entries of spawned operations kept beside the compacted journal.
    pub(crate) pinned: Vec<(Seq, Entry)>,
}

/// What the snapshot machine left for the engine at its last pending poll.
#[derive(Default)]
pub(crate) enum Saved {
    /// Not pending at an await of the machine's body.
    #[default]
    Nothing,
    /// Pending at a distributed await: its saved frame.
    Frame(Frame),
    /// Pending at an await that cannot be saved, and why.
    Unsaveable(String),
}

/// What a snapshot point saves while it is pending.
#[derive(Debug)]
pub(crate) struct Frame {
    pub(crate) point: u32,
    pub(crate) locals: Vec<u8>,
    pub(crate) pending: Shape,
}

impl Exec {
    /// A replay-model context: the body is run from the top and every operation is
    /// checked against `journal`, whose first entry is at position `base` (the position
    /// the instance's current run started at, see `InstanceState::continue_as_new`).
    pub(crate) fn replay(
        instance: InstanceId,
        journal: Vec<Entry>,
        base: Seq,
        recorded: u32,
        now: SystemTime,
    ) -> Self {
        Self::new(instance, journal, base, None, recorded, now)
    }

    /// A snapshot-model context whose journal starts at position `base`; `pinned` holds
    /// the entries of spawned operations kept beside it.
    pub(crate) fn snapshot(
        instance: InstanceId,
        journal: Vec<Entry>,
        base: Seq,
        pinned: Vec<(Seq, Entry)>,
        recorded: u32,
        now: SystemTime,
    ) -> Self {
        let ctx = SnapshotCtx {
            pinned,
            ..SnapshotCtx::default()
        };
        Self::new(instance, journal, base, Some(ctx), recorded, now)
    }

    fn new(
        instance: InstanceId,
        journal: Vec<Entry>,
        base: Seq,
        snapshot: Option<SnapshotCtx>,
        recorded: u32,
        now: SystemTime,
    ) -> Self {
        let next_seq = base + journal.len() as Seq;
        Self {
            instance,
            journal,
            base,
            replayed: next_seq as usize,
            // A replay starts over at the run's first position; a snapshot goes on.
            next_seq: if snapshot.is_some() { next_seq } else { base },
            snapshot,
            recorded,
            blocked: 0,
            failure: None,
            now,
            clock: None,
            child_inputs: BTreeMap::new(),
            dtask: String::new(),
            inbox: Vec::new(),
            replay_until: 0,
            cancel: Cancel::default(),
            continued: None,
        }
    }

    /// Snapshot model: the next claims take positions `first..end` again, replaying the
    /// entries recorded there (checked like the replay model's), for an await whose
    /// DTask a resume built again (a retry waiting for its next attempt).
    pub(crate) fn rewind(&mut self, first: Seq, end: Seq) {
        self.next_seq = first;
        self.replay_until = end;
    }

    /// Sets the instance's cancellation (`reason`) and the positions of the children it
    /// started in clean-up scopes.
    pub(crate) fn with_cancel(mut self, reason: Option<String>, shielded: Vec<Seq>) -> Self {
        self.cancel.reason = reason;
        self.cancel.shielded = shielded;
        self
    }

    /// The reason an await made now fails with: the instance is cancelled and the await
    /// is outside every clean-up scope.
    pub(crate) fn cancelling(&self) -> Option<String> {
        match self.cancel.shield {
            0 => self.cancel.reason.clone(),
            _ => None,
        }
    }

    /// Called when a child is claimed at `seq` in this step: a child claimed in a clean-up
    /// scope is kept out of the instance's cancel scope.
    pub(crate) fn note_child(&mut self, seq: Seq) {
        if self.cancel.shield > 0 && !self.cancel.shielded.contains(&seq) {
            self.cancel.shielded.push(seq);
        }
    }

    /// Resolves the outstanding operation `seq` with a cancelled failure (`reason`), so
    /// that replays see the same and a late result drops out. A child started in an
    /// earlier step (so running) and not in a clean-up scope is told; with `record`, it
    /// gets a cancel record of its own. Returns whether `seq` was outstanding.
    pub(crate) fn cancel_op(&mut self, seq: Seq, reason: &str, record: bool) -> bool {
        let order = self.recorded + 1;
        let running = (seq as usize) < self.replayed && !self.cancel.shielded.contains(&seq);
        let Some(e) = self.entry_mut(seq) else {
            return false;
        };
        if e.result.is_some() || !e.cmd.is_distributed() {
            return false;
        }
        let child = matches!(e.cmd, Command::Child { .. });
        e.result = Some(Outcome::Failed(Failure::new(
            FailureKind::Cancelled,
            reason,
        )));
        e.order = order;
        self.recorded = order;
        if child && running {
            self.cancel.children.push(CancelChild {
                seq,
                reason: reason.to_string(),
                record,
            });
        }
        true
    }

    /// The entry at `seq`, in the journal or beside it (spawned, snapshot model).
    fn entry_mut(&mut self, seq: Seq) -> Option<&mut Entry> {
        let pinned = self.snapshot.as_mut().map(|s| &mut s.pinned);
        entry_at_mut(&mut self.journal, self.base, pinned, seq)
    }

    /// Whether `seq` is a child operation this instance started itself in the journal (a
    /// race's part), not a spawned one kept beside a compacted journal.
    pub(crate) fn started_here(&self, seq: Seq) -> bool {
        let i = seq.checked_sub(self.base).map(|i| i as usize);
        i.and_then(|i| self.journal.get(i))
            .is_some_and(|e| matches!(e.cmd, Command::Child { .. }))
    }

    /// Sets the clock relative timers read (default: the step's start).
    pub(crate) fn with_clock(mut self, clock: Option<Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The time a relative timer issued now counts from: the clock's reading, never before
    /// the step's start. A step's local work (`DTask::run`, ordinary futures) takes time,
    /// and `delay(d)` waits `d` from the moment it is awaited.
    pub(crate) fn issue_time(&self) -> SystemTime {
        match &self.clock {
            Some(clock) => clock().max(self.now),
            None => self.now,
        }
    }

    /// Records the first failure; later ones are consequences.
    pub(crate) fn fail(&mut self, failure: Failure) {
        if self.failure.is_none() {
            self.failure = Some(failure);
        }
    }

    /// Takes the next position for `cmd`, checking it against the journal on replay.
    pub(crate) fn claim(&mut self, cmd: Command) -> Option<Seq> {
        if self.failure.is_some() {
            return None;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        if self.snapshot.is_some() && seq < self.replay_until {
            // An await built again at a resume replays what it issued before.
            return match self.entry(seq) {
                Some(recorded) if recorded.cmd.matches(&cmd) => Some(seq),
                recorded => {
                    let was = recorded.map_or("nothing".to_string(), |e| format!("`{}`", e.cmd));
                    let msg = format!(
                        "at journal position {seq} the await built again at a resume issued \
                         `{cmd}` where the journal records {was}"
                    );
                    self.fail(Failure::new(FailureKind::NonDeterminism, msg));
                    None
                }
            };
        }
        if self.snapshot.is_some() {
            // No replay: every operation is new and takes the next position.
            self.journal.push(Entry {
                cmd,
                result: None,
                order: 0,
            });
            return Some(seq);
        }
        match self.entry(seq) {
            Some(recorded) if !recorded.cmd.matches(&cmd) => {
                let msg = format!(
                    "at journal position {seq} the recorded command is `{}` but replay issued `{}`",
                    recorded.cmd, cmd
                );
                self.fail(Failure::new(FailureKind::NonDeterminism, msg));
                None
            }
            Some(_) => Some(seq),
            None => {
                self.journal.push(Entry {
                    cmd,
                    result: None,
                    order: 0,
                });
                Some(seq)
            }
        }
    }

    /// [`Exec::claim`] of a call of `name` with input hash `input_hash`. A replayed call
    /// that matches its recorded command is checked in place, without building a command.
    pub(crate) fn claim_child(&mut self, name: &str, input_hash: u64) -> Option<Seq> {
        if self.failure.is_none() && self.snapshot.is_none() {
            let seq = self.next_seq;
            if let Some(Entry {
                cmd:
                    Command::Child {
                        name: n,
                        input_hash: h,
                    },
                ..
            }) = self.entry(seq)
            {
                if n == name && *h == input_hash {
                    self.next_seq += 1;
                    return Some(seq);
                }
            }
        }
        self.claim(Command::Child {
            name: name.to_string(),
            input_hash,
        })
    }

    /// The journal entry at position `seq`.
    pub(crate) fn entry(&self, seq: Seq) -> Option<&Entry> {
        let pinned = self.snapshot.as_ref().map_or(&[][..], |s| &s.pinned[..]);
        entry_at(&self.journal, self.base, pinned, seq)
    }

    /// The recorded result at `seq`, with its order.
    pub(crate) fn result(&self, seq: Seq) -> Option<(Result<Vec<u8>, Failure>, u32)> {
        let e = self.entry(seq)?;
        match &e.result {
            Some(Outcome::Ok(b)) => Some((Ok(b.clone()), e.order)),
            Some(Outcome::Failed(f)) => Some((Err(f.clone()), e.order)),
            None => None,
        }
    }

    /// A wait for the event `name` issued at `seq` in this step takes the oldest event of
    /// that name already received, if any; returns whether it did.
    pub(crate) fn take_event(&mut self, seq: Seq, name: &str) -> bool {
        if (seq as usize) < self.replayed {
            return false;
        }
        let Some(i) = self.inbox.iter().position(|s| s.name == name) else {
            return false;
        };
        let signal = self.inbox.remove(i);
        self.record_local(seq, signal.value);
        true
    }

    /// Retires the wait for an event at `seq` that lost a race (`within`, `when_any`): it
    /// gets a result now, so later events go to the next wait of that name. The result is
    /// recorded after the winner's, so a replay picks the same winner.
    pub(crate) fn retire_wait(&mut self, seq: Seq) {
        let i = seq.checked_sub(self.base).map(|i| i as usize);
        let Some(e) = i.and_then(|i| self.journal.get_mut(i)) else {
            return;
        };
        if matches!(e.cmd, Command::Event { .. }) && e.result.is_none() {
            self.recorded += 1;
            e.result = Some(Outcome::Failed(Failure::new(
                FailureKind::Misuse,
                "this wait lost a race and was retired",
            )));
            e.order = self.recorded;
        }
    }

    /// Records the result of a local operation (a `DTask::run`).
    pub(crate) fn record_local(&mut self, seq: Seq, bytes: Vec<u8>) -> u32 {
        self.recorded += 1;
        let order = self.recorded;
        let i = seq.checked_sub(self.base).map(|i| i as usize);
        if let Some(e) = i.and_then(|i| self.journal.get_mut(i)) {
            e.result = Some(Outcome::Ok(bytes));
            e.order = order;
        }
        order
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<Mutex<Exec>>>> = const { RefCell::new(None) };
}

/// Installs `exec` as the current context until the guard drops.
pub(crate) fn enter(exec: Arc<Mutex<Exec>>) -> EnterGuard {
    let prev = CURRENT.with(|c| c.borrow_mut().replace(exec));
    EnterGuard { prev }
}

pub(crate) struct EnterGuard {
    prev: Option<Arc<Mutex<Exec>>>,
}

impl Drop for EnterGuard {
    fn drop(&mut self) {
        let prev = self.prev.take();
        CURRENT.with(|c| *c.borrow_mut() = prev);
    }
}

/// Runs `f` on the current context.
///
/// # Panics
/// Outside of a DTask's execution. The panic fails the instance when it happens inside
/// one (for example in a task started with `tokio::spawn`).
pub(crate) fn with<R>(f: impl FnOnce(&mut Exec) -> R) -> R {
    let exec = CURRENT.with(|c| c.borrow().clone());
    let Some(exec) = exec else {
        panic!(
            "DTask operations can only be used inside a #[dtask] function, polled by its \
             worker (not in a task it spawned with tokio::spawn); to run a DTask from \
             ordinary code, start it with a Client"
        );
    };
    let mut guard = exec.lock().unwrap_or_else(|p| p.into_inner());
    f(&mut guard)
}

//! Every message dtasks publishes, and its id: the one definition the engine and the client
//! both build from.
//!
//! A message id is deterministic: redelivered or replayed work produces the same message
//! under the same id, which is what lets workers, registers and mailboxes tell a duplicate
//! from news. [`MessageId`] lists every id there is; each constructor of [`Outgoing`]
//! below says which one its message carries.

use std::fmt;
use std::time::SystemTime;

use crate::trace::TraceContext;

use super::codec::{encode, ChildStateRef, MailboxItemRef, TaskMessageRef};
use super::fact::{Fact, FactKind, Steps};
use super::message::{CancelRecord, MailboxItem, ResultRecord, Status, TaskMessage, Wait};
use super::state::{
    from_millis, to_millis, InstanceId, InstanceState, Outcome, ReplyTo, Seq, Signal,
};

/// MessagePack for `()`, the value of fired timers and yields.
pub(crate) const UNIT: [u8; 1] = [0xc0];

/// Where an outgoing message goes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Destination {
    /// The task queue of the DTask `name`.
    Task {
        /// The DTask name.
        name: String,
    },
    /// The task queue of the DTask `name`, no earlier than `at`.
    Delayed {
        /// The DTask name.
        name: String,
        /// The earliest delivery time.
        at: SystemTime,
    },
    /// The mailbox of `instance`, followed by a doorbell.
    Mailbox {
        /// The instance.
        instance: InstanceId,
    },
    /// The instance store: the message is a fact about the root `instance`. Workers
    /// record these in their instance store before acking, and never hand them to a
    /// transport's `publish`.
    Store {
        /// The instance.
        instance: InstanceId,
    },
    /// The reply queue of the client `client`; the message is the result of the root
    /// instance it names.
    Reply {
        /// The client's reply queue name.
        client: String,
        /// Whether the result it carries is the one the instance store recorded: the
        /// worker wrote the instance's finish, as its first, before it sent the reply
        /// (the instance store's `reports_duplicates`).
        /// The client then takes the result from the reply without reading the store. A
        /// transport that cannot carry it delivers the reply with `Reply::recorded`
        /// `false`, which only costs that read.
        recorded: bool,
    },
    /// The transport's cancel records (`Cancels`): the
    /// message is the durable record that `instance` is cancelled.
    Cancel {
        /// The instance cancelled.
        instance: InstanceId,
    },
    /// The mailbox of `instance`, followed by a doorbell, only if the mailbox exists: a
    /// keep-alive. It never creates a mailbox; when there is none (the instance finished
    /// and its mailbox was deleted), nothing is stored, and the publish reports
    /// `Published::Dropped`.
    Touch {
        /// The instance.
        instance: InstanceId,
    },
}

/// A message to publish.
#[derive(Clone, Debug)]
pub struct Outgoing {
    /// Where it goes.
    pub destination: Destination,
    /// The encoded envelope.
    pub body: Vec<u8>,
    /// A deterministic id: redelivered or replayed work produces the same id.
    pub message_id: String,
    /// The instance the message is about (for headers and logs).
    pub instance: InstanceId,
    /// The DTask name of that instance.
    pub dtask: String,
    /// The trace context of the span it was sent from, for the span of its delivery
    /// ([`crate::trace`]); `None` without a propagator.
    pub trace: Option<TraceContext>,
}

/// The id of every kind of message, written `<instance>:<suffix>`.
#[derive(Clone, Copy, Debug)]
pub(crate) enum MessageId<'a> {
    /// `start`: the start of an instance (a root, or a child at its parent's position).
    Start(&'a InstanceId),
    /// `r<seq>`: the step that resumes an instance with the result of its operation
    /// `seq` (a child's result, a fired timer, a yield), its state riding along.
    Resume(&'a InstanceId, Seq),
    /// `r<seq>@<now>`: the same resume delayed again because it arrived early; a fresh id,
    /// since the dedupe window has seen the first.
    ResumeAgain(&'a InstanceId, Seq, u64),
    /// `e<seq>`: the result of operation `seq`, for the instance's mailbox.
    Event(&'a InstanceId, Seq),
    /// `t<seq>`: the timer of operation `seq` of a mailbox-mode instance.
    Timer(&'a InstanceId, Seq),
    /// `v<version>`: a write of a mailbox-mode instance's state.
    State(&'a InstanceId, u64),
    /// `end`: the tombstone written to the mailbox when the instance finished.
    End(&'a InstanceId),
    /// `m<recorded>.<drained>`: a merged state handed to a worker that runs its DTask, by a
    /// state whose drains took `drained` mailbox messages. A drain redone after its worker
    /// died may take more than the first (an event that came meanwhile) without recording
    /// another result: its hand-over must not be taken for a redelivery of the first.
    Merged(&'a InstanceId, u32, u64),
    /// `touch<at>`: the keep-alive of a mailbox, due at `at` (ms since the epoch).
    Touch(&'a InstanceId, u64),
    /// `fwd<at>@<now>`: a mailbox item forwarded again because it arrived early.
    ForwardAgain(&'a InstanceId, u64, u64),
    /// `result`: a root's result (register or reply queue).
    Result(&'a InstanceId),
    /// `status:<recorded>`: a root's status write, after `recorded` results.
    Status(&'a InstanceId, u32),
    /// `s:<id>`: an external event, by the id its sender gave it.
    Signal(&'a InstanceId, &'a str),
    /// `start:<nonce>`: the start of a root under a chosen id, claimed with `nonce` (in
    /// hex). Each start of the id has an id of its own, so that the dedupe window never
    /// takes the winning start for a redelivery of a losing one.
    ClaimedStart(&'a InstanceId, u64),
    /// `cancel`: the cancel record of an instance, and the cancel item put in its
    /// mailbox.
    Cancel(&'a InstanceId),
    /// `run<n>.<drained>`: the first step of run `n` (from 2) of an instance continued as
    /// new, by a state whose drains took `drained` mailbox messages. Two hand-offs of one
    /// run differ when a drain was redone after its worker died (the second took all the
    /// first took and what came since, an event the next run must receive among them):
    /// the dedupe window must not take the second for a redelivery of the first.
    Run(&'a InstanceId, u32, u64),
}

impl fmt::Display for MessageId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MessageId::Start(i) => write!(f, "{i}:start"),
            MessageId::Resume(i, seq) => write!(f, "{i}:r{seq}"),
            MessageId::ResumeAgain(i, seq, now) => write!(f, "{i}:r{seq}@{now}"),
            MessageId::Event(i, seq) => write!(f, "{i}:e{seq}"),
            MessageId::Timer(i, seq) => write!(f, "{i}:t{seq}"),
            MessageId::State(i, version) => write!(f, "{i}:v{version}"),
            MessageId::End(i) => write!(f, "{i}:end"),
            MessageId::Merged(i, recorded, drained) => write!(f, "{i}:m{recorded}.{drained}"),
            MessageId::Touch(i, at) => write!(f, "{i}:touch{at}"),
            MessageId::ForwardAgain(i, at, now) => write!(f, "{i}:fwd{at}@{now}"),
            MessageId::Result(i) => write!(f, "{i}:result"),
            MessageId::Status(i, recorded) => write!(f, "{i}:status:{recorded}"),
            MessageId::Signal(i, id) => write!(f, "{i}:s:{id}"),
            MessageId::ClaimedStart(i, nonce) => write!(f, "{i}:start:{nonce:x}"),
            MessageId::Cancel(i) => write!(f, "{i}:cancel"),
            MessageId::Run(i, run, drained) => write!(f, "{i}:run{run}.{drained}"),
        }
    }
}

fn unit() -> Outcome {
    Outcome::Ok(UNIT.to_vec())
}

impl Outgoing {
    fn about(
        destination: Destination,
        body: Vec<u8>,
        id: MessageId<'_>,
        state: &InstanceState,
    ) -> Self {
        Self::named(destination, body, id, &state.id, &state.name)
    }

    fn named(
        destination: Destination,
        body: Vec<u8>,
        id: MessageId<'_>,
        instance: &InstanceId,
        dtask: &str,
    ) -> Self {
        Self {
            destination,
            body,
            message_id: id.to_string(),
            instance: instance.clone(),
            dtask: dtask.to_string(),
            // The span it is sent from: a step's, a delivery's, or a client's caller's.
            trace: crate::trace::current(),
        }
    }

    /// The start of `state`, a new instance ([`MessageId::Start`]; a root started under
    /// a chosen id carries a claim nonce: [`MessageId::ClaimedStart`]).
    pub(crate) fn start(state: &InstanceState) -> Self {
        let id = match state.claim {
            Some(nonce) => MessageId::ClaimedStart(&state.id, nonce),
            None => MessageId::Start(&state.id),
        };
        Self::step(state, id)
    }

    /// A step of `state` with no result to record, to the task queue of its DTask.
    fn step(state: &InstanceState, id: MessageId<'_>) -> Self {
        let body = TaskMessageRef::Step {
            state,
            completion: None,
        }
        .encode();
        let dest = Destination::Task {
            name: state.name.clone(),
        };
        Self::about(dest, body, id, state)
    }

    /// The start of the child `id` = `name(input)` that `parent` issued at `seq` and waits
    /// for alone: the parent's state rides in it, borrowed, and comes back with the child's
    /// result ([`MessageId::Start`]).
    pub(crate) fn start_child_of(
        parent: &InstanceState,
        seq: Seq,
        id: &InstanceId,
        name: &str,
        input: &[u8],
    ) -> Self {
        let child = ChildStateRef::new(id, name, input, parent, seq);
        let body = TaskMessageRef::Step {
            state: &child,
            completion: None,
        }
        .encode();
        let dest = Destination::Task {
            name: name.to_string(),
        };
        Self::named(dest, body, MessageId::Start(id), id, name)
    }

    /// The step that resumes `state` with `outcome` as the result of its operation `seq`
    /// ([`MessageId::Resume`]): a child's result, the state riding along.
    pub(crate) fn resume(state: &InstanceState, seq: Seq, outcome: &Outcome) -> Self {
        let dest = Destination::Task {
            name: state.name.clone(),
        };
        Self::resume_at(dest, state, seq, outcome, MessageId::Resume(&state.id, seq))
    }

    /// The timer of `state`'s operation `seq`, due `at`, the state riding along
    /// ([`MessageId::Resume`]).
    pub(crate) fn timer(state: &InstanceState, seq: Seq, at: SystemTime) -> Self {
        let dest = Destination::Delayed {
            name: state.name.clone(),
            at,
        };
        Self::resume_at(dest, state, seq, &unit(), MessageId::Resume(&state.id, seq))
    }

    /// The yield of `state` at `seq`: a resume through the task queue
    /// ([`MessageId::Resume`]).
    pub(crate) fn yield_now(state: &InstanceState, seq: Seq) -> Self {
        Self::resume(state, seq, &unit())
    }

    /// A resume that arrived before its timer's time, delayed until `at`
    /// ([`MessageId::ResumeAgain`]).
    pub(crate) fn resume_again(
        state: &InstanceState,
        seq: Seq,
        outcome: &Outcome,
        at: SystemTime,
        now: SystemTime,
    ) -> Self {
        let dest = Destination::Delayed {
            name: state.name.clone(),
            at,
        };
        let id = MessageId::ResumeAgain(&state.id, seq, to_millis(now));
        Self::resume_at(dest, state, seq, outcome, id)
    }

    fn resume_at(
        dest: Destination,
        state: &InstanceState,
        seq: Seq,
        outcome: &Outcome,
        id: MessageId<'_>,
    ) -> Self {
        let body = TaskMessageRef::Step {
            state,
            completion: Some((seq, outcome)),
        }
        .encode();
        Self::about(dest, body, id, state)
    }

    /// A merged mailbox-mode state handed to the task queue of its DTask
    /// ([`MessageId::Merged`]).
    pub(crate) fn hand_over(state: &InstanceState) -> Self {
        Self::step(
            state,
            MessageId::Merged(&state.id, state.recorded, state.drained),
        )
    }

    /// The first step of the next run of `state`, continued as new, to the task queue of
    /// its DTask ([`MessageId::Run`]).
    pub(crate) fn next_run(state: &InstanceState) -> Self {
        Self::step(
            state,
            MessageId::Run(&state.id, state.run + 1, state.drained),
        )
    }

    /// The write of `state` to its mailbox ([`MessageId::State`]).
    pub(crate) fn mailbox_state(state: &InstanceState) -> Self {
        let body = MailboxItemRef::State(state).encode();
        let dest = Destination::Mailbox {
            instance: state.id.clone(),
        };
        Self::about(
            dest,
            body,
            MessageId::State(&state.id, state.version),
            state,
        )
    }

    /// The tombstone of a finished mailbox-mode instance, whose mailbox may be deleted
    /// from `reap_at_ms` on ([`MessageId::End`]).
    pub(crate) fn tombstone(state: &InstanceState, reap_at_ms: u64) -> Self {
        let tomb = state.tombstone(reap_at_ms);
        let body = MailboxItemRef::State(&tomb).encode();
        let dest = Destination::Mailbox {
            instance: state.id.clone(),
        };
        Self::about(dest, body, MessageId::End(&state.id), state)
    }

    /// The keep-alive of `state`'s mailbox, due `at` ([`MessageId::Touch`]).
    pub(crate) fn keepalive(state: &InstanceState, at: SystemTime) -> Self {
        let at_ms = to_millis(at);
        let msg = TaskMessage::Forward {
            instance: state.id.clone(),
            name: state.name.clone(),
            item: MailboxItem::Touch,
            not_before_ms: at_ms,
        };
        let dest = Destination::Delayed {
            name: state.name.clone(),
            at,
        };
        Self::about(
            dest,
            encode(&msg),
            MessageId::Touch(&state.id, at_ms),
            state,
        )
    }

    /// The timer of operation `seq` of a mailbox-mode instance: a fired-timer event
    /// forwarded into its mailbox at `at` ([`MessageId::Timer`]).
    pub(crate) fn mailbox_timer(state: &InstanceState, seq: Seq, at: SystemTime) -> Self {
        let msg = TaskMessage::Forward {
            instance: state.id.clone(),
            name: state.name.clone(),
            item: MailboxItem::Event {
                seq,
                outcome: unit(),
            },
            not_before_ms: to_millis(at),
        };
        let dest = Destination::Delayed {
            name: state.name.clone(),
            at,
        };
        Self::about(dest, encode(&msg), MessageId::Timer(&state.id, seq), state)
    }

    /// The result `outcome` of operation `seq` of `instance` (of DTask `name`), for its
    /// mailbox ([`MessageId::Event`]).
    pub(crate) fn event(instance: &InstanceId, name: &str, seq: Seq, outcome: &Outcome) -> Self {
        let body = MailboxItemRef::Event { seq, outcome }.encode();
        let dest = Destination::Mailbox {
            instance: instance.clone(),
        };
        Self::named(dest, body, MessageId::Event(instance, seq), instance, name)
    }

    /// The external event `signal` for the mailbox of `instance` ([`MessageId::Signal`]).
    pub(crate) fn signal(instance: &InstanceId, signal: Signal) -> Self {
        let id = MessageId::Signal(instance, &signal.id).to_string();
        let body = encode(&MailboxItem::Signal(signal));
        Self {
            destination: Destination::Mailbox {
                instance: instance.clone(),
            },
            body,
            message_id: id,
            instance: instance.clone(),
            dtask: String::new(),
            trace: crate::trace::current(),
        }
    }

    /// A mailbox item forwarded at its time into the mailbox of `instance`: the id is the
    /// item's own ([`MessageId::Event`], [`MessageId::State`], [`MessageId::Touch`]).
    pub(crate) fn forwarded(
        instance: &InstanceId,
        name: &str,
        item: &MailboxItem,
        not_before_ms: u64,
    ) -> Self {
        let id = match item {
            MailboxItem::Event { seq, .. } => MessageId::Event(instance, *seq),
            MailboxItem::State(s) => MessageId::State(instance, s.version),
            MailboxItem::Touch => MessageId::Touch(instance, not_before_ms),
            MailboxItem::Signal(s) => MessageId::Signal(instance, &s.id),
            MailboxItem::Cancel { .. } => MessageId::Cancel(instance),
        };
        let to = instance.clone();
        // A keep-alive never creates a mailbox: one that is gone was deleted when its
        // instance finished.
        let dest = match item {
            MailboxItem::Touch => Destination::Touch { instance: to },
            _ => Destination::Mailbox { instance: to },
        };
        Self::named(dest, encode(item), id, instance, name)
    }

    /// A forward that arrived before `not_before_ms`, delayed again
    /// ([`MessageId::ForwardAgain`]).
    pub(crate) fn forward_again(
        instance: &InstanceId,
        name: &str,
        item: MailboxItem,
        not_before_ms: u64,
        now: SystemTime,
    ) -> Self {
        let id = MessageId::ForwardAgain(instance, not_before_ms, to_millis(now));
        let msg = TaskMessage::Forward {
            instance: instance.clone(),
            name: name.to_string(),
            item,
            not_before_ms,
        };
        let dest = Destination::Delayed {
            name: name.to_string(),
            at: from_millis(not_before_ms),
        };
        Self::named(dest, encode(&msg), id, instance, name)
    }

    /// A root's final result: to the instance store, and to the reply queue of the client
    /// that started or called it ([`MessageId::Result`]). Empty for an instance that is
    /// not a root.
    pub(crate) fn result(state: &InstanceState, outcome: Outcome, now: SystemTime) -> Vec<Self> {
        let mut out = Vec::new();
        let client = match &state.reply {
            ReplyTo::Root => state.notify.as_ref(),
            ReplyTo::Client { client } => Some(client),
            _ => return out,
        };
        if let Some(client) = client {
            let body = encode(&ResultRecord {
                outcome: outcome.clone(),
            });
            // Set by the worker once the finish is recorded (`runtime/facts.rs`).
            let dest = Destination::Reply {
                client: client.clone(),
                recorded: false,
            };
            out.push(Self::about(dest, body, MessageId::Result(&state.id), state));
        }
        if state.reply == ReplyTo::Root {
            out.push(Self::finished_fact(state, outcome, now));
        }
        out
    }

    /// The finish of `state` for the instance store ([`MessageId::Result`]): a root's,
    /// or a recorded child's ([`InstanceState::reports`]).
    pub(crate) fn finished_fact(state: &InstanceState, outcome: Outcome, now: SystemTime) -> Self {
        let fact = Fact::finished(state, now, outcome).with_run(state.run.saturating_add(1), None);
        let dest = Destination::Store {
            instance: state.id.clone(),
        };
        Self::about(dest, encode(&fact), MessageId::Result(&state.id), state)
    }

    /// The start of the child `id` of DTask `name` that `parent` issued, for the instance
    /// store: made with the parent's step when the parent records its children
    /// ([`MessageId::Start`]).
    pub(crate) fn child_started(
        parent: &InstanceState,
        id: &InstanceId,
        name: &str,
        now: SystemTime,
    ) -> Option<Self> {
        if !parent.records_children {
            return None;
        }
        let kind = FactKind::Started {
            parent: Some(parent.id.clone()),
        };
        let fact = Fact::new(id.clone(), name, now, kind).with_records_children(true);
        let dest = Destination::Store {
            instance: id.clone(),
        };
        Some(Self::named(
            dest,
            encode(&fact),
            MessageId::Start(id),
            id,
            name,
        ))
    }

    /// The status of a root (or of a recorded child), for the instance store
    /// ([`MessageId::Status`]).
    pub(crate) fn status(state: &InstanceState, status: Status, now: SystemTime) -> Self {
        let dest = Destination::Store {
            instance: state.id.clone(),
        };
        let id = MessageId::Status(&state.id, state.recorded);
        let waits = if status == Status::Suspended {
            Wait::of(state)
        } else {
            Vec::new()
        };
        // Running is reported before the first step's suspension: it sorts first.
        let version = u64::from(state.recorded) * 2 + u64::from(status != Status::Running);
        let kind = FactKind::Status {
            status,
            waits,
            version,
        };
        let code = match status {
            Status::Suspended => state.snapshot.as_ref().map(|s| s.fingerprint),
            _ => None,
        };
        let fact = Fact::new(state.id.clone(), state.name.clone(), now, kind)
            .with_steps(Steps::of(state))
            .with_run(state.run.saturating_add(1), code);
        Self::about(dest, encode(&fact), id, state)
    }

    /// The durable record that `instance` is cancelled with `reason`, for the transport's
    /// cancel records ([`MessageId::Cancel`]).
    pub(crate) fn cancel_record(instance: &InstanceId, reason: &str) -> Self {
        let body = encode(&CancelRecord {
            instance: instance.clone(),
            reason: reason.to_string(),
        });
        let dest = Destination::Cancel {
            instance: instance.clone(),
        };
        Self::named(dest, body, MessageId::Cancel(instance), instance, "")
    }

    /// The cancel item for the mailbox of `instance` (of DTask `name`): its merge runs a
    /// step at once, which stops an instance suspended in mailbox mode
    /// ([`MessageId::Cancel`]).
    pub(crate) fn cancel_item(instance: &InstanceId, name: &str, reason: &str) -> Self {
        let item = MailboxItem::Cancel {
            reason: reason.to_string(),
        };
        let dest = Destination::Mailbox {
            instance: instance.clone(),
        };
        Self::named(
            dest,
            encode(&item),
            MessageId::Cancel(instance),
            instance,
            name,
        )
    }
}

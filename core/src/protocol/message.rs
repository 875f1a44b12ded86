//! The messages of the protocol: what travels in task queues, mailboxes and registers.
//!
//! Each is framed by the protocol's versioned envelope. Field and variant order is
//! part of the wire format: add fields only at the end, with `#[serde(default)]`, or
//! bump the envelope version.

use serde::{Deserialize, Serialize};

use super::state::{to_millis, Command, InstanceId, InstanceState, Outcome, Seq, Signal};

/// A message on a task queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum TaskMessage {
    /// Run a step of the instance whose state this carries, first recording the result of
    /// operation `completion.0` when given (a start has none).
    Step {
        state: Box<InstanceState>,
        completion: Option<(Seq, Outcome)>,
    },
    /// Put `item` into the mailbox of `instance` (of DTask `name`), no earlier than
    /// `not_before_ms` (used for timers of mailbox-mode instances).
    Forward {
        instance: InstanceId,
        name: String,
        item: MailboxItem,
        not_before_ms: u64,
    },
}

/// A message in an instance's mailbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum MailboxItem {
    /// The instance's state (highest `version` wins).
    State(Box<InstanceState>),
    /// The result of operation `seq`.
    Event { seq: Seq, outcome: Outcome },
    /// A keep-alive: draining the mailbox counts as using it, so a broker does not expire
    /// the mailbox of an instance that waits longer than the mailbox retention.
    Touch,
    /// An external event for the instance, kept in its state until a wait takes it.
    Signal(Signal),
    /// The instance is cancelled with `reason`: the merge runs a step at once, which
    /// finds it cancelled (an instance suspended in mailbox mode stops now, rather than
    /// at its next result).
    Cancel { reason: String },
}

/// A durable cancel record: `instance` (and every descendant in its cancel scope) is
/// cancelled with `reason`. Kept by the transport's `Cancels`
/// capability, visible to every worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CancelRecord {
    pub(crate) instance: InstanceId,
    pub(crate) reason: String,
}

/// The final result of a root instance, as kept in the result register.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ResultRecord {
    pub(crate) outcome: Outcome,
}

/// Where an instance is in its life.
///
/// Tracked for root instances (those started by a [`Client`](crate::Client)), and for
/// their descendants when the client records children
/// ([`Client::recording_children`](crate::Client::recording_children)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Status {
    /// Published; no worker has taken it yet.
    Pending,
    /// A worker took it and it has not suspended yet (reported once its first step has
    /// run for 50 ms; a shorter first step goes straight to `Suspended` or a result).
    Running,
    /// Waiting on distributed operations (children, timers). A step resumed after a
    /// suspension keeps reporting `Suspended` until it suspends again or finishes.
    Suspended,
    /// Finished with a value.
    Succeeded,
    /// Finished with a [`Failure`](crate::Failure).
    Failed,
    /// Cancelled.
    Cancelled,
}

/// What a suspended instance waits for, as its status shows it
/// ([`Client::waiting_for`](crate::Client::waiting_for)).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Wait {
    /// The next event of this name ([`DTask::event`](crate::DTask::event)).
    Event(String),
    /// A resume by token ([`DTask::suspend`](crate::DTask::suspend)).
    Resume,
    /// A durable timer, due at this time (milliseconds since the Unix epoch).
    Timer {
        /// When the timer fires, in milliseconds since the Unix epoch.
        at_ms: u64,
    },
    /// Results of this many children.
    Children(u32),
    /// A yield, about to resume.
    Yield,
}

impl Wait {
    /// What `state` waits for: its outstanding operations, children counted together.
    pub(crate) fn of(state: &InstanceState) -> Vec<Wait> {
        let mut waits = Vec::new();
        let mut children = 0;
        for seq in state.outstanding_seqs() {
            match state.entry(seq).map(|e| &e.cmd) {
                Some(Command::Child { .. }) => children += 1,
                Some(Command::Event { name }) => waits.push(Wait::Event(name.clone())),
                Some(Command::Suspend) => waits.push(Wait::Resume),
                Some(Command::Yield) => waits.push(Wait::Yield),
                Some(c @ (Command::Delay { .. } | Command::DelayUntil { .. })) => {
                    let at_ms = c.fire_at().map_or(0, to_millis);
                    waits.push(Wait::Timer { at_ms });
                }
                _ => {}
            }
        }
        if children > 0 {
            waits.push(Wait::Children(children));
        }
        waits
    }
}

impl Status {
    /// Whether the instance has finished.
    pub fn is_finished(self) -> bool {
        matches!(self, Status::Succeeded | Status::Failed | Status::Cancelled)
    }

    /// Its name in lower case (`pending`, `running`, `suspended`, `succeeded`, `failed`,
    /// `cancelled`): what `Display` prints and `FromStr` reads, for command lines and
    /// stores that keep statuses as text.
    ///
    /// ```
    /// use dtasks::Status;
    /// assert_eq!(Status::Suspended.as_str(), "suspended");
    /// assert_eq!("failed".parse::<Status>()?, Status::Failed);
    /// assert!("done".parse::<Status>().unwrap_err().is_bad_input());
    /// # Ok::<(), dtasks::Error>(())
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Suspended => "suspended",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    /// Every status, in the order of an instance's life.
    pub const ALL: [Status; 6] = [
        Status::Pending,
        Status::Running,
        Status::Suspended,
        Status::Succeeded,
        Status::Failed,
        Status::Cancelled,
    ];
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Status {
    type Err = crate::error::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                crate::error::Error::bad_input(format!(
                    "`{s}` is not a status (pending, running, suspended, succeeded, failed, \
                     cancelled)"
                ))
            })
    }
}

//! Error types: [`Failure`] (why an instance failed, carried in its state and messages)
//! and [`Error`] (what a client or worker call returns).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a DTask instance failed.
///
/// A failure is a value: it is recorded in the instance's result, travels to an awaiting
/// parent (which then fails too, unless it used [`Call::catch_failure`]) and is returned
/// to clients by [`Handle::result`]. Inspect it with the `is_*` predicates.
///
/// [`Call::catch_failure`]: crate::Call::catch_failure
/// [`Handle::result`]: crate::Handle::result
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    kind: FailureKind,
    message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum FailureKind {
    Panic,
    NonDeterminism,
    ChildFailed,
    UnknownDTask,
    BadInput,
    StateTooLarge,
    Stuck,
    Misuse,
    CodeChanged,
    Cancelled,
    Timeout,
    LimitExceeded,
    DeadLettered,
}

impl Failure {
    pub(crate) fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// What kind of failure it is.
    #[cfg_attr(not(feature = "sim"), allow(dead_code))]
    pub(crate) fn kind(&self) -> FailureKind {
        self.kind
    }

    /// The kind of failure in snake case (`panic`, `child_failed`, `timeout`, …), as the
    /// metrics label it.
    pub(crate) fn kind_name(&self) -> &'static str {
        match self.kind {
            FailureKind::Panic => "panic",
            FailureKind::NonDeterminism => "nondeterminism",
            FailureKind::ChildFailed => "child_failed",
            FailureKind::UnknownDTask => "unknown_dtask",
            FailureKind::BadInput => "bad_input",
            FailureKind::StateTooLarge => "state_too_large",
            FailureKind::Stuck => "stuck",
            FailureKind::Misuse => "misuse",
            FailureKind::CodeChanged => "code_changed",
            FailureKind::Cancelled => "cancelled",
            FailureKind::Timeout => "timeout",
            FailureKind::LimitExceeded => "limit_exceeded",
            FailureKind::DeadLettered => "dead_lettered",
        }
    }

    /// The human-readable description of the failure.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The DTask's code panicked.
    pub fn is_panic(&self) -> bool {
        self.kind == FailureKind::Panic
    }

    /// On replay the code issued a different distributed operation than the one recorded
    /// at the same position of the journal (or stopped issuing recorded ones).
    pub fn is_nondeterminism(&self) -> bool {
        self.kind == FailureKind::NonDeterminism
    }

    /// A child DTask this instance awaited failed.
    pub fn is_child_failure(&self) -> bool {
        self.kind == FailureKind::ChildFailed
    }

    /// The instance names a DTask that the worker running it does not know.
    pub fn is_unknown_dtask(&self) -> bool {
        self.kind == FailureKind::UnknownDTask
    }

    /// The input (arguments) or a recorded result could not be encoded or decoded.
    pub fn is_bad_input(&self) -> bool {
        self.kind == FailureKind::BadInput
    }

    /// The instance's serialized state grew past the configured size budget.
    pub fn is_state_too_large(&self) -> bool {
        self.kind == FailureKind::StateTooLarge
    }

    /// The instance was pending on something that can never wake it (neither a local
    /// future holding a waker nor a distributed operation).
    pub fn is_stuck(&self) -> bool {
        self.kind == FailureKind::Stuck
    }

    /// A DTask API was used outside of its rules (for example [`DTask::spawn`] of a
    /// combinator, or a handle awaited in another instance).
    ///
    /// [`DTask::spawn`]: crate::DTask::spawn
    pub fn is_misuse(&self) -> bool {
        self.kind == FailureKind::Misuse
    }

    /// A `#[dtask(snapshot)]` instance was suspended by code whose fingerprint differs
    /// from the code of the worker that received it: its saved state is not resumed.
    pub fn is_code_changed(&self) -> bool {
        self.kind == FailureKind::CodeChanged
    }

    /// The instance was cancelled ([`Client::cancel`](crate::Client::cancel), a cancelled
    /// ancestor, or a lost [`DTask::race`](crate::DTask::race)), or an await it made was
    /// stopped by that cancellation. [`Failure::message`] is the reason given to the
    /// cancellation, verbatim.
    pub fn is_cancelled(&self) -> bool {
        self.kind == FailureKind::Cancelled
    }

    /// A [`DTask::timeout`](crate::DTask::timeout) elapsed before its task finished (the
    /// task was cancelled).
    pub fn is_timeout(&self) -> bool {
        self.kind == FailureKind::Timeout
    }

    /// The instance asked for something past one of dtasks' limits (a delay longer than
    /// [`DTask::MAX_DELAY`](crate::DTask::MAX_DELAY)); the message names the limit. Every
    /// limit, and what happens at it: `docs/architecture.md`, section 7.
    pub fn is_limit_exceeded(&self) -> bool {
        self.kind == FailureKind::LimitExceeded
    }

    /// A message of the instance could not be handled (it failed at every delivery, up
    /// to [`WorkerConfig::max_redeliveries`](crate::WorkerConfig::max_redeliveries), or it
    /// could not be read): it was moved to the dead-letter queue, and the instance failed
    /// with this failure, whose message gives the reason.
    pub fn is_dead_lettered(&self) -> bool {
        self.kind == FailureKind::DeadLettered
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            FailureKind::Panic => "panicked",
            FailureKind::NonDeterminism => "non-determinism detected",
            FailureKind::ChildFailed => "child failed",
            FailureKind::UnknownDTask => "unknown DTask",
            FailureKind::BadInput => "bad input",
            FailureKind::StateTooLarge => "state too large",
            FailureKind::Stuck => "stuck",
            FailureKind::Misuse => "misuse",
            FailureKind::CodeChanged => "code changed",
            FailureKind::Cancelled => "cancelled",
            FailureKind::Timeout => "timed out",
            FailureKind::LimitExceeded => "limit exceeded",
            FailureKind::DeadLettered => "dead-lettered",
        };
        write!(f, "{kind}: {}", self.message)
    }
}

impl std::error::Error for Failure {}

/// The error returned by client, worker and transport operations.
///
/// Opaque by design: ask it questions with the `is_*` predicates, get the instance's
/// [`Failure`] with [`Error::failure`], and print it for the details.
#[derive(Debug)]
pub struct Error {
    repr: Repr,
}

#[derive(Debug, thiserror::Error)]
enum Repr {
    #[error("the instance failed: {0}")]
    Failed(Failure),
    #[error("no DTask named `{0}` is registered")]
    UnknownDTask(String),
    #[error("bad input: {0}")]
    BadInput(String),
    #[error("could not decode a message or state: {0}")]
    Decode(String),
    #[error(
        "a message written by a newer build: envelope revision {0}, this build reads \
         revisions {oldest} to {newest}",
        oldest = crate::OLDEST_ENVELOPE_VERSION,
        newest = crate::ENVELOPE_VERSION
    )]
    Newer(u8),
    #[error("no instance `{0}` is known")]
    NotFound(String),
    #[error("transport error: {0}")]
    Transport(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("instance store error: {0}")]
    Store(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("instance `{0}` has finished")]
    Finished(String),
    #[error(
        "instance `{0}` was already started (it is running, suspended or finished, within \
         the register retention)"
    )]
    AlreadyStarted(String),
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),
    #[error("a value stored out of band is missing: {0}")]
    PayloadMissing(String),
}

impl Error {
    pub(crate) fn failed(f: Failure) -> Self {
        Self {
            repr: Repr::Failed(f),
        }
    }
    pub(crate) fn unknown_dtask(name: impl Into<String>) -> Self {
        Self {
            repr: Repr::UnknownDTask(name.into()),
        }
    }
    pub(crate) fn bad_input(msg: impl Into<String>) -> Self {
        Self {
            repr: Repr::BadInput(msg.into()),
        }
    }
    pub(crate) fn decode(msg: impl Into<String>) -> Self {
        Self {
            repr: Repr::Decode(msg.into()),
        }
    }
    pub(crate) fn newer(revision: u8) -> Self {
        Self {
            repr: Repr::Newer(revision),
        }
    }
    /// No instance `id` is known ([`Error::is_not_found`]).
    ///
    /// For implementations of an instance store.(a wait for an
    /// instance the store holds nothing of).
    pub fn not_found(id: impl Into<String>) -> Self {
        Self {
            repr: Repr::NotFound(id.into()),
        }
    }
    pub(crate) fn config(msg: impl Into<String>) -> Self {
        Self {
            repr: Repr::Config(msg.into()),
        }
    }
    pub(crate) fn finished(id: impl Into<String>) -> Self {
        Self {
            repr: Repr::Finished(id.into()),
        }
    }

    pub(crate) fn already_started(id: impl Into<String>) -> Self {
        Self {
            repr: Repr::AlreadyStarted(id.into()),
        }
    }

    pub(crate) fn limit_exceeded(msg: impl Into<String>) -> Self {
        Self {
            repr: Repr::LimitExceeded(msg.into()),
        }
    }

    /// A value stored out of band is not in its payload store, or not as it was written
    /// ([`Error::is_payload_missing`]).
    pub(crate) fn payload_missing(msg: impl Into<String>) -> Self {
        Self {
            repr: Repr::PayloadMissing(msg.into()),
        }
    }

    /// The message of a configuration error without its prefix (for listing several).
    pub(crate) fn detail(&self) -> String {
        match &self.repr {
            Repr::Config(m) => m.clone(),
            other => other.to_string(),
        }
    }

    /// Wraps an error of a transport (a broker client error, an I/O error).
    ///
    /// For transport implementations.
    pub fn transport(err: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self {
            repr: Repr::Transport(err.into()),
        }
    }

    /// Wraps an error of an instance store (a database client error, an I/O error).
    ///
    /// For implementations of an instance store.
    pub fn store(err: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self {
            repr: Repr::Store(err.into()),
        }
    }

    /// An input that is not valid (a store's query, a name), with `msg` saying why.
    ///
    /// For implementations of an instance store.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::bad_input(msg)
    }

    /// The instance ran and failed; [`Error::failure`] says why.
    pub fn is_failed(&self) -> bool {
        matches!(self.repr, Repr::Failed(_))
    }
    /// The instance was cancelled: [`Error::is_failed`] with a failure that
    /// [`Failure::is_cancelled`] (its message is the reason).
    pub fn is_cancelled(&self) -> bool {
        self.failure().is_some_and(Failure::is_cancelled)
    }
    /// The instance's failure, when [`Error::is_failed`].
    pub fn failure(&self) -> Option<&Failure> {
        match &self.repr {
            Repr::Failed(f) => Some(f),
            _ => None,
        }
    }
    /// A DTask name is not registered (where registration is known, e.g. the embedded
    /// runtime).
    pub fn is_unknown_dtask(&self) -> bool {
        matches!(self.repr, Repr::UnknownDTask(_))
    }
    /// The input could not be encoded, or does not match the DTask's arguments.
    pub fn is_bad_input(&self) -> bool {
        matches!(self.repr, Repr::BadInput(_))
    }
    /// Bytes could not be decoded (corrupt, truncated, or of an unknown version;
    /// [`Error::is_newer`] among them).
    pub fn is_decode(&self) -> bool {
        matches!(self.repr, Repr::Decode(_) | Repr::Newer(_))
    }
    /// A message was written by a newer build of dtasks: its envelope revision is above
    /// [`ENVELOPE_VERSION`](crate::ENVELOPE_VERSION), the newest this build reads. A
    /// worker hands such a message back for a newer worker (see
    /// [`WorkerConfig::newer_message_patience`](crate::WorkerConfig::newer_message_patience));
    /// a client that gets one should be upgraded.
    pub fn is_newer(&self) -> bool {
        matches!(self.repr, Repr::Newer(_))
    }
    /// No instance with this id is known.
    pub fn is_not_found(&self) -> bool {
        matches!(self.repr, Repr::NotFound(_))
    }
    /// The transport (broker connection, channel) failed.
    pub fn is_transport(&self) -> bool {
        matches!(self.repr, Repr::Transport(_))
    }
    /// The instance store (its database) failed or cannot be reached.
    pub fn is_store(&self) -> bool {
        matches!(self.repr, Repr::Store(_))
    }
    /// A value stored out of band (a large result or argument) is gone from its payload
    /// store: past the store's retention, purged, or never written there (the reader
    /// uses another payload store than the writer).
    pub fn is_payload_missing(&self) -> bool {
        matches!(self.repr, Repr::PayloadMissing(_))
    }
    /// The configuration is invalid.
    pub fn is_config(&self) -> bool {
        matches!(self.repr, Repr::Config(_))
    }
    /// The instance has already finished (e.g. an event sent to it could never be
    /// received).
    pub fn is_finished(&self) -> bool {
        matches!(self.repr, Repr::Finished(_))
    }
    /// A start under a chosen id found that id already started (running, suspended or
    /// finished): [`Client::start_with_id`](crate::Client::start_with_id) starts an id
    /// once. The message names the id.
    pub fn is_already_started(&self) -> bool {
        matches!(self.repr, Repr::AlreadyStarted(_))
    }
    /// The call asked for something past one of dtasks' limits (arguments that encode to
    /// a start message larger than the state budget); nothing was started. The message
    /// names the limit. Every limit: `docs/architecture.md`, section 7.
    pub fn is_limit_exceeded(&self) -> bool {
        matches!(self.repr, Repr::LimitExceeded(_))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.repr, f)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.repr)
    }
}

//! The transport's internal error, exposed only through `dtasks::Error::transport`.

use lapin::ErrorKind;

#[derive(Debug, thiserror::Error)]
pub(crate) enum AmqpError {
    #[error("{context}: {source}")]
    Broker {
        context: String,
        #[source]
        source: lapin::Error,
    },
    #[error("no connection to the broker: {0}")]
    Connect(String),
    #[error("the broker returned a message for `{0}` as unroutable (the queue is missing)")]
    Returned(String),
    #[error("the broker refused (nack) a message for `{0}`")]
    Nacked(String),
    #[error("{0}")]
    Timeout(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    /// What the caller gave cannot be used (a name past the broker's limit).
    #[error("{0}")]
    Input(String),
    #[error("{0}")]
    Invalid(String),
    /// One failure that several waiters share (a batch written for all of them).
    #[error(transparent)]
    Shared(std::sync::Arc<AmqpError>),
}

/// Reply codes of channel errors that retrying cannot fix.
const ACCESS_REFUSED: u16 = 403;
const NOT_FOUND: u16 = 404;
const RESOURCE_LOCKED: u16 = 405;
const PRECONDITION_FAILED: u16 = 406;

impl AmqpError {
    pub(crate) fn broker(context: impl Into<String>, source: lapin::Error) -> Self {
        Self::Broker {
            context: context.into(),
            source,
        }
    }

    fn reply_code(&self) -> Option<u16> {
        match self {
            Self::Broker { source, .. } => reply_code(source),
            Self::Shared(e) => e.reply_code(),
            _ => None,
        }
    }

    /// An error that a retry on a fresh channel or connection cannot fix (a queue declared
    /// with other arguments, refused access).
    pub(crate) fn is_permanent(&self) -> bool {
        match self {
            Self::Config(_) | Self::Input(_) | Self::Invalid(_) => true,
            Self::Shared(e) => e.is_permanent(),
            _ => matches!(
                self.reply_code(),
                Some(ACCESS_REFUSED | RESOURCE_LOCKED | PRECONDITION_FAILED)
            ),
        }
    }
}

/// The broker closed the channel because a queue does not exist.
pub(crate) fn is_not_found(e: &lapin::Error) -> bool {
    reply_code(e) == Some(NOT_FOUND)
}

/// The broker refused to declare a queue because it exists with another value of the
/// argument `arg` (406 PRECONDITION_FAILED, "inequivalent arg"); an empty `arg` matches
/// any argument.
pub(crate) fn is_inequivalent(e: &lapin::Error, arg: &str) -> bool {
    match e.kind() {
        ErrorKind::ProtocolError(p) => {
            p.get_id() == PRECONDITION_FAILED
                && p.get_message()
                    .as_str()
                    .contains(&format!("inequivalent arg '{arg}"))
        }
        _ => false,
    }
}

fn reply_code(e: &lapin::Error) -> Option<u16> {
    match e.kind() {
        ErrorKind::ProtocolError(p) => Some(p.get_id()),
        _ => None,
    }
}

impl AmqpError {
    /// The caller's configuration or input is at fault, not the broker: retrying
    /// cannot help, and the error says what to change.
    fn is_input(&self) -> bool {
        match self {
            Self::Config(_) | Self::Input(_) => true,
            Self::Shared(e) => e.is_input(),
            _ => false,
        }
    }
}

impl From<AmqpError> for dtasks::Error {
    /// A configuration or an input the transport cannot use is
    /// [`is_bad_input`](dtasks::Error::is_bad_input); everything else
    /// [`is_transport`](dtasks::Error::is_transport).
    fn from(e: AmqpError) -> Self {
        if e.is_input() {
            dtasks::Error::invalid(e.to_string())
        } else {
            dtasks::Error::transport(e)
        }
    }
}

pub(crate) type Result<T, E = AmqpError> = std::result::Result<T, E>;

/// Adds what was being done to a broker error.
pub(crate) trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, lapin::Error> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| AmqpError::broker(what(), e))
    }
}

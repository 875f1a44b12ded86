//! How a command ends: its exit code and the message for standard error.

use std::process::ExitCode;

use dtasks::Error;

/// The operation failed (e.g. the instance asked for its result failed).
pub(crate) const FAILED: u8 = 1;
/// Bad usage: clap's own code for errors in the command line, and ours for arguments
/// that parse but are not valid (an id, a cursor, JSON).
pub(crate) const USAGE: u8 = 2;
/// No such instance or dead letter.
pub(crate) const NOT_FOUND: u8 = 3;
/// The broker or the database cannot be reached.
pub(crate) const UNREACHABLE: u8 = 4;
/// `result` without `--wait`: not finished yet.
pub(crate) const NOT_FINISHED: u8 = 5;

/// A command that did not succeed: the code to exit with, and what to say on stderr.
#[derive(Debug)]
pub(crate) struct Exit {
    pub(crate) code: u8,
    pub(crate) message: String,
}

impl Exit {
    pub(crate) fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self::new(USAGE, message)
    }

    /// The exit for `e`, which happened while doing `what`.
    pub(crate) fn from_error(what: &str, e: &Error) -> Self {
        let code = if e.is_not_found() {
            NOT_FOUND
        } else if e.is_transport() || e.is_store() {
            UNREACHABLE
        } else if e.is_bad_input() {
            USAGE
        } else {
            FAILED
        };
        Self::new(code, format!("{what}: {e}"))
    }

    pub(crate) fn code(&self) -> ExitCode {
        ExitCode::from(self.code)
    }
}

/// `Result` of a command.
pub(crate) type Done = Result<(), Exit>;

/// Adds what was being done to a dtasks error.
pub(crate) trait Doing<T> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T, Exit>;
}

impl<T> Doing<T> for Result<T, Error> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T, Exit> {
        self.map_err(|e| Exit::from_error(&what(), &e))
    }
}

//! What went wrong talking to PostgreSQL, and whether trying again can help.

use std::fmt;
use std::time::Duration;

use dtasks::Error;

/// A failed read or write attempt, kept apart from [`Error`] until the writer has decided
/// whether to try again.
#[derive(Debug)]
pub(crate) enum PgError {
    /// The database client failed (the connection, or the server refused a statement).
    Db(tokio_postgres::Error),
    /// No connection could be had from the pool.
    Pool(deadpool_postgres::PoolError),
    /// The attempt took longer than its bound.
    Timeout(Duration),
    /// The database holds something this code does not understand (a row it cannot
    /// read, a newer schema).
    Corrupt(String),
    /// A row the writer had seen was gone when it locked it (removed by a purge in
    /// between): the next attempt creates it again.
    Vanished,
}

impl PgError {
    /// Whether the same attempt may succeed later: a lost or refused connection, a
    /// deadlock or serialization failure, a server shutting down or out of resources.
    /// Errors about the statement or the data (classes 22, 23, 42, 0A) are permanent.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            PgError::Db(e) | PgError::Pool(deadpool_postgres::PoolError::Backend(e)) => {
                db_error_is_transient(e)
            }
            PgError::Pool(_) | PgError::Timeout(_) | PgError::Vanished => true,
            PgError::Corrupt(_) => false,
        }
    }

    /// The error a caller gets: its message holds every cause, down to the server's
    /// own words (`database "x" does not exist`, `Connection refused`), which the
    /// database client's errors show only through their sources.
    pub(crate) fn into_error(self) -> Error {
        Error::store(described(&self))
    }
}

/// `e` and each of its causes, as one message: each cause once, and none that the
/// message already holds.
pub(crate) fn described(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !more.is_empty() && !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// Whether the database client's error `e` may pass: any error without an SQLSTATE (the
/// connection) and every class but those about the statement or the data.
fn db_error_is_transient(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        None => true,
        Some(code) => {
            let class = code.code().get(..2).unwrap_or("");
            !matches!(class, "22" | "23" | "42" | "0A" | "2B" | "3F")
        }
    }
}

impl fmt::Display for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PgError::Db(e) => write!(f, "{e}"),
            PgError::Pool(e) => write!(f, "no database connection: {e}"),
            PgError::Timeout(d) => write!(f, "the database did not answer within {d:?}"),
            PgError::Corrupt(m) => f.write_str(m),
            PgError::Vanished => f.write_str("a row was removed while it was being written"),
        }
    }
}

impl std::error::Error for PgError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PgError::Db(e) => Some(e),
            PgError::Pool(e) => Some(e),
            _ => None,
        }
    }
}

impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> Self {
        PgError::Db(e)
    }
}

impl From<deadpool_postgres::PoolError> for PgError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        PgError::Pool(e)
    }
}

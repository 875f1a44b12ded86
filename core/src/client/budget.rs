//! The client's size check: a start, an event or a resume over the workers' state budget
//! is refused before anything is sent.

use super::Client;
use crate::error::Error;
use crate::protocol::outgoing::Outgoing;

impl Client {
    /// Refuses starts, events and resumes whose message would be larger than `bytes`
    /// (default 4 MiB, the default of [`WorkerConfig::state_budget`]) with
    /// [`Error::is_limit_exceeded`], before anything is sent: set it to the workers'
    /// budget. An instance's arguments stay in its state, which a worker checks against
    /// its budget at every step, and an event's value is kept in the state until a wait
    /// takes it: past the budget, the instance would fail at its first step. A value over
    /// the payload threshold ([`Client::with_payload_threshold`]) is stored out of band
    /// and counts as its reference here: the check is on the message as sent.
    ///
    /// [`WorkerConfig::state_budget`]: crate::WorkerConfig::state_budget
    pub fn with_state_budget(mut self, bytes: usize) -> Self {
        self.budget = bytes;
        self
    }

    /// Fails with [`Error::is_limit_exceeded`] when `message`, the encoded `what`, is over
    /// this client's budget.
    pub(crate) fn check_size(&self, what: &str, message: &Outgoing) -> Result<(), Error> {
        let size = message.body.len();
        if size > self.budget {
            return Err(Error::limit_exceeded(format!(
                "{what} of {size} bytes is over the state budget of {} bytes; values over \
                 the payload threshold are stored out of band when there is a payload \
                 store, or pass large data by reference (a key to a blob store)",
                self.budget
            )));
        }
        Ok(())
    }
}

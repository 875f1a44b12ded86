//! The runs of an instance that continues as new
//! ([`DTask::continue_as_new`](crate::DTask::continue_as_new)): where one ends and the
//! next begins in its state.

use super::state::InstanceState;

impl InstanceState {
    /// Whether the instance's next step is the first of a run: nothing issued, nothing
    /// saved.
    pub(crate) fn at_run_start(&self) -> bool {
        self.journal.is_empty() && self.snapshot.is_none()
    }

    /// Ends the current run and makes the state that of the next one, with `input`: an
    /// empty journal starting where this run's stopped (ids of earlier operations are
    /// never reused; their late replies find no position and drop out), no saved
    /// machine. What belongs to the instance rather than the run stays: where its result
    /// goes, its mailbox and the replies still due there, events received and not yet
    /// taken, its cancellation, the count of results recorded (status versions keep
    /// growing).
    pub(crate) fn continue_as_new(&mut self, input: Vec<u8>) {
        self.base = self.next_seq();
        self.journal.clear();
        self.snapshot = None;
        self.input = input;
        self.run = self.run.saturating_add(1);
        // The claim was checked before the first run; the next runs need no check.
        self.claim = None;
        self.shielded.clear();
    }
}

//! Merging what a mailbox drain took: states, results, signals and keep-alives, into one
//! state, and running the instance when something new arrived.

use std::time::SystemTime;

use tracing::debug;

use super::{cancel, poison, reap, Engine};
use crate::error::Error;
use crate::protocol::codec::decode;
use crate::protocol::hooks::{mutated, Mutation};
use crate::protocol::message::MailboxItem;
use crate::protocol::outgoing::Outgoing;
use crate::protocol::state::{InstanceState, Outcome, Seq, Signal};

/// What to do with the messages drained from a mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settlement {
    Ack,
    Requeue,
    DeadLetter,
}

pub(crate) struct MailboxPlan {
    pub(crate) outputs: Vec<Outgoing>,
    pub(crate) settle: Vec<(Settlement, String)>,
    /// Events wait for a state that is not in the mailbox (it is being executed).
    pub(crate) waiting_for_state: bool,
    /// Delete the mailbox (before settling what was drained): its instance finished, and
    /// no reply it awaits can still come.
    pub(crate) delete: bool,
}

impl Engine {
    /// Merges the messages drained from a mailbox and runs the instance when something new
    /// arrived. `items` are the raw bodies, in mailbox order. An error (the payload store
    /// failed) decides nothing: the drained messages and the doorbell go back.
    pub(crate) async fn handle_mailbox(
        &self,
        items: &[Vec<u8>],
        now: SystemTime,
    ) -> Result<MailboxPlan, Error> {
        let mut settle: Vec<(Settlement, String)> =
            vec![(Settlement::Ack, String::new()); items.len()];
        let mut state: Option<(usize, InstanceState)> = None;
        let mut events: Vec<(usize, Seq, Outcome)> = Vec::new();
        let mut signals: Vec<(usize, Signal)> = Vec::new();
        let mut touched = false;
        let mut cancels: Vec<(usize, String)> = Vec::new();
        for (i, body) in items.iter().enumerate() {
            match decode::<MailboxItem>(body) {
                Ok(MailboxItem::State(s)) => {
                    // Of two writes of one version (a drain redone after its worker died
                    // before its write was confirmed, the write landing later), the one
                    // that drained more is the later: it took all the first took. A state
                    // of a later run (continue-as-new) is later than any of an earlier run:
                    // a copy of an earlier run redone after a crash may still write one.
                    let drained = |x: &InstanceState| {
                        (!mutated(Mutation::EqualVersions)).then_some(x.drained)
                    };
                    let newer = state.as_ref().is_none_or(|(_, cur)| {
                        (s.finished, s.run, s.version, drained(&s))
                            > (cur.finished, cur.run, cur.version, drained(cur))
                    }) || mutated(Mutation::MailboxVersion);
                    if newer {
                        state = Some((i, *s));
                    }
                }
                Ok(MailboxItem::Event { seq, outcome }) => events.push((i, seq, outcome)),
                Ok(MailboxItem::Signal(signal)) => signals.push((i, signal)),
                // The drain itself was the point; the touch is acked.
                Ok(MailboxItem::Touch) => touched = true,
                Ok(MailboxItem::Cancel { reason }) => cancels.push((i, reason)),
                Err(e) => settle[i] = (Settlement::DeadLetter, e.to_string()),
            }
        }
        let unreadable = poison::unreadable(&settle);
        let Some((state_at, mut state)) = state else {
            let waiting = events
                .iter()
                .map(|e| e.0)
                .chain(signals.iter().map(|s| s.0));
            let mut any = false;
            for i in waiting {
                settle[i].0 = Settlement::Requeue;
                any = true;
            }
            // A cancel waits for the state too (it may be running, or ride elsewhere), and
            // so does an item that cannot be read: it fails the instance, with the state.
            for (i, _) in &cancels {
                settle[*i].0 = Settlement::Requeue;
            }
            for s in settle.iter_mut().filter(|s| s.0 == Settlement::DeadLetter) {
                s.0 = Settlement::Requeue;
            }
            return Ok(MailboxPlan {
                outputs: Vec::new(),
                waiting_for_state: any,
                settle,
                delete: false,
            });
        };
        if state.finished {
            return Ok(reap::after_the_end(
                &state, state_at, &events, &signals, settle, now,
            ));
        }
        // Whatever this drain writes counts what it took (see `InstanceState::drained`).
        state.drained = state.drained.saturating_add(items.len() as u64);
        // A reply that came is no longer awaited, even one whose position has a result
        // already (a race's loser, a compacted position): the change is news to write.
        let awaited = state.awaiting.len();
        state
            .awaiting
            .retain(|seq| !events.iter().any(|(_, s, _)| s == seq));
        let replied = state.awaiting.len() != awaited;
        if let Some(reason) = unreadable {
            return Ok(self.fail_unreadable(&state, &reason, settle, now));
        }
        let mut merged = 0;
        let mut early = false;
        for (i, seq, outcome) in events {
            if seq >= state.next_seq() {
                // The reply of an operation this state has not issued: the step that issued
                // it published it and was cut short before its state landed. The redone
                // step writes a state that has it; until then the reply waits (acked as a
                // duplicate, it would be lost: the operation published again is dropped as
                // a redelivery by the worker that ran it).
                settle[i].0 = Settlement::Requeue;
                early = true;
                continue;
            }
            if state.record(seq, outcome) {
                merged += 1;
            }
        }
        // Events are kept in the state, in mailbox order, until waits take them.
        let mut received = 0;
        for (_, signal) in signals {
            if state.receive(signal) {
                received += 1;
            }
        }
        merged += state.deliver_events();
        if cancel::merge(&mut state, cancels.into_iter().next().map(|(_, r)| r)) {
            merged += 1;
        }
        if touched {
            // The keep-alive that fired is spent: the next write of the state schedules
            // another.
            state.touch_at_ms = 0;
        }
        if merged == 0 && !touched && received == 0 && !replied {
            settle[state_at].0 = Settlement::Requeue;
            return Ok(MailboxPlan {
                outputs: Vec::new(),
                settle,
                waiting_for_state: early,
                delete: false,
            });
        }
        if merged == 0 {
            // Only a keep-alive, events no wait takes yet, or replies already settled: write
            // the state back (with the events it keeps, the replies it still awaits, and the
            // next keep-alive scheduled).
            let outputs = self.write_mailbox_state(&mut state, now);
            return Ok(MailboxPlan {
                outputs,
                settle,
                waiting_for_state: false,
                delete: false,
            });
        }
        debug!(instance = %state.id, merged, "mailbox merged");
        let outputs = if self.registry.contains(&state.name) {
            match self.step_next(state, now).await {
                Ok(stepped) => stepped.outputs,
                // The payload store failed: nothing was decided, the merge is done again.
                Err(e) => return Err(e),
            }
        } else {
            // This worker does not run this DTask: hand the merged state to one that does.
            // It comes back to the mailbox at its next suspension.
            vec![Outgoing::hand_over(&state)]
        };
        Ok(MailboxPlan {
            outputs,
            settle,
            waiting_for_state: false,
            delete: false,
        })
    }
}

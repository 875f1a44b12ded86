//! The engine: what a delivery causes. It decides, for one task message or one drained
//! mailbox, which step runs ([`crate::exec`]) and which messages of the protocol
//! ([`Outgoing`]'s constructors) are published before the delivery is acked; it moves no
//! bytes itself. See `docs/architecture.md` for the protocol.

mod cancel;
mod handoff;
#[cfg(test)]
mod race_tests;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use tracing::{debug, field, info_span, warn, Instrument};

use crate::error::{Error, Failure, FailureKind};
use crate::exec::{run_step, Model, StepOutput};
use crate::protocol::codec::decode;
use crate::protocol::message::{MailboxItem, Status, TaskMessage};
use crate::protocol::outgoing::{Outgoing, UNIT};
use crate::protocol::state::{
    to_millis, Command, Entry, InstanceState, Outcome, ReplyTo, Seq, Signal,
};
use crate::registry::Registry;
use crate::step::{Clock, StepEnd};
use crate::transport::CancelBook;
use handoff::HandOff;

/// Default size budget of one message (state included).
pub(crate) const DEFAULT_STATE_BUDGET: usize = 4 * 1024 * 1024;

pub(crate) struct Engine {
    pub(crate) registry: Registry,
    pub(crate) budget: usize,
    /// How often the mailbox of a waiting instance is touched so that the broker does not
    /// expire it (`None`: mailboxes never expire).
    pub(crate) keepalive: Option<Duration>,
    /// The transport's clock, for timers issued during a step.
    pub(crate) clock: Option<Clock>,
    /// The cancel records this worker follows (`None`: the transport keeps none).
    pub(crate) cancels: Option<CancelBook>,
}

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
}

/// What a step produced: the messages to publish and, when one of them hands the work on
/// to a single next step, that message undecoded (the same as its encoded body).
pub(crate) struct Stepped {
    pub(crate) outputs: Vec<Outgoing>,
    pub(crate) next: Option<TaskMessage>,
}

impl From<Vec<Outgoing>> for Stepped {
    fn from(outputs: Vec<Outgoing>) -> Self {
        Self {
            outputs,
            next: None,
        }
    }
}

fn unit() -> Outcome {
    Outcome::Ok(UNIT.to_vec())
}

impl Engine {
    pub(crate) fn new(registry: Registry, budget: usize) -> Self {
        Self {
            registry,
            budget,
            keepalive: None,
            clock: None,
            cancels: None,
        }
    }

    /// Reads `clock` when a step issues a relative timer.
    pub(crate) fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Touches mailboxes every `every` (a fraction of the transport's mailbox retention).
    pub(crate) fn with_keepalive(mut self, every: Option<Duration>) -> Self {
        self.keepalive = every;
        self
    }

    /// Decodes a task message. An error means the message is poison.
    pub(crate) fn decode_task(&self, body: &[u8]) -> Result<TaskMessage, Error> {
        decode::<TaskMessage>(body)
    }

    /// The status write to make before running `msg`, if it is a root's first step.
    pub(crate) fn running_status(&self, msg: &TaskMessage) -> Option<Outgoing> {
        match msg {
            TaskMessage::Step {
                state,
                completion: None,
            } if state.reply == ReplyTo::Root
                && state.journal.is_empty()
                && state.snapshot.is_none() =>
            {
                Some(Outgoing::status(state, Status::Running))
            }
            _ => None,
        }
    }

    /// Handles a task message; returns what to publish before acking it.
    #[cfg(test)]
    pub(crate) async fn handle_task(&self, msg: TaskMessage, now: SystemTime) -> Vec<Outgoing> {
        self.handle_task_next(msg, now).await.outputs
    }

    /// Handles a task message; returns what to publish before acking it and, when one of
    /// those messages hands the work on to a step (a child's start, a result to a parent
    /// that waits for it alone), that message undecoded, for running it inline.
    pub(crate) async fn handle_task_next(&self, msg: TaskMessage, now: SystemTime) -> Stepped {
        match msg {
            TaskMessage::Step { state, completion } => {
                let mut state = *state;
                if let Some((seq, outcome)) = completion {
                    if let Some(at) = state.entry(seq).and_then(|e| e.cmd.fire_at()) {
                        if at > now {
                            // Arrived early (clock skew, delay rounding): wait the rest.
                            return vec![Outgoing::resume_again(&state, seq, &outcome, at, now)]
                                .into();
                        }
                    }
                    if !state.record(seq, outcome) {
                        debug!(instance = %state.id, seq, "duplicate or unknown completion dropped");
                        return Vec::new().into();
                    }
                }
                self.step_next(state, now).await
            }
            TaskMessage::Forward {
                instance,
                name,
                item,
                not_before_ms,
            } => {
                let out = if not_before_ms > to_millis(now) {
                    Outgoing::forward_again(&instance, &name, item, not_before_ms, now)
                } else {
                    Outgoing::forwarded(&instance, &name, &item, not_before_ms)
                };
                vec![out].into()
            }
        }
    }

    /// Merges the messages drained from a mailbox and runs the instance when something new
    /// arrived. `items` are the raw bodies, in mailbox order.
    pub(crate) async fn handle_mailbox(&self, items: &[Vec<u8>], now: SystemTime) -> MailboxPlan {
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
                    let newer = state.as_ref().is_none_or(|(_, cur)| {
                        (s.finished, s.version) > (cur.finished, cur.version)
                    });
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
            // A cancel waits for the state too (it may be running, or ride elsewhere).
            for (i, _) in &cancels {
                settle[*i].0 = Settlement::Requeue;
            }
            return MailboxPlan {
                outputs: Vec::new(),
                waiting_for_state: any,
                settle,
            };
        };
        if state.finished {
            // Late results for a finished instance (e.g. `when_any` losers) are dropped,
            // and so are events it never waited for.
            for (_, signal) in &signals {
                warn!(
                    instance = %state.id, event = %signal.name,
                    "an event for a finished instance is dropped"
                );
            }
            settle[state_at].0 = Settlement::Requeue;
            return MailboxPlan {
                outputs: Vec::new(),
                settle,
                waiting_for_state: false,
            };
        }
        let mut merged = 0;
        for (_, seq, outcome) in events {
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
        if merged == 0 && !touched && received == 0 {
            settle[state_at].0 = Settlement::Requeue;
            return MailboxPlan {
                outputs: Vec::new(),
                settle,
                waiting_for_state: false,
            };
        }
        if merged == 0 {
            // Only a keep-alive, or events no wait takes yet: write the state back (with
            // the events it keeps, and the next keep-alive scheduled).
            let outputs = self.write_mailbox_state(&mut state, now);
            return MailboxPlan {
                outputs,
                settle,
                waiting_for_state: false,
            };
        }
        debug!(instance = %state.id, merged, "mailbox merged");
        let outputs = if self.registry.contains(&state.name) {
            self.step_next(state, now).await.outputs
        } else {
            // This worker does not run this DTask: hand the merged state to one that does.
            // It comes back to the mailbox at its next suspension.
            vec![Outgoing::hand_over(&state)]
        };
        MailboxPlan {
            outputs,
            settle,
            waiting_for_state: false,
        }
    }

    /// The messages that write `state` (with `version + 1`) to its mailbox, plus a
    /// keep-alive of the mailbox when none is pending.
    fn write_mailbox_state(&self, state: &mut InstanceState, now: SystemTime) -> Vec<Outgoing> {
        state.version += 1;
        let keepalive = match self.keepalive {
            Some(every) if state.touch_at_ms <= to_millis(now) => {
                let at = now + every;
                state.touch_at_ms = to_millis(at);
                Some(at)
            }
            _ => None,
        };
        let mut outputs = vec![Outgoing::mailbox_state(state)];
        outputs.extend(keepalive.map(|at| Outgoing::keepalive(state, at)));
        outputs
    }

    /// Runs one step of `state`; returns what to publish and the hand-off to run inline.
    async fn step_next(&self, mut state: InstanceState, now: SystemTime) -> Stepped {
        // One span per step, wherever it runs (a delivery, an inline run, a mailbox merge).
        let span = info_span!(
            "dtask.step",
            instance = %state.id,
            dtask = %state.name,
            step = state.steps,
            model = field::Empty,
            outcome = field::Empty,
        );
        let Some(reg) = self.registry.get(&state.name) else {
            span.record("outcome", "failed");
            let f = Failure::new(
                FailureKind::UnknownDTask,
                format!(
                    "no DTask named `{}` is registered in this worker",
                    state.name
                ),
            );
            return self
                .finish(&state, Outcome::Failed(f), HashMap::new())
                .into();
        };
        let model = match reg.run {
            Model::Replay(_) => "replay",
            Model::Snapshot { .. } => "snapshot",
        };
        span.record("model", model);
        self.check_cancelled(&mut state);
        let StepOutput {
            end,
            first_new,
            child_inputs,
            cancelled_children,
        } = run_step(reg.run, &mut state, now, self.clock.clone())
            .instrument(span.clone())
            .await;
        let end = cancel::end_of(&state, end);
        state.steps = state.steps.saturating_add(1);
        let outcome = match &end {
            StepEnd::Completed(_) => "completed",
            StepEnd::Suspended => "suspended",
            StepEnd::Failed(_) => "failed",
        };
        // What `suspend` changes in the state, restored when the budget fails the step.
        let (mailbox, version, touch_at_ms) = (state.mailbox, state.version, state.touch_at_ms);
        let ended = !matches!(end, StepEnd::Suspended);
        let (mut outputs, hand_off) = match end {
            StepEnd::Completed(bytes)
                if child_inputs.is_empty()
                    && !state.mailbox
                    && matches!(state.reply, ReplyTo::Continuation { .. }) =>
            {
                // The parent waits for this result alone: its state comes back with it.
                let outcome = Outcome::Ok(bytes);
                let out = match &state.reply {
                    ReplyTo::Continuation { parent, seq } => {
                        Outgoing::resume(parent, *seq, &outcome)
                    }
                    _ => unreachable!("matched above"),
                };
                (vec![out], HandOff::Parent(outcome))
            }
            StepEnd::Completed(bytes) => (
                self.finish(&state, Outcome::Ok(bytes), child_inputs),
                HandOff::None,
            ),
            StepEnd::Failed(f) => {
                warn!(instance = %state.id, dtask = %state.name, failure = %f, "instance failed");
                (
                    self.finish(&state, Outcome::Failed(f), HashMap::new()),
                    HandOff::None,
                )
            }
            StepEnd::Suspended => self.suspend(&mut state, first_new, child_inputs, now),
        };
        outputs.extend(cancel::tell_children(
            &state,
            &cancelled_children,
            first_new,
            ended,
        ));
        // Checked on the encoded messages, while the state is still whole.
        if let Some(big) = outputs
            .iter()
            .map(|o| o.body.len())
            .find(|n| *n > self.budget)
        {
            let f = Failure::new(
                FailureKind::StateTooLarge,
                format!(
                    "a message of {big} bytes exceeds the state budget of {} bytes (journal of {} \
                     entries); keep arguments and results small, or split the work into \
                     child DTasks",
                    self.budget,
                    state.journal.len()
                ),
            );
            warn!(instance = %state.id, failure = %f, "instance failed");
            span.record("outcome", "failed");
            state.journal.clear();
            (state.mailbox, state.version, state.touch_at_ms) = (mailbox, version, touch_at_ms);
            return self
                .finish(&state, Outcome::Failed(f), HashMap::new())
                .into();
        }
        span.record("outcome", outcome);
        Stepped {
            outputs,
            next: hand_off.into_message(state),
        }
    }

    /// The messages that end an instance with `outcome`; `detached` are the inputs of
    /// children spawned and never awaited, which still run.
    fn finish(
        &self,
        state: &InstanceState,
        outcome: Outcome,
        detached: HashMap<Seq, Vec<u8>>,
    ) -> Vec<Outgoing> {
        let mut outputs = Vec::new();
        if state.mailbox {
            outputs.push(Outgoing::tombstone(state));
        }
        // Nobody waits for the results of detached children.
        for (seq, input) in detached {
            if let Some(Entry {
                cmd: Command::Child { name, .. },
                result: None,
                ..
            }) = state.entry(seq)
            {
                let child = state.new_child(seq, name.clone(), input, ReplyTo::Detached);
                outputs.push(Outgoing::start(&child));
            }
        }
        match &state.reply {
            ReplyTo::Root | ReplyTo::Client { .. } => {
                outputs.extend(Outgoing::result(state, outcome));
            }
            ReplyTo::Continuation { parent, seq } => {
                outputs.push(Outgoing::resume(parent, *seq, &outcome));
            }
            ReplyTo::Mailbox {
                parent,
                parent_name,
                seq,
            } => outputs.push(Outgoing::event(parent, parent_name, *seq, &outcome)),
            ReplyTo::Detached => {}
        }
        outputs
    }

    /// The messages that suspend an instance after a step issued the operations at
    /// positions `first_new..`, and the hand-off among them.
    fn suspend(
        &self,
        state: &mut InstanceState,
        first_new: Seq,
        mut inputs: HashMap<Seq, Vec<u8>>,
        now: SystemTime,
    ) -> (Vec<Outgoing>, HandOff) {
        let new: Vec<Seq> = (first_new..state.next_seq())
            .filter(|seq| {
                state
                    .entry(*seq)
                    .is_some_and(|e| e.cmd.is_distributed() && e.result.is_none())
            })
            .collect();
        let mut outputs = Vec::new();
        // Status is written on transitions only: `Suspended` after the first step; later
        // steps leave it (each write is a confirmed publish).
        // So is what a root waits for, when a long wait (an event, a resume, a timer)
        // begins or ends.
        if state.reply == ReplyTo::Root {
            let long = state.waits_long();
            if first_new == 0 || long || state.shown_long {
                state.shown_long = long;
                outputs.push(Outgoing::status(state, Status::Suspended));
            }
        }
        let cmd_at = |state: &InstanceState, seq: Seq| {
            state
                .entry(seq)
                .map(|e| e.cmd.clone())
                .unwrap_or(Command::Yield)
        };
        let external = new
            .iter()
            .any(|seq| state.entry(*seq).is_some_and(|e| e.cmd.is_external()));
        if !state.mailbox && !external && new.len() == 1 && state.outstanding() == 1 {
            // Waiting on one operation: the state rides along with it.
            let seq = new[0];
            let cmd = cmd_at(state, seq);
            match cmd {
                Command::Child { name, .. } => {
                    let input = inputs.remove(&seq).unwrap_or_default();
                    let id = state.id.child(seq);
                    outputs.push(Outgoing::start_child_of(state, seq, &id, &name, &input));
                    let hand_off = HandOff::Child {
                        id,
                        seq,
                        name,
                        input,
                    };
                    return (outputs, hand_off);
                }
                Command::Delay { .. } | Command::DelayUntil { .. } => {
                    let at = cmd.fire_at().unwrap_or(SystemTime::UNIX_EPOCH);
                    outputs.push(Outgoing::timer(state, seq, at));
                }
                Command::Yield => outputs.push(Outgoing::yield_now(state, seq)),
                Command::Run | Command::Compacted | Command::Event { .. } | Command::Suspend => {
                    unreachable!("only outstanding operations that publish ride along")
                }
            }
            return (outputs, HandOff::None);
        }
        // Waiting on several operations, or on the outside world (or already in mailbox
        // mode): the state is kept in the instance's mailbox, where results and events are
        // merged one at a time.
        state.mailbox = true;
        outputs.extend(self.write_mailbox_state(state, now));
        for seq in new {
            let cmd = cmd_at(state, seq);
            match cmd {
                Command::Child { name, .. } => {
                    let input = inputs.remove(&seq).unwrap_or_default();
                    let child = state.new_child(
                        seq,
                        name,
                        input,
                        ReplyTo::Mailbox {
                            parent: state.id.clone(),
                            parent_name: state.name.clone(),
                            seq,
                        },
                    );
                    outputs.push(Outgoing::start(&child));
                }
                Command::Delay { .. } | Command::DelayUntil { .. } => {
                    let at = cmd.fire_at().unwrap_or(SystemTime::UNIX_EPOCH);
                    outputs.push(Outgoing::mailbox_timer(state, seq, at));
                }
                Command::Yield => {
                    outputs.push(Outgoing::event(&state.id, &state.name, seq, &unit()));
                }
                // Nothing to publish: the value comes from a client into the mailbox.
                Command::Event { .. } | Command::Suspend => {}
                Command::Run | Command::Compacted => {
                    unreachable!("only outstanding distributed operations are new")
                }
            }
        }
        (outputs, HandOff::None)
    }
}

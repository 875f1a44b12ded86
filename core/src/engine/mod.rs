//! The engine: what a delivery causes. It decides, for one task message or one drained
//! mailbox, which step runs ([`crate::exec`]) and which messages of the protocol
//! ([`Outgoing`]'s constructors) are published before the delivery is acked; it moves no
//! bytes itself. See `docs/architecture.md` for the protocol.

mod cancel;
mod handoff;
mod merge;
mod observe;
mod payloads;
mod poison;
#[cfg(test)]
mod race_tests;
mod reap;
#[cfg(test)]
mod reap_tests;
mod runs;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use tracing::{debug, warn, Instrument};

use crate::error::{Error, Failure, FailureKind};
use crate::exec::{run_step, Model, StepOutput};
use crate::protocol::codec::decode;
use crate::protocol::message::{Status, TaskMessage};
use crate::protocol::outgoing::{Outgoing, UNIT};
use crate::protocol::payload::with_resolved;
use crate::protocol::state::{
    to_millis, Command, Entry, InstanceState, Outcome, ReplyTo, Seq, MAX_RIDING,
};
use crate::registry::Registry;
use crate::step::{Clock, StepEnd};
use crate::store::Payloads;
use crate::transport::CancelBook;
use handoff::HandOff;
pub(crate) use merge::{MailboxPlan, Settlement};
use observe::StepWatch;
pub(crate) use reap::Probes;

/// Default size budget of one message (state included).
pub(crate) const DEFAULT_STATE_BUDGET: usize = 4 * 1024 * 1024;

pub(crate) struct Engine {
    pub(crate) registry: Registry,
    pub(crate) budget: usize,
    /// When the mailboxes of waiting instances are touched so that the transport does
    /// not expire them, and when a finished instance's mailbox is deleted.
    pub(crate) probes: Probes,
    /// The transport's clock, for timers issued during a step.
    pub(crate) clock: Option<Clock>,
    /// The cancel records this worker follows (`None`: the transport keeps none).
    pub(crate) cancels: Option<CancelBook>,
    /// Where values over the threshold are kept out of band.
    pub(crate) payloads: Payloads,
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
            probes: Probes::default(),
            clock: None,
            cancels: None,
            payloads: Payloads::default(),
        }
    }

    /// Keeps values over the threshold out of band as `payloads` say.
    pub(crate) fn with_payloads(mut self, payloads: Payloads) -> Self {
        self.payloads = payloads;
        self
    }

    /// Reads `clock` when a step issues a relative timer.
    pub(crate) fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Touches and deletes mailboxes with `probes` (made for the transport's mailbox
    /// retention).
    pub(crate) fn with_probes(mut self, probes: Probes) -> Self {
        self.probes = probes;
        self
    }

    /// Decodes a task message. An error means the message is poison.
    pub(crate) fn decode_task(&self, body: &[u8]) -> Result<TaskMessage, Error> {
        decode::<TaskMessage>(body)
    }

    /// The status write to make before running `msg`, if it is a root's first step.
    pub(crate) fn running_status(&self, msg: &TaskMessage, now: SystemTime) -> Option<Outgoing> {
        match msg {
            TaskMessage::Step {
                state,
                completion: None,
            } if state.reports() && state.run == 0 && state.at_run_start() => {
                Some(Outgoing::status(state, Status::Running, now))
            }
            _ => None,
        }
    }

    /// Handles a task message; returns what to publish before acking it.
    #[cfg(test)]
    pub(crate) async fn handle_task(&self, msg: TaskMessage, now: SystemTime) -> Vec<Outgoing> {
        self.handle_task_next(msg, now)
            .await
            .expect("no payload store to fail")
            .outputs
    }

    /// Handles a task message; returns what to publish before acking it and, when one of
    /// those messages hands the work on to a step (a child's start, a result to a parent
    /// that waits for it alone), that message undecoded, for running it inline. An error
    /// (the payload store failed) means the message is to be handled again later.
    pub(crate) async fn handle_task_next(
        &self,
        msg: TaskMessage,
        now: SystemTime,
    ) -> Result<Stepped, Error> {
        match msg {
            TaskMessage::Step { state, completion } => {
                let mut state = *state;
                if let Some((seq, outcome)) = completion {
                    if let Some(at) = state.entry(seq).and_then(|e| e.cmd.fire_at()) {
                        if at > now {
                            let again = Outgoing::resume_again(&state, seq, &outcome, at, now);
                            if self.cancel_wakes(&state) {
                                // Brought early to a cancelled instance: the sleep ends
                                // cancelled, unless it is in a clean-up scope.
                                return self.step_woken(state, seq, again, now).await;
                            }
                            // Arrived early (clock skew, delay rounding): wait the rest.
                            return Ok(vec![again].into());
                        }
                    }
                    if !state.record(seq, outcome) {
                        debug!(instance = %state.id, seq, "duplicate or unknown completion dropped");
                        return Ok(Vec::new().into());
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
                Ok(vec![out].into())
            }
        }
    }

    /// The messages that write `state` (with `version + 1`) to its mailbox, plus a
    /// keep-alive of the mailbox when none is pending.
    fn write_mailbox_state(&self, state: &mut InstanceState, now: SystemTime) -> Vec<Outgoing> {
        state.version += 1;
        let keepalive = self.next_keepalive(state, now);
        let mut outputs = vec![Outgoing::mailbox_state(state)];
        outputs.extend(keepalive.map(|at| Outgoing::keepalive(state, at)));
        outputs
    }

    /// Runs one step of `state`; returns what to publish and the hand-off to run inline,
    /// or the error of the payload store (nothing was decided: the step is to run again).
    async fn step_next(&self, state: InstanceState, now: SystemTime) -> Result<Stepped, Error> {
        self.step_or_sleep_on(state, None, now).await
    }

    /// Runs a step of `state`, cancelled, whose timer at `seq` came before its time, with
    /// no result for the timer: the sleep's await ends cancelled. When it is in a
    /// clean-up scope the await is still pending after the step: nothing of the step
    /// goes out, and the timer goes on waiting (`again`).
    async fn step_woken(
        &self,
        state: InstanceState,
        seq: Seq,
        again: Outgoing,
        now: SystemTime,
    ) -> Result<Stepped, Error> {
        debug!(instance = %state.id, seq, "timer brought early to a cancelled instance");
        self.step_or_sleep_on(state, Some((seq, again)), now).await
    }

    async fn step_or_sleep_on(
        &self,
        mut state: InstanceState,
        woken: Option<(Seq, Outgoing)>,
        now: SystemTime,
    ) -> Result<Stepped, Error> {
        let mut watch = StepWatch::new(&state);
        let Some(reg) = self.registry.get(&state.name) else {
            watch.end("failed");
            let f = Failure::new(
                FailureKind::UnknownDTask,
                format!(
                    "no DTask named `{}` is registered in this worker",
                    state.name
                ),
            );
            return Ok(self
                .finish(&state, Outcome::Failed(f), BTreeMap::new(), now)
                .into());
        };
        let model = match reg.run {
            Model::Replay(_) => "replay",
            Model::Snapshot { .. } => "snapshot",
        };
        self.check_cancelled(&mut state);
        // A root's status is written at the first suspension of each run, and when a
        // resume moved its saved machine to other code (a migration, `accepts`).
        let fresh = state.at_run_start();
        let code_before = state.snapshot.as_ref().map(|s| s.fingerprint);
        // The values the state holds out of band, read before the body runs (the body
        // decodes them synchronously) and dropped with the step.
        let resolved = Arc::new(payloads::read_all(&self.payloads, &state).await?);
        watch.running(model);
        let StepOutput {
            end,
            first_new,
            mut child_inputs,
            cancelled_children,
        } = with_resolved(
            resolved,
            run_step(reg.run, &mut state, now, self.clock.clone()).instrument(watch.span.clone()),
        )
        .await;
        watch.ran();
        if let Some((seq, again)) = woken {
            if state.entry(seq).is_some_and(|e| e.result.is_none()) {
                // The sleep is in a clean-up scope: it waits its time.
                watch.end("suspended");
                return Ok(vec![again].into());
            }
        }
        // Values over the threshold go out of band, durable before any message that
        // references them is published.
        let end = payloads::write_all(&self.payloads, &mut state, end, &mut child_inputs)
            .instrument(watch.span.clone())
            .await?;
        // The messages of the step are built in its span: their deliveries are its
        // children in a trace (the rest of this function does not await).
        let _in_step = watch.span.enter();
        let end = cancel::end_of(&state, end);
        state.steps = state.steps.saturating_add(1);
        let outcome = match &end {
            StepEnd::Completed(_) => "completed",
            StepEnd::Suspended => "suspended",
            StepEnd::Failed(_) => "failed",
            StepEnd::Continued(_) => "continued",
        };
        // What `suspend` changes in the state, restored when the budget fails the step.
        let (mailbox, version, touch_at_ms) = (state.mailbox, state.version, state.touch_at_ms);
        let (awaiting, touch_every_ms) = (state.awaiting.len(), state.touch_every_ms);
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
                let mut outputs = vec![out];
                if state.records_children {
                    outputs.push(Outgoing::finished_fact(&state, outcome.clone(), now));
                }
                (outputs, HandOff::Parent(outcome))
            }
            StepEnd::Completed(bytes) => (
                self.finish(&state, Outcome::Ok(bytes), child_inputs, now),
                HandOff::None,
            ),
            StepEnd::Failed(f) => {
                warn!(instance = %state.id, dtask = %state.name, failure = %f, "instance failed");
                (
                    self.finish(&state, Outcome::Failed(f), BTreeMap::new(), now),
                    HandOff::None,
                )
            }
            StepEnd::Suspended => {
                let code_after = state.snapshot.as_ref().map(|s| s.fingerprint);
                let show = fresh || (code_before.is_some() && code_before != code_after);
                self.suspend(&mut state, first_new, child_inputs, show, now)
            }
            StepEnd::Continued(input) => (
                self.continue_as_new(&mut state, child_inputs, input, now),
                HandOff::None,
            ),
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
            watch.end("failed");
            state.journal.clear();
            (state.mailbox, state.version, state.touch_at_ms) = (mailbox, version, touch_at_ms);
            state.awaiting.truncate(awaiting);
            state.touch_every_ms = touch_every_ms;
            return Ok(self
                .finish(&state, Outcome::Failed(f), BTreeMap::new(), now)
                .into());
        }
        watch.end(outcome);
        Ok(Stepped {
            outputs,
            next: hand_off.into_message(state),
        })
    }

    /// The starts of the children in `detached` (their inputs, by position) that the
    /// step issued and nobody awaits, which run detached when an instance finishes or
    /// continues as new; with their start facts when `state` records its children.
    fn start_detached(
        state: &InstanceState,
        detached: BTreeMap<Seq, Vec<u8>>,
        now: SystemTime,
    ) -> Vec<Outgoing> {
        let mut outputs = Vec::new();
        for (seq, input) in detached {
            if let Some(Entry {
                cmd: Command::Child { name, .. },
                result: None,
                ..
            }) = state.entry(seq)
            {
                let child = state.new_child(seq, name.clone(), input, ReplyTo::Detached);
                outputs.extend(Outgoing::child_started(state, &child.id, name, now));
                outputs.push(Outgoing::start(&child));
            }
        }
        outputs
    }

    /// The messages that end an instance with `outcome`; `detached` are the inputs of
    /// children spawned and never awaited, which still run.
    fn finish(
        &self,
        state: &InstanceState,
        outcome: Outcome,
        detached: BTreeMap<Seq, Vec<u8>>,
        now: SystemTime,
    ) -> Vec<Outgoing> {
        if let Outcome::Failed(f) = &outcome {
            observe::count_failure(&state.name, f);
        }
        // Nobody waits for the results of detached children.
        let mut outputs = Self::start_detached(state, detached, now);
        match &state.reply {
            ReplyTo::Root | ReplyTo::Client { .. } => {
                outputs.extend(Outgoing::result(state, outcome, now));
            }
            // A recorded child's finish goes to the store too (the reply to its parent
            // is below, from the same outcome).
            _ if state.records_children => {
                outputs.push(Outgoing::finished_fact(state, outcome.clone(), now));
                outputs.extend(Self::reply_to_parent(state, &outcome));
            }
            _ => outputs.extend(Self::reply_to_parent(state, &outcome)),
        }
        // The tombstone goes last, after the result it stands for: published in order on
        // one channel, a crash part-way leaves the result without the tombstone (the end is
        // redone, the second result refused) rather than a tombstone that drops the end.
        // A cancelled instance leaves one even outside mailbox mode: a cancel item may
        // wait in its mailbox, which then goes with the tombstone.
        if state.mailbox || state.cancelled.is_some() {
            outputs.extend(self.tombstone(state, now));
        }
        outputs
    }

    /// The reply of a child that finished with `outcome` to its parent (none for a root
    /// or a detached child).
    fn reply_to_parent(state: &InstanceState, outcome: &Outcome) -> Option<Outgoing> {
        match &state.reply {
            ReplyTo::Continuation { parent, seq } => Some(Outgoing::resume(parent, *seq, outcome)),
            ReplyTo::Mailbox {
                parent,
                parent_name,
                seq,
            } => Some(Outgoing::event(parent, parent_name, *seq, outcome)),
            ReplyTo::Root | ReplyTo::Client { .. } | ReplyTo::Detached => None,
        }
    }

    /// The messages that suspend an instance after a step issued the operations at
    /// positions `first_new..`, and the hand-off among them; `show` writes a root's
    /// status (the first suspension of a run, a change of code).
    fn suspend(
        &self,
        state: &mut InstanceState,
        first_new: Seq,
        mut inputs: BTreeMap<Seq, Vec<u8>>,
        show: bool,
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
        if state.reports() {
            let long = state.waits_long();
            if show || long || state.shown_long {
                state.shown_long = long;
                outputs.push(Outgoing::status(state, Status::Suspended, now));
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
        // A child carries its parent's state, and its parent's parents' (`riding`): past
        // `MAX_RIDING`, the parent waits in its mailbox, which starts a new chain.
        let rides = match state
            .entry(new.first().copied().unwrap_or(0))
            .map(|e| &e.cmd)
        {
            Some(Command::Child { .. }) => state.riding() + 1 < MAX_RIDING,
            _ => true,
        };
        if !state.mailbox && !external && rides && new.len() == 1 && state.outstanding() == 1 {
            // Waiting on one operation: the state rides along with it.
            let seq = new[0];
            let cmd = cmd_at(state, seq);
            match cmd {
                Command::Child { name, .. } => {
                    let input = inputs.remove(&seq).unwrap_or_default();
                    let id = state.id.child(seq);
                    outputs.extend(Outgoing::child_started(state, &id, &name, now));
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
                Command::Run
                | Command::Compacted
                | Command::Event { .. }
                | Command::Suspend
                | Command::Patch { .. } => {
                    unreachable!("only outstanding operations that publish ride along")
                }
            }
            return (outputs, HandOff::None);
        }
        // Waiting on several operations, or on the outside world (or already in mailbox
        // mode): the state is kept in the instance's mailbox, where results and events are
        // merged one at a time.
        state.mailbox = true;
        // The replies of what is published here come to the mailbox: awaited from now on.
        let replying: Vec<Seq> = new
            .iter()
            .copied()
            .filter(|seq| state.entry(*seq).is_some_and(|e| !e.cmd.is_external()))
            .collect();
        state.awaiting.extend(replying);
        // The state is written last: published in order on one channel, a batch cut short
        // by a crash leaves operations without the state that awaits them (the step is
        // redone from the state before, and publishes them again), never the state
        // without the operations it awaits (nothing would publish them again).
        let write = self.write_mailbox_state(state, now);
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
                    outputs.extend(Outgoing::child_started(state, &child.id, &child.name, now));
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
                Command::Run | Command::Compacted | Command::Patch { .. } => {
                    unreachable!("only outstanding distributed operations are new")
                }
            }
        }
        outputs.extend(write);
        (outputs, HandOff::None)
    }
}

//! What a worker does with each message: decide the step, run it, and say what to publish.
//! Transport-independent; see `docs/architecture.md` for the protocol.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tracing::{debug, warn};

use crate::codec::{decode, encode, MailboxItemRef, TaskMessageRef};
use crate::context::{Clock, Exec};
use crate::driver::{drive, StepEnd};
use crate::error::{Error, Failure, FailureKind};
use crate::registry::{Registry, Run};
use crate::snapshot;
use crate::state::{
    from_millis, to_millis, Command, InstanceState, MailboxItem, Outcome, ReplyTo, ResultRecord,
    Seq, TaskMessage,
};
use crate::transport::{Destination, Outgoing};
use crate::Status;

/// MessagePack for `()`, the value of fired timers and yields.
const UNIT: [u8; 1] = [0xc0];

/// Default size budget of one message (state included).
pub(crate) const DEFAULT_STATE_BUDGET: usize = 4 * 1024 * 1024;

pub(crate) struct Engine {
    pub(crate) registry: Registry,
    pub(crate) budget: usize,
    /// How often the mailbox of a waiting instance is touched so that the broker does not
    /// expire it (`None`: mailboxes never expire).
    pub(crate) keepalive: Option<std::time::Duration>,
    /// The transport's clock, for timers issued during a step.
    pub(crate) clock: Option<Clock>,
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

/// What a task message asks for, read before running it.
pub(crate) struct TaskInfo {
    pub(crate) root_first_step: Option<Outgoing>,
}

impl Engine {
    pub(crate) fn new(registry: Registry, budget: usize) -> Self {
        Self {
            registry,
            budget,
            keepalive: None,
            clock: None,
        }
    }

    /// Reads `clock` when a step issues a relative timer.
    pub(crate) fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Touches mailboxes every `every` (a fraction of the transport's mailbox retention).
    pub(crate) fn with_keepalive(mut self, every: Option<std::time::Duration>) -> Self {
        self.keepalive = every;
        self
    }

    /// Decodes a task message. An error means the message is poison.
    pub(crate) fn decode_task(&self, body: &[u8]) -> Result<TaskMessage, Error> {
        decode::<TaskMessage>(body)
    }

    /// The status write to make before running `msg`, if it is a root's first step.
    pub(crate) fn info(&self, msg: &TaskMessage) -> TaskInfo {
        let root_first_step = match msg {
            TaskMessage::Step {
                state,
                completion: None,
            } if state.reply == ReplyTo::Root
                && state.journal.is_empty()
                && state.snapshot.is_none() =>
            {
                Some(status_write(state, Status::Running))
            }
            _ => None,
        };
        TaskInfo { root_first_step }
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
                            // A fresh id: the dedupe window has seen this message's id.
                            let id = format!("{}:r{seq}@{}", state.id, to_millis(now));
                            let body = TaskMessageRef::Step {
                                state: &state,
                                completion: Some((seq, &outcome)),
                            }
                            .encode();
                            return vec![out_body(
                                Destination::Delayed {
                                    name: state.name.clone(),
                                    at,
                                },
                                body,
                                id,
                                &state,
                            )]
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
                if not_before_ms > to_millis(now) {
                    let body = TaskMessage::Forward {
                        instance: instance.clone(),
                        name: name.clone(),
                        item,
                        not_before_ms,
                    };
                    return vec![Outgoing {
                        destination: Destination::Delayed {
                            name: name.clone(),
                            at: from_millis(not_before_ms),
                        },
                        body: encode(&body),
                        message_id: format!("{instance}:fwd{not_before_ms}@{}", to_millis(now)),
                        instance,
                        dtask: name,
                    }]
                    .into();
                }
                let message_id = match &item {
                    MailboxItem::Event { seq, .. } => format!("{instance}:e{seq}"),
                    MailboxItem::State(s) => format!("{instance}:v{}", s.version),
                    MailboxItem::Touch => format!("{instance}:touch{not_before_ms}"),
                };
                vec![Outgoing {
                    destination: Destination::Mailbox {
                        instance: instance.clone(),
                    },
                    body: encode(&item),
                    message_id,
                    instance,
                    dtask: name,
                }]
                .into()
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
        let mut touched = false;
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
                // The drain itself was the point; the touch is acked.
                Ok(MailboxItem::Touch) => touched = true,
                Err(e) => settle[i] = (Settlement::DeadLetter, e.to_string()),
            }
        }
        let Some((state_at, mut state)) = state else {
            for (i, _, _) in &events {
                settle[*i].0 = Settlement::Requeue;
            }
            return MailboxPlan {
                outputs: Vec::new(),
                waiting_for_state: !events.is_empty(),
                settle,
            };
        };
        if state.finished {
            // Late results for a finished instance (e.g. `when_any` losers) are dropped.
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
        if touched {
            // The keep-alive that fired is spent: the next write of the state schedules
            // another.
            state.touch_at_ms = 0;
        }
        if merged == 0 && !touched {
            settle[state_at].0 = Settlement::Requeue;
            return MailboxPlan {
                outputs: Vec::new(),
                settle,
                waiting_for_state: false,
            };
        }
        if merged == 0 {
            // Only a keep-alive: write the state back with the next one scheduled.
            let outputs = self.write_mailbox_state(&mut state, now);
            return MailboxPlan {
                outputs,
                settle,
                waiting_for_state: false,
            };
        }
        debug!(instance = %state.id, merged, "mailbox merged");
        let outputs = if self.registry.contains(&state.name) {
            self.step(state, now).await
        } else {
            // This worker does not run this DTask: hand the merged state to one that does.
            // It comes back to the mailbox at its next suspension.
            let id = format!("{}:m{}", state.id, state.recorded);
            let body = TaskMessageRef::Step {
                state: &state,
                completion: None,
            }
            .encode();
            vec![out_body(
                Destination::Task {
                    name: state.name.clone(),
                },
                body,
                id,
                &state,
            )]
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
        let mut outputs = Vec::new();
        let now_ms = to_millis(now);
        if let Some(every) = self.keepalive {
            if state.touch_at_ms <= now_ms {
                let at = now + every;
                state.touch_at_ms = to_millis(at);
                let msg = TaskMessage::Forward {
                    instance: state.id.clone(),
                    name: state.name.clone(),
                    item: MailboxItem::Touch,
                    not_before_ms: state.touch_at_ms,
                };
                let id = format!("{}:touch{}", state.id, state.touch_at_ms);
                outputs.push(out(
                    Destination::Delayed {
                        name: state.name.clone(),
                        at,
                    },
                    &msg,
                    id,
                    state,
                ));
            }
        }
        outputs.insert(
            0,
            Outgoing {
                destination: Destination::Mailbox {
                    instance: state.id.clone(),
                },
                body: MailboxItemRef::State(state).encode(),
                message_id: format!("{}:v{}", state.id, state.version),
                instance: state.id.clone(),
                dtask: state.name.clone(),
            },
        );
        outputs
    }

    /// Runs one step of `state` and returns what to publish.
    async fn step(&self, state: InstanceState, now: SystemTime) -> Vec<Outgoing> {
        self.step_next(state, now).await.outputs
    }

    /// Runs one step of `state`; returns what to publish and the hand-off to run inline.
    async fn step_next(&self, mut state: InstanceState, now: SystemTime) -> Stepped {
        let Some(reg) = self.registry.get(&state.name) else {
            let f = Failure::new(
                FailureKind::UnknownDTask,
                format!(
                    "no DTask named `{}` is registered in this worker",
                    state.name
                ),
            );
            return self.finish(&state, Outcome::Failed(f), Vec::new()).into();
        };
        let (end, replayed, inputs) = match reg.run {
            Run::Replay(run) => {
                let mut body = match run(&state.input) {
                    Ok(b) => b,
                    Err(f) => return self.finish(&state, Outcome::Failed(f), Vec::new()).into(),
                };
                let journal = std::mem::take(&mut state.journal);
                let mut exec = Exec::new(state.id.clone(), journal, state.recorded, now);
                exec.clock = self.clock.clone();
                let exec = Arc::new(Mutex::new(exec));
                let end = drive(&mut body, &exec).await;
                let mut ex = exec.lock().unwrap_or_else(|p| p.into_inner());
                state.journal = std::mem::take(&mut ex.journal);
                state.recorded = ex.recorded;
                (end, ex.replayed, std::mem::take(&mut ex.child_inputs))
            }
            Run::Snapshot {
                run,
                fingerprint,
                accepts,
            } => {
                let clock = self.clock.clone();
                snapshot::run_step(run, fingerprint, accepts, &mut state, now, clock).await
            }
        };
        // What `suspend` changes in the state, restored when the step fails instead.
        let (mailbox, version, touch_at_ms) = (state.mailbox, state.version, state.touch_at_ms);
        let mut next = None;
        let outputs = match end {
            StepEnd::Completed(bytes)
                if inputs.is_empty()
                    && !state.mailbox
                    && matches!(state.reply, ReplyTo::Continuation { .. }) =>
            {
                // The parent waits for this result alone: its state comes back with it.
                let ReplyTo::Continuation { parent, seq } =
                    std::mem::replace(&mut state.reply, ReplyTo::Detached)
                else {
                    unreachable!("matched above")
                };
                let msg = TaskMessage::Step {
                    state: parent,
                    completion: Some((seq, Outcome::Ok(bytes))),
                };
                let out = resume_parent(&msg);
                next = Some(msg);
                vec![out]
            }
            StepEnd::Completed(bytes) => {
                let detached: Vec<(Seq, Vec<u8>)> = inputs.into_iter().collect();
                self.finish(&state, Outcome::Ok(bytes), detached)
            }
            StepEnd::Failed(f) => {
                warn!(instance = %state.id, dtask = %state.name, failure = %f, "instance failed");
                self.finish(&state, Outcome::Failed(f), Vec::new())
            }
            StepEnd::Suspended => {
                let (outputs, child) = self.suspend(&mut state, replayed, inputs, now);
                next = child;
                outputs
            }
        };
        if let Some(big) = outputs
            .iter()
            .map(|o| o.body.len())
            .find(|n| *n > self.budget)
        {
            // Put back what the hand-off took from the state.
            match next.take() {
                Some(TaskMessage::Step {
                    state: child,
                    completion: None,
                }) => {
                    if let ReplyTo::Continuation { parent, .. } = child.reply {
                        state = *parent;
                    }
                }
                Some(TaskMessage::Step {
                    state: parent,
                    completion: Some((seq, _)),
                }) => state.reply = ReplyTo::Continuation { parent, seq },
                _ => {}
            }
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
            state.journal.clear();
            (state.mailbox, state.version, state.touch_at_ms) = (mailbox, version, touch_at_ms);
            return self.finish(&state, Outcome::Failed(f), Vec::new()).into();
        }
        Stepped { outputs, next }
    }

    /// The messages that end an instance with `outcome`.
    fn finish(
        &self,
        state: &InstanceState,
        outcome: Outcome,
        detached: Vec<(Seq, Vec<u8>)>,
    ) -> Vec<Outgoing> {
        let mut outputs = Vec::new();
        if state.mailbox {
            let tomb = MailboxItem::State(Box::new(state.tombstone()));
            outputs.push(Outgoing {
                destination: Destination::Mailbox {
                    instance: state.id.clone(),
                },
                body: encode(&tomb),
                message_id: format!("{}:end", state.id),
                instance: state.id.clone(),
                dtask: state.name.clone(),
            });
        }
        // Children spawned and never awaited still run; nobody waits for their result.
        for (seq, input) in detached {
            if let Some(Command::Child { name, .. }) = state.entry(seq).map(|e| &e.cmd) {
                let child =
                    InstanceState::new(state.id.child(seq), name.clone(), input, ReplyTo::Detached);
                outputs.push(start_child(&child));
            }
        }
        match &state.reply {
            ReplyTo::Root => {
                let rec = ResultRecord { outcome };
                outputs.push(Outgoing {
                    destination: Destination::Result {
                        instance: state.id.clone(),
                    },
                    body: encode(&rec),
                    message_id: format!("{}:result", state.id),
                    instance: state.id.clone(),
                    dtask: state.name.clone(),
                });
            }
            ReplyTo::Client { client } => {
                let rec = ResultRecord { outcome };
                outputs.push(Outgoing {
                    destination: Destination::Reply {
                        client: client.clone(),
                    },
                    body: encode(&rec),
                    message_id: format!("{}:result", state.id),
                    instance: state.id.clone(),
                    dtask: state.name.clone(),
                });
            }
            ReplyTo::Continuation { parent, seq } => {
                outputs.push(resume_parent_ref(parent, *seq, &outcome));
            }
            ReplyTo::Mailbox {
                parent,
                parent_name,
                seq,
            } => {
                let item = MailboxItem::Event { seq: *seq, outcome };
                outputs.push(Outgoing {
                    destination: Destination::Mailbox {
                        instance: parent.clone(),
                    },
                    body: encode(&item),
                    message_id: format!("{parent}:e{seq}"),
                    instance: parent.clone(),
                    dtask: parent_name.clone(),
                });
            }
            ReplyTo::Detached => {}
        }
        outputs
    }

    /// The messages that suspend an instance after a step issued the operations at
    /// positions `replayed..`.
    fn suspend(
        &self,
        state: &mut InstanceState,
        replayed: usize,
        mut inputs: std::collections::HashMap<Seq, Vec<u8>>,
        now: SystemTime,
    ) -> (Vec<Outgoing>, Option<TaskMessage>) {
        let new: Vec<Seq> = (replayed as Seq..state.next_seq())
            .filter(|seq| {
                state
                    .entry(*seq)
                    .is_some_and(|e| e.cmd.is_distributed() && e.result.is_none())
            })
            .collect();
        let mut outputs = Vec::new();
        // Status is written on transitions only: `Suspended` after the first step; later
        // steps leave it (each write is a confirmed publish).
        if state.reply == ReplyTo::Root && replayed == 0 {
            outputs.push(status_write(state, Status::Suspended));
        }
        if !state.mailbox && new.len() == 1 && state.outstanding() == 1 {
            // Waiting on one operation: the state rides along with it.
            let seq = new[0];
            let cmd = state
                .entry(seq)
                .map(|e| e.cmd.clone())
                .unwrap_or(Command::Yield);
            match cmd {
                Command::Child { name, .. } => {
                    let input = inputs.remove(&seq).unwrap_or_default();
                    // The state moves into the child's message, which is also returned
                    // for an inline run (`state` is left a placeholder).
                    let parent = std::mem::replace(state, InstanceState::placeholder());
                    let child = InstanceState::new(
                        parent.id.child(seq),
                        name,
                        input,
                        ReplyTo::Continuation {
                            parent: Box::new(parent),
                            seq,
                        },
                    );
                    outputs.push(start_child(&child));
                    let start = TaskMessage::Step {
                        state: Box::new(child),
                        completion: None,
                    };
                    return (outputs, Some(start));
                }
                Command::Delay { .. } | Command::DelayUntil { .. } => {
                    let at = cmd.fire_at().unwrap_or(SystemTime::UNIX_EPOCH);
                    let id = format!("{}:r{seq}", state.id);
                    let dest = Destination::Delayed {
                        name: state.name.clone(),
                        at,
                    };
                    let body = TaskMessageRef::Step {
                        state,
                        completion: Some((seq, &Outcome::Ok(UNIT.to_vec()))),
                    }
                    .encode();
                    outputs.push(out_body(dest, body, id, state));
                }
                Command::Yield => {
                    let id = format!("{}:r{seq}", state.id);
                    let dest = Destination::Task {
                        name: state.name.clone(),
                    };
                    let body = TaskMessageRef::Step {
                        state,
                        completion: Some((seq, &Outcome::Ok(UNIT.to_vec()))),
                    }
                    .encode();
                    outputs.push(out_body(dest, body, id, state));
                }
                Command::Run | Command::Compacted => {
                    unreachable!("only outstanding distributed operations are new")
                }
            }
            return (outputs, None);
        }
        // Waiting on several operations (or already in mailbox mode): the state is kept
        // in the instance's mailbox, where the results are merged one at a time.
        state.mailbox = true;
        outputs.extend(self.write_mailbox_state(state, now));
        for seq in new {
            let cmd = state
                .entry(seq)
                .map(|e| e.cmd.clone())
                .unwrap_or(Command::Yield);
            match cmd {
                Command::Child { name, .. } => {
                    let input = inputs.remove(&seq).unwrap_or_default();
                    let child = InstanceState::new(
                        state.id.child(seq),
                        name,
                        input,
                        ReplyTo::Mailbox {
                            parent: state.id.clone(),
                            parent_name: state.name.clone(),
                            seq,
                        },
                    );
                    outputs.push(start_child(&child));
                }
                Command::Delay { .. } | Command::DelayUntil { .. } => {
                    let at = cmd.fire_at().unwrap_or(SystemTime::UNIX_EPOCH);
                    let msg = TaskMessage::Forward {
                        instance: state.id.clone(),
                        name: state.name.clone(),
                        item: MailboxItem::Event {
                            seq,
                            outcome: Outcome::Ok(UNIT.to_vec()),
                        },
                        not_before_ms: to_millis(at),
                    };
                    let dest = Destination::Delayed {
                        name: state.name.clone(),
                        at,
                    };
                    outputs.push(out(dest, &msg, format!("{}:t{seq}", state.id), state));
                }
                Command::Yield => {
                    let item = MailboxItem::Event {
                        seq,
                        outcome: Outcome::Ok(UNIT.to_vec()),
                    };
                    outputs.push(Outgoing {
                        destination: Destination::Mailbox {
                            instance: state.id.clone(),
                        },
                        body: encode(&item),
                        message_id: format!("{}:e{seq}", state.id),
                        instance: state.id.clone(),
                        dtask: state.name.clone(),
                    });
                }
                Command::Run | Command::Compacted => {
                    unreachable!("only outstanding distributed operations are new")
                }
            }
        }
        (outputs, None)
    }
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

/// The message that resumes `parent`, suspended on its child at `seq`, with `outcome`.
fn resume_parent_ref(parent: &InstanceState, seq: Seq, outcome: &Outcome) -> Outgoing {
    let body = TaskMessageRef::Step {
        state: parent,
        completion: Some((seq, outcome)),
    }
    .encode();
    Outgoing {
        destination: Destination::Task {
            name: parent.name.clone(),
        },
        body,
        message_id: format!("{}:r{seq}", parent.id),
        instance: parent.id.clone(),
        dtask: parent.name.clone(),
    }
}

/// [`resume_parent_ref`] of a resume message built already.
fn resume_parent(msg: &TaskMessage) -> Outgoing {
    match msg {
        TaskMessage::Step {
            state,
            completion: Some((seq, outcome)),
        } => resume_parent_ref(state, *seq, outcome),
        _ => unreachable!("a resume message carries a completion"),
    }
}

fn out(dest: Destination, msg: &TaskMessage, id: String, state: &InstanceState) -> Outgoing {
    out_body(dest, encode(msg), id, state)
}

fn out_body(dest: Destination, body: Vec<u8>, id: String, state: &InstanceState) -> Outgoing {
    Outgoing {
        destination: dest,
        body,
        message_id: id,
        instance: state.id.clone(),
        dtask: state.name.clone(),
    }
}

fn start_child(child: &InstanceState) -> Outgoing {
    let body = TaskMessageRef::Step {
        state: child,
        completion: None,
    }
    .encode();
    Outgoing {
        destination: Destination::Task {
            name: child.name.clone(),
        },
        body,
        message_id: format!("{}:start", child.id),
        instance: child.id.clone(),
        dtask: child.name.clone(),
    }
}

pub(crate) fn status_write(state: &InstanceState, status: Status) -> Outgoing {
    Outgoing {
        destination: Destination::Status {
            instance: state.id.clone(),
        },
        body: encode(&status),
        message_id: format!("{}:status:{}", state.id, state.recorded),
        instance: state.id.clone(),
        dtask: state.name.clone(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::state::{Entry, InstanceId, ResultRecord};

    fn timer_step(fire_at: SystemTime) -> TaskMessage {
        let mut state = InstanceState::new(
            InstanceId::new("early").expect("valid"),
            "sleeper".into(),
            Vec::new(),
            ReplyTo::Root,
        );
        state.journal.push(Entry {
            cmd: Command::Delay {
                millis: 1_000,
                fire_at_ms: to_millis(fire_at),
            },
            result: None,
            order: 0,
        });
        TaskMessage::Step {
            state: Box::new(state),
            completion: Some((0, Outcome::Ok(UNIT.to_vec()))),
        }
    }

    #[crate::dtask(name = "engine_test.inc")]
    async fn inc(x: u64) -> u64 {
        x + 1
    }

    #[crate::dtask(name = "engine_test.chain")]
    async fn chain(n: u64) -> u64 {
        let mut v = 0;
        for _ in 0..n {
            v = inc(v).await;
        }
        v
    }

    /// Follows a chain's hand-offs through the engine alone, checking at every step that
    /// the message kept for an inline run is exactly what its published body decodes to.
    #[tokio::test]
    async fn a_kept_hand_off_equals_its_published_body() {
        let mut registry = Registry::new();
        registry
            .register(inc)
            .and_then(|r| r.register(chain))
            .expect("registered");
        let engine = Engine::new(registry, DEFAULT_STATE_BUDGET);
        let now = from_millis(1_700_000_000_000);
        let (name, input) = chain(3).into_call().expect("a call");
        let state = InstanceState::new(
            InstanceId::new("root").expect("valid"),
            name,
            input.expect("encodes"),
            ReplyTo::Root,
        );
        let mut msg = TaskMessage::Step {
            state: Box::new(state),
            completion: None,
        };
        let mut kept = 0;
        let result = loop {
            let stepped = engine.handle_task_next(msg, now).await;
            let hand_offs: Vec<&Outgoing> = stepped
                .outputs
                .iter()
                .filter(|o| matches!(o.destination, Destination::Task { .. }))
                .collect();
            match stepped.next {
                Some(next) => {
                    assert_eq!(hand_offs.len(), 1, "one hand-off per kept message");
                    let decoded: TaskMessage = decode(&hand_offs[0].body).expect("decodes");
                    assert_eq!(decoded, next);
                    kept += 1;
                    msg = next;
                }
                None => {
                    assert!(hand_offs.is_empty());
                    break stepped
                        .outputs
                        .into_iter()
                        .find(|o| matches!(o.destination, Destination::Result { .. }))
                        .expect("the root's result");
                }
            }
        };
        // Three children started and three resumes with their results.
        assert_eq!(kept, 6);
        let rec: ResultRecord = decode(&result.body).expect("a result record");
        assert_eq!(
            rec.outcome,
            Outcome::Ok(crate::codec::encode_value(&3u64).expect("encodes"))
        );
    }

    /// A hand-off past the state budget fails the instance with its state intact: the
    /// parent whose state rode in the child's start gets the failure.
    #[tokio::test]
    async fn a_kept_hand_off_past_the_budget_fails_the_instance() {
        let mut registry = Registry::new();
        registry
            .register(inc)
            .and_then(|r| r.register(chain))
            .expect("registered");
        let engine = Engine::new(registry, 60);
        let (name, input) = chain(2).into_call().expect("a call");
        let state = InstanceState::new(
            InstanceId::new("root-with-a-long-enough-id").expect("valid"),
            name,
            input.expect("encodes"),
            ReplyTo::Root,
        );
        let msg = TaskMessage::Step {
            state: Box::new(state),
            completion: None,
        };
        let stepped = engine
            .handle_task_next(msg, from_millis(1_700_000_000_000))
            .await;
        assert!(stepped.next.is_none());
        let result = stepped
            .outputs
            .iter()
            .find(|o| {
                o.destination
                    == Destination::Result {
                        instance: InstanceId::new("root-with-a-long-enough-id").expect("valid"),
                    }
            })
            .expect("the root fails with a result");
        let rec: ResultRecord = decode(&result.body).expect("a result record");
        match rec.outcome {
            Outcome::Failed(f) => assert!(f.is_state_too_large(), "{f}"),
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_early_timer_waits_again_under_a_fresh_message_id() {
        let engine = Engine::new(Registry::new(), DEFAULT_STATE_BUDGET);
        let now = from_millis(1_700_000_000_000);
        let fire_at = now + Duration::from_millis(1_000);
        let out = engine.handle_task(timer_step(fire_at), now).await;
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].destination,
            Destination::Delayed {
                name: "sleeper".into(),
                at: fire_at
            }
        );
        // The original message's id is `early:r0`; the worker's dedupe window has seen it.
        assert_ne!(out[0].message_id, "early:r0");
        // Early a second time (clock skew): yet another id.
        let again = decode::<TaskMessage>(&out[0].body).expect("decodes");
        let later = now + Duration::from_millis(10);
        let out2 = engine.handle_task(again, later).await;
        assert_eq!(out2.len(), 1);
        assert_ne!(out2[0].message_id, out[0].message_id);
    }
}

//! The snapshot execution model: `#[dtask(snapshot)]` functions compiled into explicit,
//! serializable state machines.
//!
//! The macro turns the body into one async block that can start at the top or at any of
//! its distributed awaits ("points"). While the block is pending at a point, the point
//! writes a frame into the step's context: its index, the locals the rest of the body
//! uses (serialized) and the pending operation as a [`Shape`] (journal positions, no
//! closures). When the step suspends, the step keeps that frame in the instance state
//! ([`Snapshot`]) and drops the future. To resume, the generated run function decodes
//! the locals and starts the block at that point; the point reads its result from the
//! journal ([`eval`]). Nothing is replayed, so no determinism is required and a resume
//! costs the same whatever the instance's history.
//!
//! Journal positions (`seq`) are shared with the replay model, so the messaging protocol
//! (ride-along continuation, mailbox merge by `seq`) is unchanged. Entries the machine no
//! longer needs are compacted at each suspension.

use std::time::SystemTime;

use super::migrate::{MigrateFn, SavedMachine};
use super::{drive_state, StepOutput};
use crate::dtask::{cancel_started, named, timed_out, within_reason};
use crate::error::{Failure, FailureKind};
use crate::protocol::codec::encode_value;
use crate::protocol::state::{Command, Entry, InstanceState, Outcome, Seq, Shape, Snapshot};
use crate::step::{BodyFuture, Clock, Exec, Saved, StepEnd};

/// The generated function that starts (`None`) or resumes a snapshot machine.
pub(crate) type SnapshotRunFn = fn(&[u8], Option<Resume<'_>>) -> Result<BodyFuture, Failure>;

/// A saved operation evaluated against the journal.
pub(crate) enum Eval {
    Pending,
    Ready(Vec<u8>, u32),
    Failed(Failure),
}

/// Evaluates a saved operation against the journal, like the live combinators do.
pub(crate) fn eval(shape: &Shape, ex: &mut Exec) -> Eval {
    match shape {
        Shape::Op { seq, catch } => {
            let Some(e) = ex
                .entry(*seq)
                .filter(|e| e.cmd.is_distributed() || e.cmd == Command::Run)
            else {
                return Eval::Failed(corrupt(format!(
                    "the snapshot waits on operation {seq}, which the journal does not hold"
                )));
            };
            if e.result.is_none() {
                // Cancelled: the await fails now (outside a clean-up scope).
                if let Some(reason) = ex.cancelling() {
                    ex.cancel_op(*seq, &reason, false);
                }
            }
            let Some(e) = ex.entry(*seq) else {
                return Eval::Pending;
            };
            let order = e.order;
            match &e.result {
                None => {
                    ex.blocked += 1;
                    Eval::Pending
                }
                Some(Outcome::Failed(f)) if f.is_cancelled() => {
                    if *catch {
                        Eval::Ready(wrap_err(f), order)
                    } else {
                        Eval::Failed(f.clone())
                    }
                }
                Some(Outcome::Ok(bytes)) if *catch => Eval::Ready(wrap_ok(bytes), order),
                Some(Outcome::Ok(bytes)) => Eval::Ready(bytes.clone(), order),
                Some(Outcome::Failed(f)) => {
                    let what = match &e.cmd {
                        Command::Child { name, .. } => format!("`{name}`"),
                        other => other.to_string(),
                    };
                    let child = Failure::new(
                        FailureKind::ChildFailed,
                        format!("child {what} ({}) failed: {f}", ex.instance.child(*seq)),
                    );
                    if *catch {
                        Eval::Ready(wrap_err(&child), order)
                    } else {
                        Eval::Failed(child)
                    }
                }
            }
        }
        Shape::All(parts) => {
            let evals: Vec<Eval> = parts.iter().map(|p| eval(p, ex)).collect();
            let mut out = Vec::new();
            let _ = rmp::encode::write_array_len(&mut out, parts.len() as u32);
            let mut order = 0;
            let mut pending = false;
            for e in evals {
                match e {
                    Eval::Failed(f) => return Eval::Failed(f),
                    Eval::Pending => pending = true,
                    Eval::Ready(bytes, o) => {
                        order = order.max(o);
                        out.extend_from_slice(&bytes);
                    }
                }
            }
            if pending {
                Eval::Pending
            } else {
                Eval::Ready(out, order)
            }
        }
        Shape::Replay { first, end } => Eval::Failed(corrupt(format!(
            "the snapshot waits on operations {first}..{end} of an await that is built again \
             at a resume, but the await it resumes at does not build one"
        ))),
        Shape::Any(parts) => match first_of(parts, ex) {
            Err((f, _)) => Eval::Failed(f),
            Ok(None) => Eval::Pending,
            Ok(Some((order, i, bytes))) => Eval::Ready(indexed(i, &bytes), order),
        },
        Shape::Cleanup(part) => {
            ex.cancel.shield += 1;
            let r = eval(part, ex);
            ex.cancel.shield = ex.cancel.shield.saturating_sub(1);
            r
        }
        Shape::Race(parts) => {
            let first = first_of(parts, ex);
            // The winner is the part recorded first, a failure included.
            let winner = match &first {
                Ok(Some((_, i, _))) => Some(*i),
                Err((_, Some(i))) => Some(*i),
                _ => None,
            };
            if let Some(i) = winner {
                let mut won = Vec::new();
                parts[i].seqs(&mut won);
                let range = match won[..] {
                    [one] => Some(one..one + 1),
                    _ => None,
                };
                let reason = format!("lost DTask::race to part {i}{}", named(ex, range.as_ref()));
                for (j, p) in parts.iter().enumerate() {
                    if j != i {
                        let mut losers = Vec::new();
                        p.seqs(&mut losers);
                        cancel_started(ex, losers, &reason);
                    }
                }
            }
            match first {
                Err((f, _)) => Eval::Failed(f),
                Ok(None) => Eval::Pending,
                Ok(Some((order, i, bytes))) => Eval::Ready(indexed(i, &bytes), order),
            }
        }
        Shape::Timeout { task, delay } => {
            let t = eval(task, ex);
            let d = eval(
                &Shape::Op {
                    seq: *delay,
                    catch: false,
                },
                ex,
            );
            match (t, d) {
                (Eval::Failed(f), _) | (_, Eval::Failed(f)) => Eval::Failed(f),
                (Eval::Ready(bytes, to), Eval::Ready(_, d_o)) if to < d_o => {
                    Eval::Ready(wrap_ok(&bytes), to)
                }
                (Eval::Ready(bytes, to), Eval::Pending) => Eval::Ready(wrap_ok(&bytes), to),
                (_, Eval::Ready(_, d_o)) => {
                    let millis = match ex.entry(*delay).map(|e| &e.cmd) {
                        Some(Command::Delay { millis, .. }) => *millis,
                        _ => 0,
                    };
                    let failure = timed_out(std::time::Duration::from_millis(millis));
                    let mut seqs = Vec::new();
                    task.seqs(&mut seqs);
                    cancel_started(ex, seqs, failure.message());
                    Eval::Ready(wrap_err(&failure), d_o)
                }
                (Eval::Pending, Eval::Pending) => Eval::Pending,
            }
        }
        Shape::Within { task, timer } => {
            let done = eval(task, ex);
            let fired = eval(
                &Shape::Op {
                    seq: *timer,
                    catch: false,
                },
                ex,
            );
            let fired_at = match fired {
                Eval::Ready(_, o) => Some(o),
                Eval::Failed(f) => return Eval::Failed(f),
                Eval::Pending => None,
            };
            match done {
                Eval::Ready(bytes, o) if fired_at.is_none_or(|f| o < f) => {
                    // rmp-serde writes `Some(v)` as `v`.
                    Eval::Ready(bytes, o)
                }
                Eval::Failed(f) if fired_at.is_none() => Eval::Failed(f),
                _ => match fired_at {
                    Some(f) => {
                        // The timer won: what the task started is cancelled.
                        let mut seqs = Vec::new();
                        task.seqs(&mut seqs);
                        let millis = match ex.entry(*timer).map(|e| &e.cmd) {
                            Some(Command::Delay { millis, .. }) => *millis,
                            _ => 0,
                        };
                        let reason = within_reason(std::time::Duration::from_millis(millis));
                        cancel_started(ex, seqs, &reason);
                        Eval::Ready(vec![0xc0], f)
                    }
                    None => Eval::Pending,
                },
            }
        }
    }
}

/// The part of `parts` recorded first, as `(order, index, value)`; a failure of a part
/// fails it (with the part's index when the failure is that part's recorded result).
#[allow(clippy::type_complexity)]
fn first_of(
    parts: &[Shape],
    ex: &mut Exec,
) -> Result<Option<(u32, usize, Vec<u8>)>, (Failure, Option<usize>)> {
    if parts.is_empty() {
        return Err((
            Failure::new(
                FailureKind::Misuse,
                "DTask::when_any of no tasks can never finish",
            ),
            None,
        ));
    }
    let mut winner: Option<(u32, usize, Vec<u8>)> = None;
    for (i, p) in parts.iter().enumerate() {
        match eval(p, ex) {
            Eval::Failed(f) => return Err((f, Some(i))),
            Eval::Pending => {}
            Eval::Ready(bytes, o) => {
                if winner.as_ref().is_none_or(|(wo, _, _)| o < *wo) {
                    winner = Some((o, i, bytes));
                }
            }
        }
    }
    Ok(winner)
}

/// `(index, value)` as serde encodes a tuple in MessagePack.
fn indexed(i: usize, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = rmp::encode::write_array_len(&mut out, 2);
    let _ = rmp::encode::write_uint(&mut out, i as u64);
    out.extend_from_slice(bytes);
    out
}

/// `Ok(value)` around an encoded value, as serde encodes `Result` in MessagePack.
fn wrap_ok(bytes: &[u8]) -> Vec<u8> {
    let mut out = encode_value(&Ok::<(), ()>(())).unwrap_or_default();
    out.pop(); // the encoded `()`
    out.extend_from_slice(bytes);
    out
}

fn wrap_err(f: &Failure) -> Vec<u8> {
    encode_value(&Err::<(), &Failure>(f)).unwrap_or_default()
}

pub(crate) fn corrupt(msg: String) -> Failure {
    Failure::new(
        FailureKind::BadInput,
        format!("corrupt snapshot state: {msg}"),
    )
}

/// Runs one step of a snapshot-model instance: resumes its machine (or starts it), drives
/// it to quiescence and, when it suspends, saves the machine into `state.snapshot` and
/// compacts the journal.
pub(super) async fn run_step(
    run: SnapshotRunFn,
    code: Code,
    state: &mut InstanceState,
    now: SystemTime,
    clock: Option<Clock>,
) -> StepOutput {
    let fingerprint = code.fingerprint;
    let first_new = state.next_seq();
    let mut snapshot = state.snapshot.take();
    let mut pinned = Vec::new();
    let body = match &mut snapshot {
        None => run(&state.input, None),
        Some(s) => match resumable(state, s, &code) {
            Err(f) => Err(f),
            Ok(()) => {
                pinned = std::mem::take(&mut s.pinned);
                run(
                    &state.input,
                    Some(Resume {
                        point: s.point,
                        locals: &s.locals,
                        pending: &s.pending,
                    }),
                )
            }
        },
    };
    let mut body = match body {
        Ok(b) => b,
        Err(f) => return StepOutput::failed(f, first_new),
    };
    let journal = std::mem::take(&mut state.journal);
    let exec = Exec::snapshot(
        state.id.clone(),
        journal,
        state.base,
        pinned,
        state.recorded,
        now,
    )
    .with_clock(clock);
    let (end, (snap, child_inputs), cancelled_children) =
        drive_state(&mut body, state, exec, |ex| {
            (
                ex.snapshot.take().unwrap_or_default(),
                std::mem::take(&mut ex.child_inputs),
            )
        })
        .await;
    let mut pinned = snap.pinned;
    // Spawned operations move beside the journal, which can then be compacted freely.
    for seq in snap.spawned {
        let i = seq.checked_sub(state.base).map(|i| i as usize);
        if let Some(e) = i.and_then(|i| state.journal.get_mut(i)) {
            let hole = Entry {
                cmd: Command::Compacted,
                result: None,
                order: 0,
            };
            pinned.push((seq, std::mem::replace(e, hole)));
        }
    }
    let end = match end {
        StepEnd::Suspended => match snap.saved {
            Saved::Frame(frame) => {
                state.snapshot = Some(Snapshot {
                    fingerprint,
                    point: frame.point,
                    locals: frame.locals,
                    pending: frame.pending,
                    pinned,
                });
                compact(state, first_new);
                StepEnd::Suspended
            }
            Saved::Unsaveable(why) => StepEnd::Failed(Failure::new(FailureKind::Misuse, why)),
            Saved::Nothing => StepEnd::Failed(Failure::new(
                FailureKind::Misuse,
                "the instance waits on a distributed operation outside of an await of its \
                 #[dtask(snapshot)] function (a DTask polled by a local future or a spawned \
                 task): a snapshot can only be taken at the function's own awaits",
            )),
        },
        other => other,
    };
    StepOutput {
        end,
        first_new,
        child_inputs,
        cancelled_children,
    }
}

/// The code a worker runs for a snapshot DTask: its fingerprint, the earlier code it
/// accepts as it is, and the earlier code it migrates from.
pub(super) struct Code {
    pub(super) fingerprint: u64,
    pub(super) accepts: &'static [u64],
    pub(super) migrations: &'static [(u64, MigrateFn)],
}

/// Whether the saved machine `s` of `state` can be resumed by `code` (the same code, code
/// declared compatible with it, or code that migrates it: `s` is then rewritten by the
/// migration), and names only operations the journal holds.
fn resumable(state: &InstanceState, s: &mut Snapshot, code: &Code) -> Result<(), Failure> {
    let fingerprint = code.fingerprint;
    let migration = code
        .migrations
        .iter()
        .find(|(from, _)| *from == s.fingerprint && from != &fingerprint);
    if let Some((from, migrate)) = migration {
        let old = SavedMachine::from_parts(s.point, std::mem::take(&mut s.locals));
        let (point, locals) = migrate(old)
            .map_err(|why| {
                Failure::new(
                    FailureKind::CodeChanged,
                    format!(
                        "instance `{}` of `{}` was suspended by code with fingerprint                          {from:016x}, and its migration to {fingerprint:016x} failed: {why}",
                        state.id, state.name
                    ),
                )
            })?
            .into_parts();
        (s.point, s.locals, s.fingerprint) = (point, locals, fingerprint);
    }
    let accepts = code.accepts;
    if s.fingerprint != fingerprint && !accepts.contains(&s.fingerprint) {
        return Err(Failure::new(
            FailureKind::CodeChanged,
            format!(
                "instance `{}` of `{}` was suspended by code with fingerprint \
                 {:016x}, but this worker runs fingerprint {fingerprint:016x}: the \
                 function's code changed, so its saved state cannot be resumed \
                 safely. Finish such instances with the old build, declare the \
                 new code compatible with \
                 #[dtask(snapshot, accepts = \"{:016x}\")] after checking that its \
                 awaits and saved locals are unchanged, or migrate them with \
                 #[dtask(snapshot, migrate(from = \"{:016x}\", with = ..))]",
                state.id, state.name, s.fingerprint, s.fingerprint, s.fingerprint
            ),
        ));
    }
    let mut seqs = Vec::new();
    s.pending.seqs(&mut seqs);
    let known = |q: &Seq| {
        state.entry(*q).is_some_and(|e| e.cmd != Command::Compacted)
            || s.pinned.iter().any(|(p, _)| p == q)
    };
    match seqs.iter().find(|q| !known(q)) {
        Some(bad) => Err(corrupt(format!(
            "the snapshot waits on operation {bad}, which the journal does not hold"
        ))),
        None => Ok(()),
    }
}

/// Drops the journal entries the saved machine can no longer read: everything except the
/// pending operation and the operations issued in this step that are still outstanding
/// (they are published now; their results are dropped when they arrive). Spawned
/// operations were moved beside the journal before.
fn compact(state: &mut InstanceState, first_new: Seq) {
    let Some(snap) = &state.snapshot else {
        return;
    };
    let mut keep = Vec::new();
    snap.pending.seqs(&mut keep);
    let base = state.base;
    for (i, e) in state.journal.iter_mut().enumerate() {
        let seq = base + i as Seq;
        let fresh = seq >= first_new && e.cmd.is_distributed() && e.result.is_none();
        if !fresh && !keep.contains(&seq) {
            *e = Entry {
                cmd: Command::Compacted,
                result: None,
                order: 0,
            };
        }
    }
    let dead = state
        .journal
        .iter()
        .take_while(|e| e.cmd == Command::Compacted)
        .count();
    state.journal.drain(..dead);
    state.base += dead as Seq;
}

/// Where a snapshot machine resumes: given to the generated run function.
#[derive(Debug, Clone, Copy)]
pub struct Resume<'a> {
    pub(crate) point: u32,
    pub(crate) locals: &'a [u8],
    pub(crate) pending: &'a Shape,
}

//! The reference model: a DTask's body run as plain async code, in one future that is
//! never dropped, serialized or replayed, with no broker and no faults. A child call is
//! answered by running the child's body the same way; timers and yields complete at once.
//! The result a simulated run records for a root must equal the one this gives.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use futures::FutureExt;

use crate::error::{Failure, FailureKind};
use crate::protocol::outgoing::UNIT;
use crate::protocol::state::{Command, Outcome, Seq};
use crate::protocol::InstanceId;
use crate::registry::Registry;
use crate::step::{drive, Exec, StepEnd};

/// How deep children may nest in the reference (a guard against runaway recursion).
const MAX_DEPTH: usize = 64;
/// How many times a body may be driven before the reference gives up.
const MAX_STEPS: usize = 100_000;

/// The outcome of `name` on `input` as plain async code.
pub(super) fn reference(registry: &Registry, name: &str, input: &[u8]) -> Outcome {
    futures::executor::block_on(run(registry.clone(), name.to_string(), input.to_vec(), 0))
}

fn run(
    registry: Registry,
    name: String,
    input: Vec<u8>,
    depth: usize,
) -> BoxFuture<'static, Outcome> {
    async move {
        let failed = |kind, msg: String| Outcome::Failed(Failure::new(kind, msg));
        if depth > MAX_DEPTH {
            return failed(FailureKind::Misuse, "children nest too deep".into());
        }
        let Some(reg) = registry.get(&name) else {
            return failed(FailureKind::UnknownDTask, name);
        };
        let mut body = match reg.run.start(&input) {
            Ok(body) => body,
            Err(f) => return Outcome::Failed(f),
        };
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let id = InstanceId::from_trusted("reference");
        let fresh = || {
            let mut exec = Exec::snapshot(id.clone(), Vec::new(), 0, Vec::new(), 0, now);
            exec.dtask.clone_from(&name);
            Arc::new(Mutex::new(exec))
        };
        let mut exec = fresh();
        let mut inputs = std::collections::BTreeMap::new();
        for _ in 0..MAX_STEPS {
            match drive(&mut body, &exec).await {
                StepEnd::Completed(bytes) => return Outcome::Ok(bytes),
                StepEnd::Failed(f) => return Outcome::Failed(f),
                StepEnd::Suspended => {}
                // The next run, as plain code: the body again with the new input.
                StepEnd::Continued(input) => {
                    body = match reg.run.start(&input) {
                        Ok(body) => body,
                        Err(f) => return Outcome::Failed(f),
                    };
                    exec = fresh();
                    continue;
                }
            }
            // The next operation to complete: calls and yields first, in order, then the
            // earliest timer; events and resumes have no answer here.
            let (seq, cmd, input) = {
                let mut ex = exec.lock().unwrap_or_else(|p| p.into_inner());
                inputs.append(&mut ex.child_inputs);
                let open: Vec<(Seq, Command)> = ex
                    .journal
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| e.cmd.is_distributed() && e.result.is_none())
                    .map(|(i, e)| (i as Seq, e.cmd.clone()))
                    .collect();
                let pick = open
                    .iter()
                    .find(|(_, c)| matches!(c, Command::Child { .. } | Command::Yield))
                    .or_else(|| {
                        open.iter()
                            .filter(|(_, c)| c.fire_at().is_some())
                            .min_by_key(|(_, c)| c.fire_at())
                    })
                    .cloned();
                let Some((seq, cmd)) = pick else {
                    return failed(
                        FailureKind::Stuck,
                        "the reference model cannot answer an event or a resume; give the \
                         root an expected result"
                            .into(),
                    );
                };
                let input = inputs.get(&seq).cloned().unwrap_or_default();
                (seq, cmd, input)
            };
            let outcome = match &cmd {
                Command::Child { name, .. } => {
                    run(registry.clone(), name.clone(), input, depth + 1).await
                }
                _ => Outcome::Ok(UNIT.to_vec()),
            };
            let mut ex = exec.lock().unwrap_or_else(|p| p.into_inner());
            ex.recorded += 1;
            let order = ex.recorded;
            if let Some(e) = ex.journal.get_mut(seq as usize) {
                e.result = Some(outcome);
                e.order = order;
            }
        }
        failed(
            FailureKind::Stuck,
            "the reference model ran too long".into(),
        )
    }
    .boxed()
}

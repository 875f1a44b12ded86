//! Values kept out of band around one step: the references of the state read before the
//! body runs, and the values over the threshold the step produced written (and durable)
//! before its messages are built.

use std::collections::BTreeMap;

use crate::error::Error;
use crate::protocol::payload::{PayloadRef, Resolved};
use crate::protocol::state::{InstanceState, Outcome, Seq};
use crate::step::StepEnd;
use crate::store::Payloads;

/// Reads every value that `state` references (its input, the results in its journal, the
/// events in its inbox). A value the store no longer has is kept as missing: decoding it
/// fails the step with the reason, while a reference nothing decodes costs nothing more.
pub(super) async fn read_all(
    payloads: &Payloads,
    state: &InstanceState,
) -> Result<Resolved, Error> {
    let mut resolved = Resolved::default();
    let results = state.journal.iter().filter_map(|e| match &e.result {
        Some(Outcome::Ok(bytes)) => Some(bytes.as_slice()),
        _ => None,
    });
    let values = std::iter::once(state.input.as_slice())
        .chain(results)
        .chain(state.inbox.iter().map(|s| s.value.as_slice()));
    for r in values.filter_map(PayloadRef::decode) {
        if resolved.values.contains_key(r.key()) {
            continue;
        }
        let fetched = payloads.fetch(&r).await?;
        resolved.values.insert(r.key().to_string(), fetched);
    }
    Ok(resolved)
}

/// Stores out of band, and replaces by their references, the values over the threshold
/// that the step produced: its result (or the input of its next run), the inputs of the
/// children it starts (under each child's id) and the results in its journal (what
/// `DTask::run` returned). Resolves once every one is durable.
pub(super) async fn write_all(
    payloads: &Payloads,
    state: &mut InstanceState,
    end: StepEnd,
    child_inputs: &mut BTreeMap<Seq, Vec<u8>>,
) -> Result<StepEnd, Error> {
    if payloads.store.is_none() {
        return Ok(end);
    }
    let end = match end {
        StepEnd::Completed(bytes) => {
            StepEnd::Completed(payloads.externalize(&state.id, bytes).await?)
        }
        StepEnd::Continued(bytes) => {
            StepEnd::Continued(payloads.externalize(&state.id, bytes).await?)
        }
        other => other,
    };
    for (seq, input) in child_inputs.iter_mut() {
        let id = state.id.child(*seq);
        *input = payloads.externalize(&id, std::mem::take(input)).await?;
    }
    // Results that came from elsewhere were stored by their sender; the new ones (and any
    // inline value a sender without a payload store left) are stored here.
    let id = state.id.clone();
    for entry in &mut state.journal {
        if let Some(Outcome::Ok(bytes)) = &mut entry.result {
            if bytes.len() > payloads.threshold {
                *bytes = payloads.externalize(&id, std::mem::take(bytes)).await?;
            }
        }
    }
    Ok(end)
}

//! What a worker does with the facts among a step's outputs: it records them in the
//! instance store while it publishes the rest, and acks only once both are durable.

use std::collections::HashSet;
use std::sync::Arc;

use tracing::debug;

use crate::error::Error;
use crate::protocol::InstanceId;
use crate::store::{Fact, FactKind, InstanceStore};
use crate::transport::{Destination, Outgoing, Published, Transport};

/// Records the facts among `outputs` in `store` and publishes the rest with `transport`;
/// resolves when everything is durable, with the transport's report and the number of
/// results the store refused as duplicates.
///
/// Both go out at once, except when the batch also replies to a client and the store
/// wants its facts first ([`InstanceStore::replies_while_recording`]): the facts are
/// recorded first then, so that a client that has its reply finds the result by id; and
/// when the store says that none was a duplicate
/// ([`InstanceStore::reports_duplicates`]), the replies say so, and their clients take
/// the result from them.
pub(super) async fn emit(
    transport: &dyn Transport,
    store: Option<&Arc<dyn InstanceStore>>,
    outputs: Vec<Outgoing>,
) -> Result<(Vec<Published>, u64), Error> {
    let (facts, rest): (Vec<Outgoing>, Vec<Outgoing>) = outputs
        .into_iter()
        .partition(|o| matches!(o.destination, Destination::Store { .. }));
    if facts.is_empty() {
        return Ok((transport.publish(rest).await?, 0));
    }
    let Some(store) = store else {
        debug!(
            facts = facts.len(),
            "no instance store: the facts of roots are not kept"
        );
        return Ok((transport.publish(rest).await?, 0));
    };
    let facts = latest(
        facts
            .iter()
            .map(|o| Fact::from_bytes(&o.body))
            .collect::<Result<Vec<_>, _>>()?,
    );
    let replies = rest
        .iter()
        .any(|o| matches!(o.destination, Destination::Reply { .. }));
    if replies && !store.replies_while_recording() {
        let finished: HashSet<InstanceId> = facts
            .iter()
            .filter(|f| matches!(f.kind, FactKind::Finished { .. }))
            .map(|f| f.instance.clone())
            .collect();
        let duplicates = store.record(facts).await?;
        let mut rest = rest;
        if duplicates == 0 && store.reports_duplicates() {
            // Each finish was its instance's first: the replies carry the results that
            // stand, and their clients need not read them back.
            mark_recorded(&mut rest, &finished);
        }
        return Ok((transport.publish(rest).await?, duplicates));
    }
    let (recorded, published) = tokio::join!(store.record(facts), transport.publish(rest));
    Ok((published?, recorded?))
}

/// Marks the replies about the instances in `finished` as carrying the recorded result.
fn mark_recorded(outputs: &mut [Outgoing], finished: &HashSet<InstanceId>) {
    for o in outputs {
        if let Destination::Reply { recorded, .. } = &mut o.destination {
            if finished.contains(&o.instance) {
                *recorded = true;
            }
        }
    }
}

/// Drops the status facts a batch made stale: every one of an instance but its last, and
/// all of an instance whose finish is in the batch (inline runs put several steps of one
/// instance in one batch; the store would ignore them, but each costs a write).
fn latest(facts: Vec<Fact>) -> Vec<Fact> {
    let mut seen: HashSet<InstanceId> = facts
        .iter()
        .filter(|f| matches!(f.kind, FactKind::Finished { .. }))
        .map(|f| f.instance.clone())
        .collect();
    let mut kept: Vec<Fact> = facts
        .into_iter()
        .rev()
        .filter(|f| match f.kind {
            FactKind::Status { .. } => seen.insert(f.instance.clone()),
            _ => true,
        })
        .collect();
    kept.reverse();
    kept
}

//! The check a worker makes before the first step of a root started under a chosen id
//! ([`Client::start_with_id`](crate::Client::start_with_id)): whether this start is the
//! one that holds the id.

use crate::error::Error;
use crate::protocol::message::TaskMessage;
use crate::protocol::state::ReplyTo;
use crate::store::InstanceStore;

/// Whether the step `msg` may run: `false` only for the first step of a root started
/// under a chosen id whose claim holds another start's nonce (this start lost
/// the id, and is dropped without running).
///
/// When the id is unclaimed (the start's client died before claiming the id, or has
/// not claimed it yet), the id is claimed here with the start's own nonce: the start
/// runs, and its client, if alive, finds its nonce there and reports the start as made.
pub(super) async fn may_run(
    store: Option<&dyn InstanceStore>,
    msg: &TaskMessage,
) -> Result<bool, Error> {
    let TaskMessage::Step {
        state,
        completion: None,
    } = msg
    else {
        return Ok(true);
    };
    let Some(nonce) = state.claim else {
        return Ok(true);
    };
    let first_step = state.reply == ReplyTo::Root && state.run == 0 && state.at_run_start();
    match store {
        Some(store) if first_step => store.claim(&state.id, nonce).await,
        // A later step already passed the check. Without a store no claim is held (no
        // client can start an id under a chosen name).
        _ => Ok(true),
    }
}

//! Following the cancel records: the stream queue `P.cancels`, read from its first record
//! into the transport's [`CancelBook`] by every process that follows it (adding a record
//! twice changes nothing).

use std::sync::Arc;

use dtasks::transport::{CancelBook, Following};
use tracing::warn;

use crate::error::Result;
use crate::follow::Follower;
use crate::shared::Shared;
use crate::topology::Kind;

/// Starts following the records into `shared.cancels`; resolves once every record
/// published before the call is in the book. The following stops when the returned
/// guard is dropped.
pub(crate) async fn follow(shared: Arc<Shared>) -> Result<Following> {
    let book: CancelBook = shared.cancels.clone();
    let queue = shared.topo.cancels();
    let follower = Follower::start(
        shared,
        queue,
        Kind::Cancels,
        "cancel records",
        Arc::new(move |record: &[u8]| {
            if let Err(e) = book.insert_encoded(record) {
                warn!(error = %e, "a cancel record that does not decode is skipped");
            }
        }),
    )
    .await?;
    Ok(Following::new(follower))
}

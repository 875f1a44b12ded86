//! `Client::cancel`: cancelling a root instance from any process.

use super::Client;
use crate::error::Error;
use crate::protocol::outgoing::Outgoing;
use crate::protocol::state::InstanceId;

impl Client {
    /// Cancels the root instance `id` (one started with [`Client::start`] or
    /// [`Client::start_with_id`]) with `reason`.
    ///
    /// The instance stops at its next distributed await, or at once if it is suspended
    /// waiting on several operations (in its mailbox); the cancellation reaches every
    /// running child and grandchild, spawned ones included, except those started in a
    /// clean-up scope ([`DTask::cleanup`](crate::DTask::cleanup)). It then ends with a
    /// failure that [`Failure::is_cancelled`](crate::Failure::is_cancelled), whose message
    /// is `reason`; its status reads [`Status::Cancelled`](crate::Status::Cancelled). An
    /// instance asleep on one timer (its state rides in the timer's message) is reached
    /// through the timer, which the transport brings to a worker before its time: the
    /// sleep ends cancelled, at once on the in-memory transport and at the timer's next
    /// hop on RabbitMQ (within `AmqpConfig::with_timer_hop`, about 17.5 minutes by
    /// default); a sleep in a clean-up scope waits its full time. One waiting on one child
    /// stops when that child (cancelled too) replies.
    ///
    /// Returns `Ok(true)` when the cancellation was recorded for an instance that had not
    /// finished, `Ok(false)` when the instance had already finished (nothing changes: its
    /// result stands). Cancelling twice is harmless (the first reason stands). Fails with
    /// [`Error::is_not_found`] for an unknown id, and with [`Error::is_config`] on a
    /// transport that keeps no cancel records, or without an instance store.
    ///
    /// ```
    /// use std::time::Duration;
    /// use dtasks::{dtask, DTask, Runtime, Status, WorkerConfig};
    ///
    /// #[dtask]
    /// async fn wait_all(ms: u64) -> () {
    ///     DTask::when_all([DTask::delay(Duration::from_millis(ms)), DTask::yield_now()]).await;
    /// }
    ///
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), dtasks::Error> {
    /// let rt = Runtime::new(WorkerConfig::new().register(wait_all))?;
    /// let h = rt.client().start(wait_all(3_600_000)).await?;
    /// rt.client().cancel(h.id(), "no longer needed").await?;
    /// let err = h.result().await.unwrap_err();
    /// assert!(err.is_cancelled());
    /// assert_eq!(err.failure().unwrap().message(), "no longer needed");
    /// assert_eq!(h.status().await?, Status::Cancelled);
    /// # Ok(()) }
    /// ```
    pub async fn cancel(&self, id: &InstanceId, reason: impl Into<String>) -> Result<bool, Error> {
        let reason = reason.into();
        let store = self.store()?;
        if self.transport.cancels().is_none() {
            return Err(Error::config(
                "this transport keeps no cancel records: instances cannot be cancelled",
            ));
        }
        match store.get(id).await? {
            None => return Err(Error::not_found(id.as_str())),
            Some(info) if info.status.is_finished() => return Ok(false),
            Some(_) => {}
        }
        // The record first (durable, seen by every worker, the descendants' check), then
        // the item that wakes the instance if it waits in its mailbox.
        self.transport
            .publish(vec![
                Outgoing::cancel_record(id, &reason),
                Outgoing::cancel_item(id, "", &reason),
            ])
            .await?;
        Ok(true)
    }
}

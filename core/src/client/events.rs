//! Reaching a running instance from outside: events (`signal`, `start_with_signal`),
//! resumes of suspensions (`resume`), and what a suspended root waits for.

use serde::Serialize;

use super::{Client, Handle};
use crate::dtask::{Call, ResumeToken};
use crate::error::Error;
use crate::protocol::codec::encode_value;
use crate::protocol::message::{Status, Wait};
use crate::protocol::outgoing::Outgoing;
use crate::protocol::state::{InstanceId, Outcome, Signal};

impl Client {
    /// What the root instance `id` waits for while it is suspended: the events, resumes,
    /// timers and children it waited for when its status was last written (empty when it
    /// is not suspended). Written when a root first suspends, and whenever a long wait (an
    /// event, a resume, a timer) begins or ends; a change among children only is not
    /// written (each write is a confirmed publish).
    pub async fn waiting_for(&self, id: &InstanceId) -> Result<Vec<Wait>, Error> {
        let info = self.instance(id).await?;
        if info.status != Status::Suspended {
            return Ok(Vec::new());
        }
        Ok(info.waits)
    }

    /// Sends the event `name` with `value` to the instance `id`, where
    /// [`DTask::event`](crate::DTask::event) receives it.
    ///
    /// The event is durable once this returns: it waits in the instance's mailbox (and
    /// then in its state) until a wait for `name` takes it, in the order events of that
    /// name were sent, each taken once. The instance must have been started with
    /// [`Client::start`] or [`Client::start_with_id`] (those have an id to look up):
    /// [`Error::is_not_found`] for an unknown id, [`Error::is_finished`] for an instance
    /// that has finished. An event that races the instance's end (sent while its last step
    /// runs), or that it never waits for, is not received: it is dropped with the
    /// instance's mailbox, with a warning in the worker's log.
    ///
    /// The name has 1 to 200 bytes, any of them ([`Error::is_bad_input`] otherwise). The
    /// sender cannot know the type the instance waits for: a value that does not decode as
    /// that type **fails the instance** when its wait takes it
    /// ([`Failure::is_bad_input`](crate::Failure::is_bad_input), naming the event). Where
    /// values come from outside (an HTTP body, a shell), check them against the type
    /// before sending.
    ///
    /// ```
    /// use dtasks::{dtask, DTask, Runtime, WorkerConfig};
    ///
    /// #[dtask]
    /// async fn sum_of_two() -> u32 {
    ///     let a: u32 = DTask::event("n").await;
    ///     let b: u32 = DTask::event("n").await;
    ///     a * 10 + b
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), dtasks::Error> {
    /// let rt = Runtime::new(WorkerConfig::new().register(sum_of_two))?;
    /// let client = rt.client();
    /// let handle = client.start(sum_of_two()).await?;
    /// // Sent before the instance waits: kept, and taken in order.
    /// client.signal(handle.id(), "n", &4u32).await?;
    /// client.signal(handle.id(), "n", &2u32).await?;
    /// assert_eq!(handle.result().await?, 42);
    /// let late = client.signal(handle.id(), "n", &1u32).await.unwrap_err();
    /// assert!(late.is_finished());
    /// # Ok(()) }
    /// ```
    pub async fn signal<V: Serialize + ?Sized>(
        &self,
        id: &InstanceId,
        name: &str,
        value: &V,
    ) -> Result<(), Error> {
        self.send_signal(id, id, name, value).await
    }

    /// Sends the event `name` with `value` to `child`, an instance that the root `root`
    /// runs below it (a child's id is its parent's, `.` and its position: `{root}.0`,
    /// `{root}.0.3`), where [`DTask::event`](crate::DTask::event) receives it: for a root
    /// that runs the work waiting for events in a child, such as the completion webhook
    /// of `dtasks-axum`, which runs the call it wraps as `{root}.0`.
    ///
    /// Checked against the root, as [`Client::signal`] checks its instance:
    /// [`Error::is_not_found`] for an unknown root, [`Error::is_finished`] once it has
    /// finished; [`Error::is_bad_input`] when `child` is not below `root`. The child need
    /// not be recorded, nor have started yet: the event waits in its mailbox until a wait
    /// for `name` takes it. An event for a child that has finished or never waits for
    /// `name` is dropped with the child's mailbox, with a warning in the worker's log. The
    /// same rules on names and values as [`Client::signal`] hold.
    ///
    /// ```
    /// use dtasks::{dtask, DTask, InstanceId, Runtime, WorkerConfig};
    ///
    /// #[dtask]
    /// async fn approve(order: u32) -> String {
    ///     let by: String = DTask::event("approval").await;
    ///     format!("order {order} approved by {by}")
    /// }
    ///
    /// /// Runs the approval as its child (its position 0).
    /// #[dtask]
    /// async fn audited(order: u32) -> String {
    ///     approve(order).await
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), dtasks::Error> {
    /// let rt = Runtime::new(WorkerConfig::new().register(approve).register(audited))?;
    /// let client = rt.client();
    /// let h = client.start(audited(7)).await?;
    /// let child = InstanceId::new(format!("{}.0", h.id()))?;
    /// client.signal_child(h.id(), &child, "approval", "Ada").await?;
    /// assert_eq!(h.result().await?, "order 7 approved by Ada");
    /// # Ok(()) }
    /// ```
    pub async fn signal_child<V: Serialize + ?Sized>(
        &self,
        root: &InstanceId,
        child: &InstanceId,
        name: &str,
        value: &V,
    ) -> Result<(), Error> {
        let below = child
            .as_str()
            .strip_prefix(root.as_str())
            .is_some_and(|rest| rest.len() > 1 && rest.starts_with('.'));
        if !below {
            return Err(Error::bad_input(format!(
                "`{child}` is not an instance below `{root}` (`{root}.<position>`)"
            )));
        }
        self.send_signal(root, child, name, value).await
    }

    /// Sends the event `name` with `value` to the mailbox of `to`, unless the root `root`
    /// (`to` itself, or an instance above it) is unknown or has finished.
    async fn send_signal<V: Serialize + ?Sized>(
        &self,
        root: &InstanceId,
        to: &InstanceId,
        name: &str,
        value: &V,
    ) -> Result<(), Error> {
        let signal = self.make_signal(to, name, value).await?;
        let message = Outgoing::signal(to, signal);
        self.check_size(&format!("event `{name}`"), &message)?;
        if self.status(root).await?.is_finished() {
            return Err(Error::finished(root.as_str()));
        }
        self.transport.publish(vec![message]).await?;
        Ok(())
    }

    /// Starts `task` under `id` and sends it the event `name` with `value`, in one call:
    /// for a webhook whose first delivery should start the instance it is about. The
    /// event is kept until the instance waits for it.
    ///
    /// When `id` is already running, only the event is sent (to it); when it has finished,
    /// [`Error::is_finished`].
    ///
    /// ```
    /// use dtasks::{dtask, DTask, InstanceId, Runtime, WorkerConfig};
    ///
    /// #[dtask]
    /// async fn order(id: u32) -> String {
    ///     let paid: u64 = DTask::event("payment").await;
    ///     format!("order {id}: paid {paid}")
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), dtasks::Error> {
    /// let rt = Runtime::new(WorkerConfig::new().register(order))?;
    /// let id = InstanceId::new("order-7")?;
    /// let h = rt.client().start_with_signal(id, order(7), "payment", &1200u64).await?;
    /// assert_eq!(h.result().await?, "order 7: paid 1200");
    /// # Ok(()) }
    /// ```
    pub async fn start_with_signal<T, V: Serialize + ?Sized>(
        &self,
        id: InstanceId,
        task: Call<T>,
        name: &str,
        value: &V,
    ) -> Result<Handle<T>, Error> {
        let signal = self.make_signal(&id, name, value).await?;
        let message = Outgoing::signal(&id, signal);
        self.check_size(&format!("event `{name}`"), &message)?;
        let handle = match self.start_with_id(id.clone(), task).await {
            Ok(h) => h,
            Err(e) if e.is_already_started() => {
                if self.status(&id).await?.is_finished() {
                    return Err(Error::finished(id.as_str()));
                }
                self.handle(id.clone())
            }
            Err(e) => return Err(e),
        };
        // Kept in the mailbox until the instance waits for it, whenever that is.
        self.transport.publish(vec![message]).await?;
        Ok(handle)
    }

    /// The event `name` with `value` for the instance `id` (a value over the payload
    /// threshold stored out of band, under `id`).
    async fn make_signal<V: Serialize + ?Sized>(
        &self,
        id: &InstanceId,
        name: &str,
        value: &V,
    ) -> Result<Signal, Error> {
        if name.is_empty() || name.len() > 200 {
            return Err(Error::bad_input("an event name has 1 to 200 bytes"));
        }
        let value = encode_value(value).map_err(|e| {
            Error::bad_input(format!(
                "the value of event `{name}` cannot be encoded: {e}"
            ))
        })?;
        let value = self.payloads.externalize(id, value).await?;
        Ok(Signal {
            id: InstanceId::random().to_string(),
            name: name.to_string(),
            value,
        })
    }

    /// Resumes the [`DTask::suspend`](crate::DTask::suspend) that gave out `token`, with
    /// `value`, from any process.
    ///
    /// The value is durable once this returns. A token resumes its suspension once: a
    /// second resume with the same token, or a resume of an instance that has finished,
    /// is dropped by the instance (the suspension already has its value).
    pub async fn resume<V: Serialize + ?Sized>(
        &self,
        token: &ResumeToken,
        value: &V,
    ) -> Result<(), Error> {
        let bytes = encode_value(value)
            .map_err(|e| Error::bad_input(format!("the resume value cannot be encoded: {e}")))?;
        let bytes = self.payloads.externalize(token.instance(), bytes).await?;
        let outcome = Outcome::Ok(bytes);
        let msg = Outgoing::event(token.instance(), token.dtask(), token.seq(), &outcome);
        self.check_size("the resume value", &msg)?;
        self.transport.publish(vec![msg]).await?;
        Ok(())
    }
}

//! The transport contract: how workers and clients move messages.
//!
//! The core decides *what* to send; a transport decides *how*. Implement [`Transport`] to
//! run dtasks over a message broker; [`MemoryTransport`] is the
//! in-process implementation and `dtasks-amqp` the RabbitMQ one. Both must give these
//! semantics:
//!
//! - **At-least-once delivery.** A delivery that is not acked (worker crash, lost
//!   connection, explicit requeue) is delivered again. The core is idempotent against
//!   duplicates.
//! - **Publish means durable.** [`Transport::publish`] resolves only when every message of
//!   the batch is durable (broker-confirmed). Workers ack an incoming message only after
//!   publishing everything it caused.
//! - **Delays.** A message for [`Destination::Delayed`] reaches the task queue no earlier
//!   than its time, and survives restarts while it waits.
//! - **Mailboxes.** A message for [`Destination::Mailbox`] is stored durably in the
//!   instance's mailbox, then a doorbell for the instance is delivered through
//!   [`Transport::consume`]. Doorbells of one instance are never outstanding twice at
//!   once: the next is delivered only after the previous one is settled. The doorbell's
//!   handler takes the mailbox's messages with [`Transport::drain_for_doorbell`], and
//!   settles each (ack removes it, requeue puts it back). A drain follows the doorbell
//!   delivery it serves: once that delivery is handed back (its channel or connection
//!   closed), the doorbell goes to its next taker, who drains; the first handler's drain
//!   must then fail rather than run alongside (two drains would split the mailbox between
//!   two merges of one state). A doorbell redelivered after a consumer
//!   failed should be handed out only after a short pause, so that the mailbox messages the
//!   failed consumer held are back in the mailbox when it is drained (the broker requeues
//!   the two queues independently).
//! - **Deleting a mailbox.** [`Transport::delete_mailbox`] removes a mailbox with
//!   everything in it, the messages a drain holds unsettled included (settling them
//!   afterwards changes nothing). A later message for [`Destination::Mailbox`] creates
//!   it again; a keep-alive ([`Destination::Touch`]) never does: it goes into the mailbox
//!   only when the mailbox exists, and is dropped otherwise ([`Published::Dropped`]).
//! - **An instance store** (optional, [`Transport::store`]): where the facts of root
//!   instances go when the worker and the client are given no other
//!   ([`InstanceStore`] says what it must do). A
//!   [`Destination::Store`] message is never published: workers record it in the store.
//! - **A payload store** (optional, [`Transport::payloads`]): where values over the
//!   payload threshold are kept out of band ([`PayloadStore`] says what it must do).
//! - **Cancel records** (optional, [`Transport::cancels`]). A [`Destination::Cancel`] is
//!   stored durably, kept at least as long as results, and seen by every process that
//!   follows the records ([`Cancels::follow`]), including processes started later.
//! - **Reply queues** (optional, [`Transport::replies`]). A [`Destination::Reply`] is
//!   stored durably in the client's reply queue until the client acks it; duplicates may
//!   arrive (redone work), and the client keeps the first.
//!
//! The contract is split by capability: [`Transport`] is the I/O every transport has;
//! its instance store, [`ReplyQueues`] and [`Cancels`] are capabilities a transport hands
//! out through [`Transport::store`], [`Transport::replies`] and [`Transport::cancels`].

mod cancels;
mod memory;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use futures::stream::BoxStream;

pub use cancels::{CancelBook, Cancels, Following};
pub use memory::{
    DeadLetter, MemoryTransport, MemoryTransportBuilder, DEAD_LETTERS_KEPT, DEAD_LETTER_BODY,
};

use crate::error::Error;
pub use crate::protocol::{Destination, InstanceId, Outgoing};
use crate::store::{InstanceStore, PayloadStore};
use crate::trace::TraceContext;

/// What a publish did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Published {
    /// The message is durable at its destination.
    Stored,
    /// The destination already held this message's value; this write was refused.
    Duplicate,
    /// A keep-alive ([`Destination::Touch`]) found no mailbox: nothing was stored, and no
    /// mailbox was created.
    Dropped,
}

/// What a delivery asks the worker to do.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum DeliveryKind {
    /// A message from a task queue.
    Task {
        /// The encoded envelope.
        body: Vec<u8>,
        /// The message's id, when it carries one.
        message_id: Option<String>,
        /// The trace context it was sent with ([`crate::trace`]).
        trace: Option<TraceContext>,
    },
    /// New messages wait in the mailbox of `instance`.
    Doorbell {
        /// The instance.
        instance: InstanceId,
        /// Which delivery of the doorbell this is, for
        /// [`Transport::drain_for_doorbell`] (0 where the transport tells none apart).
        tag: u64,
    },
}

/// Settles one delivery or mailbox message. Dropping it unsettled means requeue.
pub trait Settle: Send {
    /// Removes the message for good.
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), Error>>;
    /// Puts the message back to be delivered again.
    fn requeue(self: Box<Self>) -> BoxFuture<'static, Result<(), Error>>;
    /// Moves the message to the dead-letter queue with `reason`.
    fn dead_letter(self: Box<Self>, reason: String) -> BoxFuture<'static, Result<(), Error>>;

    /// A future that resolves once the message is no longer held (its channel or
    /// connection closed, so the broker has put it back and will deliver it again); `None`
    /// where the transport cannot lose a held message that way. A worker abandons the
    /// merge under a doorbell it lost: the doorbell's next taker merges, and that may be
    /// this worker, which merges one mailbox at a time.
    fn lost(&self) -> Option<BoxFuture<'static, ()>> {
        None
    }
}

/// A message handed to a worker.
pub struct Delivery {
    /// What it is.
    pub kind: DeliveryKind,
    /// How many times it was delivered before (0 on first delivery).
    pub redeliveries: u32,
    /// Settles it.
    pub settle: Box<dyn Settle>,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("kind", &self.kind)
            .field("redeliveries", &self.redeliveries)
            .finish_non_exhaustive()
    }
}

/// A message taken from a mailbox.
pub struct MailboxMessage {
    /// The encoded envelope.
    pub body: Vec<u8>,
    /// The trace context it was sent with ([`crate::trace`]).
    pub trace: Option<TraceContext>,
    /// Settles it: ack removes it from the mailbox, requeue puts it back.
    pub settle: Box<dyn Settle>,
}

impl fmt::Debug for MailboxMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MailboxMessage")
            .field("len", &self.body.len())
            .finish_non_exhaustive()
    }
}

/// A result taken from a client's reply queue.
pub struct Reply {
    /// The root instance the result is for.
    pub instance: InstanceId,
    /// The encoded result.
    pub body: Vec<u8>,
    /// What its [`Destination::Reply`] said: the result is the one the instance store
    /// recorded (`false` when unknown, or when the transport does not carry it).
    pub recorded: bool,
    /// Settles it: ack removes it from the reply queue, requeue puts it back.
    pub settle: Box<dyn Settle>,
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reply")
            .field("instance", &self.instance)
            .field("len", &self.body.len())
            .field("recorded", &self.recorded)
            .finish_non_exhaustive()
    }
}

/// Moves dtasks messages: the I/O every transport has. See the [module docs](self) for
/// the semantics required.
///
/// Every method is required, the capabilities ([`Transport::store`],
/// [`Transport::replies`]) included: a transport that wraps another (to count, to trace,
/// to inject faults) must say what it does with each, so it cannot turn one off by
/// forgetting to forward it.
pub trait Transport: Send + Sync + 'static {
    /// The current time, for timers: the system clock, or a transport's virtual time.
    fn now(&self) -> SystemTime;

    /// Publishes a batch; resolves when every message is durable, with one [`Published`]
    /// per message in order.
    fn publish(&self, batch: Vec<Outgoing>) -> BoxFuture<'_, Result<Vec<Published>, Error>>;

    /// Starts consuming the task queues of `names` and the doorbells of all mailboxes.
    ///
    /// The stream should hold back deliveries while many are unsettled (a broker's
    /// prefetch count does): a worker takes the next delivery as soon as a step has run,
    /// before that step's messages are published and its delivery settled.
    fn consume(
        &self,
        names: Vec<String>,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Result<Delivery, Error>>, Error>>;

    /// Takes every message now in the mailbox of `instance`, under no doorbell delivery
    /// (workers drain with [`Transport::drain_for_doorbell`]).
    fn drain_mailbox(
        &self,
        instance: &InstanceId,
    ) -> BoxFuture<'_, Result<Vec<MailboxMessage>, Error>>;

    /// Takes every message now in the mailbox of `instance` for the doorbell delivery
    /// `tag` ([`DeliveryKind::Doorbell`]) that this process holds. Fails, taking nothing,
    /// when that delivery is no longer held (its channel or connection closed): the broker
    /// hands the doorbell to its next taker, whose drain must not run alongside this one.
    /// A transport that cannot lose a delivery that way drains as
    /// [`Transport::drain_mailbox`] does.
    fn drain_for_doorbell(
        &self,
        instance: &InstanceId,
        tag: u64,
    ) -> BoxFuture<'_, Result<Vec<MailboxMessage>, Error>>;

    /// How long a mailbox may go unused before the transport deletes it (`None`: never).
    /// Workers touch the mailbox of every waiting instance well within it (at least every
    /// quarter of it), so a long wait never loses the state kept there.
    fn mailbox_retention(&self) -> Option<Duration>;

    /// How many timers wait to fire, when the transport can tell (for progress summaries).
    fn pending_timers(&self) -> BoxFuture<'_, Result<Option<u64>, Error>>;

    /// The instance store this transport keeps (the facts of root instances), when it
    /// keeps one: what workers and clients use unless they are given another
    /// ([`WorkerConfig::store`](crate::WorkerConfig::store),
    /// [`Client::with_store`](crate::Client::with_store)).
    fn store(&self) -> Option<Arc<dyn InstanceStore>>;

    /// The payload store this transport keeps (values over the payload threshold, stored
    /// out of band), when it keeps one: what workers and clients use unless their
    /// instance store keeps one ([`InstanceStore::payloads`]) or they are given another
    /// ([`WorkerConfig::payloads`](crate::WorkerConfig::payloads)). Without any, every
    /// value travels in the messages and counts against the state budget.
    fn payloads(&self) -> Option<Arc<dyn PayloadStore>>;

    /// The clients' reply queues, when this transport has them. Without them,
    /// [`Client::call`](crate::Client::call) starts the instance and waits for its
    /// result in the instance store.
    fn replies(&self) -> Option<&dyn ReplyQueues>;

    /// The cancel records, when this transport keeps them (needed by
    /// [`Client::cancel`](crate::Client::cancel); a worker follows them to stop the
    /// instances cancelled). Publishing to [`Destination::Cancel`] needs them.
    fn cancels(&self) -> Option<&dyn Cancels>;

    /// Deletes the mailbox of `instance` with every message in it, those that a drain
    /// took and has not settled included (settling them afterwards does nothing).
    /// Deleting a missing mailbox does nothing. Workers delete the mailbox of a finished
    /// instance once no reply it awaits can still come, so that it leaves nothing behind.
    fn delete_mailbox(&self, instance: &InstanceId) -> BoxFuture<'_, Result<(), Error>>;
}

/// The clients' reply queues ([`Destination::Reply`]): a capability of a [`Transport`].
pub trait ReplyQueues: Send + Sync {
    /// Creates the reply queue `client` (nothing if it exists) and delivers what arrives
    /// in it, until the stream is dropped; through connection failures, the stream goes
    /// on after reconnecting. A reply must stay in the queue until it is acked.
    fn consume_replies(
        &self,
        client: &str,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Result<Reply, Error>>, Error>>;
}

/// What [`Worker::new`](crate::Worker::new), [`Client::new`](crate::Client::new) and
/// the other constructors take as a transport: any [`Transport`] by value, or one already
/// shared as an `Arc`.
pub trait IntoTransport {
    /// The transport, shared.
    fn into_transport(self) -> Arc<dyn Transport>;
}

impl<T: Transport> IntoTransport for T {
    fn into_transport(self) -> Arc<dyn Transport> {
        Arc::new(self)
    }
}

impl<T: Transport> IntoTransport for Arc<T> {
    fn into_transport(self) -> Arc<dyn Transport> {
        self
    }
}

impl IntoTransport for Arc<dyn Transport> {
    fn into_transport(self) -> Arc<dyn Transport> {
        self
    }
}

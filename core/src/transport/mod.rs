//! The transport contract: how workers and clients move messages.
//!
//! The core decides *what* to send; a transport decides *how*. Implement [`Transport`] to
//! run dtasks over a message broker; [`MemoryTransport`](crate::MemoryTransport) is the
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
//!   handler takes the mailbox's messages with [`Transport::drain_mailbox`], and settles
//!   each (ack removes it, requeue puts it back). A doorbell redelivered after a consumer
//!   failed should be handed out only after a short pause, so that the mailbox messages the
//!   failed consumer held are back in the mailbox when it is drained (the broker requeues
//!   the two queues independently).
//! - **Registers** (optional, [`Transport::registers`]). A [`Destination::Result`] is
//!   written once: a second write is refused and reported as [`Published::Duplicate`]. A
//!   [`Destination::Status`] keeps the last write. A claim register
//!   ([`Registers::claim`]) takes the first nonce claimed for an id and answers every
//!   later claim by comparing with it, atomically, for the register retention.
//! - **Cancel records** (optional, [`Transport::cancels`]). A [`Destination::Cancel`] is
//!   stored durably, kept at least as long as results, and seen by every process that
//!   follows the records ([`Cancels::follow`]), including processes started later.
//! - **Reply queues** (optional, [`Transport::replies`]). A [`Destination::Reply`] is
//!   stored durably in the client's reply queue until the client acks it; duplicates may
//!   arrive (redone work), and the client keeps the first.
//!
//! The contract is split by capability: [`Transport`] is the I/O every transport has;
//! [`Registers`] (results and status of roots) and [`ReplyQueues`] are capabilities a
//! transport hands out through [`Transport::registers`] and [`Transport::replies`].

mod cancels;
mod memory;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use futures::stream::BoxStream;

pub use cancels::{CancelBook, Cancels, Following};
pub use memory::{DeadLetter, MemoryTransport, MemoryTransportBuilder};

use crate::error::Error;
pub use crate::protocol::{Destination, InstanceId, Outgoing};

/// What a publish did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Published {
    /// The message is durable at its destination.
    Stored,
    /// A result register already held a value; this write was refused.
    Duplicate,
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
    },
    /// New messages wait in the mailbox of `instance`.
    Doorbell {
        /// The instance.
        instance: InstanceId,
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
    /// Settles it: ack removes it from the reply queue, requeue puts it back.
    pub settle: Box<dyn Settle>,
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reply")
            .field("instance", &self.instance)
            .field("len", &self.body.len())
            .finish_non_exhaustive()
    }
}

/// Moves dtasks messages: the I/O every transport has. See the [module docs](self) for
/// the semantics required.
///
/// Every method is required, the capabilities ([`Transport::registers`],
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

    /// Takes every message now in the mailbox of `instance`.
    fn drain_mailbox(
        &self,
        instance: &InstanceId,
    ) -> BoxFuture<'_, Result<Vec<MailboxMessage>, Error>>;

    /// How long a mailbox may go unused before the transport deletes it (`None`: never).
    /// Workers touch the mailbox of every waiting instance well within it (every quarter
    /// of it), so a long wait never loses the state kept there.
    fn mailbox_retention(&self) -> Option<Duration>;

    /// How many timers wait to fire, when the transport can tell (for progress summaries).
    fn pending_timers(&self) -> BoxFuture<'_, Result<Option<u64>, Error>>;

    /// The result and status registers of root instances, when this transport keeps them
    /// (needed by [`Client::start`](crate::Client::start) and reading results by id).
    fn registers(&self) -> Option<&dyn Registers>;

    /// The clients' reply queues, when this transport has them. Without them,
    /// [`Client::call`](crate::Client::call) starts the instance with a result register
    /// and waits on it.
    fn replies(&self) -> Option<&dyn ReplyQueues>;

    /// The cancel records, when this transport keeps them (needed by
    /// [`Client::cancel`](crate::Client::cancel); a worker follows them to stop the
    /// instances cancelled). Publishing to [`Destination::Cancel`] needs them.
    fn cancels(&self) -> Option<&dyn Cancels>;
}

/// The result and status registers of root instances, and the claim registers of roots
/// started under chosen ids: a capability of a [`Transport`].
pub trait Registers: Send + Sync {
    /// Creates the result register of the new root `instance`, empty (nothing if it
    /// exists), before its start is published: from then on the instance is known, and
    /// its status reads `Pending` until a status or its result is written.
    fn create_register(&self, instance: &InstanceId) -> BoxFuture<'_, Result<(), Error>>;

    /// Whether the result register of `instance` exists, written or not. Looking must not
    /// create it: an unknown id stays unknown.
    fn register_exists(&self, instance: &InstanceId) -> BoxFuture<'_, Result<bool, Error>>;

    /// Reads the result register of `instance` (`None` when it is empty or missing).
    /// Reading must not create it.
    fn read_result(&self, instance: &InstanceId) -> BoxFuture<'_, Result<Option<Vec<u8>>, Error>>;

    /// Waits until the result register of `instance` holds a value.
    fn wait_result(&self, instance: &InstanceId) -> BoxFuture<'_, Result<Vec<u8>, Error>>;

    /// Reads the status register of `instance` (`None` when it is empty or missing).
    /// Reading must not create it.
    fn read_status(&self, instance: &InstanceId) -> BoxFuture<'_, Result<Option<Vec<u8>>, Error>>;

    /// Claims the id `instance` for the start that carries `nonce` (a random number in
    /// `1..2^62`), in the id's set-once **claim register**: an empty register takes
    /// `nonce`; a written one is compared with it. Returns `true` when the register holds
    /// `nonce` (written by this call or by an earlier claim with the same nonce), `false`
    /// when it holds another start's nonce.
    ///
    /// A compare-and-set: of concurrent claims with different nonces, from any processes,
    /// exactly one gets `true`, and every later claim sees the same winner until the
    /// register expires (the result retention). The client that starts an id under a
    /// chosen name claims it after publishing the start, and a worker claims it with the
    /// start's nonce before running it (for a client that died in between), so a claim
    /// may come twice with the same nonce.
    fn claim(&self, instance: &InstanceId, nonce: u64) -> BoxFuture<'_, Result<bool, Error>>;
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

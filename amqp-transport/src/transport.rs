//! [`AmqpTransport`]: the `dtasks` transport contract on RabbitMQ, every capability of it
//! (`Transport`, its instance store, `ReplyQueues`, `Cancels`), delegated to the modules
//! that implement each.

use std::sync::Arc;
use std::time::Duration;

use dtasks::transport::{
    CancelBook, Cancels, Following, MailboxMessage, Outgoing, Published, ReplyQueues, Transport,
};
use dtasks::InstanceId;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::FutureExt;
use tracing::info;

use crate::cancels;
use crate::config::AmqpConfig;
use crate::conn;
use crate::consume;
use crate::error::{AmqpError, Result};
use crate::facts::{FactIndex, StreamStore};
use crate::payloads::StreamPayloads;
use crate::replies;
use crate::shared::Shared;
use crate::topology::Kind;

/// The RabbitMQ transport. Cheap to clone; clones share connections.
///
/// Create it with [`AmqpTransport::connect`], then hand it to a
/// [`Worker`](dtasks::Worker) or a [`Client`](dtasks::Client). See the
/// [crate docs](crate) for the queues it creates.
#[derive(Clone)]
pub struct AmqpTransport {
    pub(crate) shared: Arc<Shared>,
    /// What this process has read of the instance facts (its stream follower stops when
    /// the last clone of the transport and of its store is dropped).
    facts: Arc<FactIndex>,
}

impl std::fmt::Debug for AmqpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpTransport")
            .field("prefix", &self.shared.topo.prefix())
            .finish_non_exhaustive()
    }
}

impl AmqpTransport {
    /// Closes this transport (every clone): its consumers stop (a worker's stream ends,
    /// the reply and record followers stop, nothing is subscribed again), the reply
    /// queues of its clients are deleted (no other process reads them: results still on
    /// their way are dropped, as for a client that is gone) and its connections close.
    /// Messages handed out and not yet settled are requeued by the broker. For a process
    /// that is about to exit, or a test that deletes its queues: a process that exits
    /// without it leaves its clients' reply queues until they expire (the result
    /// retention, 7 days by default).
    pub async fn close(&self) {
        self.shared.close();
        self.shared.delete_reply_queues().await;
        // Consumers stop as their tasks see the flag; the connections go with the pools.
        self.shared.consume_conns.close();
        self.shared.channels.close();
        self.shared.control.close();
        self.shared.close_nodes().await;
    }

    /// The RabbitMQ-only instance store of this transport (what
    /// [`Transport::store`] hands out): facts appended to the stream `P.facts`.
    pub fn instance_store(&self) -> StreamStore {
        StreamStore::new(self.shared.clone(), self.facts.clone())
    }

    /// Connects to the broker of `cfg` and declares the queues shared by the deployment.
    /// Fails when the broker cannot be reached or the configuration is invalid.
    ///
    /// ```no_run
    /// use dtasks_amqp::{AmqpConfig, AmqpTransport};
    ///
    /// # async fn run() -> Result<(), dtasks::Error> {
    /// let transport = AmqpTransport::connect(AmqpConfig::from_env().with_prefix("shop")).await?;
    /// let client = dtasks::Client::new(transport);
    /// # Ok(()) }
    /// ```
    pub async fn connect(cfg: AmqpConfig) -> std::result::Result<Self, dtasks::Error> {
        Ok(Self::connect_inner(cfg).await?)
    }

    async fn connect_inner(cfg: AmqpConfig) -> Result<Self> {
        let shared = Arc::new(Shared::new(cfg)?);
        if shared.cfg.existing_only && !shared.exists(&shared.topo.dead()).await? {
            return Err(AmqpError::Input(format!(
                "no dtasks deployment under the prefix `{}` at this broker (it has no \
                 queue `{}`, which every process of a deployment declares): check \
                 DTASKS_PREFIX and AMQP_URL",
                shared.topo.prefix(),
                shared.topo.dead()
            )));
        }
        shared.declare_dead().await?;
        let ch = conn::get_channel(&shared.control).await?;
        shared
            .declare(&ch, &shared.topo.delay_ready(), Kind::DelayReady)
            .await?;
        drop(ch);
        info!(prefix = shared.topo.prefix(), "connected to the broker");
        Ok(Self {
            shared,
            facts: Arc::default(),
        })
    }

    /// The queue name prefix.
    pub fn prefix(&self) -> &str {
        self.shared.topo.prefix()
    }

    /// How many doorbells this transport acked without draining their mailbox, because it
    /// had itself drained and acked every message they announce (a fan-in rings once per
    /// result, and one drain usually takes several results).
    pub fn spent_doorbells(&self) -> u64 {
        self.shared.doorbells.spent()
    }

    /// How many mailbox messages this transport wrote in packs: several messages that
    /// reached one mailbox while an earlier write to it was on its way, carried by one
    /// AMQP message and handed out one by one when drained (a fan-in's child results
    /// finishing at once on one worker).
    pub fn packed_messages(&self) -> u64 {
        self.shared.ringer.packed()
    }

    /// How many task messages this transport wrote in packs: the messages of one publish
    /// that went to the same task queue (a fan-out's child starts), carried by one AMQP
    /// message and handed to the worker one by one
    /// ([`AmqpConfig::with_task_packs`](crate::AmqpConfig::with_task_packs)).
    pub fn packed_task_messages(&self) -> u64 {
        self.shared.ringer.task_packed()
    }

    /// How many connections to RabbitMQ this transport (and its clones) opened: its
    /// publisher and its consumer connection once each are used, then one more each time
    /// one of them was lost (closed by the broker, or cut by the network) and replaced.
    /// On a cluster with several task queues per DTask, the connection to each node that
    /// task queues are declared through counts too (once per node, and again when lost
    /// and replaced). The short connection that checks a new stream does not.
    /// Also recorded as the metric
    /// [`CONNECTIONS_OPENED`](crate::metrics::CONNECTIONS_OPENED).
    pub fn connections_opened(&self) -> u64 {
        self.shared.connections_opened()
    }

    /// How many doorbells this transport's consumers handed to their worker, each one a
    /// drain of a mailbox and a merge (spent doorbells, acked without a drain, are not
    /// counted): where the merges of fan-ins ran.
    pub fn merged_doorbells(&self) -> u64 {
        self.shared.doorbells.handed()
    }

    /// The doorbell shard queues this transport's consumers are the active consumer of
    /// now, sorted: known from a delivery on the current subscription, so a shard with no
    /// traffic since it moved here is not listed. The shards spread over every consuming
    /// worker (see [`AmqpConfig::with_shards`]).
    pub fn held_shards(&self) -> Vec<String> {
        self.shared.doorbells.held_shards()
    }

    /// The names of the queues this transport has declared so far, sorted (for tools and
    /// tests that clean up a prefix): every one, up to the first 65,536 (a long-running
    /// process declares a queue or two per instance; list the broker's queues by prefix
    /// beyond that).
    pub fn declared_queues(&self) -> Vec<String> {
        self.shared.declared.ever()
    }

    /// The name of the dead-letter queue.
    pub fn dead_letter_queue(&self) -> String {
        self.shared.topo.dead()
    }

    /// The name of the task queue of the DTask `name` (the first of them, with
    /// [`AmqpConfig::with_task_queues`](crate::AmqpConfig::with_task_queues) above 1).
    pub fn task_queue(&self, name: &str) -> String {
        self.shared.topo.task(name)
    }

    /// How many worker sessions consume the task queue of the DTask `name`: 0 means
    /// that no running worker registers it, and a start of `name` waits in its queue
    /// until one does (a worker session consumes the task queues of every DTask its
    /// worker registers). A queue that does not exist yet has no consumer either.
    pub async fn task_consumers(&self, name: &str) -> std::result::Result<usize, dtasks::Error> {
        let queue = self.shared.topo.task(name);
        match crate::consume::consumers(&self.shared, &queue).await {
            Ok(n) => Ok(n),
            Err(crate::error::AmqpError::Broker { source, .. })
                if crate::error::is_not_found(&source) =>
            {
                Ok(0)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The name of the queue due timers of DTask `name` are delivered from.
    pub fn wake_queue(&self, name: &str) -> String {
        self.shared.topo.wake(name)
    }

    /// The name of the delay queue of `level` (messages wait `2^level` ms in it).
    pub fn delay_queue(&self, level: u8) -> String {
        self.shared.topo.delay_level(level)
    }
}

impl Transport for AmqpTransport {
    fn now(&self) -> std::time::SystemTime {
        std::time::SystemTime::now()
    }

    fn mailbox_retention(&self) -> Option<Duration> {
        Some(self.shared.cfg.mailbox_retention)
    }

    fn publish(
        &self,
        batch: Vec<Outgoing>,
    ) -> BoxFuture<'_, std::result::Result<Vec<Published>, dtasks::Error>> {
        async move { Ok(self.shared.publish(batch).await?) }.boxed()
    }

    fn consume(
        &self,
        names: Vec<String>,
    ) -> BoxFuture<
        '_,
        std::result::Result<
            BoxStream<'static, std::result::Result<dtasks::transport::Delivery, dtasks::Error>>,
            dtasks::Error,
        >,
    > {
        async move { Ok(consume::consume(self.shared.clone(), names).await?) }.boxed()
    }

    fn drain_mailbox(
        &self,
        instance: &InstanceId,
    ) -> BoxFuture<'_, std::result::Result<Vec<MailboxMessage>, dtasks::Error>> {
        let instance = instance.clone();
        async move { Ok(self.shared.drain_mailbox(&instance, None).await?) }.boxed()
    }

    fn drain_for_doorbell(
        &self,
        instance: &InstanceId,
        tag: u64,
    ) -> BoxFuture<'_, std::result::Result<Vec<MailboxMessage>, dtasks::Error>> {
        let instance = instance.clone();
        async move { Ok(self.shared.drain_mailbox(&instance, Some(tag)).await?) }.boxed()
    }

    fn pending_timers(&self) -> BoxFuture<'_, std::result::Result<Option<u64>, dtasks::Error>> {
        async move { Ok(Some(self.shared.pending_timers().await?)) }.boxed()
    }

    fn store(&self) -> Option<Arc<dyn dtasks::store::InstanceStore>> {
        Some(Arc::new(self.instance_store()))
    }

    fn payloads(&self) -> Option<Arc<dyn dtasks::store::PayloadStore>> {
        Some(Arc::new(StreamPayloads::new(self.shared.clone())))
    }

    fn replies(&self) -> Option<&dyn ReplyQueues> {
        if self.shared.cfg.reply_queues {
            Some(self)
        } else {
            None
        }
    }

    fn cancels(&self) -> Option<&dyn Cancels> {
        Some(self)
    }

    fn delete_mailbox(
        &self,
        instance: &InstanceId,
    ) -> BoxFuture<'_, std::result::Result<(), dtasks::Error>> {
        let instance = instance.clone();
        async move { Ok(self.shared.delete_mailbox(&instance).await?) }.boxed()
    }
}

/// Cancel records: the stream `P.cancels`, followed from its first record.
impl Cancels for AmqpTransport {
    fn book(&self) -> CancelBook {
        self.shared.cancels.clone()
    }

    fn follow(&self) -> BoxFuture<'_, std::result::Result<Following, dtasks::Error>> {
        async move { Ok(cancels::follow(self.shared.clone()).await?) }.boxed()
    }
}

/// A client's reply queue: one classic queue per client.
impl ReplyQueues for AmqpTransport {
    fn consume_replies(
        &self,
        client: &str,
    ) -> BoxFuture<
        '_,
        std::result::Result<
            BoxStream<'static, std::result::Result<dtasks::transport::Reply, dtasks::Error>>,
            dtasks::Error,
        >,
    > {
        let client = client.to_string();
        async move { Ok(replies::consume_replies(self.shared.clone(), &client).await?) }.boxed()
    }
}

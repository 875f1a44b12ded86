//! [`Shared`]: what every clone of a transport shares, and declaring queues through it.

use deadpool::managed::Object;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::Channel;
use tracing::{debug, warn};

use crate::config::AmqpConfig;
use crate::conn::{self, ChannelPool};
use crate::error::{is_inequivalent, AmqpError, Context, Result};
use crate::records::{Declared, Doorbells, Ringer};

use crate::topology::{short, Kind, Topology};

/// The most control channels of a process (see [`Shared::control`]).
const CONTROL_CHANNELS: usize = 4;

pub(crate) struct Shared {
    pub(crate) cfg: AmqpConfig,
    pub(crate) topo: Topology,
    pub(crate) consume_conns: conn::ConnectionPool,
    /// Channels that only publish: a channel goes back to the pool once its batch is
    /// sent, and carries other batches while that one waits for its confirms.
    pub(crate) channels: ChannelPool,
    /// Channels for everything else that talks to the broker on the publish connection
    /// (declarations, claims, lookups, deletes, counts), which may close a channel on
    /// purpose (a refused claim, a missing queue): never one with publishes in flight.
    pub(crate) control: ChannelPool,
    pub(crate) declared: Declared,
    pub(crate) doorbells: Doorbells,
    /// Doorbells being published, shared by the publishes that wrote to one mailbox.
    pub(crate) ringer: Ringer,
    /// The cancel records this process has read (`cancels`).
    pub(crate) cancels: dtasks::transport::CancelBook,
    /// Whether nudges of `P.cancels` are due after a cancel record this process published
    /// (`Shared::nudge_cancels_later`).
    pub(crate) cancel_nudges: std::sync::atomic::AtomicBool,
    /// Set by `AmqpTransport::close`: every consumer of this process stops.
    closed: tokio::sync::watch::Sender<bool>,
}

impl Shared {
    /// The state of a transport for `cfg`; connects nothing yet (the pools connect on
    /// first use).
    pub(crate) fn new(cfg: AmqpConfig) -> Result<Self> {
        cfg.validate().map_err(AmqpError::Config)?;
        let publish_conns =
            conn::connection_pool(&cfg.urls, format!("dtasks {} publisher", cfg.prefix), 1)?;
        let consume_conns =
            conn::connection_pool(&cfg.urls, format!("dtasks {} consumer", cfg.prefix), 1)?;
        let channels = conn::channel_pool(publish_conns.clone(), cfg.publish_channels)?;
        let control = conn::channel_pool(publish_conns, CONTROL_CHANNELS)?;
        Ok(Self {
            topo: Topology::new(&cfg),
            cfg,
            consume_conns,
            channels,
            control,
            declared: Declared::default(),
            doorbells: Doorbells::default(),
            ringer: Ringer::default(),
            cancel_nudges: std::sync::atomic::AtomicBool::new(false),
            cancels: dtasks::transport::CancelBook::new(),
            closed: tokio::sync::watch::Sender::new(false),
        })
    }

    /// Stops every consumer of this process (`AmqpTransport::close`).
    pub(crate) fn close(&self) {
        self.closed.send_replace(true);
    }

    /// Resolves once the transport is closed.
    pub(crate) async fn closing(&self) {
        let mut rx = self.closed.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Declares `queue` unless this process already did.
    pub(crate) async fn declare(&self, ch: &Channel, queue: &str, kind: Kind) -> Result<()> {
        if self.declared.contains(queue) {
            return Ok(());
        }
        if let Kind::DelayLevel(_) = kind {
            // Levels dead-letter into the ready queue: it must exist first.
            let ready = self.topo.delay_ready();
            Box::pin(self.declare(ch, &ready, Kind::DelayReady)).await?;
        }
        self.declare_uncached(ch, queue, kind).await
    }

    /// Declares the dead-letter queue with its bound. One declared without it, or with
    /// another limit (by an earlier version, or another configuration), is used as it is,
    /// with a warning: the broker refuses to change a queue's arguments.
    pub(crate) async fn declare_dead(&self) -> Result<()> {
        let queue = self.topo.dead();
        let ch = conn::get_channel(&self.control).await?;
        let (opts, args) = self.topo.declaration(Kind::Dead);
        match ch.queue_declare(short(&queue)?, opts, args).await {
            Ok(_) => {}
            Err(e) if is_inequivalent(&e, "") => {
                // The broker closed the channel: it leaves the pool.
                drop(Object::take(ch));
                warn!(
                    queue,
                    error = %e,
                    "the dead-letter queue exists with other arguments (an earlier version \
                     made it without a bound): it is used as it is; apply the bound with a \
                     policy, or delete the queue while no worker runs"
                );
                let ch = conn::get_channel(&self.control).await?;
                let passive = QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                };
                ch.queue_declare(short(&queue)?, passive, FieldTable::default())
                    .await
                    .context(|| format!("checking queue `{queue}`"))?;
            }
            Err(e) => {
                drop(Object::take(ch));
                return Err(AmqpError::broker(format!("declaring queue `{queue}`"), e));
            }
        }
        self.declared.remember(&queue);
        Ok(())
    }

    /// Declares `queue` (idempotent: the same arguments every time).
    pub(crate) async fn declare_uncached(
        &self,
        ch: &Channel,
        queue: &str,
        kind: Kind,
    ) -> Result<()> {
        let (opts, args) = self.topo.declaration_of(queue, kind);
        // One of several task queues of a DTask, on a cluster: declared through a
        // connection to node `i mod nodes`, so that the leaders of a DTask's queues land on
        // distinct nodes whatever else the nodes lead (a `balanced` locator can put two on
        // one node when they are declared at once). A node out of reach leaves the choice
        // to the node of `ch`.
        if let (Some(i), true) = (self.topo.task_part_of(queue), self.cfg.urls().len() > 1) {
            let url = &self.cfg.urls()[usize::from(i) % self.cfg.urls().len()];
            match declare_on(url, queue, opts, args.clone()).await {
                Ok(()) => {
                    debug!(queue, node = %i, "queue declared on its node");
                    self.declared.remember(queue);
                    return Ok(());
                }
                Err(e) => {
                    warn!(queue, error = %e, "declaring a task queue on its node failed; declaring it where connected")
                }
            }
        }
        ch.queue_declare(short(queue)?, opts, args)
            .await
            .context(|| format!("declaring queue `{queue}`"))?;
        debug!(queue, "queue declared");
        self.declared.remember(queue);
        Ok(())
    }
}

/// Declares `queue` through a connection of its own to the broker node at `url`, closed
/// afterwards (once per queue and process).
async fn declare_on(
    url: &str,
    queue: &str,
    opts: QueueDeclareOptions,
    args: FieldTable,
) -> Result<()> {
    let connect = lapin::Connection::connect(url, lapin::ConnectionProperties::default());
    let conn = tokio::time::timeout(conn::ATTEMPT_TIMEOUT, connect)
        .await
        .map_err(|_| {
            AmqpError::Connect(format!(
                "no answer from a node within {:?}",
                conn::ATTEMPT_TIMEOUT
            ))
        })?
        .map_err(|e| AmqpError::broker("connecting to a node".to_string(), e))?;
    let declared = async {
        let ch = conn
            .create_channel()
            .await
            .map_err(|e| AmqpError::broker("opening a channel".to_string(), e))?;
        ch.queue_declare(short(queue)?, opts, args)
            .await
            .context(|| format!("declaring queue `{queue}`"))?;
        Ok(())
    }
    .await;
    let _ = conn.close(200, "OK".into()).await;
    declared
}

//! [`Shared`]: what every clone of a transport shares, and declaring queues through it.

use lapin::Channel;
use tracing::debug;

use crate::config::AmqpConfig;
use crate::conn::{self, ChannelPool};
use crate::error::{AmqpError, Context, Result};
use crate::records::{Declared, Doorbells};
use crate::topology::{short, Kind, Topology};

pub(crate) struct Shared {
    pub(crate) cfg: AmqpConfig,
    pub(crate) topo: Topology,
    pub(crate) consume_conns: deadpool_lapin::Pool,
    pub(crate) channels: ChannelPool,
    pub(crate) declared: Declared,
    pub(crate) doorbells: Doorbells,
    /// The channel every result wait of this process consumes on (one consumer per
    /// waiting handle), opened on first use and again after it closed.
    pub(crate) waits: tokio::sync::Mutex<Option<Channel>>,
    /// The cancel records this process has read (`cancels`).
    pub(crate) cancels: dtasks::transport::CancelBook,
}

impl Shared {
    /// The state of a transport for `cfg`; connects nothing yet (the pools connect on
    /// first use).
    pub(crate) fn new(cfg: AmqpConfig) -> Result<Self> {
        cfg.validate().map_err(AmqpError::Config)?;
        let publish_conns =
            conn::connection_pool(&cfg.url, format!("dtasks {} publisher", cfg.prefix), 1)?;
        let consume_conns =
            conn::connection_pool(&cfg.url, format!("dtasks {} consumer", cfg.prefix), 1)?;
        let channels = conn::channel_pool(publish_conns, cfg.publish_channels)?;
        Ok(Self {
            topo: Topology::new(&cfg),
            cfg,
            consume_conns,
            channels,
            declared: Declared::default(),
            doorbells: Doorbells::default(),
            waits: tokio::sync::Mutex::new(None),
            cancels: dtasks::transport::CancelBook::new(),
        })
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

    /// Declares `queue` (idempotent: the same arguments every time).
    pub(crate) async fn declare_uncached(
        &self,
        ch: &Channel,
        queue: &str,
        kind: Kind,
    ) -> Result<()> {
        let (opts, args) = self.topo.declaration(kind);
        ch.queue_declare(short(queue)?, opts, args)
            .await
            .context(|| format!("declaring queue `{queue}`"))?;
        debug!(queue, "queue declared");
        self.declared.remember(queue);
        Ok(())
    }
}

//! [`Shared`]: what every clone of a transport shares, and declaring queues through it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool::managed::Object;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Confirmation};
use tracing::{debug, warn};

use crate::config::AmqpConfig;
use crate::conn::{self, ChannelPool};
use crate::error::{is_inequivalent, AmqpError, Context, Result};
use crate::headers::{properties, with_headers, H_MARKER};
use crate::records::{Declared, Doorbells, Ringer};

use crate::topology::{short, text, Kind, Topology};

/// The most control channels of a process (see [`Shared::control`]).
const CONTROL_CHANNELS: usize = 4;

/// How long [`Shared::warm_stream`] tries before it gives up (with a warning).
const WARM_LIMIT: Duration = Duration::from_secs(10);

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
    /// The connections the two pools and `nodes` opened
    /// (`AmqpTransport::connections_opened`).
    opened: Arc<AtomicU64>,
    /// Held while a stream is checked (`Shared::warm_stream`), so that tasks of this
    /// process that declare one stream at once check it once.
    warming: tokio::sync::Mutex<()>,
    /// A connection to each node of a cluster that task queue parts were declared
    /// through (`Shared::declare_on`), by node: opened on first use and kept, so that a
    /// process declares all its parts on a few connections instead of one each.
    nodes: tokio::sync::Mutex<std::collections::HashMap<usize, Arc<lapin::Connection>>>,
    /// The reply queues of this transport's clients: deleted by `AmqpTransport::close`,
    /// since no other process ever reads them (a client's id is its own, made at random).
    pub(crate) reply_queues: std::sync::Mutex<Vec<String>>,
}

impl Shared {
    /// The state of a transport for `cfg`; connects nothing yet (the pools connect on
    /// first use).
    pub(crate) fn new(cfg: AmqpConfig) -> Result<Self> {
        cfg.validate().map_err(AmqpError::Config)?;
        let opened = Arc::new(AtomicU64::new(0));
        let publish_conns = conn::connection_pool(
            &cfg.urls,
            format!("dtasks {} publisher", cfg.prefix),
            1,
            opened.clone(),
        )?;
        let consume_conns = conn::connection_pool(
            &cfg.urls,
            format!("dtasks {} consumer", cfg.prefix),
            1,
            opened.clone(),
        )?;
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
            opened,
            warming: tokio::sync::Mutex::new(()),
            nodes: tokio::sync::Mutex::default(),
            reply_queues: std::sync::Mutex::default(),
        })
    }

    /// Stops every consumer of this process (`AmqpTransport::close`).
    pub(crate) fn close(&self) {
        self.closed.send_replace(true);
    }

    /// Deletes the reply queues of this transport's clients, so that a process that
    /// closes its transport leaves none behind for the result retention. Results still on
    /// their way to them are dropped by their workers, as for any client that is gone.
    pub(crate) async fn delete_reply_queues(&self) {
        let queues =
            std::mem::take(&mut *self.reply_queues.lock().unwrap_or_else(|p| p.into_inner()));
        if queues.is_empty() {
            return;
        }
        let Ok(ch) = conn::get_channel(&self.control).await else {
            warn!(
                queues = queues.len(),
                "no channel to delete the reply queues; they expire after the result retention"
            );
            return;
        };
        for queue in queues {
            let Ok(name) = short(&queue) else { continue };
            if let Err(e) = ch.queue_delete(name, QueueDeleteOptions::default()).await {
                warn!(error = %e, queue, "deleting a reply queue failed; it expires after the result retention");
                break;
            }
        }
    }

    /// Closes the connections to single nodes (`Shared::declare_on`).
    pub(crate) async fn close_nodes(&self) {
        let nodes: Vec<_> = self.nodes.lock().await.drain().map(|(_, c)| c).collect();
        for conn in nodes {
            let _ = conn.close(200, "OK".into()).await;
        }
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
            let node = usize::from(i) % self.cfg.urls().len();
            match self.declare_on(node, queue, opts, args.clone()).await {
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
        if matches!(kind, Kind::Cancels | Kind::Facts | Kind::Payloads)
            && !self.declared.contains(queue)
        {
            let _one = self.warming.lock().await;
            if !self.declared.contains(queue) {
                self.warm_stream(queue).await;
            }
        }
        self.declared.remember(queue);
        Ok(())
    }

    /// Before this process first writes to the stream `queue`: waits until a write to it
    /// is confirmed, made on a connection of its own.
    ///
    /// RabbitMQ 3.10 answers the declaration of a stream that another process is creating
    /// at that moment before the stream's leader is known, and a channel that publishes to
    /// it then (its first publish to that stream) makes the broker close its whole
    /// connection (`INTERNAL_ERROR`, `osiris_writer:write` `function_clause` in the broker's
    /// log), with every consumer and unconfirmed publish on it. A write confirmed here means
    /// that the leader is known, so the transport's own connections never meet that
    /// window; a check that loses its connection to it is tried again. The write is a
    /// marker that nobody waits for, which every reader of a stream skips. After
    /// [`WARM_LIMIT`] the check gives up with a warning and the stream is used as it is.
    async fn warm_stream(&self, queue: &str) {
        let deadline = tokio::time::Instant::now() + WARM_LIMIT;
        let mut pause = Duration::from_millis(20);
        let mut tries = 0u32;
        loop {
            tries += 1;
            let attempt = tokio::time::timeout(conn::ATTEMPT_TIMEOUT, self.try_warm(queue));
            let failed = match attempt.await {
                Ok(Ok(())) => {
                    debug!(queue, tries, "stream ready");
                    return;
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no confirm within {:?}", conn::ATTEMPT_TIMEOUT),
            };
            if tokio::time::Instant::now() + pause >= deadline {
                warn!(queue, tries, error = %failed, "a new stream could not be checked; using it as it is");
                return;
            }
            debug!(queue, tries, error = %failed, "a stream is not ready yet; checking again");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    /// One check of [`Shared::warm_stream`]: a connection to the first node that takes
    /// one, a marker published to `queue` with a confirm, the connection closed.
    async fn try_warm(&self, queue: &str) -> Result<()> {
        let mut last = None;
        for url in self.cfg.urls() {
            let props = lapin::ConnectionProperties::default()
                .with_connection_name(format!("dtasks {} stream check", self.cfg.prefix).into());
            match lapin::Connection::connect(url, props).await {
                Ok(conn) => {
                    let res = warm_on(&conn, queue).await;
                    let _ = conn.close(200, "OK".into()).await;
                    return res;
                }
                Err(e) => last = Some(AmqpError::broker("connecting to check a stream", e)),
            }
        }
        Err(last.unwrap_or_else(|| AmqpError::Config("no broker address".into())))
    }

    /// Declares `queue` through this process's connection to the node `node` of the
    /// cluster (`cfg.urls()[node]`), opened on first use; a connection found lost is
    /// replaced once.
    async fn declare_on(
        &self,
        node: usize,
        queue: &str,
        opts: QueueDeclareOptions,
        args: FieldTable,
    ) -> Result<()> {
        let conn = self.node(node, false).await?;
        match declare_with(&conn, queue, opts, args.clone()).await {
            Err(_) if !conn.status().connected() => {
                let conn = self.node(node, true).await?;
                declare_with(&conn, queue, opts, args).await
            }
            done => done,
        }
    }

    /// The connection to node `node`: the one kept, unless it is lost or `fresh`.
    async fn node(&self, node: usize, fresh: bool) -> Result<Arc<lapin::Connection>> {
        let mut nodes = self.nodes.lock().await;
        if let Some(conn) = nodes.get(&node) {
            if !fresh && conn.status().connected() {
                return Ok(conn.clone());
            }
        }
        let url = &self.cfg.urls()[node];
        let props = lapin::ConnectionProperties::default()
            .with_connection_name(format!("dtasks {} declarations", self.cfg.prefix).into());
        let connect = lapin::Connection::connect(url, props);
        let conn = tokio::time::timeout(conn::ATTEMPT_TIMEOUT, connect)
            .await
            .map_err(|_| {
                AmqpError::Connect(format!(
                    "no answer from a node within {:?}",
                    conn::ATTEMPT_TIMEOUT
                ))
            })?
            .map_err(|e| AmqpError::broker("connecting to a node".to_string(), e))?;
        self.opened.fetch_add(1, Ordering::Relaxed);
        ::metrics::counter!(crate::metrics::CONNECTIONS_OPENED).increment(1);
        let conn = Arc::new(conn);
        nodes.insert(node, conn.clone());
        Ok(conn)
    }

    /// The connections this transport's pools have opened so far.
    pub(crate) fn connections_opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }
}

/// Publishes a marker nobody waits for to the stream `queue` on `conn` and waits for its
/// confirm.
async fn warm_on(conn: &lapin::Connection, queue: &str) -> Result<()> {
    let ch = conn
        .create_channel()
        .await
        .context(|| "opening a channel".into())?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .context(|| "enabling publisher confirms".into())?;
    let marker = format!("ready-{}", dtasks::InstanceId::random());
    let props = with_headers(properties(&marker, "", ""), vec![(H_MARKER, text(&marker))]);
    let confirm = ch
        .basic_publish(
            "".into(),
            short(queue)?,
            BasicPublishOptions::default(),
            &[],
            props,
        )
        .await
        .context(|| format!("publishing to `{queue}`"))?
        .await
        .context(|| format!("waiting for the confirm of `{queue}`"))?;
    // Closed before its connection, which would otherwise log the channel's close as a
    // connection error.
    let _ = ch.close(200, "OK".into()).await;
    match confirm {
        Confirmation::Ack(_) => Ok(()),
        other => Err(AmqpError::Invalid(format!(
            "a check of stream `{queue}` was answered with {other:?}"
        ))),
    }
}

/// Declares `queue` on a channel of its own on `conn`, closed afterwards.
async fn declare_with(
    conn: &lapin::Connection,
    queue: &str,
    opts: QueueDeclareOptions,
    args: FieldTable,
) -> Result<()> {
    let ch = conn
        .create_channel()
        .await
        .map_err(|e| AmqpError::broker("opening a channel".to_string(), e))?;
    let declared = ch
        .queue_declare(short(queue)?, opts, args)
        .await
        .context(|| format!("declaring queue `{queue}`"))
        .map(|_| ());
    // A refused declaration closed the channel already.
    if ch.status().connected() {
        let _ = ch.close(200, "OK".into()).await;
    }
    declared
}

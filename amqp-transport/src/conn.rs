//! Connections and channels: pooled, checked before reuse, replaced when the broker went
//! away; and the pace of retries while it is away.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use deadpool::Runtime;
use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection, ConnectionProperties};
use tracing::{info, warn};

use crate::error::{AmqpError, Context, Result};

/// How long getting a connection or a channel may take before it counts as a failure.
const CREATE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one attempt (a publish with its confirms, the declaration of a register) may
/// take before it is abandoned and retried.
pub(crate) const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);

/// Makes connections for a pool, to the first broker node of the list that takes one:
/// it starts at the node that took the last one, and tries the others in turn when that
/// one refuses, so a client of a cluster fails over to a live node on connect and on
/// every reconnect.
pub(crate) struct Connections {
    urls: Vec<String>,
    name: String,
    /// The index in `urls` of the node that took the last connection.
    next: AtomicUsize,
    /// Connections opened so far, shared by the pools of one transport.
    opened: Arc<AtomicU64>,
}

impl managed::Manager for Connections {
    type Type = Connection;
    type Error = AmqpError;

    async fn create(&self) -> Result<Connection> {
        let first = self.next.load(Ordering::Relaxed);
        let mut failures = Vec::new();
        for k in 0..self.urls.len() {
            let i = (first + k) % self.urls.len();
            let props =
                ConnectionProperties::default().with_connection_name(self.name.clone().into());
            match tokio::time::timeout(CREATE_TIMEOUT, Connection::connect(&self.urls[i], props))
                .await
            {
                Ok(Ok(conn)) => {
                    if i != first {
                        info!(node = i, "connected to another broker node");
                    }
                    self.next.store(i, Ordering::Relaxed);
                    self.opened.fetch_add(1, Ordering::Relaxed);
                    ::metrics::counter!(crate::metrics::CONNECTIONS_OPENED).increment(1);
                    return Ok(conn);
                }
                Ok(Err(e)) => failures.push(format!("node {i}: {e}")),
                Err(_) => failures.push(format!("node {i}: no answer within {CREATE_TIMEOUT:?}")),
            }
            if self.urls.len() > 1 {
                warn!(node = i, error = %failures[failures.len() - 1], "a broker node refused a connection; trying the next");
            }
        }
        Err(AmqpError::Connect(failures.join("; ")))
    }

    async fn recycle(&self, conn: &mut Connection, _: &Metrics) -> RecycleResult<AmqpError> {
        if conn.status().connected() {
            Ok(())
        } else {
            Err(RecycleError::message("the connection is closed"))
        }
    }
}

/// A pool of connections: a dead connection is replaced on the next get.
pub(crate) type ConnectionPool = managed::Pool<Connections>;

/// A pool of `size` connections to the broker nodes at `urls` (tried in turn); each
/// connection it opens counts in `opened`.
pub(crate) fn connection_pool(
    urls: &[String],
    name: String,
    size: usize,
    opened: Arc<AtomicU64>,
) -> Result<ConnectionPool> {
    if urls.is_empty() {
        return Err(AmqpError::Config("no broker address".into()));
    }
    let conns = Connections {
        urls: urls.to_vec(),
        name,
        next: AtomicUsize::new(0),
        opened,
    };
    managed::Pool::builder(conns)
        .max_size(size)
        .wait_timeout(Some(CREATE_TIMEOUT * urls.len() as u32))
        .create_timeout(Some(CREATE_TIMEOUT * urls.len() as u32))
        .recycle_timeout(Some(CREATE_TIMEOUT))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| AmqpError::Config(e.to_string()))
}

/// Opens a channel on a connection of `conns`.
pub(crate) async fn open_channel(conns: &ConnectionPool) -> Result<Channel> {
    let conn = conns.get().await.map_err(|e| match e {
        managed::PoolError::Backend(e) => e,
        other => AmqpError::Connect(other.to_string()),
    })?;
    // The channel keeps its connection open; the pool keeps the connection for reuse.
    conn.create_channel()
        .await
        .context(|| "opening a channel".into())
}

/// Makes channels in publisher-confirm mode for the publish pool.
pub(crate) struct ConfirmChannels {
    pub(crate) conns: ConnectionPool,
}

impl managed::Manager for ConfirmChannels {
    type Type = Channel;
    type Error = AmqpError;

    async fn create(&self) -> Result<Channel> {
        let ch = open_channel(&self.conns).await?;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .context(|| "enabling publisher confirms".into())?;
        Ok(ch)
    }

    async fn recycle(&self, ch: &mut Channel, _: &Metrics) -> RecycleResult<AmqpError> {
        if ch.status().connected() {
            Ok(())
        } else {
            Err(RecycleError::message("the channel is closed"))
        }
    }
}

pub(crate) type ChannelPool = managed::Pool<ConfirmChannels>;

pub(crate) fn channel_pool(conns: ConnectionPool, size: usize) -> Result<ChannelPool> {
    managed::Pool::builder(ConfirmChannels { conns })
        .max_size(size)
        .wait_timeout(Some(CREATE_TIMEOUT * 3))
        .create_timeout(Some(CREATE_TIMEOUT))
        .recycle_timeout(Some(CREATE_TIMEOUT))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| AmqpError::Config(e.to_string()))
}

pub(crate) async fn get_channel(pool: &ChannelPool) -> Result<managed::Object<ConfirmChannels>> {
    pool.get().await.map_err(|e| match e {
        managed::PoolError::Backend(e) => e,
        other => AmqpError::Connect(other.to_string()),
    })
}

/// Exponential backoff with jitter, for reconnects and publish retries.
#[derive(Debug)]
pub(crate) struct Backoff {
    first: Duration,
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            next: first,
            max,
        }
    }

    /// The next pause: doubles each time up to the cap, minus up to a quarter at random
    /// so that many clients do not reconnect in lockstep.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        let jitter = random_u64() % 1000;
        d - d.mul_f64(jitter as f64 / 4000.0)
    }

    pub(crate) fn reset(&mut self) {
        self.next = self.first;
    }
}

/// A random number from the standard library's randomly keyed hasher.
fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}

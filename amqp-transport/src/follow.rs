//! Following a stream queue from its first record: the cancel records (`P.cancels`) and
//! the instance facts (`P.facts`). A follower hands each record to a sink, supervised
//! like a worker's session (after a reconnect the stream is read again from its first
//! record; sinks take a record twice without harm), and can be synced: it publishes a
//! marker after every record published so far and waits until it reads it back.
//!
//! A stream consumer attached to a replica can miss the notice of a committed offset and
//! then read nothing more until the next write to the stream (osiris issue 172, fixed in
//! RabbitMQ 4.0.x; it shows after a leader moves to another node). A sync that does not
//! read its marker back soon therefore writes to the stream again (a nudge: another
//! marker nobody waits for), and a follower that reads nothing at all through nudges
//! subscribes again and reads the stream from its first record. Writers that nobody
//! syncs after nudge too: a cancel record's publisher (`Shared::nudge_cancels_later`),
//! and a payload read while it lasts (`payloads.rs`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::Channel;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info_span, warn, Instrument};

use crate::conn;
use crate::error::{AmqpError, Context, Result};
use crate::headers::{header_str, H_MARKER};
use crate::shared::Shared;
use crate::supervise::{supervised, End};
use crate::topology::{short, text, Kind};

/// How many records a follower takes before acking (a stream consumer needs a prefetch).
const PREFETCH: u16 = 512;

/// How long a follower waits for a stream just declared to be ready for consumers.
const STREAM_READY: Duration = Duration::from_secs(10);

/// How long a sync waits for its marker before the first nudge; each later wait doubles,
/// up to [`NUDGE_MAX`].
pub(crate) const NUDGE_FIRST: Duration = Duration::from_secs(1);
pub(crate) const NUDGE_MAX: Duration = Duration::from_secs(8);

/// A follower that read nothing through this many waits in a row, each after a nudge,
/// subscribes again.
const QUIET_BEFORE_RESUBSCRIBE: u32 = 3;

/// Takes each record of a stream, in stream order.
pub(crate) type Sink = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// The markers a follower waits for, by id.
type Markers = Arc<Mutex<HashMap<String, oneshot::Sender<()>>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a follower's task shares with its handle: how much it has read, and when it last
/// read something.
struct Progress {
    /// Deliveries read (records and markers), over every subscription.
    read: AtomicU64,
    /// When the last delivery was read, in ms since `origin`.
    last_read_ms: AtomicU64,
    origin: Instant,
    /// Bumped to make the current subscription end (it subscribes again).
    resubscribe: watch::Sender<u64>,
    /// A probe ([`Follower::probe_if_idle`]) is under way.
    probing: AtomicBool,
}

impl Progress {
    fn new() -> Self {
        Self {
            read: AtomicU64::new(0),
            last_read_ms: AtomicU64::new(0),
            origin: Instant::now(),
            resubscribe: watch::Sender::new(0),
            probing: AtomicBool::new(false),
        }
    }

    fn note_read(&self) {
        self.read.fetch_add(1, Ordering::Relaxed);
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_read_ms.store(ms, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_read_ms.load(Ordering::Relaxed));
        self.origin.elapsed().saturating_sub(last)
    }
}

/// Clears [`Progress::probing`] when the probe ends, however it ends.
struct Probing<'a>(&'a AtomicBool);

impl Drop for Probing<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// A process following a stream; dropped, the following stops.
pub(crate) struct Follower {
    shared: Arc<Shared>,
    queue: String,
    kind: Kind,
    markers: Markers,
    progress: Arc<Progress>,
    /// Dropped with the follower: its task sees the channel closed and stops.
    _stop: mpsc::UnboundedReceiver<()>,
}

impl Follower {
    /// Starts following `queue` (a stream of `kind`) from its first record into `sink`;
    /// resolves once every record published before the call has been handed to it.
    pub(crate) async fn start(
        shared: Arc<Shared>,
        queue: String,
        kind: Kind,
        what: &'static str,
        sink: Sink,
    ) -> Result<Self> {
        let (tx, stop) = mpsc::unbounded_channel::<()>();
        let (first_tx, first_rx) = oneshot::channel();
        let markers: Markers = Arc::default();
        let progress = Arc::new(Progress::new());
        let span = info_span!("dtasks.amqp.follow", queue = %queue);
        let (task, q, m, p) = (
            shared.clone(),
            queue.clone(),
            markers.clone(),
            progress.clone(),
        );
        tokio::spawn(
            async move {
                let (shared, tx) = (&task, &tx);
                let opened = AtomicBool::new(false);
                supervised(
                    shared,
                    what,
                    tx,
                    first_tx,
                    || open(shared, &q, kind, !opened.load(Ordering::Relaxed)),
                    |(ch, consumer)| {
                        // Opened once: from now on the stream is only looked up.
                        opened.store(true, Ordering::Relaxed);
                        pump(&sink, ch, consumer, tx, &m, &p)
                    },
                )
                .await;
            }
            .instrument(span),
        );
        first_rx
            .await
            .map_err(|_| AmqpError::Connect(format!("the follower of `{queue}` ended")))??;
        let follower = Self {
            shared,
            queue,
            kind,
            markers,
            progress,
            _stop: stop,
        };
        follower.sync().await?;
        Ok(follower)
    }

    /// Publishes a marker with id `marker` to the stream (after every record published
    /// so far); resolves once the broker confirmed it.
    async fn publish_marker(&self, marker: &str) -> Result<()> {
        self.shared
            .publish_marker(&self.queue, self.kind, marker)
            .await
    }

    /// How long the follower has read nothing (since it started, when it read nothing).
    pub(crate) fn idle_for(&self) -> Duration {
        self.progress.idle_for()
    }

    /// Syncs when nothing was read for `idle` and no other probe is under way: what a
    /// long wait on the follower calls now and then, so that a subscription that stopped
    /// reading (see the module's doc) is nudged or renewed even when nothing else writes
    /// to the stream. Costs nothing while records come.
    pub(crate) async fn probe_if_idle(&self, idle: Duration) -> Result<()> {
        if self.idle_for() < idle || self.progress.probing.swap(true, Ordering::Acquire) {
            return Ok(());
        }
        let _probing = Probing(&self.progress.probing);
        self.sync().await
    }

    /// Resolves once every record published before the call has been handed to the sink:
    /// a marker goes after them, and the follower reads it back. While it does not, the
    /// stream is nudged, and a follower that reads nothing through the nudges subscribes
    /// again (the module's doc says why); the call fails after the publish timeout.
    pub(crate) async fn sync(&self) -> Result<()> {
        let marker = format!("marker-{}", dtasks::InstanceId::random());
        let (seen_tx, seen_rx) = oneshot::channel();
        lock(&self.markers).insert(marker.clone(), seen_tx);
        let waited = async {
            self.publish_marker(&marker).await?;
            self.read_back(seen_rx).await
        }
        .await;
        if waited.is_err() {
            lock(&self.markers).remove(&marker);
        }
        waited
    }

    /// Waits until the follower reads the marker that `seen` hears of, nudging the stream
    /// while it does not.
    async fn read_back(&self, mut seen: oneshot::Receiver<()>) -> Result<()> {
        let deadline = Instant::now() + self.shared.cfg.publish_timeout;
        let mut nudging = Nudging::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(nudging.wait().min(left), &mut seen).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(_)) => {
                    return Err(AmqpError::Connect(format!(
                        "the follower of `{}` ended",
                        self.queue
                    )))
                }
                Err(_) if Instant::now() >= deadline => {
                    return Err(AmqpError::Timeout(format!(
                        "`{}` was not read back in time ({} nudges)",
                        self.queue, nudging.total
                    )))
                }
                Err(_) => {}
            }
            match nudging.next(self.progress.read.load(Ordering::Relaxed)) {
                Nudge::Write => {
                    debug!(queue = %self.queue, "a marker is not read back yet; nudging");
                    self.shared.nudge(&self.queue, self.kind).await?;
                }
                Nudge::Resubscribe => {
                    warn!(
                        queue = %self.queue,
                        "a stream follower read nothing through its nudges; subscribing again"
                    );
                    self.progress.resubscribe.send_modify(|n| *n += 1);
                }
            }
        }
    }
}

/// What a sync does when its marker is not read back within a wait.
#[derive(Debug, PartialEq, Eq)]
enum Nudge {
    /// Write to the stream again.
    Write,
    /// Subscribe again: nothing at all was read through the nudges.
    Resubscribe,
}

/// The nudging of one sync: how long to wait for the marker, and what to do when it does
/// not come.
struct Nudging {
    wait: Duration,
    /// How many deliveries the follower had read at the last timeout.
    read: Option<u64>,
    /// Timeouts in a row through which the follower read nothing.
    quiet: u32,
    /// Nudges in all.
    total: u32,
}

impl Nudging {
    fn new() -> Self {
        Self {
            wait: NUDGE_FIRST,
            read: None,
            quiet: 0,
            total: 0,
        }
    }

    /// How long to wait for the marker now.
    fn wait(&self) -> Duration {
        self.wait
    }

    /// The marker did not come within [`Self::wait`]; `read` is how many deliveries the
    /// follower has read so far.
    fn next(&mut self, read: u64) -> Nudge {
        self.wait = (self.wait * 2).min(NUDGE_MAX);
        if self.read.replace(read) == Some(read) {
            self.quiet += 1;
        } else {
            self.quiet = 0;
        }
        if self.quiet >= QUIET_BEFORE_RESUBSCRIBE {
            self.quiet = 0;
            self.read = None;
            return Nudge::Resubscribe;
        }
        self.total += 1;
        Nudge::Write
    }
}

/// Declares the stream (the first time; later, only looks it up) and consumes it from its
/// first record. A stream just declared
/// refuses consumers for a moment ("does not have a replica on the local node"): that
/// refusal is waited out, on a fresh channel each time (it closes the channel).
async fn open(
    shared: &Shared,
    queue: &str,
    kind: Kind,
    create: bool,
) -> Result<(Channel, lapin::Consumer)> {
    let deadline = tokio::time::Instant::now() + STREAM_READY;
    loop {
        match open_once(shared, queue, kind, create).await {
            Err(e)
                if e.to_string().contains("replica") && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

async fn open_once(
    shared: &Shared,
    queue: &str,
    kind: Kind,
    create: bool,
) -> Result<(Channel, lapin::Consumer)> {
    let ch = conn::open_channel(&shared.consume_conns).await?;
    if create {
        shared.declare_uncached(&ch, queue, kind).await?;
    } else {
        // Reopened: a stream deleted meanwhile is not created again here (the next write
        // creates it); until then this fails and the follower retries.
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        ch.queue_declare(short(queue)?, passive, FieldTable::default())
            .await
            .context(|| format!("looking up `{queue}`"))?;
    }
    ch.basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .context(|| "setting the prefetch".into())?;
    let mut args = FieldTable::default();
    args.insert("x-stream-offset".into(), text("first"));
    let consumer = ch
        .basic_consume(
            short(queue)?,
            "".into(),
            BasicConsumeOptions::default(),
            args,
        )
        .await
        .context(|| format!("consuming `{queue}`"))?;
    Ok((ch, consumer))
}

/// Hands each record to `sink` (and acks it: a stream consumer's acks are its credit);
/// reports the markers read back.
async fn pump(
    sink: &Sink,
    ch: Channel,
    mut consumer: lapin::Consumer,
    tx: &mpsc::UnboundedSender<()>,
    markers: &Markers,
    progress: &Progress,
) -> End {
    let mut resubscribe = progress.resubscribe.subscribe();
    loop {
        let next = tokio::select! {
            _ = tx.closed() => return End::Closed,
            _ = resubscribe.changed() => {
                // Closed, or its consumer would still hold deliveries for nobody.
                let _ = ch.close(200, "subscribing again".into()).await;
                return End::Lost("it read nothing through its nudges".into());
            }
            n = consumer.next() => n,
        };
        let d = match next {
            Some(Ok(d)) => d,
            Some(Err(e)) => return End::Lost(e.to_string()),
            None => return End::Lost("the stream's consumer was cancelled".into()),
        };
        progress.note_read();
        match header_str(&d.properties, H_MARKER) {
            Some(m) => {
                if let Some(done) = lock(markers).remove(m.as_str()) {
                    let _ = done.send(());
                }
            }
            None => sink(&d.data),
        }
        if let Err(e) = d.acker.ack(BasicAckOptions::default()).await {
            return End::Lost(e.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follower_that_reads_is_nudged_and_one_that_reads_nothing_subscribes_again() {
        let mut n = Nudging::new();
        assert_eq!(n.wait(), NUDGE_FIRST);
        // Reading (a stream read again from its start, say): nudges only, waits doubling
        // up to the cap.
        for read in 1..=6 {
            assert_eq!(n.next(read * 100), Nudge::Write);
        }
        assert_eq!(n.wait(), NUDGE_MAX);
        // Then nothing read any more (600 was read at the last timeout already): after
        // the nudges that read nothing, a resubscription.
        for _ in 0..QUIET_BEFORE_RESUBSCRIBE - 1 {
            assert_eq!(n.next(600), Nudge::Write);
        }
        assert_eq!(n.next(600), Nudge::Resubscribe);
        // Then nudging starts over from what the new subscription reads.
        assert_eq!(n.next(600), Nudge::Write);
        assert_eq!(n.next(600), Nudge::Write);
        assert_eq!(n.total, 6 + QUIET_BEFORE_RESUBSCRIBE - 1 + 2);
    }

    #[test]
    fn a_read_between_nudges_keeps_the_subscription() {
        let mut n = Nudging::new();
        for read in [10, 10, 10, 11, 11, 11, 12] {
            assert_eq!(n.next(read), Nudge::Write, "at {read}");
        }
        assert_eq!(n.next(12), Nudge::Write);
        assert_eq!(n.next(12), Nudge::Write);
        assert_eq!(n.next(12), Nudge::Resubscribe);
    }
}

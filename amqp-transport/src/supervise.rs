//! The reconnect loop of consumer tasks: subscribe, forward deliveries until the
//! subscription is lost, then subscribe again with backoff.

use std::time::{Duration, Instant};

use lapin::options::BasicConsumeOptions;
use lapin::types::FieldTable;
use lapin::Channel;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::conn::Backoff;
use crate::error::{Context, Result};
use crate::shared::Shared;
use crate::topology::short;

/// A session that lived this long resets the reconnect backoff.
const HEALTHY: Duration = Duration::from_secs(5);

pub(crate) enum End {
    /// The stream was dropped.
    Closed,
    /// The connection or a channel failed.
    Lost(String),
}

/// The reconnect loop of a consumer task: `open` subscribes, `pump` forwards deliveries to
/// `tx` until the subscription is lost (then this subscribes again, with backoff) or `tx`
/// is dropped (then it returns). `first` gets the outcome of the first subscription; what
/// retrying cannot fix, or a broker away for longer than the publish timeout, is reported
/// there and ends the task.
pub(crate) async fn supervised<T, S, OF, PF>(
    shared: &Shared,
    what: &'static str,
    tx: &mpsc::UnboundedSender<T>,
    first: oneshot::Sender<Result<()>>,
    mut open: impl FnMut() -> OF,
    mut pump: impl FnMut(S) -> PF,
) where
    OF: std::future::Future<Output = Result<S>>,
    PF: std::future::Future<Output = End>,
{
    let mut first = Some(first);
    let started = Instant::now();
    let mut backoff = Backoff::new(Duration::from_millis(100), shared.cfg.max_backoff);
    loop {
        let opened = tokio::select! {
            _ = tx.closed() => return,
            _ = shared.closing() => return,
            s = open() => s,
        };
        match opened {
            Ok(session) => {
                if let Some(f) = first.take() {
                    let _ = f.send(Ok(()));
                } else {
                    info!("{what} re-subscribed");
                }
                let since = Instant::now();
                let ended = tokio::select! {
                    _ = shared.closing() => End::Closed,
                    end = pump(session) => end,
                };
                match ended {
                    End::Closed => {
                        debug!("{what}: stream dropped; consumers cancelled");
                        return;
                    }
                    End::Lost(why) => {
                        warn!(reason = %why, "lost the {what}; reconnecting");
                    }
                }
                if since.elapsed() >= HEALTHY {
                    backoff.reset();
                }
            }
            Err(e) => {
                let give_up = e.is_permanent() || started.elapsed() >= shared.cfg.publish_timeout;
                if first.is_some() && give_up {
                    if let Some(f) = first.take() {
                        let _ = f.send(Err(e));
                    }
                    return;
                }
                warn!(error = %e, "subscribing the {what} failed; retrying");
            }
        }
        tokio::select! {
            _ = tx.closed() => return,
            _ = shared.closing() => return,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

pub(crate) async fn subscribe(ch: &Channel, queue: &str) -> Result<lapin::Consumer> {
    ch.basic_consume(
        short(queue)?,
        "".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await
    .context(|| format!("consuming `{queue}`"))
}

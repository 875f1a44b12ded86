//! Waking the callers of `wait_finished`: one connection per store listens on the
//! schema's channel, which every writer (of any process) notifies with the id of each
//! instance its transaction finished; each notification wakes the waiters of that id,
//! and only them.
//!
//! A notification sent while the listening connection is down is lost, so every waiter
//! is woken when it connects again (and reads its instance anew); while it is down,
//! waiters read their instance every half second. Whatever happens, a waiter reads its
//! instance at least every 10 seconds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{watch, Notify};
use tokio_postgres::{AsyncMessage, NoTls};
use tracing::{debug, warn};

/// The waiters of each id, and whether the listening connection is up.
#[derive(Default)]
pub(crate) struct Finishes {
    waiters: Mutex<HashMap<String, (Arc<Notify>, usize)>>,
    listening: AtomicBool,
}

/// A waiter's interest in one id; removed when dropped.
pub(crate) struct Subscription {
    finishes: Arc<Finishes>,
    id: String,
    /// Notified when the id may have finished.
    pub(crate) notify: Arc<Notify>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut waiters = self.finishes.lock();
        if let Some(entry) = waiters.get_mut(&self.id) {
            entry.1 -= 1;
            if entry.1 == 0 {
                waiters.remove(&self.id);
            }
        }
    }
}

impl Finishes {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, (Arc<Notify>, usize)>> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts waiting for `id`.
    pub(crate) fn subscribe(self: &Arc<Self>, id: &str) -> Subscription {
        let notify = {
            let mut waiters = self.lock();
            let entry = waiters
                .entry(id.to_owned())
                .or_insert_with(|| (Arc::new(Notify::new()), 0));
            entry.1 += 1;
            entry.0.clone()
        };
        Subscription {
            finishes: self.clone(),
            id: id.to_owned(),
            notify,
        }
    }

    /// Whether the listening connection is up.
    pub(crate) fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Relaxed)
    }

    /// How long a waiter may wait before it reads its instance again.
    pub(crate) fn recheck(&self) -> Duration {
        if self.is_listening() {
            Duration::from_secs(10)
        } else {
            Duration::from_millis(500)
        }
    }

    fn wake(&self, id: &str) {
        if let Some((notify, _)) = self.lock().get(id) {
            notify.notify_waiters();
        }
    }

    fn wake_all(&self) {
        for (notify, _) in self.lock().values() {
            notify.notify_waiters();
        }
    }
}

/// Listens on `channel` until `stop` is dropped, connecting again (with a growing pause)
/// whenever the connection is lost.
pub(crate) async fn listen(
    config: tokio_postgres::Config,
    channel: String,
    finishes: Arc<Finishes>,
    mut stop: watch::Receiver<()>,
) {
    let mut pause = Duration::from_millis(100);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            () = listen_once(&config, &channel, &finishes, &mut pause) => {}
        }
        finishes.listening.store(false, Ordering::Relaxed);
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// One listening connection, until it is lost.
async fn listen_once(
    config: &tokio_postgres::Config,
    channel: &str,
    finishes: &Arc<Finishes>,
    pause: &mut Duration,
) {
    let (client, mut connection) = match config.connect(NoTls).await {
        Ok(c) => c,
        Err(e) => {
            debug!(error = %e, "the listening connection cannot connect yet");
            return;
        }
    };
    let relay = {
        let finishes = finishes.clone();
        async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(n)) => finishes.wake(n.payload()),
                    Ok(_) => {}
                    Err(e) => {
                        debug!(error = %e, "the listening connection is lost");
                        return;
                    }
                }
            }
        }
    };
    let subscribe = async {
        match client.batch_execute(&format!("LISTEN \"{channel}\"")).await {
            Ok(()) => {
                finishes.listening.store(true, Ordering::Relaxed);
                *pause = Duration::from_millis(100);
                // Anything that finished while no one listened is read again.
                finishes.wake_all();
                futures::future::pending::<()>().await;
            }
            Err(e) => warn!(error = %e, "LISTEN failed"),
        }
    };
    // The connection runs (and relays notifications) until it is lost.
    tokio::select! {
        () = relay => {}
        () = subscribe => {}
    }
}

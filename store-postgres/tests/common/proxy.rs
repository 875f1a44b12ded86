//! A TCP proxy between a store and PostgreSQL that a test can cut (every connection
//! closed, new ones closed as soon as they are accepted) and restore, without touching
//! the database server, which other work uses at the same time.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct Proxy {
    addr: SocketAddr,
    state: Arc<State>,
    accept: JoinHandle<()>,
}

struct State {
    cut: AtomicBool,
    /// Bumped by each cut: every forwarding task stops.
    cuts: watch::Sender<u64>,
    /// Connections closed at once because the proxy was cut.
    refused: AtomicU64,
    /// Connections forwarded.
    forwarded: AtomicU64,
}

impl Proxy {
    /// A proxy on a free local port to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let state = Arc::new(State {
            cut: AtomicBool::new(false),
            cuts: watch::channel(0).0,
            refused: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
        });
        let s = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                if s.cut.load(Ordering::SeqCst) {
                    s.refused.fetch_add(1, Ordering::SeqCst);
                    drop(inbound);
                    continue;
                }
                s.forwarded.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(forward(inbound, target, s.cuts.subscribe()));
            }
        });
        Self {
            addr,
            state,
            accept,
        }
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Closes every connection and refuses new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        self.state.cut.store(true, Ordering::SeqCst);
        self.state.cuts.send_modify(|n| *n += 1);
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.state.cut.store(false, Ordering::SeqCst);
    }

    /// How many connections were closed at once while cut.
    pub fn refused(&self) -> u64 {
        self.state.refused.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

async fn forward(mut inbound: TcpStream, target: SocketAddr, mut cuts: watch::Receiver<u64>) {
    let Ok(mut outbound) = TcpStream::connect(target).await else {
        return;
    };
    tokio::select! {
        _ = copy_bidirectional(&mut inbound, &mut outbound) => {}
        _ = cuts.changed() => {}
    }
}

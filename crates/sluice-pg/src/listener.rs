//! The accept loop. Each client runs in its own task, tracked so shutdown can wait for
//! running transactions to finish, with the context in force when it connected.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::context::LiveContext;
use crate::session;

/// Accept queue length. Tokio's default (128) overflows when hundreds of clients connect
/// at once (an application fleet restarting), and each overflow costs the client a 1 s
/// SYN retry; the kernel caps this at `net.core.somaxconn`.
const BACKLOG: u32 = 4096;

/// Binds `addr` with a long accept queue (and SO_REUSEADDR, for quick restarts).
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// The Postgres listener: a bound socket plus the shared context.
pub struct PgListener {
    socket: TcpListener,
    live: Arc<LiveContext>,
}

impl PgListener {
    /// Binds the current context's `postgres.listen`.
    pub async fn bind(live: Arc<LiveContext>) -> std::io::Result<Self> {
        let socket = bind(live.current().config.postgres.listen)?;
        Ok(Self { socket, live })
    }

    /// The bound address (useful when the configured port was 0).
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.socket.local_addr()
    }

    /// Accepts clients until `shutdown` is cancelled. Sessions are spawned on `tracker`;
    /// the listener then tells them through the cancel registry, and each closes once its
    /// client is between transactions.
    pub async fn run(self, shutdown: CancellationToken, tracker: TaskTracker) {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                a = self.socket.accept() => a,
            };
            match accepted {
                Ok((stream, peer)) => {
                    tracker.spawn(session::serve(stream, peer, self.live.current()));
                }
                Err(e) => {
                    // EMFILE and friends: log and back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
        // Sessions see the shutdown in the cancel registry (a flag they check between
        // requests; those waiting for their client are woken to see it).
        self.live.current().cancel.shut_down();
        tracing::info!("postgres listener stopped accepting");
    }
}

//! The MongoDB accept loop: one [`crate::session`] task per client, stopped by the
//! shutdown token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice_config::MongoConfig;
use sluice_stats::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::context::{ContextError, MongoContext};
use crate::pins::PIN_IDLE_LIMIT;

/// Why the MongoDB listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Configuration that cannot be used.
    #[error(transparent)]
    MongoContext(#[from] ContextError),
    /// Binding `mongo.listen`.
    #[error("binding mongo.listen {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A bound MongoDB listener.
pub struct MongoListener {
    tcp: TcpListener,
    ctx: Arc<MongoContext>,
}

impl MongoListener {
    /// Builds the shared state (registering the pool in `stats`) and binds `mongo.listen`.
    pub async fn bind(
        config: MongoConfig,
        stats: &Arc<Registry>,
    ) -> Result<MongoListener, StartError> {
        let addr = config.listen;
        let ctx = MongoContext::new(config, stats).await?;
        let tcp = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        Ok(MongoListener { tcp, ctx })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// The shared state (for tests and health).
    pub fn context(&self) -> &Arc<MongoContext> {
        &self.ctx
    }

    /// Starts pool maintenance and accepts clients until `token` is cancelled; sessions
    /// run on `tracker` and end between requests once `token` is cancelled.
    pub async fn run(self, token: CancellationToken, tracker: TaskTracker) {
        let ctx = self.ctx;
        ctx.pool.spawn_maintenance();
        ctx.replicas.spawn_monitor(ctx.pool.clone());
        let reaper = ctx.clone();
        let reaper_token = token.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = reaper_token.cancelled() => break,
                    _ = tick.tick() => {
                        let n = reaper.pins.expire(tokio::time::Instant::now(), PIN_IDLE_LIMIT);
                        if n > 0 {
                            tracing::info!(expired = n, "dropped idle transaction pins");
                        }
                    }
                }
            }
        });
        loop {
            let accepted = tokio::select! {
                _ = token.cancelled() => break,
                a = self.tcp.accept() => a,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let session_ctx = ctx.clone();
                    let session_token = token.clone();
                    tracker.spawn(crate::session::run(
                        session_ctx,
                        stream,
                        peer,
                        session_token,
                    ));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "mongo accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

//! Sluice started inside the tools' process (through [`sluice::run`]) on free loopback
//! ports: what `demo` measures and what `check` queries through when no Sluice runs.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_config::{ClientTlsConfig, Config};
use tokio_util::sync::CancellationToken;

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub(crate) fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// Sluice running inside this process, on free loopback ports, on a runtime (threads) of
/// its own: client work in this process (SCRAM key derivation is CPU-bound) must not delay
/// Sluice's accept loop, as it could not if Sluice were its own process.
pub(crate) struct InProcess {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// The HTTP admin listener.
    pub admin: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    runtime: tokio::runtime::Runtime,
}

impl InProcess {
    /// Starts Sluice with `config` moved to free loopback ports (admin listener on), without
    /// client users (clients log in with the upstream credentials), client TLS, MongoDB or
    /// warm connections, and waits until it accepts connections.
    pub(crate) async fn start(config: &Config) -> Result<InProcess, String> {
        let mut c = config.clone();
        c.postgres.users.clear();
        c.postgres.admin_users.clear();
        c.postgres.tls = ClientTlsConfig::default();
        c.postgres.min_pool_size = 0;
        for db in &mut c.postgres.databases {
            db.min_pool_size = None;
        }
        c.postgres.pool_timeout = c.postgres.pool_timeout.min(Duration::from_secs(10));
        c.general.shutdown_timeout = Duration::from_secs(2);
        c.mongo = None;
        Self::start_exact(c).await
    }

    /// Starts Sluice with `config` as given, except that both listeners move to free
    /// loopback ports.
    pub(crate) async fn start_exact(mut c: Config) -> Result<InProcess, String> {
        let port = |what| free_port().map_err(|e| format!("no free port for {what}: {e}"));
        c.postgres.listen = SocketAddr::from((Ipv4Addr::LOCALHOST, port("postgres.listen")?));
        c.admin.enabled = true;
        c.admin.listen = SocketAddr::from((Ipv4Addr::LOCALHOST, port("admin.listen")?));
        c.validate().map_err(|e| e.to_string())?;
        let (listen, admin) = (c.postgres.listen, c.admin.listen);
        let config = Arc::new(c);
        let for_loader = config.clone();
        let loader: sluice::Loader = Arc::new(move || Ok((*for_loader).clone()));
        let stop = CancellationToken::new();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name("sluice-in-process")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a runtime: {e}"))?;
        let task = runtime.spawn(sluice::run(config, loader, stop.clone().cancelled_owned()));
        let sluice = InProcess {
            listen,
            admin,
            stop,
            task,
            runtime,
        };
        sluice.wait_listening().await
    }

    /// Waits (up to 15 s) until it accepts connections; on failure, says why and shuts
    /// the runtime down.
    async fn wait_listening(mut self) -> Result<InProcess, String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if tokio::net::TcpStream::connect(self.listen).await.is_ok() {
                return Ok(self);
            }
            if self.task.is_finished() {
                let result = (&mut self.task).await;
                self.runtime.shutdown_background();
                return Err(match result {
                    Ok(Err(e)) => format!("{e:#}"),
                    Ok(Ok(())) => "stopped at once".to_owned(),
                    Err(e) => e.to_string(),
                });
            }
            if Instant::now() > deadline {
                self.stop.cancel();
                self.runtime.shutdown_background();
                return Err(format!("not listening on {} after 15 s", self.listen));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Shuts it down (gracefully, bounded by its shutdown_timeout) and waits.
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(35), self.task).await;
        self.runtime.shutdown_background();
    }
}

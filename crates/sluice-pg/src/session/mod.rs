//! One client connection, from the first byte to the last: `login` takes it from the
//! startup packet through authentication to the greeting (or to the admin console), and
//! `relay` forwards frames between the client and pooled servers in session or
//! transaction mode, with `exchange` (sans-IO) deciding what each frame means. `error`
//! turns every failure into the ErrorResponse a PostgreSQL client expects.

mod error;
mod exchange;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
mod login;
mod relay;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tracing::Instrument;

pub use error::PgSessionError;

use crate::client_io::ClientIo;
use crate::context::PgContext;
use crate::protocol::backend;

/// Serves one accepted client socket until it disconnects or Sluice shuts down.
///
/// The login runs inside an `info` span naming the client; the long relay phase only in a
/// `debug` one, because a live span costs every idle client several hundred bytes (its
/// own log lines and the final error name the client instead).
pub fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<PgContext>,
) -> impl std::future::Future<Output = ()> + Send {
    let _ = stream.set_nodelay(true);
    let mut client = ClientIo::new(stream);
    async move {
        // The session's steps run here rather than in a function taking references to
        // these locals: those references would add to every idle client's task. The
        // login future lives on the heap only while the client logs in, so an idle
        // client's task holds just the relay state (stored once, run by reference).
        let failed = 'session: {
            // The login's result is gone by the end of this statement, so it does not
            // stay alive beside the relay while the relay runs.
            let mut relay = match Box::pin(logged_in(&mut client, peer, &ctx)).await {
                Ok(Some(relay)) => relay,
                Ok(None) => break 'session None,
                Err(e) => break 'session Some(e),
            };
            relay.run().await.err()
        };
        // The error goes into the boxed report inside this block: the future keeps no
        // copy of it beside the relay's state.
        let reporting = {
            let Some(e) = failed else {
                return tracing::debug!(client = %peer, "client done");
            };
            Box::pin(report(&mut client, peer, e))
        };
        reporting.await;
    }
}

/// Logs why a session failed and tells the client, when its socket is worth writing to.
async fn report(client: &mut ClientIo, peer: SocketAddr, e: PgSessionError) {
    e.log(peer);
    if let Some((severity, code, message)) = e.to_error_response() {
        let mut out = BytesMut::new();
        backend::error_response(&mut out, severity, code, &message);
        let _ = client.write(&out).await;
    }
}

/// Logs the client in (in its span): the relay that serves it, or `None` when the login
/// ended the session without an error (a console session, a CancelRequest).
async fn logged_in<'a>(
    client: &'a mut ClientIo,
    peer: SocketAddr,
    ctx: &'a Arc<PgContext>,
) -> Result<Option<relay::Relay<'a>>, PgSessionError> {
    let span = tracing::info_span!("client", %peer);
    async {
        let logged_in = login::login(client, peer, ctx).await?;
        Ok(logged_in.map(|l| relay::Relay::new(client, l, ctx)))
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every idle client is one of these futures in a task, plus its socket, so its size
    /// is the floor of per-client memory (a regression here shows up in the idle-memory
    /// benchmark).
    #[tokio::test]
    async fn session_future_stays_small() {
        let config = sluice_config::Config::from_toml_str(
            "[[postgres.databases]]\nname = \"a\"\nupstream = \"postgres://u:p@127.0.0.1:1/a\"\n",
        )
        .unwrap();
        let ctx = Arc::new(PgContext::new(Arc::new(config)).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let peer = stream.local_addr().unwrap();
        let fut = serve(stream, peer, ctx);
        let size = std::mem::size_of_val(&fut);
        eprintln!("session future: {size} bytes");
        // tokio stores a task in a cell aligned to 128 bytes: 96 bytes of its own, the
        // task tracker's 8 and this future. Up to 536 bytes the cell is 640, up to 664 it
        // is 768; past that, 896. 536 in a debug build when this was written, so 640 per
        // idle client's task: 576 before the shutdown flag moved to the cancel registry,
        // the cancel key into its slot and the outboxes' TLS flags into the relay; 664
        // before the common paths of the relay stopped nesting async calls; 752 before the
        // shutdown wait moved to the cancel registry.
        assert!(size <= 536, "session future grew to {size} bytes");
    }
}

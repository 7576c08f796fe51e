//! One client connection, from the first byte to the last: [`startup`] reads the startup
//! packet (answering SSLRequest/GSSENCRequest with `N`, routing CancelRequest), [`auth`]
//! proves who the client is, and [`relay`] forwards frames between the client and pooled
//! servers in session or transaction mode. [`error`] turns every failure into the
//! ErrorResponse a PostgreSQL client expects.

mod auth;
mod error;
mod exchange;
mod io;
mod relay;
mod sql;
mod startup;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use error::SessionError;
pub(crate) use io::ClientIo;

use crate::context::Context;
use crate::pool::ClientMeta;
use crate::protocol::backend;
use crate::state::ClientState;

/// Decrements the client count when a session ends, however it ends.
struct ClientCount<'a>(&'a Context);

impl Drop for ClientCount<'_> {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one accepted client socket until it disconnects or Sluice shuts down.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<Context>,
    shutdown: CancellationToken,
) {
    let span = tracing::info_span!("client", %peer);
    async move {
        let _ = stream.set_nodelay(true);
        let mut client = ClientIo::new(stream);
        match run(&mut client, peer, &ctx, &shutdown).await {
            Ok(()) => tracing::debug!("client done"),
            Err(e) => {
                e.log();
                if let Some((severity, code, message)) = e.to_error_response() {
                    let mut out = BytesMut::new();
                    backend::error_response(&mut out, severity, code, &message);
                    let _ = client.write(&out).await;
                }
            }
        }
    }
    .instrument(span)
    .await;
}

async fn run(
    client: &mut ClientIo,
    peer: SocketAddr,
    ctx: &Arc<Context>,
    shutdown: &CancellationToken,
) -> Result<(), SessionError> {
    let pg = &ctx.config.postgres;
    // client_login_timeout bounds every wait on the client until it is authenticated.
    let deadline = (!pg.client_login_timeout.is_zero())
        .then(|| tokio::time::Instant::now() + pg.client_login_timeout);
    let Some(params) = login_step(deadline, Box::pin(startup::read_startup(client, ctx))).await?
    else {
        return Ok(());
    };
    let count = ctx.clients.fetch_add(1, Ordering::Relaxed) + 1;
    let _count = ClientCount(ctx);
    if count > pg.max_client_conn {
        return Err(SessionError::TooManyClients(pg.max_client_conn));
    }
    let user = params.user().ok_or(SessionError::MissingUser)?.to_owned();
    let dbname = params.database().unwrap_or_default().to_owned();
    if crate::console::CONSOLE_DATABASES.contains(&dbname.as_str()) {
        let mut out = BytesMut::new();
        let known = ctx.admin_users.get(&user);
        login_step(
            deadline,
            Box::pin(auth::authenticate(
                client,
                &mut out,
                pg.auth_type,
                &user,
                known,
            )),
        )
        .await?;
        client.write(&out).await?;
        return Box::pin(crate::console::serve(client, ctx, shutdown)).await;
    }
    let db = ctx
        .databases
        .get(&dbname)
        .ok_or_else(|| SessionError::UnknownDatabase(dbname.clone()))?;
    let mut out = BytesMut::with_capacity(1024);
    let auth_user = login_step(
        deadline,
        Box::pin(auth::authenticate(
            client,
            &mut out,
            pg.auth_type,
            &user,
            db.users.get(&user),
        )),
    )
    .await?;
    let pool = db
        .pools
        .get(&auth_user)
        .ok_or(SessionError::AuthFailed(user.clone()))?;
    tracing::debug!(user = %user, database = %dbname, "client authenticated");

    let who = Arc::new(ClientMeta {
        addr: peer,
        application_name: params
            .get("application_name")
            .unwrap_or_default()
            .to_owned(),
    });
    let server_params = Box::pin(pool.server_params(&who))
        .await
        .map_err(SessionError::Pool)?;
    let registration = ctx.cancel.register(crate::cancel::ClientInfo {
        user: user.clone(),
        database: dbname.clone(),
        addr: Some(peer),
        application_name: who.application_name.clone(),
        connected_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default(),
    });
    backend::auth_ok(&mut out);
    let state = ClientState::from_startup(&params.params);
    for (name, value) in server_params.iter() {
        let value = state.setting(name).unwrap_or(value);
        backend::parameter_status(&mut out, name, value);
    }
    backend::backend_key_data(&mut out, registration.pid, registration.secret);
    backend::ready_for_query(&mut out, b'I');
    client.write(&out).await?;
    out.clear();

    // Nothing from the login phase stays allocated while the client is served.
    drop(out);
    drop(params);
    let gauge = ctx.stats.clients().track(sluice_stats::ClientState::Idle);
    let nonzero = |d: std::time::Duration| (!d.is_zero()).then_some(d);
    let limits = relay::Limits {
        max_packet: pg.max_packet_size,
        client_idle: nonzero(pg.client_idle_timeout),
        idle_transaction: nonzero(pg.idle_transaction_timeout),
    };
    relay::Relay::new(client, pool, &registration.slot, state, who, gauge, limits)
        .run(shutdown)
        .await
}

/// Runs one step of the login, failing with [`SessionError::LoginTimeout`] past `deadline`.
async fn login_step<T>(
    deadline: Option<tokio::time::Instant>,
    step: impl std::future::Future<Output = Result<T, SessionError>>,
) -> Result<T, SessionError> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d, step)
            .await
            .map_err(|_| SessionError::LoginTimeout)?,
        None => step.await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every idle client is one of these futures plus its socket, so its size is the
    /// floor of per-client memory (a regression here shows up in the idle-memory
    /// benchmark).
    #[tokio::test]
    async fn session_future_stays_small() {
        let config = sluice_config::Config::from_toml_str(
            "[[postgres.databases]]\nname = \"a\"\nupstream = \"postgres://u:p@127.0.0.1:1/a\"\n",
        )
        .unwrap();
        let ctx = Arc::new(Context::new(Arc::new(config)).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let peer = stream.local_addr().unwrap();
        let fut = serve(stream, peer, ctx, CancellationToken::new());
        let size = std::mem::size_of_val(&fut);
        eprintln!("session future: {size} bytes");
        assert!(size < 3072, "session future grew to {size} bytes");
    }
}

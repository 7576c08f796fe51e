//! One client connection, from the first byte to the last: [`startup`] reads the startup
//! packet (answering SSLRequest/GSSENCRequest with `N`, routing CancelRequest), [`auth`]
//! proves who the client is, and [`relay`] forwards frames between the client and pooled
//! servers in session or transaction mode. [`error`] turns every failure into the
//! ErrorResponse a PostgreSQL client expects.

mod auth;
mod error;
mod exchange;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
mod greeting;
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

use crate::client_io::ClientIo;
pub use error::SessionError;

use crate::context::Context;
use crate::pool::ClientMeta;
use crate::protocol::backend;
use crate::state::ClientState;

/// Decrements the client count when a session ends, however it ends.
pub(crate) struct ClientCount<'a>(&'a Context);

impl Drop for ClientCount<'_> {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one accepted client socket until it disconnects or Sluice shuts down.
///
/// The login runs inside an `info` span naming the client; the long relay phase only in a
/// `debug` one, because a live span costs every idle client several hundred bytes (its
/// own log lines and the final error name the client instead).
pub fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<Context>,
    shutdown: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send {
    let _ = stream.set_nodelay(true);
    let mut client = ClientIo::new(stream);
    async move {
        let e = match run(&mut client, &peer, &ctx, &shutdown).await {
            Ok(()) => return tracing::debug!(client = %peer, "client done"),
            Err(e) => e,
        };
        Box::pin(report(&mut client, peer, e)).await;
    }
}

/// Logs why a session failed and tells the client, when its socket is worth writing to.
async fn report(client: &mut ClientIo, peer: SocketAddr, e: SessionError) {
    e.log(peer);
    if let Some((severity, code, message)) = e.to_error_response() {
        let mut out = BytesMut::new();
        backend::error_response(&mut out, severity, code, &message);
        let _ = client.write(&out).await;
    }
}

/// What a successful login hands to the relay phase.
pub(crate) struct LoggedIn<'a> {
    pub(crate) pool: &'a crate::pool::Pool,
    pub(crate) registration: crate::cancel::Registration,
    pub(crate) state: ClientState,
    pub(crate) who: Arc<ClientMeta>,
    pub(crate) count: ClientCount<'a>,
    /// Session mode: the server this client owns for its whole life.
    pub(crate) server: Option<crate::pool::PooledConn>,
}

async fn run(
    client: &mut ClientIo,
    peer: &SocketAddr,
    ctx: &Arc<Context>,
    shutdown: &CancellationToken,
) -> Result<(), SessionError> {
    // The login future lives on the heap only while the client logs in, so an idle
    // client's task holds just the relay state (stored once, run by reference).
    let mut relay = Box::pin(login(client, *peer, ctx, shutdown))
        .instrument(tracing::info_span!("client", %peer))
        .await?;
    match relay.as_mut() {
        Some(relay) => relay.run(shutdown).await,
        None => Ok(()),
    }
}

/// Startup, authentication and the greeting; serves admin-console clients to the end.
/// Returns the relay for the query phase, or `None` when there is nothing left to relay
/// (console client, or closed before startup).
async fn login<'a>(
    client: &'a mut ClientIo,
    peer: SocketAddr,
    ctx: &'a Arc<Context>,
    shutdown: &CancellationToken,
) -> Result<Option<relay::Relay<'a>>, SessionError> {
    let pg = &ctx.config.postgres;
    // client_login_timeout bounds every wait on the client until it is authenticated.
    let deadline = (!pg.client_login_timeout.is_zero())
        .then(|| tokio::time::Instant::now() + pg.client_login_timeout);
    let Some(params) = login_step(deadline, Box::pin(startup::read_startup(client, ctx))).await?
    else {
        return Ok(None);
    };
    let count = ctx.clients.fetch_add(1, Ordering::Relaxed) + 1;
    let count_guard = ClientCount(ctx);
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
        return match Box::pin(crate::console::serve(client, ctx, shutdown)).await? {
            crate::console::Ended::ClientLeft => Ok(None),
            crate::console::Ended::Shutdown => Err(SessionError::Shutdown),
        };
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
    // Session mode: the client owns one server from now on, and learns its real backend
    // pid (and the parameters that very server reported).
    let mut server = if pool.settings().mode == sluice_config::PoolMode::Session {
        Some(match pool.try_checkout(&who) {
            Some(server) => server,
            None => Box::pin(pool.checkout(&who))
                .await
                .map_err(SessionError::Pool)?,
        })
    } else {
        None
    };
    let server_params = match &server {
        Some(server) => server.params.clone(),
        None => Box::pin(pool.server_params(&who))
            .await
            .map_err(SessionError::Pool)?,
    };
    let info = crate::cancel::ClientInfo {
        user: ctx.intern_name(&user),
        database: ctx.intern_name(&dbname),
        who: Some(who.clone()),
        connected_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default(),
    };
    let registration = ctx
        .cancel
        .register(info, server.as_ref().map(|s| s.cancel.pid));
    let mut state = ClientState::from_startup(&params.params);
    ctx.intern_startup(&mut state);
    let reported = Box::pin(greeting::reported_values(
        pool,
        &who,
        server.as_mut(),
        &state,
        &server_params,
    ))
    .await?;
    backend::auth_ok(&mut out);
    for (name, value) in server_params.iter() {
        let value = reported
            .iter()
            .find(|(n, _)| n == name)
            .map_or(value.as_bytes(), |(_, v)| v.as_slice());
        backend::parameter_status(&mut out, name, value);
    }
    backend::backend_key_data(&mut out, registration.pid, registration.secret);
    backend::ready_for_query(&mut out, b'I');
    client.write(&out).await?;
    let logged_in = LoggedIn {
        pool,
        registration,
        state,
        who,
        count: count_guard,
        server,
    };
    Ok(Some(relay::Relay::new(client, logged_in, ctx)))
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
        // 880 bytes in a debug build when this was written (was 2,240 before the login
        // phase was boxed and the relay stored once); the idle-memory target is 2 KiB per
        // client in all.
        assert!(size <= 1024, "session future grew to {size} bytes");
    }
}

//! The login phase of a client session, in the order it happens:
//!
//! 1. [`startup`] reads the startup packet (answering SSLRequest/GSSENCRequest, routing
//!    CancelRequest);
//! 2. admission: `max_client_conn`, then the database named decides the route — the admin
//!    console, or a pool;
//! 3. [`auth`] proves who the client is (every step bounded by `client_login_timeout`);
//! 4. [`greeting`] learns the ParameterStatus values to report, and the greeting is sent
//!    (AuthenticationOk, ParameterStatus, BackendKeyData, ReadyForQuery).
//!
//! What it hands on is a [`LoggedIn`]: the pool, the cancel registration, the client's
//! state and (session mode) its own server.

mod auth;
mod greeting;
mod startup;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use tokio::time::Instant;

use crate::client_io::ClientIo;
use crate::context::{Database, PgContext};
use crate::pool::{ClientMeta, PgPool, PooledConn};
use crate::protocol::backend;
use crate::protocol::startup::StartupParams;
use crate::session::PgSessionError;
use crate::state::ClientState;

/// Decrements the client counts (all clients; this database's and this user's, once
/// counted) when a session ends, however it ends.
pub(crate) struct ClientCount<'a> {
    ctx: &'a PgContext,
    more: [Option<Arc<AtomicUsize>>; 2],
}

impl<'a> ClientCount<'a> {
    /// The context the client logged in under (its configuration holds for the session).
    pub(crate) fn ctx(&self) -> &'a PgContext {
        self.ctx
    }

    /// Counts the client in `counter` too, refusing it past `max` (0: no limit; `key`
    /// names the setting in the error).
    fn admit(
        &mut self,
        i: usize,
        counter: Arc<AtomicUsize>,
        (key, max): (&'static str, usize),
    ) -> Result<(), PgSessionError> {
        if max == 0 {
            return Ok(());
        }
        let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
        self.more[i] = Some(counter);
        if n > max {
            return Err(PgSessionError::TooManyClients(key, max));
        }
        Ok(())
    }
}

impl Drop for ClientCount<'_> {
    fn drop(&mut self) {
        self.ctx.clients.fetch_sub(1, Ordering::Relaxed);
        for c in self.more.iter().flatten() {
            c.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// What a successful login hands to the relay phase.
pub(crate) struct LoggedIn<'a> {
    pub(crate) pool: PgPool,
    pub(crate) registration: crate::cancel::Registration,
    pub(crate) state: ClientState,
    pub(crate) who: Arc<ClientMeta>,
    pub(crate) count: ClientCount<'a>,
    /// Session mode: the server this client owns for its whole life.
    pub(crate) server: Option<PooledConn>,
    /// A database with several hosts: how each transaction finds its host.
    pub(crate) route: Option<Box<crate::hosts::ClientRoute>>,
}

/// Runs the whole login. `None` when there is nothing left to relay: the client closed
/// before its startup packet, only cancelled, or was an admin-console client (served here
/// to the end).
pub(crate) async fn login<'a>(
    client: &mut ClientIo,
    peer: SocketAddr,
    ctx: &'a Arc<PgContext>,
) -> Result<Option<LoggedIn<'a>>, PgSessionError> {
    let pg = &ctx.config.postgres;
    // client_login_timeout bounds every wait on the client until it is authenticated.
    let deadline =
        (!pg.client_login_timeout.is_zero()).then(|| Instant::now() + pg.client_login_timeout);
    let Some(params) = step(deadline, Box::pin(startup::read_startup(client, ctx))).await? else {
        return Ok(None);
    };
    let mut count = admit(ctx)?;
    let user = params.user().ok_or(PgSessionError::MissingUser)?.to_owned();
    let dbname = params.database().unwrap_or_default().to_owned();
    if crate::console::CONSOLE_DATABASES.contains(&dbname.as_str()) {
        Box::pin(console(client, ctx, &user, deadline)).await?;
        return Ok(None);
    }
    let db = ctx
        .database(&dbname)
        .ok_or_else(|| PgSessionError::UnknownDatabase(dbname.clone()))?;
    let mut out = BytesMut::with_capacity(1024);
    let (pool, db) = authenticate(client, &mut out, ctx, db, &user, deadline).await?;
    let pg = &ctx.config.postgres;
    let per_db = (
        "max_db_client_connections",
        db.config.max_db_client_connections(pg),
    );
    count.admit(0, db.clients.clone(), per_db)?;
    let per_user = (
        "max_user_client_connections",
        pg.max_user_client_connections_of(&user),
    );
    count.admit(1, ctx.user_clients(&user), per_user)?;
    tracing::debug!(user = %user, database = %dbname, "client authenticated");
    let who = Arc::new(ClientMeta {
        addr: peer,
        application_name: params.get("application_name").unwrap_or_default().into(),
    });
    let (pool, route) = routed(&db, &user, &params, pool)?;
    let greeted = greet(client, out, ctx, &pool, &who, &params, (&user, &dbname));
    let (server, registration, state) = Box::pin(greeted).await?;
    Ok(Some(LoggedIn {
        pool,
        registration,
        state,
        who,
        count,
        server,
        route,
    }))
}

/// For a database with several hosts: the client's route, and the pool its login (and
/// in session mode its whole session) uses, on the host its `target_session_attrs`
/// asks for (the primary by default).
fn routed(
    db: &crate::context::Database,
    user: &str,
    params: &StartupParams,
    pool: PgPool,
) -> Result<(PgPool, Option<Box<crate::hosts::ClientRoute>>), PgSessionError> {
    use crate::hosts::Target;
    let Some(route) = db.route(user) else {
        return Ok((pool, None));
    };
    let asked = crate::state::target_session_attrs(&params.params);
    let target = asked
        .as_deref()
        .and_then(Target::from_session_attrs)
        .unwrap_or(Target::Primary);
    let chosen = route.pick(target).cloned().ok_or_else(|| {
        PgSessionError::PgPool(crate::pool::PgPoolError::NoHost {
            database: db.config.name.clone(),
            target: target.describe(),
        })
    })?;
    Ok((
        chosen,
        Some(Box::new(crate::hosts::ClientRoute { route, target })),
    ))
}

/// Runs one step of the login, failing with [`PgSessionError::LoginTimeout`] past `deadline`.
async fn step<T>(
    deadline: Option<Instant>,
    step: impl std::future::Future<Output = Result<T, PgSessionError>>,
) -> Result<T, PgSessionError> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d, step)
            .await
            .map_err(|_| PgSessionError::LoginTimeout)?,
        None => step.await,
    }
}

/// Counts the client in, refusing it past `max_client_conn`.
fn admit(ctx: &PgContext) -> Result<ClientCount<'_>, PgSessionError> {
    let max = ctx.config.postgres.max_client_conn;
    let count = ctx.clients.fetch_add(1, Ordering::Relaxed) + 1;
    let guard = ClientCount {
        ctx,
        more: [None, None],
    };
    if count > max {
        return Err(PgSessionError::TooManyClients("max_client_conn", max));
    }
    Ok(guard)
}

/// An admin-console client: authenticated as an admin user, then served until it leaves.
async fn console(
    client: &mut ClientIo,
    ctx: &Arc<PgContext>,
    user: &str,
    deadline: Option<Instant>,
) -> Result<(), PgSessionError> {
    let mut out = BytesMut::new();
    let known = ctx.admin_users.get(user);
    let auth_type = ctx.config.postgres.auth_type;
    step(
        deadline,
        Box::pin(auth::authenticate(client, &mut out, auth_type, user, known)),
    )
    .await?;
    client.write(&out).await?;
    match Box::pin(crate::console::serve(client, ctx, ctx.cancel.closed())).await? {
        crate::console::Ended::ClientLeft => Ok(()),
        crate::console::Ended::Shutdown => Err(PgSessionError::Shutdown),
    }
}

/// Authenticates a client of database `db` and returns the pool of the user it logged in
/// as, with the database as kept (one made from the wildcard is kept only now). A user the
/// configuration does not list is looked up with `auth_query` (when `auth_user` is set).
/// The answer so far (for SCRAM, the final server message) is in `out`.
async fn authenticate(
    client: &mut ClientIo,
    out: &mut BytesMut,
    ctx: &PgContext,
    db: Arc<Database>,
    user: &str,
    deadline: Option<Instant>,
) -> Result<(PgPool, Arc<Database>), PgSessionError> {
    let pg = &ctx.config.postgres;
    let fetched = match db.users.get(user) {
        Some(known) => crate::auth_query::Fetched {
            auth: Some(known.clone()),
            cached: false,
        },
        None if ctx.auth_query.enabled() => {
            let target = db.query_target();
            let lookup = ctx.auth_query.lookup(pg, &target, user);
            step(deadline, async {
                Box::pin(lookup).await.map_err(PgSessionError::AuthQuery)
            })
            .await?
        }
        None => crate::auth_query::Fetched {
            auth: None,
            cached: false,
        },
    };
    let known = fetched.auth.as_ref();
    let login = auth::authenticate(client, out, pg.auth_type, user, known);
    let keys = match step(deadline, Box::pin(login)).await {
        Ok(keys) => keys,
        Err(e) => {
            if fetched.cached && matches!(e, PgSessionError::AuthFailed(_)) {
                ctx.auth_query.forget(&db.config.name, user);
            }
            return Err(e);
        }
    };
    let known = known.ok_or_else(|| PgSessionError::AuthFailed(user.to_owned()))?;
    let name = db.config.name.clone();
    let db = ctx
        .keep(db)
        .map_err(|max| PgSessionError::TooManyDatabases(name, max))?;
    let pool = ctx.pool_for(&db, user, known);
    if let Some(keys) = keys.filter(|_| db.config.upstream.forwards_user()) {
        ctx.pass_through(&db, user, &pool, keys);
    }
    Ok((pool, db))
}

/// What the greeting leaves the session: its own server (session mode), its cancel
/// registration and its state.
type Greeted = (Option<PooledConn>, crate::cancel::Registration, ClientState);

/// Finishes the login: in session mode checks out the client's own server (whose backend
/// pid and parameters the client learns), registers for cancels, and sends the greeting.
async fn greet(
    client: &mut ClientIo,
    mut out: BytesMut,
    ctx: &PgContext,
    pool: &PgPool,
    who: &Arc<ClientMeta>,
    params: &StartupParams,
    (user, dbname): (&str, &str),
) -> Result<Greeted, PgSessionError> {
    let mut server = if pool.settings().mode == sluice_config::PoolMode::Session {
        Some(match pool.try_checkout(who) {
            Some(server) => server,
            None => Box::pin(pool.checkout(who))
                .await
                .map_err(PgSessionError::PgPool)?,
        })
    } else {
        None
    };
    let server_params = match &server {
        Some(server) => server.params.clone(),
        None => Box::pin(pool.server_params(who))
            .await
            .map_err(PgSessionError::PgPool)?,
    };
    let registration = register(client.raw_fd(), ctx, who, user, dbname, server.as_ref());
    let mut state = ClientState::from_startup(&params.params);
    ctx.intern_startup(&mut state);
    let reported = Box::pin(greeting::reported_values(
        pool,
        who,
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
    backend::backend_key_data(&mut out, registration.pid(), registration.secret());
    backend::ready_for_query(&mut out, b'I');
    client.write(&out).await?;
    Ok((server, registration, state))
}

/// Registers the client for CancelRequests (and SHOW CLIENTS): a session-mode client gets
/// its server's real backend pid.
fn register(
    fd: Option<std::os::fd::RawFd>,
    ctx: &PgContext,
    who: &Arc<ClientMeta>,
    user: &str,
    dbname: &str,
    server: Option<&PooledConn>,
) -> crate::cancel::Registration {
    let info = crate::cancel::ClientInfo {
        user: ctx.intern_name(user),
        database: ctx.intern_name(dbname),
        who: Some(who.clone()),
        connected_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default(),
        fd,
    };
    ctx.cancel.register(info, server.map(|s| s.cancel.pid))
}

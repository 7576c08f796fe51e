//! Bounded pools of upstream server connections, one per (database, user).
//!
//! A [`Pool`] is a cheap-to-clone handle. Checkout takes an idle connection (most recently
//! used first), opens a new one while the pool is below `pool_size`, or queues the caller
//! in arrival order; the whole checkout is bounded by `pool_timeout`. A returned connection
//! goes straight to the longest-waiting client. The lock is a `parking_lot::Mutex` that is
//! never held across an `.await`. A checked-out connection lives in a [`PooledConn`] guard:
//! dropping the guard without [`PooledConn::checkin`] closes the connection and frees its
//! slot, so a dying client task can never leak a slot or hand on a dirty server.

use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sluice_config::{PoolMode, Upstream};
use thiserror::Error;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::prepared::StatementRegistry;
use crate::upstream::{ServerConn, ServerParams, UpstreamError};

/// Settings of one pool, resolved from the configuration.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Display name, `database/user`, used in errors and logs.
    pub name: String,
    /// Where and as whom to connect.
    pub upstream: Upstream,
    /// Most server connections this pool may hold.
    pub max_size: usize,
    /// Connections opened at start and kept open.
    pub min_size: usize,
    /// How long a client may wait for a connection.
    pub timeout: Duration,
    /// Bound on one connect + login.
    pub connect_timeout: Duration,
    /// Session or transaction pooling.
    pub mode: PoolMode,
    /// Query run before a used connection is reused (empty: none).
    pub reset_query: String,
    /// Per-server prepared statement cache size (0: no statement mapping).
    pub max_prepared_statements: usize,
}

/// Why a checkout failed.
#[derive(Debug, Error)]
pub enum PoolError {
    /// No connection became available within `pool_timeout`.
    #[error("timed out after {waited:?} waiting for a server connection from pool \"{pool}\" (pool_timeout {timeout:?})")]
    Timeout {
        /// Pool name.
        pool: String,
        /// How long the client waited.
        waited: Duration,
        /// The configured limit.
        timeout: Duration,
    },
    /// Opening a new server connection failed.
    #[error("pool \"{pool}\" could not connect to its upstream: {source}")]
    Connect {
        /// Pool name.
        pool: String,
        /// What went wrong.
        #[source]
        source: UpstreamError,
    },
    /// The pool is shutting down.
    #[error("pool \"{0}\" is closed")]
    Closed(String),
}

/// What a waiting client is handed. (Moved by value once per hand-off; boxing it would
/// cost an allocation per checkout.)
#[allow(clippy::large_enum_variant)]
enum Grant {
    /// An idle connection, ready to use.
    Conn(ServerConn),
    /// Permission to open a connection in a freed slot.
    Slot,
}

#[derive(Default)]
struct State {
    idle: Vec<ServerConn>,
    /// Connections that exist or are being opened (idle + checked out + connecting).
    total: usize,
    waiters: VecDeque<oneshot::Sender<Grant>>,
    closed: bool,
}

struct Inner {
    settings: PoolSettings,
    state: Mutex<State>,
    /// Startup parameters of the first server connection, replayed to clients at login.
    params: Mutex<Option<ServerParams>>,
    /// Prepared statements shared by this pool's clients.
    statements: StatementRegistry,
}

/// A handle to one pool; clones share it.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

#[allow(clippy::large_enum_variant)]
enum Step {
    Ready(ServerConn),
    Connect,
    Wait(oneshot::Receiver<Grant>),
}

impl Pool {
    /// Creates an empty pool; call [`Pool::spawn_maintenance`] to keep `min_size` open.
    pub fn new(settings: PoolSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings,
                state: Mutex::new(State::default()),
                params: Mutex::new(None),
                statements: StatementRegistry::default(),
            }),
        }
    }

    /// The pool's settings.
    pub fn settings(&self) -> &PoolSettings {
        &self.inner.settings
    }

    /// The prepared statements shared by this pool's clients.
    pub fn statements(&self) -> &StatementRegistry {
        &self.inner.statements
    }

    /// Checks a connection out, waiting in line at most `pool_timeout`.
    pub async fn checkout(&self) -> Result<PooledConn, PoolError> {
        let start = Instant::now();
        let deadline = start + self.inner.settings.timeout;
        let conn = match self.next_step() {
            Step::Ready(conn) => conn,
            Step::Connect => self.connect_in_slot(deadline, start).await?,
            Step::Wait(mut rx) => match tokio::time::timeout_at(deadline, &mut rx).await {
                Ok(Ok(Grant::Conn(conn))) => conn,
                Ok(Ok(Grant::Slot)) => self.connect_in_slot(deadline, start).await?,
                Ok(Err(_)) => return Err(PoolError::Closed(self.name())),
                Err(_) => {
                    rx.close();
                    if let Ok(grant) = rx.try_recv() {
                        self.give_back(grant);
                    }
                    return Err(self.timeout_error(start));
                }
            },
        };
        let conn = if conn.looks_alive() {
            conn
        } else {
            // A stale idle connection (server restarted or closed it): drop it and open a
            // new one in the same slot.
            tracing::debug!(pool = %self.name(), "dropping dead idle server connection");
            drop(conn);
            self.connect_in_slot(deadline, start).await?
        };
        Ok(PooledConn {
            conn: Some(conn),
            pool: self.clone(),
        })
    }

    fn next_step(&self) -> Step {
        let mut st = self.inner.state.lock();
        if st.closed {
            let (tx, rx) = oneshot::channel();
            drop(tx);
            return Step::Wait(rx);
        }
        if let Some(conn) = st.idle.pop() {
            return Step::Ready(conn);
        }
        if st.total < self.inner.settings.max_size {
            st.total += 1;
            return Step::Connect;
        }
        let (tx, rx) = oneshot::channel();
        st.waiters.push_back(tx);
        Step::Wait(rx)
    }

    /// Opens a connection in a slot already counted in `total`, retrying transient
    /// failures (upstream restarting) until the deadline. Frees the slot on failure.
    async fn connect_in_slot(
        &self,
        deadline: Instant,
        start: Instant,
    ) -> Result<ServerConn, PoolError> {
        let s = &self.inner.settings;
        let mut backoff = Duration::from_millis(50);
        loop {
            let attempt = tokio::time::timeout_at(
                deadline,
                ServerConn::connect(&s.upstream, s.connect_timeout),
            )
            .await;
            match attempt {
                Ok(Ok(conn)) => {
                    self.remember_params(&conn);
                    return Ok(conn);
                }
                Ok(Err(e)) if e.is_transient() && Instant::now() + backoff < deadline => {
                    tracing::warn!(pool = %s.name, error = %e, "upstream connect failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Ok(Err(e)) => {
                    self.free_slot();
                    tracing::warn!(pool = %s.name, error = %e, "upstream connect failed");
                    return Err(PoolError::Connect {
                        pool: s.name.clone(),
                        source: e,
                    });
                }
                Err(_) => {
                    self.free_slot();
                    return Err(self.timeout_error(start));
                }
            }
        }
    }

    fn timeout_error(&self, start: Instant) -> PoolError {
        PoolError::Timeout {
            pool: self.name(),
            waited: start.elapsed(),
            timeout: self.inner.settings.timeout,
        }
    }

    fn name(&self) -> String {
        self.inner.settings.name.clone()
    }

    fn remember_params(&self, conn: &ServerConn) {
        let mut p = self.inner.params.lock();
        if p.is_none() {
            *p = Some(conn.params.clone());
        }
    }

    /// Startup parameters to show clients; opens (and returns) a connection the first
    /// time if no server has been seen yet.
    pub async fn server_params(&self) -> Result<ServerParams, PoolError> {
        if let Some(p) = self.inner.params.lock().clone() {
            return Ok(p);
        }
        let conn = self.checkout().await?;
        let params = conn.params.clone();
        conn.checkin();
        Ok(params)
    }

    /// Returns a connection (or a slot) that a timed-out waiter received too late.
    fn give_back(&self, grant: Grant) {
        match grant {
            Grant::Conn(conn) => self.checkin_conn(conn),
            Grant::Slot => self.free_slot(),
        }
    }

    /// Puts a clean connection back: to the longest waiter, else onto the idle stack.
    fn checkin_conn(&self, conn: ServerConn) {
        let mut st = self.inner.state.lock();
        if st.closed {
            st.total -= 1;
            return;
        }
        let mut conn = conn;
        while let Some(tx) = st.waiters.pop_front() {
            match tx.send(Grant::Conn(conn)) {
                Ok(()) => return,
                Err(Grant::Conn(c)) => conn = c,
                Err(Grant::Slot) => unreachable!("sent a connection"),
            }
        }
        st.idle.push(conn);
    }

    /// Forgets a connection slot (connection closed or never opened); a waiter, if any,
    /// gets the right to open a new one.
    fn free_slot(&self) {
        let mut st = self.inner.state.lock();
        while let Some(tx) = st.waiters.pop_front() {
            if tx.send(Grant::Slot).is_ok() {
                return;
            }
        }
        st.total = st.total.saturating_sub(1);
    }

    /// Keeps at least `min_size` connections open until the pool is closed.
    pub fn spawn_maintenance(&self) {
        let pool = self.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(500);
            loop {
                let want = {
                    let mut st = pool.inner.state.lock();
                    if st.closed {
                        return;
                    }
                    let want = st.total < pool.inner.settings.min_size;
                    if want {
                        st.total += 1;
                    }
                    want
                };
                if !want {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                let s = &pool.inner.settings;
                match ServerConn::connect(&s.upstream, s.connect_timeout).await {
                    Ok(conn) => {
                        pool.remember_params(&conn);
                        pool.checkin_conn(conn);
                        backoff = Duration::from_millis(500);
                    }
                    Err(e) => {
                        pool.free_slot();
                        tracing::warn!(pool = %s.name, error = %e, "could not open min_pool_size connection");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                }
            }
        });
    }

    /// Closes the pool: idle connections are dropped, waiters fail, returned connections
    /// are closed.
    pub fn close(&self) {
        let mut st = self.inner.state.lock();
        st.closed = true;
        let idle = std::mem::take(&mut st.idle);
        st.total -= idle.len();
        st.waiters.clear();
    }

    /// Point-in-time counts: (total, idle, waiting).
    pub fn counts(&self) -> (usize, usize, usize) {
        let st = self.inner.state.lock();
        (st.total, st.idle.len(), st.waiters.len())
    }
}

/// A checked-out server connection. Dropping it closes the connection; call
/// [`PooledConn::checkin`] to return it when it is clean.
pub struct PooledConn {
    conn: Option<ServerConn>,
    pool: Pool,
}

impl PooledConn {
    /// Returns a clean connection (at ReadyForQuery `I`, reset as the mode requires).
    pub fn checkin(mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.checkin_conn(conn);
        }
    }

    /// The pool this connection belongs to.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        if self.conn.take().is_some() {
            self.pool.free_slot();
        }
    }
}

impl Deref for PooledConn {
    type Target = ServerConn;
    fn deref(&self) -> &ServerConn {
        // Invariant: `conn` is only taken in `checkin` (which consumes self) and `drop`.
        self.conn
            .as_ref()
            .unwrap_or_else(|| unreachable!("connection present until checkin"))
    }
}

impl DerefMut for PooledConn {
    fn deref_mut(&mut self) -> &mut ServerConn {
        self.conn
            .as_mut()
            .unwrap_or_else(|| unreachable!("connection present until checkin"))
    }
}

//! The PostgreSQL side of Sluice: a listener that accepts clients, authenticates them, and
//! multiplexes them onto bounded pools of upstream server connections in session or
//! transaction mode.
//!
//! # The data path, and where each step lives
//!
//! 1. [`listener`] accepts a socket and spawns [`session::serve`] for it.
//! 2. `session/login/` reads the startup packet, admits the client (`max_client_conn`),
//!    routes it to the [`console`] or a pool, authenticates it and sends the greeting.
//! 3. `session/relay.rs` moves bytes both ways (`relay/pump.rs`); **a server is chosen** in
//!    `relay/checkout.rs`, which asks [`pool`] (the pg side of the `sluice-pool` core:
//!    idle servers first, then a new connection, then the FIFO queue).
//! 4. `session/exchange/` (sans-IO) decides what each frame means: `client.rs` handles
//!    each client message, `server.rs` each server answer, `sql.rs` classifies query text.
//! 5. **Bytes are decoded and encoded only in [`protocol`]**: framing (`frame.rs`), message
//!    tags (`tag.rs`), the messages Sluice reads or writes (`messages.rs`, `backend.rs`,
//!    `frontend.rs`, `startup.rs`).
//! 6. **Statistics are counted** where they happen and read from one place: queries and
//!    transactions by the exchange, moved into the pool's `PoolCounters` by the relay
//!    (`Relay::count`), bytes by the pump, checkouts, waits and connects by `sluice-pool`;
//!    [`pool`] turns them into the snapshots `sluice-stats` exposes.
//!
//! # Modules, bottom up (each uses only those above it)
//!
//! * [`protocol`] — sans-IO byte layouts of the PostgreSQL protocol.
//! * `bufpool` — a cache of I/O buffers, so idle clients hold none.
//! * [`state`] — what follows a client across servers (settings, prepared statements) and
//!   the pool-wide statement registry.
//! * [`upstream`] — one connection to a PostgreSQL server: open, log in, run a query.
//! * [`auth_query`] — secrets of unlisted users, read from PostgreSQL and cached.
//! * `client_io` — the client socket and its read buffer.
//! * [`pool`] — per-(database, user) pools of upstream connections.
//! * [`cancel`] — CancelRequest routing.
//! * [`context`] — everything a session needs, built from the configuration, and reload.
//! * [`console`] — the SQL admin console (`SHOW`, `PAUSE`, `RELOAD`, ...).
//! * [`session`] — one client's lifetime: login, relay, exchange.
//! * [`listener`] — the accept loop and graceful shutdown.
//!
//! `tests/structure/modgraph.sh crates/sluice-pg/src` prints this graph from the `use crate::` lines.

#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod auth_query;
mod bufpool;
pub mod cancel;
pub(crate) mod client_io;
pub mod console;
pub mod context;
pub mod hosts;
pub mod listener;
pub mod notify;
pub mod pool;
pub mod protocol;
pub mod session;
pub mod state;
pub use sluice_tls as tls;
pub mod upstream;

pub use context::{ConsoleHooks, LiveContext, PgContext};
pub use listener::PgListener;

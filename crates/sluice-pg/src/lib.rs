//! The PostgreSQL side of Sluice: a listener that accepts clients, authenticates them, and
//! multiplexes them onto bounded pools of upstream server connections in session or
//! transaction mode.
//!
//! * [`protocol`] — sans-IO framing and the few messages Sluice reads or writes itself.
//! * [`upstream`] — connecting and authenticating to PostgreSQL servers.
//! * [`pool`] — bounded per-(database, user) pools with a FIFO checkout queue.
//! * [`session`] — one client's lifetime: startup, auth, relay.
//! * [`cancel`] — CancelRequest routing.
//! * [`listener`] — the accept loop and graceful shutdown.

#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod bufpool;
pub mod cancel;
pub(crate) mod client_io;
pub mod console;
pub mod context;
pub mod listener;
pub mod pool;
pub mod protocol;
pub mod session;
pub mod state;
pub use sluice_tls as tls;
pub mod upstream;

pub use context::{ConsoleHooks, Context, LiveContext};
pub use listener::Listener;

//! What a front end supplies to the pool core: opening connections and judging idle ones.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

/// Opens upstream connections for one pool.
pub trait Connector: Send + Sync + 'static {
    /// One upstream connection.
    type Conn: Send + 'static;
    /// Why a connection could not be opened.
    type Error: Clone + Display + Send + Sync + 'static;
    /// Who holds a checked-out connection (shown in statistics and `SHOW SERVERS`).
    type Holder: Send + Sync + 'static;

    /// Opens and logs in one connection, giving up after `limit`.
    fn connect(
        &self,
        limit: Duration,
    ) -> impl Future<Output = Result<Self::Conn, Self::Error>> + Send;

    /// Whether a failure may be retried at once (the upstream restarting, a reset socket).
    /// A failure that is not (a refused login) stops new attempts for `login_retry`.
    fn is_transient(&self, error: &Self::Error) -> bool;

    /// Whether an idle connection may be handed out: the server has not closed it and it
    /// still goes where the pool points.
    fn is_reusable(&self, conn: &Self::Conn) -> bool;

    /// A number that names the connection in listings (a backend pid), or 0.
    fn ident(&self, _conn: &Self::Conn) -> i64 {
        0
    }

    /// Called once for each connection just opened (to learn the server's parameters).
    fn opened(&self, _conn: &Self::Conn) {}

    /// How a connect failure reads in `/health`.
    fn describe(&self, error: &Self::Error) -> String {
        error.to_string()
    }
}

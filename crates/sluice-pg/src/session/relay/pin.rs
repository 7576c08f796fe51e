//! Pinning (transaction mode, `pin_session_state`): when a transaction leaves state that
//! cannot follow the client to another server — a temp table, a WITH HOLD cursor, a
//! session advisory lock, an SQL `PREPARE` — the client keeps that server until the state
//! is gone, instead of the server being reset under it. At the end of each of its
//! transactions Sluice asks the server what is left ([`PIN_CHECK_SQL`]); when nothing is,
//! the server is reset and goes back to the pool. At most `max_pinned_servers` per pool
//! are pinned; past that the server is reset as without pinning and the client is warned
//! once.

use super::Relay;
use crate::upstream::CLEANUP_TIMEOUT;

/// What the server still holds that only its own session can use, as counts.
pub(super) const PIN_CHECK_SQL: &[u8] = b"SELECT \
    (SELECT count(*) FROM pg_catalog.pg_class WHERE relnamespace = pg_catalog.pg_my_temp_schema()), \
    (SELECT count(*) FROM pg_catalog.pg_cursors WHERE is_holdable), \
    (SELECT count(*) FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid()), \
    (SELECT count(*) FROM pg_catalog.pg_prepared_statements WHERE from_sql)";

/// The names of [`PIN_CHECK_SQL`]'s columns, as reasons.
const REASONS: [&str; 4] = [
    "temp table",
    "cursor",
    "advisory lock",
    "prepared statement",
];

impl Relay<'_> {
    /// At a transaction's end with state on the server (the caller checked
    /// `needs_reset`): true when the client keeps the server (pinned), false when it
    /// should be reset and released.
    pub(super) async fn keep_pinned(&mut self) -> bool {
        let settings = self.pool.settings();
        let wanted = settings.pin_session_state
            && self.mode == sluice_config::PoolMode::Transaction
            && !self.leaving;
        let Some(server) = self.server.as_mut().filter(|_| wanted) else {
            self.pin = None;
            return false;
        };
        let row =
            tokio::time::timeout(CLEANUP_TIMEOUT, server.query_first_row(PIN_CHECK_SQL)).await;
        let reasons: Vec<&str> = match row {
            Ok(Ok(Some(columns))) => columns
                .iter()
                .zip(REASONS)
                .filter(|(c, _)| c.as_deref().is_some_and(|v| v != b"0"))
                .map(|(_, r)| r)
                .collect(),
            other => {
                tracing::warn!(client = %self.who.addr, result = ?other.map(|r| r.map(|_| ())), "session state check failed; resetting the server");
                Vec::new()
            }
        };
        if reasons.is_empty() {
            if self.pin.take().is_some() {
                tracing::info!(client = %self.who.addr, "session state gone; server unpinned");
            }
            return false;
        }
        let reason = reasons.join(", ");
        if let Some(pin) = &self.pin {
            pin.set_reason(reason);
            return true;
        }
        match self
            .pool
            .try_pin(&self.who, reason.clone(), settings.max_pinned)
        {
            Some(pin) => {
                tracing::info!(client = %self.who.addr, %reason, "server pinned to its client for session state");
                self.pin = Some(Box::new(pin));
                true
            }
            None => {
                if !self.pin_warned {
                    self.pin_warned = true;
                    tracing::warn!(
                        client = %self.who.addr,
                        %reason,
                        max_pinned_servers = settings.max_pinned,
                        "max_pinned_servers reached: resetting the server; this session state is lost"
                    );
                }
                false
            }
        }
    }
}

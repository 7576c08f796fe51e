//! The MongoDB listener's client guards, as data in and decisions out: the
//! `max_client_conn` cap (one RAII slot per open connection), the login and idle
//! deadlines, the pre-authentication message cap, and which cursors keep a client "busy"
//! for the idle timeout. Time is passed in; [`crate::session`] applies the decisions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use sluice_config::MongoConfig;
use tokio::time::Instant;

/// Largest message accepted before the client has authenticated (when `[[mongo.users]]`
/// are configured). A handshake `hello` (client metadata is capped at 512 bytes by the
/// handshake spec) and SCRAM steps are a few hundred bytes; without this, anyone who can
/// connect could make Sluice buffer `maxMessageSizeBytes` (48 MB) per connection.
pub const PRE_AUTH_MAX_MESSAGE: usize = 16 * 1024;

/// How long a connection refused by `max_client_conn` may take to send the first request
/// that gets the refusal as its answer; drivers send `hello` at once. Short, so a flood of
/// refused connections cannot hold sockets for the whole login timeout.
pub const REFUSAL_WAIT: Duration = Duration::from_secs(2);

/// A cursor unused for this long no longer keeps its client open (mongod's default
/// `cursorTimeoutMillis`, after which the server has dropped it anyway).
pub const CURSOR_IDLE_LIMIT: Duration = Duration::from_secs(600);

/// The guard settings of `[mongo]`; swapped whole on reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardSettings {
    /// `max_client_conn`.
    pub max_client_conn: usize,
    /// `client_login_timeout` (zero: off).
    pub login_timeout: Duration,
    /// `client_idle_timeout` (zero: off).
    pub idle_timeout: Duration,
}

impl GuardSettings {
    /// The guard keys of a `[mongo]` section.
    pub fn from_config(config: &MongoConfig) -> Self {
        GuardSettings {
            max_client_conn: config.max_client_conn,
            login_timeout: config.client_login_timeout,
            idle_timeout: config.client_idle_timeout,
        }
    }
}

/// A connection refused because `max_client_conn` connections are open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("sluice: too many client connections (mongo.max_client_conn = {max})")]
pub struct TooManyClients {
    /// The limit in force.
    pub max: usize,
}

/// Live guard settings and the count of open client connections.
#[derive(Debug)]
pub struct Guards {
    /// Read by every session on each wait, so a reload applies to open connections too.
    settings: RwLock<GuardSettings>,
    /// Client connections admitted and not yet closed (refused ones are not counted).
    clients: AtomicUsize,
}

impl Guards {
    /// Guards with `settings` and no clients.
    pub fn new(settings: GuardSettings) -> Self {
        Guards {
            settings: RwLock::new(settings),
            clients: AtomicUsize::new(0),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> GuardSettings {
        *self.settings.read()
    }

    /// Applies reloaded settings; connections already open are never closed by a lower cap.
    pub fn set(&self, settings: GuardSettings) {
        *self.settings.write() = settings;
    }

    /// Client connections open now.
    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }

    /// Admits one more client connection, or refuses it when `max_client_conn` are open.
    /// The slot gives the place back when dropped, however the session ends.
    pub fn admit(self: &Arc<Self>) -> Result<ClientSlot, TooManyClients> {
        let max = self.settings().max_client_conn;
        let open = self.clients.fetch_add(1, Ordering::AcqRel) + 1;
        let slot = ClientSlot {
            guards: self.clone(),
        };
        if open > max {
            drop(slot);
            return Err(TooManyClients { max });
        }
        Ok(slot)
    }
}

/// One admitted client connection; dropping it frees the place.
#[derive(Debug)]
pub struct ClientSlot {
    guards: Arc<Guards>,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.guards.clients.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Which guard closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// `client_login_timeout`: the client had not logged in.
    Login,
    /// `client_idle_timeout`: a logged-in client sent nothing.
    Idle,
}

impl Expiry {
    /// The configuration key, for logs.
    pub fn key(self) -> &'static str {
        match self {
            Expiry::Login => "mongo.client_login_timeout",
            Expiry::Idle => "mongo.client_idle_timeout",
        }
    }
}

/// When a session waiting for its client's next request is to be closed, and why.
///
/// `since` is the last sign of life that counts (connecting, a reply, and once logged in
/// any bytes read); `busy` is whether the client holds an open cursor or a pinned
/// transaction, which the idle timeout respects. `None`: wait for ever.
pub fn deadline(
    settings: &GuardSettings,
    logged_in: bool,
    since: Instant,
    busy: bool,
) -> Option<(Instant, Expiry)> {
    if !logged_in {
        return (!settings.login_timeout.is_zero())
            .then(|| (since + settings.login_timeout, Expiry::Login));
    }
    (!settings.idle_timeout.is_zero() && !busy)
        .then(|| (since + settings.idle_timeout, Expiry::Idle))
}

/// The cursors a client opened or continued and has not exhausted or killed, with when
/// each was last used.
#[derive(Debug, Default)]
pub struct OpenCursors {
    last_used: HashMap<i64, Instant>,
}

impl OpenCursors {
    /// Records one forwarded command: its name, the cursor ids it continued or killed
    /// (`getMore`, `killCursors`) and the `cursor.id` of its reply, if the reply had one.
    pub fn record(
        &mut self,
        name: &str,
        continued: &[i64],
        reply_cursor: Option<i64>,
        now: Instant,
    ) {
        if name == "killCursors" {
            for id in continued {
                self.last_used.remove(id);
            }
            return;
        }
        match reply_cursor {
            Some(0) => {
                for id in continued {
                    self.last_used.remove(id);
                }
            }
            Some(id) => {
                self.last_used.insert(id, now);
            }
            // An error reply (or a lost upstream) proves nothing; a stale entry ages out.
            None => {}
        }
    }

    /// Whether any cursor is still open as of `now`; forgets those unused for
    /// [`CURSOR_IDLE_LIMIT`].
    pub fn any_open(&mut self, now: Instant) -> bool {
        self.last_used
            .retain(|_, used| now.saturating_duration_since(*used) < CURSOR_IDLE_LIMIT);
        !self.last_used.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max: usize, login: u64, idle: u64) -> GuardSettings {
        GuardSettings {
            max_client_conn: max,
            login_timeout: Duration::from_secs(login),
            idle_timeout: Duration::from_secs(idle),
        }
    }

    #[test]
    fn the_cap_counts_open_slots_and_reload_moves_it() {
        let guards = Arc::new(Guards::new(settings(2, 60, 0)));
        let a = guards.admit().expect("first");
        let b = guards.admit().expect("second");
        assert_eq!(guards.admit().err(), Some(TooManyClients { max: 2 }));
        assert_eq!(guards.clients(), 2, "a refusal holds no slot");
        drop(a);
        let c = guards.admit().expect("a place came free");
        guards.set(settings(3, 60, 0));
        let d = guards.admit().expect("raised by reload");
        guards.set(settings(1, 60, 0));
        assert!(guards.admit().is_err(), "lowered below the open count");
        assert_eq!(guards.clients(), 3, "open clients stay");
        drop((b, c, d));
        assert_eq!(guards.clients(), 0);
    }

    #[test]
    fn login_deadline_until_logged_in_then_idle_deadline_when_not_busy() {
        let t0 = Instant::now();
        let s = settings(10, 5, 30);
        assert_eq!(
            deadline(&s, false, t0, false),
            Some((t0 + Duration::from_secs(5), Expiry::Login))
        );
        // Busy does not matter before login: an unauthenticated client has no cursors.
        assert_eq!(
            deadline(&s, false, t0, true),
            Some((t0 + Duration::from_secs(5), Expiry::Login))
        );
        assert_eq!(
            deadline(&s, true, t0, false),
            Some((t0 + Duration::from_secs(30), Expiry::Idle))
        );
        assert_eq!(deadline(&s, true, t0, true), None, "open cursor or txn");
        let off = settings(10, 0, 0);
        assert_eq!(deadline(&off, false, t0, false), None);
        assert_eq!(deadline(&off, true, t0, false), None);
    }

    #[test]
    fn cursors_open_until_exhausted_killed_or_aged_out() {
        let t0 = Instant::now();
        let mut c = OpenCursors::default();
        c.record("find", &[], Some(0), t0);
        assert!(!c.any_open(t0), "a find that returned everything");
        c.record("find", &[], Some(7), t0);
        c.record("aggregate", &[], Some(8), t0);
        assert!(c.any_open(t0));
        c.record("getMore", &[7], None, t0);
        assert!(c.any_open(t0), "an error reply keeps the cursor");
        c.record("getMore", &[7], Some(0), t0);
        c.record("killCursors", &[8], None, t0);
        assert!(!c.any_open(t0));
        c.record("getMore", &[9], Some(9), t0);
        assert!(c.any_open(t0 + CURSOR_IDLE_LIMIT - Duration::from_secs(1)));
        assert!(!c.any_open(t0 + CURSOR_IDLE_LIMIT), "aged out");
    }
}

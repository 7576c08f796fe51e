//! CancelRequest routing. Every client gets a BackendKeyData whose secret Sluice owns; the
//! registry maps it to the upstream backend the client is using right now (if any), so a
//! cancel reaches exactly that server and a cancel for an idle client does nothing.
//!
//! In transaction mode the process id is Sluice's own too. In session mode a client owns one
//! server for its whole life, so its process id is that server's real one (what
//! `pg_backend_pid()` and a NOTIFY's sender pid say), with a secret of Sluice's: a cancel
//! still comes through Sluice and cannot be forged from the pid alone. Keys are (pid,
//! secret) pairs, since real pids of different upstreams may coincide.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Waker;

use parking_lot::Mutex;
use rand::Rng;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::protocol::startup::write_cancel;
use crate::upstream::CancelKey;

/// The per-client slot the session updates on checkout and release.
#[derive(Debug, Default)]
pub struct CancelSlot {
    current: Mutex<Option<CancelKey>>,
    /// The session's task while it waits for its client between requests, so that
    /// [`CancelRegistry::shut_down`] can wake it at shutdown (here rather than a wait on the
    /// shutdown token in every idle client's future, which cost each one 80 bytes).
    waiter: Mutex<Option<Waker>>,
    /// A number no other client of this process had.
    id: u64,
    /// The (process id, secret) pair given to the client: its key in the registry.
    key: (i32, i32),
    /// Who the client is (for `SHOW CLIENTS`).
    pub info: ClientInfo,
}

/// A connected client, as the admin console lists it. Names are shared (interned), not
/// copied per client.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    /// User name it logged in as.
    pub user: Arc<str>,
    /// Database it asked for.
    pub database: Arc<str>,
    /// Its address and application_name.
    pub who: Option<Arc<crate::pool::ClientMeta>>,
    /// When it connected (seconds since the Unix epoch).
    pub connected_at: u64,
    /// Its socket, for the console's KILL (registered only while the session owns it:
    /// the registration ends before the socket closes, so the number is never stale).
    pub fd: Option<std::os::fd::RawFd>,
}

/// One row of [`CancelRegistry::list`].
#[derive(Debug, Clone)]
pub struct ClientRow {
    /// The process id Sluice gave the client.
    pub pid: i32,
    /// Who it is.
    pub info: ClientInfo,
    /// The backend pid of the server it holds right now, if any.
    pub server_pid: Option<i32>,
    /// Its unique id (`SHOW CLIENTS` `id`, what `KILL_CLIENT` takes).
    pub id: u64,
}

impl CancelSlot {
    /// Records the server the client is using now (`None` when it holds none).
    pub fn set(&self, key: Option<CancelKey>) {
        *self.current.lock() = key;
    }

    /// Has [`CancelRegistry::shut_down`] wake `waker` (the session checks the shutdown flag
    /// after calling this, so a shutdown is never missed).
    pub fn watch(&self, waker: &Waker) {
        let mut waiter = self.waiter.lock();
        if !waiter.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *waiter = Some(waker.clone());
        }
    }
}

/// All live client keys, and whether the listener has begun shutting down (what every
/// session checks between requests).
#[derive(Debug, Default)]
pub struct CancelRegistry {
    clients: Mutex<HashMap<(i32, i32), Arc<CancelSlot>>>,
    /// The latest client id given.
    last_id: AtomicU64,
    /// Set once by [`CancelRegistry::shut_down`]: a load on every request, where the
    /// token's own check takes a lock.
    closing: AtomicBool,
    /// Cancelled by [`CancelRegistry::shut_down`], for the waits that select on it (a
    /// client in line for a server, a console session).
    closed: CancellationToken,
}

/// Removes a client's key from the registry when the client goes away.
#[derive(Debug)]
pub struct Registration {
    registry: Arc<CancelRegistry>,
    /// Where the session records its current server (and the key it was given).
    pub slot: Arc<CancelSlot>,
}

impl Registration {
    /// The process id given to the client.
    pub fn pid(&self) -> i32 {
        self.slot.key.0
    }

    /// The secret given to the client.
    pub fn secret(&self) -> i32 {
        self.slot.key.1
    }

    /// Whether the listener has begun shutting down (see [`CancelRegistry::shut_down`]).
    pub fn shutting_down(&self) -> bool {
        self.registry.shutting_down()
    }

    /// The registry this client is in.
    pub fn registry(&self) -> &CancelRegistry {
        &self.registry
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.clients.lock().remove(&self.slot.key);
    }
}

impl CancelRegistry {
    /// Allocates a fresh, unused (pid, secret) pair for a new client: with the given process
    /// id (a session-mode client's server's real one), else a random one.
    pub fn register(self: &Arc<Self>, info: ClientInfo, pid: Option<i32>) -> Registration {
        let mut rng = rand::thread_rng();
        let id = 1 + self.last_id.fetch_add(1, Ordering::Relaxed);
        let mut clients = self.clients.lock();
        let key = loop {
            let key = (pid.unwrap_or_else(|| rng.gen_range(1..i32::MAX)), rng.gen());
            if !clients.contains_key(&key) {
                break key;
            }
        };
        let slot = Arc::new(CancelSlot {
            current: Mutex::new(None),
            waiter: Mutex::new(None),
            id,
            key,
            info,
        });
        clients.insert(key, slot.clone());
        Registration {
            registry: self.clone(),
            slot,
        }
    }

    /// Starts the sessions' shutdown: each one ends at its next point between requests.
    /// Sets the flag before waking every session that waits for its client (see
    /// [`CancelSlot::watch`]), so each idle one wakes, sees it and ends promptly.
    pub fn shut_down(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.closed.cancel();
        let clients = self.clients.lock();
        for slot in clients.values() {
            if let Some(waker) = slot.waiter.lock().take() {
                waker.wake();
            }
        }
    }

    /// Whether [`CancelRegistry::shut_down`] was called.
    pub fn shutting_down(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Cancelled when [`CancelRegistry::shut_down`] is called.
    pub fn closed(&self) -> &CancellationToken {
        &self.closed
    }

    /// Every registered client, for `SHOW CLIENTS`.
    pub fn list(&self) -> Vec<ClientRow> {
        let clients = self.clients.lock();
        clients
            .iter()
            .map(|((pid, _), slot)| ClientRow {
                pid: *pid,
                info: slot.info.clone(),
                server_pid: slot.current.lock().as_ref().map(|k| k.pid),
                id: slot.id,
            })
            .collect()
    }

    /// Disconnects every client `which` picks by shutting its socket down: its session
    /// sees the end of its input and finishes as when a client leaves (a request in
    /// flight is cancelled, an open transaction rolled back). Returns how many.
    pub fn kill(&self, which: impl Fn(&ClientInfo, u64) -> bool) -> usize {
        let clients = self.clients.lock();
        let mut killed = 0;
        for slot in clients.values().filter(|s| which(&s.info, s.id)) {
            let Some(fd) = slot.info.fd else { continue };
            // Under the lock: the session's registration (and so its socket) outlives this.
            match nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Both) {
                Ok(()) => killed += 1,
                Err(e) => tracing::debug!(id = slot.id, error = %e, "KILL: shutdown failed"),
            }
        }
        killed
    }

    /// Handles a client's CancelRequest: if the key matches a client that is using a server
    /// right now, sends a CancelRequest for that server's backend. Errors are logged only;
    /// the protocol gives the canceller no answer.
    pub async fn cancel(&self, pid: i32, secret: i32) {
        let target = {
            let clients = self.clients.lock();
            match clients.get(&(pid, secret)) {
                Some(slot) => slot.current.lock().clone(),
                None => {
                    tracing::debug!(pid, "cancel request with unknown key ignored");
                    return;
                }
            }
        };
        let Some(key) = target else {
            tracing::debug!(pid, "cancel request for an idle client ignored");
            return;
        };
        send_cancel(&key).await;
    }
}

/// Longest a cancel request towards a server may take (connect and send).
pub const CANCEL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Sends a CancelRequest for the backend behind `key` over a new connection to its server,
/// at most [`CANCEL_TIMEOUT`]. Failures are logged; the protocol has no answer to a cancel.
pub async fn send_cancel(key: &CancelKey) {
    let result = async {
        let mut s = TcpStream::connect((&*key.host, key.port)).await?;
        s.write_all(&write_cancel(key.pid, key.secret)).await?;
        s.shutdown().await
    };
    let bounded = tokio::time::timeout(CANCEL_TIMEOUT, result);
    match bounded
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
    {
        Ok(()) => tracing::info!(server_pid = key.pid, "sent cancel request to server"),
        Err(e) => tracing::warn!(server_pid = key.pid, error = %e, "could not send cancel request"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(pid: i32) -> CancelKey {
        CancelKey {
            host: "127.0.0.1".into(),
            port: 1,
            pid,
            secret: 7,
        }
    }

    #[test]
    fn keys_are_pid_and_secret_pairs() {
        let registry = Arc::new(CancelRegistry::default());
        let a = registry.register(ClientInfo::default(), Some(42));
        let b = registry.register(ClientInfo::default(), Some(42));
        assert_eq!(
            (a.pid(), b.pid()),
            (42, 42),
            "a session client's real server pid"
        );
        assert_ne!(a.secret(), b.secret());
        a.slot.set(Some(key(42)));
        let c = registry.register(ClientInfo::default(), None);
        assert!(c.pid() > 0);
        let rows = registry.list();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows.iter().filter(|r| r.server_pid == Some(42)).count(), 1);
        drop(a);
        assert_eq!(registry.list().len(), 2, "only the dropped pair is gone");
    }

    /// A waker that counts its wakes.
    struct Count(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Shutdown reaches every session through the registry: the flag is set, the token
    /// cancelled and each session waiting for its client woken (once).
    #[test]
    fn shut_down_sets_the_flag_and_wakes_the_waiting_sessions() {
        let registry = Arc::new(CancelRegistry::default());
        let idle = registry.register(ClientInfo::default(), None);
        let busy = registry.register(ClientInfo::default(), None);
        let count = Arc::new(Count(std::sync::atomic::AtomicUsize::new(0)));
        idle.slot.watch(&Waker::from(count.clone()));
        assert!(!idle.shutting_down() && !registry.closed().is_cancelled());
        registry.shut_down();
        assert!(idle.shutting_down() && busy.shutting_down());
        assert!(registry.closed().is_cancelled());
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            1,
            "the waiting session woke"
        );
        registry.shut_down();
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "its waker was taken");
    }
}

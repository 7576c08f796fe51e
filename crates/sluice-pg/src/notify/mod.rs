//! LISTEN/NOTIFY in transaction mode. A client's `LISTEN` is answered by Sluice (see the
//! exchange) and kept in its state; this module turns those states into one upstream
//! connection per pool that LISTENs on the union of the channels, and fans each
//! `NotificationResponse` out to the clients listening on its channel.
//!
//! * [`Registry`] is the sans-IO core: who listens on what, what the upstream connection
//!   has been told, which LISTENs still wait for the server's answer, and the fan-out with
//!   its per-client cap.
//! * [`NotifyHub`] wraps it for the pool and starts the connection task ([`task`]) on the
//!   first subscription; the task ends when nobody listens any more.
//! * [`Subscription`] is a client's handle: the channels it listens on and the queue its
//!   relay drains between responses. Dropping it removes the client everywhere.
//!
//! A client's LISTEN is answered only once the upstream LISTEN for that channel has
//! completed (the relay waits for [`Subscription::sync`]), so a NOTIFY committed after
//! the client saw `LISTEN` reaches it, as on a direct connection.

mod task;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use crate::upstream::{PgUpstreamError, ServerConn};

/// Where a hub's connection comes from: the pool it serves (implemented by
/// [`crate::pool::PgPool`]; a trait so this module does not depend on the pool).
pub trait HubUpstream: Send + Sync + 'static {
    /// Opens and authenticates a connection with the pool's credentials and settings.
    fn connect(
        &self,
    ) -> impl std::future::Future<Output = Result<ServerConn, PgUpstreamError>> + Send;
    /// The pool's name, for logs.
    fn name(&self) -> String;
    /// Counts a reconnect after the connection broke.
    fn reconnected(&self);
}

/// Notifications that may wait for one client (about 8 MiB at PostgreSQL's largest
/// payload). A client that falls further behind is disconnected with
/// [`crate::session::PgSessionError::NotificationsOverflow`].
pub const CLIENT_QUEUE: usize = 1024;

/// How long a client's LISTEN waits for the upstream LISTEN before it is answered anyway
/// (the hub keeps trying; the gap is logged).
pub const LISTEN_ACK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The upstream connection's state for one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upstream {
    /// Not asked yet (or the connection was replaced).
    None,
    /// `LISTEN` sent, answer pending.
    Sent,
    /// The server answered the `LISTEN`.
    Listening,
}

#[derive(Debug)]
struct Channel {
    listeners: HashSet<u64>,
    upstream: Upstream,
    /// Clients whose LISTEN waits for the upstream one.
    waiters: Vec<oneshot::Sender<()>>,
}

#[derive(Debug)]
struct Subscriber {
    tx: mpsc::Sender<Bytes>,
    channels: HashSet<Vec<u8>>,
    overflowed: Arc<AtomicBool>,
}

/// A command for the upstream connection, in the order it must be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    /// `LISTEN "channel"`.
    Listen(Vec<u8>),
    /// `UNLISTEN "channel"`.
    Unlisten(Vec<u8>),
}

impl Command {
    /// The simple query for this command, with the channel quoted as an identifier.
    pub(crate) fn sql(&self) -> Vec<u8> {
        let (verb, channel): (&[u8], _) = match self {
            Command::Listen(c) => (b"LISTEN \"", c),
            Command::Unlisten(c) => (b"UNLISTEN \"", c),
        };
        let mut sql = verb.to_vec();
        for &b in channel {
            if b == b'"' {
                sql.push(b'"');
            }
            sql.push(b);
        }
        sql.push(b'"');
        sql
    }
}

/// Who listens on what; see the module docs. No I/O.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    next_id: u64,
    subscribers: HashMap<u64, Subscriber>,
    channels: HashMap<Vec<u8>, Channel>,
    /// Channels the upstream still LISTENs on (or was asked to) that nobody wants now.
    stale: HashMap<Vec<u8>, Upstream>,
    /// The connection task runs.
    running: bool,
    /// Notifications delivered and clients dropped for falling behind.
    delivered: u64,
    overflows: u64,
}

impl Registry {
    fn subscribe(&mut self) -> (u64, mpsc::Receiver<Bytes>, Arc<AtomicBool>) {
        self.next_id += 1;
        let (tx, rx) = mpsc::channel(CLIENT_QUEUE);
        let overflowed = Arc::new(AtomicBool::new(false));
        let sub = Subscriber {
            tx,
            channels: HashSet::new(),
            overflowed: overflowed.clone(),
        };
        self.subscribers.insert(self.next_id, sub);
        (self.next_id, rx, overflowed)
    }

    /// Adds `id` to `channel`; a receiver when the upstream LISTEN is still to complete.
    fn listen(&mut self, id: u64, channel: &[u8]) -> Option<oneshot::Receiver<()>> {
        let sub = self.subscribers.get_mut(&id)?;
        sub.channels.insert(channel.to_vec());
        let stale = &mut self.stale;
        let entry = self
            .channels
            .entry(channel.to_vec())
            .or_insert_with(|| Channel {
                listeners: HashSet::new(),
                upstream: stale.remove(channel).unwrap_or(Upstream::None),
                waiters: Vec::new(),
            });
        entry.listeners.insert(id);
        if entry.upstream == Upstream::Listening {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        entry.waiters.push(tx);
        Some(rx)
    }

    fn unlisten(&mut self, id: u64, channel: &[u8]) {
        if let Some(sub) = self.subscribers.get_mut(&id) {
            sub.channels.remove(channel);
        }
        self.leave(id, channel);
    }

    fn leave(&mut self, id: u64, channel: &[u8]) {
        let Some(entry) = self.channels.get_mut(channel) else {
            return;
        };
        entry.listeners.remove(&id);
        if entry.listeners.is_empty() {
            if let Some(entry) = self.channels.remove(channel) {
                if entry.upstream != Upstream::None {
                    self.stale.insert(channel.to_vec(), entry.upstream);
                }
            }
        }
    }

    fn remove(&mut self, id: u64) {
        if let Some(sub) = self.subscribers.remove(&id) {
            for channel in sub.channels {
                self.leave(id, &channel);
            }
        }
    }

    /// What the upstream connection must be told now: LISTEN for wanted channels it was
    /// not asked about, UNLISTEN for channels nobody wants.
    pub(crate) fn plan(&mut self) -> Vec<Command> {
        let mut commands = Vec::new();
        for (channel, _) in self.stale.drain() {
            commands.push(Command::Unlisten(channel));
        }
        for (channel, entry) in &mut self.channels {
            if entry.upstream == Upstream::None {
                entry.upstream = Upstream::Sent;
                commands.push(Command::Listen(channel.clone()));
            }
        }
        commands
    }

    /// The server answered `command` (`ok`: without an error). A LISTEN's waiters are
    /// released either way: a failed LISTEN is logged by the task, not retried.
    pub(crate) fn answered(&mut self, command: &Command) {
        let Command::Listen(channel) = command else {
            return;
        };
        if let Some(entry) = self.channels.get_mut(channel) {
            if entry.upstream == Upstream::Sent {
                entry.upstream = Upstream::Listening;
                entry.waiters.clear();
            }
        } else if let Some(state) = self.stale.get_mut(channel) {
            *state = Upstream::Listening;
        }
    }

    /// The upstream connection is gone: everything must be asked again on the next one.
    pub(crate) fn disconnected(&mut self) {
        self.stale.clear();
        for entry in self.channels.values_mut() {
            entry.upstream = Upstream::None;
        }
    }

    /// Hands a NotificationResponse (`frame`, whole) on `channel` to every listener. A
    /// listener whose queue is full is dropped and told so; one that is gone is dropped.
    pub(crate) fn fan_out(&mut self, channel: &[u8], frame: &Bytes) {
        let Some(entry) = self.channels.get(channel) else {
            return;
        };
        let mut dropped = Vec::new();
        for id in &entry.listeners {
            let Some(sub) = self.subscribers.get(id) else {
                continue;
            };
            match sub.tx.try_send(frame.clone()) {
                Ok(()) => self.delivered += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    sub.overflowed.store(true, Ordering::Relaxed);
                    self.overflows += 1;
                    dropped.push(*id);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => dropped.push(*id),
            }
        }
        for id in dropped {
            self.remove(id);
        }
    }

    /// Nobody listens and nothing is left to UNLISTEN: the connection may close.
    pub(crate) fn unused(&self) -> bool {
        self.subscribers.is_empty() && self.channels.is_empty()
    }

    /// Channels listened on (distinct), for statistics.
    pub(crate) fn channel_count(&self) -> usize {
        self.channels.len()
    }
}

/// One pool's notification hub; see the module docs.
#[derive(Debug, Default)]
pub struct NotifyHub {
    registry: Arc<Mutex<Registry>>,
    /// Wakes the connection task when there is something to send.
    changed: Arc<tokio::sync::Notify>,
}

/// Figures for the statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HubFigures {
    /// Distinct channels listened on.
    pub channels: usize,
    /// Clients subscribed.
    pub listeners: usize,
    /// Notifications handed to clients' queues.
    pub delivered: u64,
    /// Clients disconnected because their queue was full.
    pub overflows: u64,
}

impl NotifyHub {
    /// A client's subscription (with no channels yet); starts the connection task when it
    /// is not running.
    pub fn subscribe(&self, upstream: impl HubUpstream) -> Subscription {
        let mut reg = self.registry.lock();
        let (id, rx, overflowed) = reg.subscribe();
        if !reg.running {
            reg.running = true;
            let (registry, changed) = (self.registry.clone(), self.changed.clone());
            tokio::spawn(task::run(registry, changed, upstream));
        }
        Subscription {
            registry: self.registry.clone(),
            changed: self.changed.clone(),
            id,
            rx,
            overflowed,
            channels: BTreeSet::new(),
        }
    }

    /// The figures for the statistics, with the pool's count of listener reconnects.
    pub fn snapshot(&self, reconnects: u64) -> sluice_stats::NotifySnapshot {
        let hub = self.figures();
        sluice_stats::NotifySnapshot {
            channels: hub.channels as u64,
            listeners: hub.listeners as u64,
            notifications_total: hub.delivered,
            overflows_total: hub.overflows,
            reconnects_total: reconnects,
        }
    }

    /// Current figures.
    pub fn figures(&self) -> HubFigures {
        let reg = self.registry.lock();
        HubFigures {
            channels: reg.channel_count(),
            listeners: reg.subscribers.len(),
            delivered: reg.delivered,
            overflows: reg.overflows,
        }
    }
}

/// A client's place in the hub; see the module docs.
#[derive(Debug)]
pub struct Subscription {
    registry: Arc<Mutex<Registry>>,
    changed: Arc<tokio::sync::Notify>,
    id: u64,
    rx: mpsc::Receiver<Bytes>,
    overflowed: Arc<AtomicBool>,
    channels: BTreeSet<Vec<u8>>,
}

impl Subscription {
    /// Makes the hub's view of this client equal `wanted`; returns what to wait for before
    /// the client may see its LISTEN answered (upstream LISTENs still in flight).
    pub fn sync(&mut self, wanted: &BTreeSet<Vec<u8>>) -> Vec<oneshot::Receiver<()>> {
        if *wanted == self.channels {
            return Vec::new();
        }
        let mut waits = Vec::new();
        {
            let mut reg = self.registry.lock();
            for gone in self.channels.difference(wanted) {
                reg.unlisten(self.id, gone);
            }
            for new in wanted.difference(&self.channels) {
                waits.extend(reg.listen(self.id, new));
            }
        }
        self.channels = wanted.clone();
        self.changed.notify_one();
        waits
    }

    /// The next notification (a whole NotificationResponse frame), if one is queued.
    /// `Ready(None)`: the hub dropped this client (see [`Subscription::overflowed`]).
    pub fn poll_next(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Bytes>> {
        self.rx.poll_recv(cx)
    }

    /// The client fell [`CLIENT_QUEUE`] notifications behind and was dropped.
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Relaxed)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.registry.lock().remove(self.id);
        self.changed.notify_one();
    }
}

#[cfg(test)]
mod tests;

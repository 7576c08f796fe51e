//! The sans-IO heart of the relay: it reads client frames bound for a server and server
//! frames bound for the client, rewrites what transaction pooling requires, and keeps a
//! queue of the responses still owed so it knows, frame by frame, which response answers
//! which request. No sockets: the relay feeds bytes in and writes the output buffers.
//!
//! What it does with that knowledge:
//! * **Prepared statements** (transaction mode): client statement names are mapped to
//!   shared server-side names; a statement the current server lacks is prepared there first
//!   (the client's Parse replayed) and the injected ParseComplete is swallowed; a Parse for
//!   a statement the server already has is answered with a synthetic ParseComplete; Close of
//!   a statement only forgets the client's name. Errors undo what the failed or skipped
//!   messages would have done, exactly as the server discards messages until Sync.
//! * **Settings**: before a batch starts on a server whose settings differ from the
//!   client's, one `set_config` query is injected and its responses swallowed; a client's
//!   `SET name ...` is followed by an injected `current_setting(name)` whose answer becomes
//!   the client's value (kept only if the transaction commits). Settings changed any other
//!   way (`set_config()`, a `SET` in a multi-statement string, `SET SESSION
//!   CHARACTERISTICS`, anything the server reports with an unexplained ParameterStatus or
//!   CommandComplete `SET`) are read back from `pg_settings` once the transaction is over,
//!   before the server is released, and follow the client from then on.
//! * **Release**: [`Exchange::idle`] says when every request has been answered outside an
//!   extended-protocol batch; [`Exchange::needs_reset`] says the server picked up state
//!   Sluice cannot carry (temp tables, cursors, SQL PREPARE, untracked SETs, ...).
//!
//! The files: this one holds the state, the owed-response queue and the synthetic answers;
//! [`client`] has one method per client message (`on_parse`, `on_bind`, ...); [`server`]
//! matches server frames to what is owed and applies effects; [`sql`] classifies query
//! text (SET/RESET/DEALLOCATE/...) and scans it for hidden effects.

mod client;
mod listen;
pub(crate) mod server;
pub(crate) mod sql;

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::BytesMut;

use crate::protocol::backend::{self, Severity};
use crate::protocol::messages;
use crate::state::prepared::{Statement, StatementRegistry};
use crate::state::{ClientState, ServerState};

/// CommandComplete tags after which a server keeps state Sluice cannot carry to another
/// connection; the server is reset with `server_reset_query` at release.
const STATEFUL_TAGS: &[&[u8]] = &[
    b"PREPARE",
    b"DECLARE CURSOR",
    b"LISTEN",
    b"CREATE TABLE",
    b"CREATE SEQUENCE",
    b"CREATE VIEW",
    b"LOAD",
];

/// How the relay is configured for this client.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Features {
    /// Map named statements to shared server-side names (transaction mode).
    pub map_statements: bool,
    /// Track SET/RESET so settings follow the client (transaction mode).
    pub track_settings: bool,
    /// Per-server prepared statement cache size.
    pub cache_size: u32,
    /// Answer LISTEN/UNLISTEN in place and keep the channels in the client's state, for
    /// the pool's notification hub (transaction mode: a server's own LISTEN would
    /// deliver to whichever client holds it next).
    pub listen_in_place: bool,
}

/// Both sides as one step of the exchange sees them: their state, the pool's statement
/// registry, and the bytes queued for each peer. Not I/O: the relay writes the buffers.
pub(crate) struct Sides<'a> {
    /// The client's session view.
    pub client: &'a mut ClientState,
    /// The current server's state.
    pub server: &'a mut ServerState,
    /// Shared statements of the pool.
    pub registry: &'a StatementRegistry,
    /// Bytes to send to the server.
    pub to_server: &'a mut BytesMut,
    /// Bytes to send to the client.
    pub to_client: &'a mut BytesMut,
}

/// A change to session settings, applied when its query completes (or the transaction
/// it ran in commits).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Effect {
    /// Captured `current_setting(name)` (None: unset custom option).
    Value(String, Option<Vec<u8>>),
    /// The session's settings as read back from `pg_settings` (name, value), filled in
    /// row by row as the answer arrives.
    ReadBack(Vec<(String, Vec<u8>)>),
    Reset(String),
    ResetAll,
    DiscardAll,
    DeallocateAll,
    /// Savepoint bookkeeping, so settings changed after a savepoint that is rolled back
    /// to are forgotten.
    Savepoint(Vec<u8>),
    RollbackTo(Vec<u8>),
    Release(Vec<u8>),
    /// LISTEN on a channel through the hub.
    Listen(Vec<u8>),
    /// UNLISTEN a channel (`None`: all).
    Unlisten(Option<Vec<u8>>),
}

/// Something emitted to the client without a server message behind it.
#[derive(Debug)]
enum Synthetic {
    /// For a Parse of a statement the server already has (the client name is forgotten
    /// again if the server turns out to skip this point after an error).
    ParseComplete(Vec<u8>),
    /// For a Close of a client statement (restored if skipped).
    CloseComplete(Option<(Vec<u8>, Arc<Statement>)>),
    /// CommandComplete + ReadyForQuery for a query Sluice answered itself.
    Command(&'static str),
    /// A LISTEN/UNLISTEN answered in place: in force now outside a transaction block,
    /// at commit inside one; refused as PostgreSQL does in a failed block.
    /// ReadyForQuery follows for a simple query.
    Listen { effect: Effect, ready: bool },
    /// Fixed frames answering an extended-protocol message about a LISTEN statement or
    /// portal (ParseComplete, BindComplete, ParameterDescription + NoData, ...).
    Frames(&'static [u8]),
    /// ErrorResponse for a frame Sluice refused; ReadyForQuery follows for a simple query.
    Error {
        code: &'static str,
        message: String,
        ready: bool,
    },
}

/// A response still owed, in request order.
#[derive(Debug)]
enum Expect {
    Parse {
        forward: bool,
        server_name: Option<Arc<str>>,
        client_name: Option<Vec<u8>>,
    },
    /// The shared statement bound or described, if mapped (invalidated on 0A000).
    Bind(Option<Arc<Statement>>),
    Describe(Option<Arc<Statement>>),
    Execute,
    Close {
        /// A statement Sluice evicted from the server (swallowed; restored if skipped).
        evicted: Option<Arc<Statement>>,
    },
    Sync,
    FunctionCall,
    Query {
        swallow: bool,
        effect: Option<Effect>,
        /// The client's SET/RESET explains a CommandComplete "SET" and ParameterStatus.
        explains_set: bool,
        failed: bool,
    },
    Synthetic(Synthetic),
}

/// Extended-protocol statements and portals (by client name) that are a LISTEN/UNLISTEN.
#[derive(Debug, Default)]
struct ListenNames {
    statements: std::collections::HashMap<Vec<u8>, Effect>,
    portals: std::collections::HashMap<Vec<u8>, Effect>,
}

/// Per-client relay state; see the module docs.
#[derive(Debug)]
pub(crate) struct Exchange {
    features: Features,
    queue: VecDeque<Expect>,
    /// Extended-protocol messages were sent since the last Sync.
    extended: bool,
    /// Transaction status from the latest ReadyForQuery.
    status: u8,
    /// The server is discarding messages until Sync (after an extended-protocol error).
    skipping: bool,
    /// The client's own batch is being dropped until Sync (Sluice refused a frame).
    client_skipping: bool,
    /// Syncs sent since the last Execute/Query (ignored by a server in COPY FROM STDIN).
    syncs_since_command: u32,
    /// The server holds state that needs `server_reset_query` before reuse.
    needs_reset: bool,
    /// Settings changed in a way Sluice could not follow message by message: read them
    /// back before the server is released.
    settings_dirty: bool,
    /// The last frame forwarded to the client was an ErrorResponse.
    last_was_error: bool,
    /// Whether the last transaction-ending command committed.
    last_commit: bool,
    /// What a transaction block's settings did so far (boxed, and only while there is
    /// some: most clients never have any, and every idle client carries this field).
    tracked: Option<Box<Tracked>>,
    /// Client statements and portals that are a LISTEN/UNLISTEN answered in place
    /// (extended protocol, transaction mode); boxed, allocated on the first one.
    listen_names: Option<Box<ListenNames>>,
    /// Queries (Query, Execute) and transactions (ReadyForQuery `I`) since the last
    /// [`Exchange::take_counts`], for the pool's statistics.
    counts: (u32, u32),
}

/// Setting changes Sluice follows through a transaction block.
#[derive(Debug, Default)]
struct Tracked {
    /// Setting changes made inside the open transaction block.
    tentative: Vec<Effect>,
    /// Open savepoints: name and how many tentative effects preceded it.
    savepoints: Vec<(Vec<u8>, usize)>,
    /// Value captured from the DataRow of an injected `current_setting` query.
    captured: Option<Option<Vec<u8>>>,
}

impl Exchange {
    pub(crate) fn new(features: Features) -> Self {
        Self {
            features,
            queue: VecDeque::new(),
            extended: false,
            status: b'I',
            skipping: false,
            client_skipping: false,
            syncs_since_command: 0,
            needs_reset: false,
            settings_dirty: false,
            last_was_error: false,
            last_commit: false,
            tracked: None,
            listen_names: None,
            counts: (0, 0),
        }
    }

    /// Every request has been answered, no batch is open and no transaction is open: the
    /// server may go back to the pool.
    pub(crate) fn idle(&self) -> bool {
        self.queue.is_empty() && !self.extended && self.status == b'I' && !self.settings_dirty
    }

    /// Requests are in flight (the server is busy on the client's behalf).
    pub(crate) fn busy(&self) -> bool {
        !self.queue.is_empty() || self.extended
    }

    /// Transaction status from the latest ReadyForQuery.
    pub(crate) fn status(&self) -> u8 {
        self.status
    }

    /// The server picked up state that only `server_reset_query` removes.
    pub(crate) fn needs_reset(&self) -> bool {
        self.needs_reset
    }

    /// Settings changed in a way not yet read back (the client left before they were).
    pub(crate) fn settings_dirty(&self) -> bool {
        self.settings_dirty
    }

    /// The last frame sent to the client was an ErrorResponse.
    pub(crate) fn last_was_error(&self) -> bool {
        self.last_was_error
    }

    /// Returns and zeroes (queries, transactions) counted since the last call.
    pub(crate) fn take_counts(&mut self) -> (u32, u32) {
        std::mem::take(&mut self.counts)
    }

    /// Prepares for a freshly checked-out server (at ReadyForQuery `I`).
    pub(crate) fn on_checkout(&mut self) {
        self.status = b'I';
        self.needs_reset = false;
        self.settings_dirty = false;
        self.skipping = false;
        self.tracked = None;
    }

    /// The block's tracked changes, made on first use.
    fn tracked(&mut self) -> &mut Tracked {
        self.tracked.get_or_insert_with(Box::default)
    }

    /// Marks that the server must be reset (e.g. the client left mid transaction).
    pub(crate) fn force_reset(&mut self) {
        self.needs_reset = true;
    }

    /// Answers a client frame with an error of Sluice's own and drops the rest of the
    /// client's batch, as a server does.
    fn refuse(&mut self, code: &'static str, message: String, _io: &mut Sides<'_>) {
        self.push(Expect::Synthetic(Synthetic::Error {
            code,
            message,
            ready: false,
        }));
        self.client_skipping = true;
    }

    fn push(&mut self, e: Expect) {
        self.queue.push_back(e);
    }

    /// Emits synthetic responses that are due (nothing owed before them).
    fn emit_ready_synthetics(&mut self, io: &mut Sides<'_>) {
        while let Some(Expect::Synthetic(_)) = self.queue.front() {
            let Some(Expect::Synthetic(s)) = self.queue.pop_front() else {
                break;
            };
            self.emit(s, io);
        }
    }

    fn emit(&mut self, s: Synthetic, io: &mut Sides<'_>) {
        let out = &mut *io.to_client;
        self.last_was_error = false;
        match s {
            Synthetic::ParseComplete(_) => messages::write_empty(out, b'1'),
            Synthetic::CloseComplete(_) => messages::write_empty(out, b'3'),
            Synthetic::Command(tag) => {
                messages::write_command_complete(out, tag);
                backend::ready_for_query(out, self.status);
            }
            Synthetic::Frames(frames) => out.extend_from_slice(frames),
            Synthetic::Listen { ready, .. } if self.status == b'E' => {
                backend::error_response(
                    out,
                    Severity::Error,
                    "25P02",
                    "current transaction is aborted, commands ignored until end of transaction block",
                );
                if ready {
                    backend::ready_for_query(out, self.status);
                } else {
                    self.last_was_error = true;
                }
            }
            Synthetic::Listen { effect, ready } => {
                let tag = match effect {
                    Effect::Listen(_) => "LISTEN",
                    _ => "UNLISTEN",
                };
                messages::write_command_complete(out, tag);
                if ready {
                    backend::ready_for_query(out, self.status);
                }
                if self.status == b'I' {
                    server::apply(effect, io);
                } else {
                    self.tracked().tentative.push(effect);
                }
            }
            Synthetic::Error {
                code,
                message,
                ready,
            } => {
                backend::error_response(out, Severity::Error, code, &message);
                if ready {
                    backend::ready_for_query(out, self.status);
                } else {
                    self.last_was_error = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;

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

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};

use super::sql::{classify, hidden_effects, Statement as Sql};
use crate::protocol::backend::{self, Severity};
use crate::protocol::frame::{Frames, ProtocolError, MAX_FRAME_LEN};
use crate::protocol::messages::{self, Bind, Parse, Target};
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
    pub cache_size: usize,
    /// Refuse LISTEN (transaction mode: notifications could go to anyone).
    pub refuse_listen: bool,
}

/// Everything one step reads or writes besides the exchange itself.
pub(crate) struct Io<'a> {
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
    syncs_since_command: usize,
    /// The server holds state that needs `server_reset_query` before reuse.
    needs_reset: bool,
    /// Settings changed in a way Sluice could not follow message by message: read them
    /// back before the server is released.
    settings_dirty: bool,
    /// The last frame forwarded to the client was an ErrorResponse.
    last_was_error: bool,
    /// Whether the last transaction-ending command committed.
    last_commit: bool,
    /// Setting changes made inside the open transaction block.
    tentative: Vec<Effect>,
    /// Open savepoints: name and how many tentative effects preceded it.
    savepoints: Vec<(Vec<u8>, usize)>,
    /// Value captured from the DataRow of an injected `current_setting` query.
    captured: Option<Option<Vec<u8>>>,
    /// Queries (Query, Execute) and transactions (ReadyForQuery `I`) since the last
    /// [`Exchange::take_counts`], for the pool's statistics.
    counts: (u64, u64),
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
            tentative: Vec::new(),
            savepoints: Vec::new(),
            captured: None,
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
    pub(crate) fn take_counts(&mut self) -> (u64, u64) {
        std::mem::take(&mut self.counts)
    }

    /// Prepares for a freshly checked-out server (at ReadyForQuery `I`).
    pub(crate) fn on_checkout(&mut self) {
        self.status = b'I';
        self.needs_reset = false;
        self.settings_dirty = false;
        self.skipping = false;
        self.tentative.clear();
        self.savepoints.clear();
    }

    /// Marks that the server must be reset (e.g. the client left mid transaction).
    pub(crate) fn force_reset(&mut self) {
        self.needs_reset = true;
    }

    /// Handles a run of complete client frames (no Terminate among them).
    pub(crate) fn on_client(
        &mut self,
        frames: &[u8],
        io: &mut Io<'_>,
    ) -> Result<(), ProtocolError> {
        let mut it = Frames::new(frames, MAX_FRAME_LEN);
        let mut pos = 0;
        while let Some(frame) = it.next() {
            let raw = &frames[pos..it.consumed()];
            pos = it.consumed();
            tracing::trace!(tag = %char::from(frame.tag), queue = ?self.queue, skipping = self.skipping, "client frame");
            if self.client_skipping && frame.tag != b'S' {
                continue;
            }
            if self.skipping {
                // The server discards everything until Sync: send as is, expect nothing.
                io.to_server.put_slice(raw);
                if frame.tag == b'S' {
                    self.skipping = false;
                    self.extended = false;
                    self.client_skipping = false;
                    self.queue.push_back(Expect::Sync);
                }
                continue;
            }
            self.client_frame(frame.tag, frame.body, raw, io)?;
        }
        if let Some(e) = it.error() {
            return Err(e.clone());
        }
        self.emit_ready_synthetics(io);
        Ok(())
    }

    fn client_frame(
        &mut self,
        tag: u8,
        body: &[u8],
        raw: &[u8],
        io: &mut Io<'_>,
    ) -> Result<(), ProtocolError> {
        let map = self.features.map_statements;
        match tag {
            b'Q' => {
                self.counts.0 += 1;
                return self.client_query(body, raw, io);
            }
            b'P' => {
                self.begin_batch(io);
                let p = Parse::decode(body)?;
                self.note_hidden_effects(p.query());
                if map && !p.name.is_empty() {
                    if io.client.statements.contains_key(p.name) {
                        self.refuse(
                            "42P05",
                            format!(
                                "prepared statement \"{}\" already exists",
                                String::from_utf8_lossy(p.name)
                            ),
                            io,
                        );
                        return Ok(());
                    }
                    let stmt = io.registry.intern(p.rest);
                    io.client.statements.insert(p.name.to_vec(), stmt.clone());
                    if io.server.statements.touch(&stmt.server_name) {
                        self.push(Expect::Synthetic(Synthetic::ParseComplete(p.name.to_vec())));
                    } else {
                        self.prepare_on_server(&stmt, Some(p.name.to_vec()), io);
                    }
                } else {
                    if !p.name.is_empty() {
                        self.needs_reset = true;
                    }
                    io.to_server.put_slice(raw);
                    self.push(Expect::Parse {
                        forward: true,
                        server_name: None,
                        client_name: None,
                    });
                }
            }
            b'B' => {
                self.begin_batch(io);
                let b = Bind::decode(body)?;
                let stmt = self.mapped(b.statement, io);
                match &stmt {
                    Some(stmt) => {
                        self.ensure_prepared(stmt, io);
                        b.write_renamed(io.to_server, stmt.server_name.as_bytes());
                    }
                    None => io.to_server.put_slice(raw),
                }
                self.push(Expect::Bind(stmt));
            }
            b'D' => {
                self.begin_batch(io);
                let t = Target::decode(body)?;
                let stmt = self.mapped(t.name, io).filter(|_| t.kind == b'S');
                match &stmt {
                    Some(stmt) => {
                        self.ensure_prepared(stmt, io);
                        messages::write_target(
                            io.to_server,
                            b'D',
                            b'S',
                            stmt.server_name.as_bytes(),
                        );
                    }
                    None => io.to_server.put_slice(raw),
                }
                self.push(Expect::Describe(stmt));
            }
            b'C' => {
                self.begin_batch(io);
                let t = Target::decode(body)?;
                if map && t.kind == b'S' && !t.name.is_empty() {
                    let removed = io.client.statements.remove_entry(t.name);
                    self.push(Expect::Synthetic(Synthetic::CloseComplete(removed)));
                } else {
                    io.to_server.put_slice(raw);
                    self.push(Expect::Close { evicted: None });
                }
            }
            b'E' => {
                self.counts.0 += 1;
                self.begin_batch(io);
                io.to_server.put_slice(raw);
                self.syncs_since_command = 0;
                self.push(Expect::Execute);
            }
            b'S' => {
                io.to_server.put_slice(raw);
                self.extended = false;
                self.client_skipping = false;
                self.syncs_since_command += 1;
                self.push(Expect::Sync);
            }
            b'F' => {
                self.sync_settings(io);
                io.to_server.put_slice(raw);
                self.push(Expect::FunctionCall);
            }
            b'c' | b'f' => {
                io.to_server.put_slice(raw);
                // Syncs sent during COPY FROM STDIN are ignored by the server: owe nothing.
                for _ in 0..std::mem::take(&mut self.syncs_since_command) {
                    if matches!(self.queue.back(), Some(Expect::Sync)) {
                        self.queue.pop_back();
                    }
                }
            }
            _ => io.to_server.put_slice(raw),
        }
        Ok(())
    }

    fn client_query(
        &mut self,
        body: &[u8],
        raw: &[u8],
        io: &mut Io<'_>,
    ) -> Result<(), ProtocolError> {
        let sql = messages::query_text(body)?;
        let stmt = if self.features.track_settings || self.features.map_statements {
            classify(sql)
        } else {
            Sql::Other
        };
        let (effect, explains_set) = match &stmt {
            Sql::Deallocate(name)
                if self.features.map_statements && io.client.statements.remove(name).is_some() =>
            {
                self.push(Expect::Synthetic(Synthetic::Command("DEALLOCATE")));
                return Ok(());
            }
            Sql::Listen if self.features.refuse_listen => {
                self.push(Expect::Synthetic(Synthetic::Error {
                    code: "0A000",
                    message: "LISTEN is not supported in transaction pooling mode: notifications \
                              would reach whichever client holds the connection (use a session-mode pool)"
                        .into(),
                    ready: true,
                }));
                return Ok(());
            }
            Sql::Set(_) | Sql::SetLocal => (None, true),
            Sql::Reset(name) => (Some(Effect::Reset(name.clone())), true),
            Sql::ResetAll => (Some(Effect::ResetAll), true),
            Sql::DiscardAll => (Some(Effect::DiscardAll), true),
            Sql::DeallocateAll => (Some(Effect::DeallocateAll), false),
            Sql::Savepoint(n) => (Some(Effect::Savepoint(n.clone())), false),
            Sql::RollbackTo(n) => (Some(Effect::RollbackTo(n.clone())), false),
            Sql::Release(n) => (Some(Effect::Release(n.clone())), false),
            _ => (None, false),
        };
        self.note_hidden_effects(sql);
        if matches!(&stmt, Sql::Set(name) if name == "client_encoding")
            && self.features.track_settings
        {
            // Every value Sluice holds for this client is in its old encoding: read them
            // all back in the new one.
            self.settings_dirty = true;
        }
        self.sync_settings(io);
        io.to_server.put_slice(raw);
        self.syncs_since_command = 0;
        self.push(Expect::Query {
            swallow: false,
            effect: effect.filter(|_| self.features.track_settings || self.features.map_statements),
            explains_set,
            failed: false,
        });
        if let (Sql::Set(name), true) = (&stmt, self.features.track_settings) {
            let sql = format!("SELECT pg_catalog.current_setting('{name}', true)");
            messages::write_query(io.to_server, sql.as_bytes());
            self.push(Expect::Query {
                swallow: true,
                effect: Some(Effect::Value(name.clone(), None)),
                explains_set: true,
                failed: false,
            });
        }
        Ok(())
    }

    /// Records what a query's text may do behind the protocol's back (transaction mode).
    fn note_hidden_effects(&mut self, sql: &[u8]) {
        if !self.features.track_settings {
            return;
        }
        let hidden = hidden_effects(sql);
        self.settings_dirty |= hidden.settings;
        self.needs_reset |= hidden.state;
    }

    /// Injects the read-back of the session's settings once the transaction that changed
    /// them invisibly is over and nothing else is in flight; the server is released only
    /// after its answer (see [`Exchange::idle`]).
    pub(crate) fn read_back_settings(&mut self, io: &mut Io<'_>) {
        if !self.settings_dirty || !self.queue.is_empty() || self.extended || self.status != b'I' {
            return;
        }
        self.settings_dirty = false;
        messages::write_query(io.to_server, crate::state::READ_BACK_SQL);
        self.push(Expect::Query {
            swallow: true,
            effect: Some(Effect::ReadBack(Vec::new())),
            explains_set: true,
            failed: false,
        });
    }

    /// The shared statement behind a client statement name, when mapping applies.
    fn mapped(&self, name: &[u8], io: &Io<'_>) -> Option<Arc<Statement>> {
        if !self.features.map_statements || name.is_empty() {
            return None;
        }
        io.client.statements.get(name).cloned()
    }

    /// Start of a request: the first message of an extended batch syncs settings first.
    fn begin_batch(&mut self, io: &mut Io<'_>) {
        if !self.extended {
            self.sync_settings(io);
            self.extended = true;
        }
    }

    /// Injects a query that makes the server's settings the client's, when they differ and
    /// the server is between transactions with nothing in flight.
    fn sync_settings(&mut self, io: &mut Io<'_>) {
        if !self.queue.is_empty() || self.status != b'I' {
            return;
        }
        for sql in io.server.sync_sql(&io.client.settings) {
            messages::write_query(io.to_server, &sql);
            self.push(Expect::Query {
                swallow: true,
                effect: None,
                explains_set: true,
                failed: false,
            });
        }
        io.server.settings = io.client.settings.clone();
        io.server.settings_unknown = false;
    }

    fn ensure_prepared(&mut self, stmt: &Arc<Statement>, io: &mut Io<'_>) {
        if !io.server.statements.touch(&stmt.server_name) {
            self.prepare_on_server(stmt, None, io);
        }
    }

    /// Sends Parse for a shared statement (evicting the least recently used one if the
    /// cache is full). `client_name` is set when this is the client's own Parse.
    fn prepare_on_server(
        &mut self,
        stmt: &Arc<Statement>,
        client_name: Option<Vec<u8>>,
        io: &mut Io<'_>,
    ) {
        if let Some(victim) = io
            .server
            .statements
            .insert(stmt.clone(), self.features.cache_size)
        {
            messages::write_target(io.to_server, b'C', b'S', victim.server_name.as_bytes());
            self.push(Expect::Close {
                evicted: Some(victim),
            });
        }
        messages::write_parse(io.to_server, stmt.server_name.as_bytes(), &stmt.rest);
        self.push(Expect::Parse {
            forward: client_name.is_some(),
            server_name: Some(stmt.server_name.clone()),
            client_name,
        });
    }

    /// Answers a client frame with an error of Sluice's own and drops the rest of the
    /// client's batch, as a server does.
    fn refuse(&mut self, code: &'static str, message: String, _io: &mut Io<'_>) {
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
    fn emit_ready_synthetics(&mut self, io: &mut Io<'_>) {
        while let Some(Expect::Synthetic(_)) = self.queue.front() {
            let Some(Expect::Synthetic(s)) = self.queue.pop_front() else {
                break;
            };
            self.emit(s, io);
        }
    }

    fn emit(&mut self, s: Synthetic, io: &mut Io<'_>) {
        let out = &mut *io.to_client;
        self.last_was_error = false;
        match s {
            Synthetic::ParseComplete(_) => messages::write_empty(out, b'1'),
            Synthetic::CloseComplete(_) => messages::write_empty(out, b'3'),
            Synthetic::Command(tag) => {
                messages::write_command_complete(out, tag);
                backend::ready_for_query(out, self.status);
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

#[path = "exchange_server.rs"]
mod server_side;

#[cfg(test)]
#[path = "exchange_tests.rs"]
mod tests;

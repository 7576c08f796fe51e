//! The client → server half of [`Exchange`]: one method per client message. Each
//! forwards (or rewrites) the frame into `to_server` and queues the response it owes, in
//! request order; statement names are mapped and settings synced on the way.

use std::sync::Arc;

use bytes::BufMut;

use super::sql::{classify, hidden_effects, Statement as Sql};
use super::{Effect, Exchange, Expect, Sides, Synthetic};
use crate::protocol::frame::{Frames, ProtocolError, MAX_FRAME_LEN};
use crate::protocol::messages::{self, Bind, Parse, Target};
use crate::protocol::tag::frontend::*;
use crate::state::prepared::Statement;

impl Exchange {
    /// Handles a run of complete client frames (no Terminate among them).
    pub(crate) fn on_client(
        &mut self,
        frames: &[u8],
        io: &mut Sides<'_>,
    ) -> Result<(), ProtocolError> {
        let mut it = Frames::new(frames, MAX_FRAME_LEN);
        let mut pos = 0;
        while let Some(frame) = it.next() {
            let raw = &frames[pos..it.consumed()];
            pos = it.consumed();
            tracing::trace!(tag = %char::from(frame.tag), queue = ?self.queue, skipping = self.skipping, "client frame");
            if self.client_skipping && frame.tag != SYNC {
                continue;
            }
            if self.skipping {
                // The server discards everything until Sync: send as is, expect nothing.
                io.to_server.put_slice(raw);
                if frame.tag == SYNC {
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

    /// Routes one client frame to its handler.
    fn client_frame(
        &mut self,
        tag: u8,
        body: &[u8],
        raw: &[u8],
        io: &mut Sides<'_>,
    ) -> Result<(), ProtocolError> {
        match tag {
            QUERY => return self.on_query(body, raw, io),
            PARSE => return self.on_parse(body, raw, io),
            BIND => return self.on_bind(body, raw, io),
            DESCRIBE => return self.on_describe(body, raw, io),
            CLOSE => return self.on_close(body, raw, io),
            EXECUTE => self.on_execute(body, raw, io),
            SYNC => self.on_sync(raw, io),
            FUNCTION_CALL => self.on_function_call(raw, io),
            COPY_DONE | COPY_FAIL => self.on_copy_end(raw, io),
            // CopyData, Flush and anything else go through as they are.
            _ => io.to_server.put_slice(raw),
        }
        Ok(())
    }

    /// Parse: a named statement is mapped to a shared one (answered at once when this
    /// server has it already, prepared on it otherwise); an unnamed one goes through.
    fn on_parse(
        &mut self,
        body: &[u8],
        raw: &[u8],
        io: &mut Sides<'_>,
    ) -> Result<(), ProtocolError> {
        self.begin_batch(io);
        let p = Parse::decode(body)?;
        if self.listen_parse(&p) {
            return Ok(());
        }
        self.note_hidden_effects(p.query());
        if !self.features.map_statements || p.name.is_empty() {
            if !p.name.is_empty() {
                self.needs_reset = true;
            }
            io.to_server.put_slice(raw);
            self.push(Expect::Parse {
                forward: true,
                server_name: None,
                client_name: None,
            });
            return Ok(());
        }
        if io.client.statements.contains_key(p.name) {
            let message = format!(
                "prepared statement \"{}\" already exists",
                String::from_utf8_lossy(p.name)
            );
            self.refuse("42P05", message, io);
            return Ok(());
        }
        let stmt = io.registry.intern(p.rest);
        io.client.statements.insert(p.name.to_vec(), stmt.clone());
        if io.server.statements.touch(&stmt.server_name) {
            self.push(Expect::Synthetic(Synthetic::ParseComplete(p.name.to_vec())));
        } else {
            self.prepare_on_server(&stmt, Some(p.name.to_vec()), io);
        }
        Ok(())
    }

    /// Bind: a mapped statement is bound under its server name (prepared first if needed).
    fn on_bind(
        &mut self,
        body: &[u8],
        raw: &[u8],
        io: &mut Sides<'_>,
    ) -> Result<(), ProtocolError> {
        self.begin_batch(io);
        let b = Bind::decode(body)?;
        if self.listen_bind(&b) {
            return Ok(());
        }
        let stmt = self.mapped(b.statement, io);
        match &stmt {
            Some(stmt) => {
                self.ensure_prepared(stmt, io);
                b.write_renamed(io.to_server, stmt.server_name.as_bytes());
            }
            None => io.to_server.put_slice(raw),
        }
        self.push(Expect::Bind(stmt));
        Ok(())
    }

    /// Describe: of a mapped statement, under its server name; of a portal, as is.
    fn on_describe(
        &mut self,
        body: &[u8],
        raw: &[u8],
        io: &mut Sides<'_>,
    ) -> Result<(), ProtocolError> {
        self.begin_batch(io);
        let t = Target::decode(body)?;
        if self.listen_target(&t, false) {
            return Ok(());
        }
        let stmt = self.mapped(t.name, io).filter(|_| t.kind == b'S');
        match &stmt {
            Some(stmt) => {
                self.ensure_prepared(stmt, io);
                messages::write_target(io.to_server, b'D', b'S', stmt.server_name.as_bytes());
            }
            None => io.to_server.put_slice(raw),
        }
        self.push(Expect::Describe(stmt));
        Ok(())
    }

    /// Close of a mapped statement forgets the client's name only (answered by Sluice);
    /// other closes go through.
    fn on_close(
        &mut self,
        body: &[u8],
        raw: &[u8],
        io: &mut Sides<'_>,
    ) -> Result<(), ProtocolError> {
        self.begin_batch(io);
        let t = Target::decode(body)?;
        if self.listen_target(&t, true) {
            return Ok(());
        }
        if self.features.map_statements && t.kind == b'S' && !t.name.is_empty() {
            let removed = io.client.statements.remove_entry(t.name);
            self.push(Expect::Synthetic(Synthetic::CloseComplete(removed)));
        } else {
            io.to_server.put_slice(raw);
            self.push(Expect::Close { evicted: None });
        }
        Ok(())
    }

    /// Execute: counted as a query.
    fn on_execute(&mut self, body: &[u8], raw: &[u8], io: &mut Sides<'_>) {
        self.counts.0 += 1;
        self.begin_batch(io);
        if let Some(names) = &self.listen_names {
            let portal =
                crate::protocol::frame::read_cstr(body, "portal").map_or(&b""[..], |(p, _)| p);
            if let Some(effect) = names.portals.get(portal).cloned() {
                self.push(Expect::Synthetic(Synthetic::Listen {
                    effect,
                    ready: false,
                }));
                return;
            }
        }
        io.to_server.put_slice(raw);
        self.syncs_since_command = 0;
        self.push(Expect::Execute);
    }

    /// Sync: ends the extended-protocol batch (and Sluice's own refusal of it).
    fn on_sync(&mut self, raw: &[u8], io: &mut Sides<'_>) {
        io.to_server.put_slice(raw);
        self.extended = false;
        self.client_skipping = false;
        self.syncs_since_command = self.syncs_since_command.saturating_add(1);
        self.push(Expect::Sync);
    }

    /// FunctionCall: a request of its own, after the settings are synced.
    fn on_function_call(&mut self, raw: &[u8], io: &mut Sides<'_>) {
        self.sync_settings(io);
        io.to_server.put_slice(raw);
        self.push(Expect::FunctionCall);
    }

    /// CopyDone / CopyFail: Syncs sent during COPY FROM STDIN are ignored by the server, so
    /// nothing is owed for them.
    fn on_copy_end(&mut self, raw: &[u8], io: &mut Sides<'_>) {
        io.to_server.put_slice(raw);
        for _ in 0..std::mem::take(&mut self.syncs_since_command) {
            if matches!(self.queue.back(), Some(Expect::Sync)) {
                self.queue.pop_back();
            }
        }
    }

    /// Query: counted, classified (settings, DEALLOCATE, LISTEN, savepoints), synced, and
    /// for a tracked `SET` followed by a read of the value the server settled on.
    fn on_query(
        &mut self,
        body: &[u8],
        raw: &[u8],
        io: &mut Sides<'_>,
    ) -> Result<(), ProtocolError> {
        self.counts.0 += 1;
        let sql = messages::query_text(body)?;
        let stmt = if self.features.track_settings || self.features.map_statements {
            classify(sql)
        } else {
            Sql::Other
        };
        let Some((effect, explains_set)) = self.query_effect(&stmt, io) else {
            return Ok(());
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
        let tracked = self.features.track_settings || self.features.map_statements;
        self.push(Expect::Query {
            swallow: false,
            effect: effect.filter(|_| tracked),
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

    /// What a classified query does to the session (its effect, and whether it explains a
    /// CommandComplete `SET`), or `None` when Sluice answered it itself.
    fn query_effect(&mut self, stmt: &Sql, io: &mut Sides<'_>) -> Option<(Option<Effect>, bool)> {
        Some(match stmt {
            Sql::Deallocate(name)
                if self.features.map_statements && io.client.statements.remove(name).is_some() =>
            {
                self.push(Expect::Synthetic(Synthetic::Command("DEALLOCATE")));
                return None;
            }
            Sql::Listen(channel) if self.features.listen_in_place => {
                let effect = Effect::Listen(channel.clone());
                self.push(Expect::Synthetic(Synthetic::Listen {
                    effect,
                    ready: true,
                }));
                return None;
            }
            Sql::Unlisten(channel) if self.features.listen_in_place => {
                let effect = Effect::Unlisten(channel.clone());
                self.push(Expect::Synthetic(Synthetic::Listen {
                    effect,
                    ready: true,
                }));
                return None;
            }
            Sql::ListenOther if self.features.listen_in_place => {
                self.push(Expect::Synthetic(Synthetic::Error {
                    code: "0A000",
                    message: "in transaction pooling mode Sluice answers LISTEN and UNLISTEN \
                              itself: send one `LISTEN channel` (or `UNLISTEN channel | *`) \
                              per query, on its own"
                        .into(),
                    ready: true,
                }));
                return None;
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
        })
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
    pub(crate) fn read_back_settings(&mut self, io: &mut Sides<'_>) {
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
    fn mapped(&self, name: &[u8], io: &Sides<'_>) -> Option<Arc<Statement>> {
        if !self.features.map_statements || name.is_empty() {
            return None;
        }
        io.client.statements.get(name).cloned()
    }

    /// Start of a request: the first message of an extended batch syncs settings first.
    fn begin_batch(&mut self, io: &mut Sides<'_>) {
        if !self.extended {
            self.sync_settings(io);
            self.extended = true;
        }
    }

    /// Injects a query that makes the server's settings the client's, when they differ and
    /// the server is between transactions with nothing in flight.
    fn sync_settings(&mut self, io: &mut Sides<'_>) {
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

    fn ensure_prepared(&mut self, stmt: &Arc<Statement>, io: &mut Sides<'_>) {
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
        io: &mut Sides<'_>,
    ) {
        if let Some(victim) = io
            .server
            .statements
            .insert(stmt.clone(), self.features.cache_size as usize)
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
}

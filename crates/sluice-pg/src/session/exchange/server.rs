//! The server → client half of [`Exchange`](super::Exchange): matches each backend frame to the
//! request it answers, swallows answers to Sluice's own injected requests, emits synthetic
//! answers in their place in the stream, and applies or undoes session-state changes.

use bytes::BufMut;

use super::{Effect, Exchange, Expect, Sides, Synthetic, STATEFUL_TAGS};
use crate::protocol::frame::{Frames, ProtocolError, MAX_FRAME_LEN};
use crate::protocol::messages::{command_tag, data_row_columns, error_code};

/// What to do with one backend frame.
enum Fate {
    Forward,
    Swallow,
}

impl Exchange {
    /// Handles the complete frames at the front of `buf`; returns how many bytes they cover.
    pub(crate) fn on_server(
        &mut self,
        buf: &[u8],
        io: &mut Sides<'_>,
    ) -> Result<usize, ProtocolError> {
        let mut it = Frames::new(buf, MAX_FRAME_LEN);
        let mut pos = 0;
        // Forward runs of frames with one copy each.
        let mut run_start = 0;
        while let Some(frame) = it.next() {
            let start = pos;
            pos = it.consumed();
            tracing::trace!(tag = %char::from(frame.tag), queue = ?self.queue, "server frame");
            self.emit_ready_synthetics_flushing(buf, &mut run_start, start, io);
            match self.server_frame(frame.tag, frame.body, io) {
                Fate::Forward => {
                    self.last_was_error =
                        frame.tag == crate::protocol::tag::backend::ERROR_RESPONSE;
                }
                Fate::Swallow => {
                    io.to_client.put_slice(&buf[run_start..start]);
                    run_start = pos;
                }
            }
        }
        io.to_client.put_slice(&buf[run_start..pos]);
        self.emit_ready_synthetics(io);
        if let Some(e) = it.error() {
            return Err(e.clone());
        }
        self.read_back_settings(io);
        Ok(pos)
    }

    /// Emits due synthetics at the current stream position, flushing forwarded bytes first.
    fn emit_ready_synthetics_flushing(
        &mut self,
        buf: &[u8],
        run_start: &mut usize,
        at: usize,
        io: &mut Sides<'_>,
    ) {
        if matches!(self.queue.front(), Some(Expect::Synthetic(_))) {
            io.to_client.put_slice(&buf[*run_start..at]);
            *run_start = at;
            self.emit_ready_synthetics(io);
        }
    }

    fn swallowing(&self) -> bool {
        matches!(
            self.queue.front(),
            Some(Expect::Query { swallow: true, .. })
        )
    }

    fn server_frame(&mut self, tag: u8, body: &[u8], io: &mut Sides<'_>) -> Fate {
        use crate::protocol::tag::backend::*;
        match tag {
            PARSE_COMPLETE => match self.queue.pop_front() {
                Some(Expect::Parse { forward: false, .. }) => Fate::Swallow,
                _ => Fate::Forward,
            },
            BIND_COMPLETE | PORTAL_SUSPENDED => {
                self.queue.pop_front();
                Fate::Forward
            }
            CLOSE_COMPLETE => match self.queue.pop_front() {
                Some(Expect::Close { evicted: Some(_) }) => Fate::Swallow,
                _ => Fate::Forward,
            },
            ROW_DESCRIPTION | NO_DATA => {
                if matches!(self.queue.front(), Some(Expect::Describe(_))) {
                    self.queue.pop_front();
                }
                self.fate()
            }
            DATA_ROW => {
                if self.swallowing() {
                    self.capture(body);
                }
                self.fate()
            }
            COMMAND_COMPLETE | EMPTY_QUERY => {
                if tag == COMMAND_COMPLETE {
                    self.command_complete(command_tag(body), io);
                }
                if matches!(self.queue.front(), Some(Expect::Execute)) {
                    self.queue.pop_front();
                }
                self.fate()
            }
            ERROR_RESPONSE => self.error(body, io),
            READY_FOR_QUERY => self.ready(body.first().copied().unwrap_or(b'I'), io),
            PARAMETER_STATUS => {
                let explained = matches!(
                    self.queue.front(),
                    Some(Expect::Query {
                        explains_set: true,
                        ..
                    })
                );
                if !explained && self.features.track_settings {
                    // A setting changed behind Sluice's back (set_config, a SET inside a
                    // function or multi-statement query): read the settings back.
                    self.settings_dirty = true;
                }
                self.fate()
            }
            _ => self.fate(),
        }
    }

    fn fate(&self) -> Fate {
        if self.swallowing() {
            Fate::Swallow
        } else {
            Fate::Forward
        }
    }

    /// Keeps what a DataRow of one of Sluice's own queries says.
    fn capture(&mut self, body: &[u8]) {
        let Some(Expect::Query {
            effect: Some(effect),
            ..
        }) = self.queue.front_mut()
        else {
            return;
        };
        let Some(columns) = data_row_columns(body) else {
            return;
        };
        match (effect, columns.as_slice()) {
            (Effect::Value(..), [value, ..]) => {
                let value = Some(value.map(<[u8]>::to_vec));
                self.tracked().captured = value;
            }
            (Effect::ReadBack(rows), [Some(name), Some(value)]) => {
                let name = String::from_utf8_lossy(name);
                if let Some(name) = crate::state::setting_name(&name) {
                    rows.push((name, value.to_vec()));
                }
            }
            _ => {}
        }
    }

    fn command_complete(&mut self, tag: &[u8], io: &mut Sides<'_>) {
        match tag {
            b"COMMIT" => self.last_commit = true,
            b"ROLLBACK" => self.last_commit = false,
            b"DISCARD ALL" => io.server.clear(),
            b"DEALLOCATE ALL" => io.server.statements.clear(),
            b"SET" | b"RESET" if self.features.track_settings => {
                let explained = matches!(
                    self.queue.front(),
                    Some(Expect::Query {
                        explains_set: true,
                        ..
                    })
                );
                if !explained {
                    self.settings_dirty = true;
                }
            }
            t if STATEFUL_TAGS.contains(&t) => self.needs_reset = true,
            _ => {}
        }
    }

    /// An ErrorResponse: in a simple query it only marks the query failed; in the extended
    /// protocol the server now skips to Sync, so everything owed before the Sync is undone.
    fn error(&mut self, body: &[u8], io: &mut Sides<'_>) -> Fate {
        if let Some(Expect::Bind(Some(stmt)) | Expect::Describe(Some(stmt))) = self.queue.front() {
            if error_code(body) == Some(b"0A000") {
                // "cached plan must not change result type": the shared copy is stale.
                io.registry.invalidate(stmt);
            }
        }
        match self.queue.front_mut() {
            Some(Expect::Query {
                swallow, failed, ..
            }) => {
                *failed = true;
                if *swallow {
                    tracing::warn!("a query Sluice injected to sync settings failed");
                    io.server.settings_unknown = true;
                    // What the session holds is unknown now: nobody else may get it as is.
                    self.needs_reset = true;
                    return Fate::Swallow;
                }
                return Fate::Forward;
            }
            Some(Expect::FunctionCall) | None => return Fate::Forward,
            _ => {}
        }
        while let Some(e) = self.queue.front() {
            if matches!(
                e,
                Expect::Sync | Expect::Query { .. } | Expect::FunctionCall
            ) {
                break;
            }
            if let Some(e) = self.queue.pop_front() {
                self.undo(e, io);
            }
        }
        if self.queue.is_empty() {
            self.skipping = true;
        }
        Fate::Forward
    }

    /// Undoes the bookkeeping of a request the server failed or skipped.
    fn undo(&mut self, e: Expect, io: &mut Sides<'_>) {
        match e {
            Expect::Parse {
                server_name: Some(s),
                client_name,
                ..
            } => {
                io.server.statements.remove(&s);
                if let Some(c) = client_name {
                    if io
                        .client
                        .statements
                        .get(&c)
                        .is_some_and(|st| st.server_name == s)
                    {
                        io.client.statements.remove(&c);
                    }
                }
            }
            Expect::Close {
                evicted: Some(stmt),
            } => {
                // The server still has it.
                io.server.statements.insert(stmt, usize::MAX);
            }
            Expect::Synthetic(Synthetic::ParseComplete(name)) => {
                io.client.statements.remove(&name);
            }
            Expect::Synthetic(Synthetic::CloseComplete(Some((name, stmt)))) => {
                io.client.statements.insert(name, stmt);
            }
            _ => {}
        }
    }

    fn ready(&mut self, status: u8, io: &mut Sides<'_>) -> Fate {
        self.status = status;
        if status == b'I' {
            self.counts.1 += 1;
        }
        // Drop anything owed before this ReadyForQuery (defensive; normally nothing).
        let mut done = None;
        while let Some(e) = self.queue.pop_front() {
            match e {
                Expect::Sync | Expect::FunctionCall => break,
                q @ Expect::Query { .. } => {
                    done = Some(q);
                    break;
                }
                other => self.undo(other, io),
            }
        }
        let mut fate = Fate::Forward;
        if let Some(Expect::Query {
            swallow,
            effect,
            failed,
            ..
        }) = done
        {
            if swallow {
                fate = Fate::Swallow;
            }
            let effect = effect.filter(|_| !failed).map(|e| match e {
                Effect::Value(name, _) => {
                    let captured = self.tracked.as_mut().and_then(|t| t.captured.take());
                    Effect::Value(name, captured.flatten())
                }
                e => e,
            });
            self.settle(effect, status, io);
        }
        if let Some(t) = self.tracked.as_mut() {
            t.captured = None;
        }
        if status == b'I' {
            let effects = self.tracked.take().map(|t| t.tentative).unwrap_or_default();
            if std::mem::take(&mut self.last_commit) {
                for e in effects {
                    apply(e, io);
                }
            }
        }
        fate
    }

    /// Puts a completed query's effect in force (outside a transaction block), holds it
    /// until the block ends (inside one), or does the savepoint bookkeeping.
    fn settle(&mut self, effect: Option<Effect>, status: u8, io: &mut Sides<'_>) {
        match (effect, status) {
            (Some(Effect::Savepoint(name)), b'T') => {
                let t = self.tracked();
                t.savepoints.push((name, t.tentative.len()));
            }
            (Some(Effect::RollbackTo(name)), b'T') => {
                let t = self.tracked();
                if let Some(i) = t.savepoints.iter().rposition(|(n, _)| *n == name) {
                    t.tentative.truncate(t.savepoints[i].1);
                    t.savepoints.truncate(i + 1);
                }
            }
            (Some(Effect::Release(name)), b'T') => {
                let t = self.tracked();
                if let Some(i) = t.savepoints.iter().rposition(|(n, _)| *n == name) {
                    t.savepoints.truncate(i);
                }
            }
            (Some(Effect::Savepoint(_) | Effect::RollbackTo(_) | Effect::Release(_)), _) => {}
            // Ran outside a transaction block: in force now.
            (Some(e), b'I') => apply(e, io),
            // Inside a block: in force only if the block commits.
            (Some(e), b'T') => self.tracked().tentative.push(e),
            _ => {}
        }
    }
}

/// Puts a settled effect in force on both sides.
pub(super) fn apply(e: Effect, io: &mut Sides<'_>) {
    let (client, server) = (&mut *io.client, &mut *io.server);
    match e {
        Effect::Value(name, Some(v)) => {
            client.settings.insert(name.clone(), v.clone());
            server.settings.insert(name, v);
        }
        Effect::Value(name, None) => {
            client.settings.remove(&name);
            server.settings.remove(&name);
        }
        Effect::Reset(name) => {
            server.settings.remove(&name);
            match client.startup.get(&name) {
                Some(v) => client.settings.insert(name, v.clone()),
                None => client.settings.remove(&name),
            };
        }
        Effect::ResetAll => {
            server.settings.clear();
            client.settings = client.startup.clone();
        }
        Effect::DiscardAll => {
            server.clear();
            client.settings = client.startup.clone();
            client.statements.clear();
            client.listening.clear();
        }
        Effect::Listen(channel) => {
            client.listening.insert(channel);
        }
        Effect::Unlisten(Some(channel)) => {
            client.listening.remove(&channel);
        }
        Effect::Unlisten(None) => client.listening.clear(),
        Effect::DeallocateAll => client.statements.clear(),
        Effect::ReadBack(rows) => {
            // The server's session now holds exactly these; the client holds them on top
            // of its startup values (a RESET returns there, as on a direct connection).
            let mut now = crate::state::Settings::default();
            for (name, value) in rows {
                now.insert(name, value);
            }
            let mut mine = client.startup.clone();
            for (name, value) in now.iter() {
                mine.insert(name.clone(), value.clone());
            }
            server.settings = now;
            server.settings_unknown = false;
            client.settings = mine;
        }
        Effect::Savepoint(_) | Effect::RollbackTo(_) | Effect::Release(_) => {}
    }
}

//! Forwarding a request upstream: over the connection pinned to its transaction, or over
//! a connection checked out for one round trip from the pool of the member its cursor or
//! `$readPreference` picks (the primary's otherwise); then the reply, or an error document
//! for a failed checkout or a broken round trip, to the client.

use std::sync::Arc;

use bson::Document;
use sluice_stats::ErrorKind;
use tokio::time::Instant;

use super::{MongoSessionError, Session};
use crate::labels::lost_round_trip;
use crate::pins::Pinned;
use crate::pool::{MongoPool, MongoPoolError, PooledConn};
use crate::replicas::Choice;
use crate::request::{reply_cursor_id, reply_says_not_primary, RequestInfo};
use crate::upstream::MongoUpstreamError;
use crate::wire::{error_doc, ErrorCode, Frame, OpMsg};

/// What a forwarded request expects back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// One reply.
    Reply,
    /// No reply (`moreToCome` on the request).
    NoReply,
    /// A stream of replies, if the server sends one (an exhaust getMore).
    Stream,
}

impl Session {
    /// Forwards a request that Sluice does not answer itself: over the connection pinned
    /// to its transaction, or over a connection checked out for this one round trip from
    /// the pool its cursor or read preference picks.
    pub(super) async fn forward(
        &mut self,
        frame: Frame,
        info: RequestInfo,
        more_to_come: bool,
        exhaust: bool,
    ) -> Result<(), MongoSessionError> {
        let request_id = frame.header.request_id;
        if let Some(reason) = &info.bad_read_pref {
            if more_to_come {
                return Ok(());
            }
            let e = error_doc(reason.code(), reason.to_string());
            return self.reply(request_id, &e).await;
        }
        let mode = match (more_to_come, exhaust) {
            (true, _) => Mode::NoReply,
            (false, true) => Mode::Stream,
            (false, false) => Mode::Reply,
        };
        self.ctx.replicas.first_round().await;
        let counters = self.ctx.pool.counters();
        counters.inc_queries();
        counters.add_bytes_in(frame.data.len() as u64);
        if !info.ended_sessions.is_empty() {
            self.ctx.pins.end_sessions(&info.ended_sessions);
        }
        if let (Some(lsid), Some(txn)) = (&info.lsid, info.txn_number) {
            let pinned = if info.start_transaction {
                match self.ctx.pool.checkout(&self.peer).await {
                    Ok(conn) => Some(self.ctx.pins.pin(lsid.clone(), txn, conn)),
                    Err(e) => return self.checkout_failed(request_id, &e, more_to_come).await,
                }
            } else {
                self.ctx.pins.get(lsid, txn)
            };
            if let Some(pinned) = pinned {
                return self.forward_pinned(frame, &info, lsid, pinned, mode).await;
            }
        }
        let member = match self.route(&info).await {
            Ok(member) => member,
            Err(_) if more_to_come => return Ok(()),
            Err(e) => return self.reply(request_id, &e).await,
        };
        self.forward_once(frame, &info, member, mode).await
    }

    /// The member a request outside a transaction goes to: where its cursor lives, or
    /// what a non-primary `$readPreference` picks; `None` for the primary. `Err` is the
    /// error document when no member satisfies the read preference.
    async fn route(&self, info: &RequestInfo) -> Result<Option<(MongoPool, String)>, Document> {
        let replicas = &self.ctx.replicas;
        if let Some(addr) = replicas.cursor_home(&info.cursor_ids) {
            return Ok(Some((replicas.member_pool(&addr), addr)));
        }
        if !info.cursor_ids.is_empty() {
            // An untracked cursor lives on the primary, whatever $readPreference says.
            return Ok(None);
        }
        let Some(pref) = &info.read_pref else {
            return Ok(None);
        };
        tracing::trace!(?pref, command = %info.name, "read preference");
        match replicas.choose(pref).await {
            Choice::Primary => Ok(None),
            Choice::Member(pool, addr) => Ok(Some((pool, addr))),
            Choice::Unsatisfiable => Err(error_doc(
                ErrorCode::FailedToSatisfyReadPreference,
                format!("sluice: no replica-set member matches the read preference {pref:?}"),
            )),
            Choice::Invalid(e) => Err(error_doc(e.code(), e.to_string())),
        }
    }

    /// One round trip over a connection checked out of `member`'s pool (the primary's
    /// for `None`), then the reply to the client.
    async fn forward_once(
        &mut self,
        frame: Frame,
        info: &RequestInfo,
        member: Option<(MongoPool, String)>,
        mode: Mode,
    ) -> Result<(), MongoSessionError> {
        let request_id = frame.header.request_id;
        let more_to_come = mode == Mode::NoReply;
        let _long_poll = if info.long_poll {
            self.ctx.long_polls.clone().acquire_owned().await.ok()
        } else {
            None
        };
        let checkout = match &member {
            Some((pool, _)) => pool.checkout(&self.peer).await,
            None => self.ctx.pool.checkout(&self.peer).await,
        };
        let conn = match checkout {
            Ok(conn) => conn,
            Err(e) => return self.checkout_failed(request_id, &e, more_to_come).await,
        };
        if mode == Mode::Stream {
            return self.stream_replies(conn, frame, info, member, None).await;
        }
        let (conn, result) = exchange(conn, frame, more_to_come).await;
        drop(conn);
        self.note_cursors(info, &result);
        match &member {
            Some((pool, addr)) => {
                self.track_cursors(info, &result, addr);
                // A broken round trip counts against the member's pool, not the primary's.
                if result.is_err() {
                    pool.counters().inc_error(ErrorKind::ServerLost);
                }
            }
            None => self.watch_for_failover(&result),
        }
        let labels = lost_round_trip(info, info.txn_number.is_some());
        let counted = member.is_some();
        self.relay(request_id, result, labels, counted).await
    }

    /// A primary that answers "not primary" has stepped down: look for the new one now
    /// instead of at the next heartbeat.
    pub(super) fn watch_for_failover(&self, result: &Result<Option<Frame>, MongoUpstreamError>) {
        if !self.ctx.replicas.enabled() {
            return;
        }
        if let Ok(Some(reply)) = result {
            if OpMsg::parse(reply.body()).is_ok_and(|m| reply_says_not_primary(m.body)) {
                self.ctx.replicas.check_soon();
            }
        }
    }

    /// Keeps this client's open cursors up to date (for the idle timeout), and the
    /// newest cluster time the reply gossips (for Sluice's `hello`).
    pub(super) fn note_cursors(
        &mut self,
        info: &RequestInfo,
        result: &Result<Option<Frame>, MongoUpstreamError>,
    ) {
        let reply_cursor = match result {
            Ok(Some(reply)) => OpMsg::parse(reply.body()).ok().and_then(|m| {
                self.ctx.cluster_time.observe(m.body);
                reply_cursor_id(m.body)
            }),
            _ => None,
        };
        self.cursors
            .record(&info.name, &info.cursor_ids, reply_cursor, Instant::now());
    }

    /// Remembers where a member's cursors live, and forgets exhausted or killed ones.
    pub(super) fn track_cursors(
        &self,
        info: &RequestInfo,
        result: &Result<Option<Frame>, MongoUpstreamError>,
        addr: &str,
    ) {
        let replicas = &self.ctx.replicas;
        if info.name == "killCursors" {
            replicas.forget_cursors(&info.cursor_ids);
            return;
        }
        let Ok(Some(reply)) = result else {
            return;
        };
        let id = OpMsg::parse(reply.body())
            .ok()
            .and_then(|m| reply_cursor_id(m.body));
        match id {
            Some(0) => replicas.forget_cursors(&info.cursor_ids),
            Some(id) => replicas.remember_cursor(id, addr),
            None => {}
        }
    }

    /// Forwards a request of a pinned transaction over its connection (an exhaust
    /// getMore's replies streamed, the connection kept for the transaction after).
    async fn forward_pinned(
        &mut self,
        frame: Frame,
        info: &RequestInfo,
        lsid: &[u8],
        pinned: Arc<Pinned>,
        mode: Mode,
    ) -> Result<(), MongoSessionError> {
        let request_id = frame.header.request_id;
        let mut slot = pinned.conn.lock().await;
        pinned.touch();
        let Some(conn) = slot.take() else {
            drop(slot);
            self.ctx.pins.unpin(lsid, &pinned);
            let e = error_doc(
                ErrorCode::HostUnreachable,
                "the upstream connection of this transaction was lost",
            );
            return self.reply(request_id, &e).await;
        };
        self.txn_sessions.insert(lsid.to_vec());
        if mode == Mode::Stream {
            let streamed = self
                .stream_replies(conn, frame, info, None, Some(&mut slot))
                .await;
            if slot.is_none() {
                // Cut short: the connection was closed, and the transaction with it.
                drop(slot);
                self.ctx.pins.unpin(lsid, &pinned);
            }
            return streamed;
        }
        let (conn, result) = exchange(conn, frame, mode == Mode::NoReply).await;
        self.note_cursors(info, &result);
        let ended = info.ends_transaction() || result.is_err();
        if ended {
            self.ctx.pins.unpin(lsid, &pinned);
            if info.ends_transaction() {
                self.ctx.pool.counters().inc_transactions();
            }
            drop(conn); // back to the pool if reusable, else closed
        } else {
            *slot = conn;
        }
        drop(slot);
        self.relay(request_id, result, lost_round_trip(info, true), false)
            .await
    }

    /// Writes an upstream reply (or an error for a broken round trip, with `labels`) to
    /// the client. A broken round trip counts as `server_lost` on the primary pool unless
    /// `counted` (the caller counted it on the member pool it used).
    pub(super) async fn relay(
        &mut self,
        request_id: i32,
        result: Result<Option<Frame>, MongoUpstreamError>,
        labels: &'static [&'static str],
        counted: bool,
    ) -> Result<(), MongoSessionError> {
        match result {
            Ok(Some(mut reply)) => {
                self.ctx
                    .pool
                    .counters()
                    .add_bytes_out(reply.data.len() as u64);
                let id = self.next_id();
                reply.set_ids(id, request_id);
                reply.prepare_forward(false);
                self.send(reply.data).await
            }
            Ok(None) => Ok(()),
            Err(e) => {
                if !counted {
                    self.pool_error_count(ErrorKind::ServerLost);
                }
                tracing::warn!(error = %e, "upstream round trip failed");
                self.ctx.replicas.check_soon();
                let mut d = error_doc(
                    ErrorCode::HostUnreachable,
                    format!("sluice: upstream connection failed: {e}"),
                );
                d.insert("errorLabels", labels.to_vec());
                self.reply(request_id, &d).await
            }
        }
    }

    /// Answers a request whose checkout failed (nothing for a `moreToCome` request).
    async fn checkout_failed(
        &mut self,
        request_id: i32,
        e: &MongoPoolError,
        more_to_come: bool,
    ) -> Result<(), MongoSessionError> {
        if matches!(e, MongoPoolError::Connect(_)) {
            self.ctx.replicas.check_soon();
        }
        if more_to_come {
            return Ok(());
        }
        let code = match e {
            MongoPoolError::Timeout { .. } => ErrorCode::NetworkInterfaceExceededTimeLimit,
            MongoPoolError::Connect(_) | MongoPoolError::Closed => ErrorCode::HostUnreachable,
        };
        self.reply(request_id, &error_doc(code, format!("sluice: {e}")))
            .await
    }
}

/// One round trip on `conn`. Returns the connection (unless it broke) and the reply
/// (`None` for a `moreToCome` request).
async fn exchange(
    mut conn: PooledConn,
    frame: Frame,
    more_to_come: bool,
) -> (
    Option<PooledConn>,
    Result<Option<Frame>, MongoUpstreamError>,
) {
    let result = if more_to_come {
        conn.send_only(frame).await.map(|()| None)
    } else {
        conn.round_trip(frame).await.map(Some)
    };
    match result {
        Ok(reply) => (Some(conn), Ok(reply)),
        Err(e) => {
            conn.discard();
            (None, Err(e))
        }
    }
}

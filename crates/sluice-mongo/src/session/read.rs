//! The read side of a client session, where the [`crate::guards`] apply: waiting for
//! the next whole request under the login or idle deadline and the pre-authentication
//! message cap, and refusing a connection over `max_client_conn`.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::{to_bytes, MongoSessionError, Session};
use crate::guards::{deadline, Expiry, TooManyClients, PRE_AUTH_MAX_MESSAGE, REFUSAL_WAIT};
use crate::wire::{encode_op_msg, encode_op_reply, error_doc, ErrorCode, Frame, Header, OpCode};

/// What a client did while Sluice was due to speak.
pub(super) enum Activity {
    /// It sent bytes (now in the session's buffer).
    Sent,
    /// It closed the connection.
    Closed,
}

impl Session {
    /// Whether the client counts as logged in: authenticated when auth is required, else
    /// once it sent a first request.
    pub(super) fn logged_in(&self) -> bool {
        if self.ctx.auth_required {
            self.auth.authorized()
        } else {
            self.greeted
        }
    }

    /// Reads the next whole request; `None` when the client closed or shutdown began.
    /// Fails with [`MongoSessionError::Expired`] when the login or idle deadline passes first.
    pub(super) async fn read_frame(&mut self) -> Result<Option<Frame>, MongoSessionError> {
        loop {
            // Until the client has authenticated, a header claiming more than a handshake
            // needs is refused before its body is read.
            let limit = if self.auth.authorized() {
                self.max_message
            } else {
                PRE_AUTH_MAX_MESSAGE
            };
            self.decoder.set_max_len(limit);
            if let Some(frame) = self.decoder.decode(&mut self.buf)? {
                return Ok(Some(frame));
            }
            let logged_in = self.logged_in();
            let settings = self.ctx.guards.settings();
            let busy = logged_in && !settings.idle_timeout.is_zero() && self.busy();
            let until = deadline(&settings, logged_in, self.last_seen, busy);
            tokio::select! {
                _ = self.token.cancelled() => return Ok(None),
                expiry = expire_at(until) => return Err(MongoSessionError::Expired(expiry)),
                n = self.stream.read_buf(&mut self.buf) => {
                    if n? == 0 {
                        return Ok(None);
                    }
                    // A logged-in client sending a large message slowly is not idle; a
                    // client that has not logged in gets no credit for a trickle.
                    if logged_in {
                        self.last_seen = Instant::now();
                    }
                }
            }
        }
    }

    /// Waits for the client to send or close while Sluice, not the client, is due to
    /// speak (an awaitable hello's wait, an exhaust stream). Bytes read stay buffered for
    /// the next [`Session::read_frame`]; once some are there this waits no more on the
    /// socket (never resolves), so a client cannot make Sluice buffer without bound.
    /// Cancel-safe.
    pub(super) async fn client_activity(&mut self) -> Result<Activity, MongoSessionError> {
        if !self.buf.is_empty() {
            return std::future::pending().await;
        }
        if self.stream.read_buf(&mut self.buf).await? == 0 {
            Ok(Activity::Closed)
        } else {
            Ok(Activity::Sent)
        }
    }

    /// Whether the client holds an open cursor or a pinned transaction.
    fn busy(&mut self) -> bool {
        let pins = &self.ctx.pins;
        self.txn_sessions.retain(|lsid| pins.is_pinned(lsid));
        !self.txn_sessions.is_empty() || self.cursors.any_open(Instant::now())
    }

    /// A connection over `max_client_conn`: answers its first request with the refusal
    /// (so the application's error names the limit) and closes; a client that sends
    /// nothing within [`REFUSAL_WAIT`] is closed without a word.
    pub(super) async fn refuse(&mut self, refused: TooManyClients) {
        self.decoder.set_max_len(PRE_AUTH_MAX_MESSAGE);
        let first = tokio::time::timeout(REFUSAL_WAIT, async {
            loop {
                match self.decoder.decode(&mut self.buf) {
                    Ok(Some(frame)) => return Some(frame.header),
                    Ok(None) => {}
                    Err(_) => return Header::parse(&self.buf),
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(n) if n > 0 => {}
                    _ => return None,
                }
            }
        });
        let header = tokio::select! {
            _ = self.token.cancelled() => None,
            h = first => h.ok().flatten(),
        };
        let Some(header) = header else {
            return;
        };
        let doc = to_bytes(&error_doc(ErrorCode::HostUnreachable, refused.to_string()));
        let id = self.next_id();
        let bytes = if header.op_code == OpCode::Query {
            encode_op_reply(id, header.request_id, &doc)
        } else {
            encode_op_msg(id, header.request_id, 0, &doc)
        };
        // Bounded too: a refused client that does not read must not keep its task.
        let _ = tokio::time::timeout(REFUSAL_WAIT, async {
            let _ = self.write(&bytes).await;
            let _ = self.stream.shutdown().await;
        })
        .await;
    }
}

/// Sleeps until `until` and says which guard expired; never wakes without a deadline.
async fn expire_at(until: Option<(Instant, Expiry)>) -> Expiry {
    match until {
        Some((at, expiry)) => {
            tokio::time::sleep_until(at).await;
            expiry
        }
        None => std::future::pending().await,
    }
}

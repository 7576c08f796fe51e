//! Exhaust cursors (OP_MSG `exhaustAllowed` on a getMore): the request goes upstream with
//! the bit, over a connection held for the whole stream, and each reply is written to the
//! client as it arrives — the next one is read from the server only once the client's
//! socket took the last, so a slow client slows the server (TCP backpressure) and at most
//! one reply is buffered. The stream ends at the first reply without `moreToCome`; the
//! connection then goes back to the pool (or, inside a transaction, stays pinned to it).
//! A stream cut short (the client leaves, a write or read fails) leaves unread replies on
//! the connection, so it is closed instead.

use tokio::time::Instant;

use super::read::Activity;
use super::{MongoSessionError, Session};
use crate::pool::{MongoPool, PooledConn};
use crate::request::RequestInfo;
use crate::upstream::MongoUpstreamError;
use crate::wire::{flags, Frame};

impl Session {
    /// Streams the replies to an exhaust getMore over `conn` (checked out of `member`'s
    /// pool, the primary's for `None`). An upstream that does not stream answers once,
    /// which is relayed like any reply. `pin`: the slot of the transaction `conn` is
    /// pinned to; a stream that ends cleanly puts the connection back there instead of
    /// in the pool (a stream cut short leaves the slot empty).
    pub(super) async fn stream_replies(
        &mut self,
        mut conn: PooledConn,
        frame: Frame,
        info: &RequestInfo,
        member: Option<(MongoPool, String)>,
        pin: Option<&mut Option<PooledConn>>,
    ) -> Result<(), MongoSessionError> {
        let mut reply_to = frame.header.request_id;
        let mut next = conn.open_stream(frame).await;
        let mut replies = 0_u64;
        loop {
            let reply = match next {
                Ok(reply) => reply,
                Err(e) => {
                    conn.discard();
                    let labels = crate::labels::lost_round_trip(info, pin.is_some());
                    return self.relay(reply_to, Err(e), labels, false).await;
                }
            };
            replies += 1;
            let more = reply
                .msg_flags()
                .is_some_and(|f| f & flags::MORE_TO_COME != 0);
            let Some(reply) = self.note_streamed(reply, info, member.as_ref()) else {
                return Ok(());
            };
            if !more {
                // The stream is over and the connection clean: back to its transaction,
                // or to the pool before the last write, which may be slow.
                match pin {
                    Some(slot) => *slot = Some(conn),
                    None => drop(conn),
                }
                tracing::debug!(replies, "exhaust stream ended");
                return self.relay_streamed(reply, reply_to).await.map(|_| ());
            }
            // A failed write drops `conn` mid-stream: it is closed, never reused.
            reply_to = self.relay_streamed(reply, reply_to).await?;
            self.last_seen = Instant::now();
            next = tokio::select! {
                r = conn.next_streamed() => r,
                activity = self.client_activity() => {
                    // A client that closes mid-stream (a driver closing its exhaust
                    // cursor early closes the connection) is noticed here even while
                    // the server takes its time.
                    if !matches!(activity, Ok(Activity::Sent)) {
                        conn.discard();
                        tracing::debug!(replies, "client left during an exhaust stream");
                        return activity.map(|_| ());
                    }
                    // It sent something during the stream (no driver does): kept for
                    // after it, and the socket is not read again until then.
                    conn.next_streamed().await
                }
            };
        }
    }

    /// The cursor bookkeeping of a streamed reply, as for any reply: this client's
    /// cursors, where a member's cursors live, a primary that stepped down. Gives the
    /// reply back.
    fn note_streamed(
        &mut self,
        reply: Frame,
        info: &RequestInfo,
        member: Option<&(MongoPool, String)>,
    ) -> Option<Frame> {
        let result: Result<_, MongoUpstreamError> = Ok(Some(reply));
        self.note_cursors(info, &result);
        match member {
            Some((_, addr)) => self.track_cursors(info, &result, addr),
            None => self.watch_for_failover(&result),
        }
        result.ok().flatten()
    }

    /// Writes one streamed reply, answering `response_to` (the client's request, then
    /// Sluice's previous reply); returns the reply's own id.
    async fn relay_streamed(
        &mut self,
        mut reply: Frame,
        response_to: i32,
    ) -> Result<i32, MongoSessionError> {
        self.ctx
            .pool
            .counters()
            .add_bytes_out(reply.data.len() as u64);
        let id = self.next_id();
        reply.set_ids(id, response_to);
        reply.prepare_forward(false);
        self.send(reply.data).await?;
        Ok(id)
    }
}

//! LISTEN/NOTIFY for one client in transaction mode: the channels it listens on (kept in
//! its state by the exchange) are mirrored into the pool's notification hub
//! ([`crate::notify`]), and the notifications the hub queues for it are written out
//! between responses.

use std::task::{Context, Poll};

use super::Relay;
use crate::session::PgSessionError;

impl Relay<'_> {
    /// After client frames went through the exchange: follow LISTEN/UNLISTEN, and give
    /// the server back when Sluice answered everything itself (a DEALLOCATE or LISTEN
    /// between transactions needs no server). This is
    /// [`Relay::after_exchange`] when it needs no await (not listening, nothing to reset):
    /// true when done, false when the caller must run `after_exchange`.
    pub(super) fn after_exchange_now(&mut self) -> bool {
        if self.listens() {
            return false;
        }
        !self.transaction_over() || self.release_clean()
    }

    /// After client frames went through the exchange, the path that may wait (boxed by
    /// its caller: see [`Relay::after_exchange_now`]).
    pub(super) async fn after_exchange(&mut self) {
        if self.listens() {
            Box::pin(self.sync_listening()).await;
        }
        if self.transaction_over() {
            self.release().await;
        }
    }

    /// The client listens on a channel, or did until now.
    pub(super) fn listens(&self) -> bool {
        self.notify.is_some() || !self.state.listening.is_empty()
    }

    /// Brings the pool's notification hub in line with the channels the client listens
    /// on, and waits (at most [`crate::notify::LISTEN_ACK_TIMEOUT`]) for new upstream
    /// LISTENs: the client's `LISTEN` answer, still queued, then means what it says.
    pub(super) async fn sync_listening(&mut self) {
        if self.state.listening.is_empty() {
            self.notify = None;
            return;
        }
        let pool = self.pool.clone();
        let sub = self
            .notify
            .get_or_insert_with(|| Box::new(pool.notify_hub().subscribe(pool.clone())));
        for wait in sub.sync(self.state.listening.set()) {
            if tokio::time::timeout(crate::notify::LISTEN_ACK_TIMEOUT, wait)
                .await
                .is_err()
            {
                tracing::warn!(
                    client = %self.who.addr,
                    "LISTEN answered before the upstream LISTEN completed (the notification \
                     listener is not connected); notifications may be missed until it is"
                );
            }
        }
    }

    /// Queues the notifications waiting for a listening client, when nothing is owed to it
    /// (between responses: right after a ReadyForQuery, never inside another answer).
    /// True when some were queued (the next pass writes them).
    pub(super) fn poll_notifications(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Result<bool, PgSessionError> {
        let Some(sub) = self.notify.as_mut() else {
            return Ok(false);
        };
        if self.terminating || self.exchange.busy() {
            return Ok(false);
        }
        let mut queued = false;
        while self.to_client.has_room() {
            match sub.poll_next(cx) {
                Poll::Ready(Some(frame)) => {
                    self.to_client.buf.extend_from_slice(&frame);
                    queued = true;
                }
                Poll::Ready(None) => return Err(PgSessionError::NotificationsOverflow),
                Poll::Pending => break,
            }
        }
        Ok(queued)
    }
}

//! The hub's upstream connection: logs in with the pool's credentials, sends what the
//! [`Registry`] plans, reads NotificationResponses and fans them out, reconnects (with
//! backoff) when the connection breaks, and ends when nobody listens any more.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Command, HubUpstream, Registry};
use crate::protocol::frame::ProtocolError;
use crate::protocol::frame::{read_cstr, Frames, MAX_FRAME_LEN};
use crate::protocol::messages;
use crate::upstream::{PgUpstreamError, ServerConn, UpstreamProtocolError};

/// NotificationResponse.
const NOTIFICATION: u8 = b'A';
/// Longest pause between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Why a connection's session ended.
enum End {
    /// Nobody listens: the task may stop.
    Unused,
    /// The connection broke.
    Lost(PgUpstreamError),
}

/// Runs the hub's connection until nobody listens; see the module docs.
pub(super) async fn run(
    registry: Arc<Mutex<Registry>>,
    changed: Arc<tokio::sync::Notify>,
    upstream: impl HubUpstream,
) {
    let name = upstream.name();
    let mut backoff = Duration::from_millis(100);
    let mut lost = false;
    loop {
        if stop_if_unused(&registry) {
            tracing::debug!(pool = %name, "notification listener closed: nobody listens");
            return;
        }
        let conn = match upstream.connect().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(pool = %name, error = %e, retry_in = ?backoff, "notification listener cannot connect");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        if lost {
            upstream.reconnected();
            tracing::warn!(pool = %name, "notification listener reconnected; notifications sent while it was down were lost");
        }
        let end = serve(&registry, &changed, conn, &name).await;
        // The connection is gone either way: a channel listened on again must be
        // LISTENed on the next one.
        registry.lock().disconnected();
        match end {
            End::Unused => {}
            End::Lost(e) => {
                lost = true;
                tracing::warn!(pool = %name, error = %e, "notification listener connection lost; reconnecting");
            }
        }
    }
}

/// Marks the task stopped when nobody listens (under the lock `subscribe` takes, so a new
/// subscriber either sees it running or starts a new one).
fn stop_if_unused(registry: &Mutex<Registry>) -> bool {
    let mut reg = registry.lock();
    if reg.unused() {
        reg.running = false;
        return true;
    }
    false
}

/// One connection's life: send the plan, read answers and notifications.
async fn serve(
    registry: &Mutex<Registry>,
    changed: &tokio::sync::Notify,
    mut conn: ServerConn,
    name: &str,
) -> End {
    let mut in_flight: VecDeque<(Command, bool)> = VecDeque::new();
    let mut out = BytesMut::new();
    loop {
        let notified = changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let mut reg = registry.lock();
            if in_flight.is_empty() && reg.unused() {
                return End::Unused;
            }
            for command in reg.plan() {
                messages::write_query(&mut out, &command.sql());
                in_flight.push_back((command, false));
            }
        }
        if !out.is_empty() {
            if let Err(e) = conn.stream.write_all(&out).await {
                return End::Lost(e.into());
            }
            if let Err(e) = conn.stream.flush().await {
                return End::Lost(e.into());
            }
            out.clear();
        }
        tokio::select! {
            _ = &mut notified => {}
            read = conn.stream.read_buf(&mut conn.buf) => match read {
                Ok(0) => return End::Lost(PgUpstreamError::Closed),
                Ok(_) => {
                    if let Err(e) = handle_frames(registry, &mut conn.buf, &mut in_flight, name) {
                        return End::Lost(e);
                    }
                }
                Err(e) => return End::Lost(e.into()),
            },
        }
    }
}

/// Handles the complete frames in `buf`: notifications are fanned out, ReadyForQuery
/// completes the oldest command in flight.
fn handle_frames(
    registry: &Mutex<Registry>,
    buf: &mut BytesMut,
    in_flight: &mut VecDeque<(Command, bool)>,
    name: &str,
) -> Result<(), PgUpstreamError> {
    use crate::protocol::tag::backend::{ERROR_RESPONSE, READY_FOR_QUERY};
    let mut frames = Frames::new(buf, MAX_FRAME_LEN);
    let mut start = 0;
    let mut notes = Vec::new();
    while let Some(frame) = frames.next() {
        let end = frames.consumed();
        match frame.tag {
            NOTIFICATION => {
                let body = frame.body.get(4..).unwrap_or_default();
                let (channel, _) = read_cstr(body, "notification channel").map_err(frame_error)?;
                notes.push((channel.to_vec(), Bytes::copy_from_slice(&buf[start..end])));
            }
            ERROR_RESPONSE => {
                if let Some((command, failed)) = in_flight.front_mut() {
                    *failed = true;
                    tracing::warn!(pool = %name, ?command, error = %String::from_utf8_lossy(frame.body), "notification listener command failed");
                }
            }
            READY_FOR_QUERY => {
                if let Some((command, _)) = in_flight.pop_front() {
                    registry.lock().answered(&command);
                }
            }
            _ => {}
        }
        start = end;
    }
    if let Some(e) = frames.error() {
        return Err(frame_error(e.clone()));
    }
    if !notes.is_empty() {
        let mut reg = registry.lock();
        for (channel, frame) in &notes {
            reg.fan_out(channel, frame);
        }
    }
    let consumed = frames.consumed();
    bytes::Buf::advance(buf, consumed);
    Ok(())
}

fn frame_error(e: ProtocolError) -> PgUpstreamError {
    UpstreamProtocolError::Frame(e).into()
}

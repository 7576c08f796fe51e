//! Drives the relay's protocol state machine ([`super::exchange::Exchange`]) with arbitrary
//! bytes from both sides, the way the relay does (the client's complete frames, the server's
//! buffered bytes), and checks what must hold for any input: no panic, the server side never
//! consumes more than it was given, and everything written to either side is whole frames.
//! Used by the `exchange` fuzz target and by a property test in the normal test run.

use bytes::{Buf, BytesMut};

use super::exchange::{Exchange, Features, Sides};
use crate::protocol::frame::{frame_len, MAX_FRAME_LEN};
use crate::state::prepared::StatementRegistry;
use crate::state::{ClientState, ServerState};

/// Length of the whole frames at the front of `buf` (what the relay hands the exchange).
fn whole_frames(buf: &[u8]) -> usize {
    let mut pos = 0;
    while let Ok(Some(n)) = frame_len(&buf[pos..], MAX_FRAME_LEN) {
        pos += n;
    }
    pos
}

fn assert_whole_frames(out: &[u8], side: &str) {
    assert_eq!(
        whole_frames(out),
        out.len(),
        "partial frame written to the {side}"
    );
}

/// Feeds `data` to an exchange. The first byte picks the features; then records of
/// `[direction, length, bytes...]`: even direction = client frames, odd = server bytes,
/// a direction byte of `0xff` = a new server for the next transaction. Returns how many
/// records were handled before the input ended or a protocol error stopped it.
pub fn drive_exchange(data: &[u8]) -> usize {
    let Some((&sel, mut rest)) = data.split_first() else {
        return 0;
    };
    let mut handled = 0;
    let mut exchange = Exchange::new(Features {
        map_statements: sel & 1 != 0,
        track_settings: sel & 2 != 0,
        cache_size: u32::from(sel >> 4),
        listen_in_place: sel & 4 != 0,
    });
    let registry = StatementRegistry::default();
    let mut client = ClientState::default();
    let mut server = ServerState::default();
    let mut from_server = BytesMut::new();
    while let [dir, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (chunk, next) = tail.split_at(n);
        rest = next;
        if *dir == 0xff {
            server = ServerState::default();
            from_server.clear();
            exchange.on_checkout();
            handled += 1;
            continue;
        }
        let (mut to_server, mut to_client) = (BytesMut::new(), BytesMut::new());
        let mut io = Sides {
            client: &mut client,
            server: &mut server,
            registry: &registry,
            to_server: &mut to_server,
            to_client: &mut to_client,
        };
        if dir & 1 == 0 {
            let whole = whole_frames(chunk);
            // Terminate never reaches the exchange: the relay stops before it.
            let mut pos = 0;
            while pos < whole {
                let Ok(Some(len)) = frame_len(&chunk[pos..], MAX_FRAME_LEN) else {
                    break;
                };
                if chunk[pos] == b'X' {
                    break;
                }
                pos += len;
            }
            if exchange.on_client(&chunk[..pos], &mut io).is_err() {
                return handled;
            }
        } else {
            from_server.extend_from_slice(chunk);
            match exchange.on_server(&from_server, &mut io) {
                Ok(consumed) => {
                    assert!(consumed <= from_server.len(), "consumed past the input");
                    from_server.advance(consumed);
                }
                Err(_) => return handled,
            }
        }
        assert_whole_frames(&to_server, "server");
        assert_whole_frames(&to_client, "client");
        // What the exchange reports about itself stays queryable.
        let _ = (
            exchange.busy(),
            exchange.idle(),
            exchange.status(),
            exchange.needs_reset(),
        );
        handled += 1;
    }
    handled
}

#[cfg(test)]
mod tests {
    use super::drive_exchange;
    use proptest::collection::vec;
    use proptest::prelude::*;

    /// Some real frames to splice into the random records, so the state machine gets past
    /// framing: a simple query, an extended batch, and the server's answers.
    fn piece() -> impl Strategy<Value = Vec<u8>> {
        let frames: Vec<Vec<u8>> = vec![
            b"Q\0\0\0\x0dselect 1\0".to_vec(),
            b"P\0\0\0\x12s1\0select 1\0\0\0".to_vec(),
            b"B\0\0\0\x0e\0s1\0\0\0\0\0\0\0".to_vec(),
            b"E\0\0\0\x09\0\0\0\0\0".to_vec(),
            b"S\0\0\0\x04".to_vec(),
            b"C\0\0\0\x0dSELECT 1\0".to_vec(),
            b"1\0\0\0\x04".to_vec(),
            b"2\0\0\0\x04".to_vec(),
            b"Z\0\0\0\x05I".to_vec(),
            b"Z\0\0\0\x05T".to_vec(),
            b"E\0\0\0\x13SERROR\0C42601\0\0".to_vec(),
        ];
        prop_oneof![proptest::sample::select(frames), vec(any::<u8>(), 0..24),]
    }

    proptest! {
        #[test]
        fn exchange_never_panics(
            sel in any::<u8>(),
            records in vec((prop_oneof![Just(0u8), Just(1u8), Just(0xffu8)], vec(piece(), 1..4)), 0..24),
        ) {
            let mut data = vec![sel];
            for (dir, pieces) in records {
                let bytes: Vec<u8> = pieces.concat();
                for chunk in bytes.chunks(255) {
                    data.push(dir);
                    data.push(chunk.len() as u8);
                    data.extend_from_slice(chunk);
                }
            }
            drive_exchange(&data);
        }
    }

    /// The driver really runs the state machine: a well-formed conversation goes through
    /// to the end, and the exchange ends idle with the server's status.
    #[test]
    fn a_real_conversation_is_handled_whole() {
        let client = b"Q\0\0\0\x0dselect 1\0";
        let server = b"C\0\0\0\x0dSELECT 1\0Z\0\0\0\x05I";
        let mut data = vec![0b11];
        for (dir, bytes) in [
            (0u8, &client[..]),
            (1, &server[..]),
            (0xff, &[][..]),
            (0, &client[..]),
        ] {
            data.push(dir);
            data.push(bytes.len() as u8);
            data.extend_from_slice(bytes);
        }
        assert_eq!(drive_exchange(&data), 4);
    }
}

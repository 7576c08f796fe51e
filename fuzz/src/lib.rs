//! Oracles shared by the fuzz targets (`fuzz_targets/*.rs`) and the property tests
//! (`tests/tests/proptest_decoders.rs` includes this file with `#[path]`).
//!
//! Each `check_*` function feeds arbitrary bytes to one of Sluice's sans-IO decoders and
//! asserts what must hold for *any* input: no panic, consistent bookkeeping, and exact
//! round trips through the matching writers for whatever decodes successfully. Anything
//! else is a bug.
//!
//! Only dependencies the tests crate also has are used here (sluice-pg, sluice-mongo,
//! sluice-auth, bytes, base64, hmac, sha2).

#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::BytesMut;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use sluice_auth::{AuthError, ScramServer, ScramVerifier};
use sluice_pg::protocol::frame::{frame_len, read_cstr, Frame, Frames, MAX_FRAME_LEN};
use sluice_pg::protocol::frontend::{parse_names_statement, parse_password, parse_sasl_initial};
use sluice_pg::protocol::messages::{
    query_text, write_parse, write_query, write_target, Bind, Parse, Target,
};
use sluice_pg::protocol::startup::{
    parse_startup, startup_len, write_cancel, write_startup, StartupPacket, MAX_STARTUP_LEN,
};
use sluice_pg::state::{setting_name, ClientState};

use sluice_mongo::hello::HelloRequest;
use sluice_mongo::request::{reply_cursor_id, reply_says_not_primary, RequestInfo};
use sluice_mongo::wire::{
    compress as mongo_compress, decompress as mongo_decompress, peek_command_name, Compressor,
    Frame as MongoFrame, FrameDecoder, OpCode, OpMsg, OpQuery,
};

// ------------------------------------------------------------------------------------------
// Frontend frames
// ------------------------------------------------------------------------------------------

/// A frame limit derived from one input byte, so small limits (and the real one) get
/// exercised: 0 → the real 1 GiB limit, else 4..=1027.
pub fn frame_limit(b: u8) -> usize {
    if b == 0 {
        MAX_FRAME_LEN
    } else {
        4 + usize::from(b) * 4
    }
}

/// Encodes one tagged frame.
pub fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(body.len() + 5);
    v.push(tag);
    v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// What scanning a whole buffer yields: the frames (tag, body), the bytes they cover, and
/// whether a framing error stopped the scan.
#[derive(Debug, PartialEq, Eq)]
pub struct Scan {
    pub frames: Vec<(u8, Vec<u8>)>,
    pub consumed: usize,
    pub error: bool,
}

/// Scans `data` with [`Frames`], checking the iterator's bookkeeping, and decodes every
/// frame with every message view.
pub fn check_frames(data: &[u8], max: usize) -> Scan {
    let mut it = Frames::new(data, max);
    let mut frames = Vec::new();
    let mut covered = 0usize;
    for f in it.by_ref() {
        assert!(f.body.len() + 4 <= max, "frame longer than the limit");
        covered += 5 + f.body.len();
        check_frame(f);
        frames.push((f.tag, f.body.to_vec()));
    }
    // A stopped iterator stays stopped.
    assert!(it.next().is_none(), "Frames yielded after returning None");
    let consumed = it.consumed();
    assert_eq!(consumed, covered, "consumed() disagrees with the frames");
    assert!(consumed <= data.len());
    let rest = &data[consumed..];
    let error = it.error().is_some();
    match frame_len(rest, max) {
        Ok(None) => assert!(!error, "error reported but the rest is merely incomplete"),
        Ok(Some(n)) => panic!("iteration stopped before a complete frame of {n} bytes"),
        Err(e) => assert_eq!(it.error(), Some(&e), "rest fails differently"),
    }
    Scan {
        frames,
        consumed,
        error,
    }
}

/// Feeds `data` to a streaming reader in the chunks given by `cuts` (sorted or not; values
/// beyond the end are ignored), as the relay does with socket reads, and returns what it
/// saw. Must equal [`check_frames`] over the whole buffer.
pub fn scan_in_chunks(data: &[u8], max: usize, cuts: &[usize]) -> Scan {
    let mut cuts: Vec<usize> = cuts.iter().copied().filter(|&c| c <= data.len()).collect();
    cuts.push(data.len());
    cuts.sort_unstable();
    cuts.dedup();
    let mut buf: Vec<u8> = Vec::new();
    let mut frames = Vec::new();
    let mut consumed = 0usize;
    let mut error = false;
    let mut start = 0usize;
    for cut in cuts {
        buf.extend_from_slice(&data[start..cut]);
        start = cut;
        let mut it = Frames::new(&buf, max);
        for f in it.by_ref() {
            frames.push((f.tag, f.body.to_vec()));
        }
        let used = it.consumed();
        if it.error().is_some() {
            error = true;
            consumed += used;
            break;
        }
        consumed += used;
        buf.drain(..used);
    }
    Scan {
        frames,
        consumed,
        error,
    }
}

/// Asserts that scanning `data` in the chunks of `cuts` gives exactly the whole-buffer
/// result.
pub fn check_split_invariance(data: &[u8], max: usize, cuts: &[usize]) {
    let whole = check_frames(data, max);
    let chunked = scan_in_chunks(data, max, cuts);
    assert_eq!(whole, chunked, "split at {cuts:?} changes the frames");
}

/// Runs every frontend message view over one frame body and checks round trips through the
/// writers for whatever decodes.
pub fn check_frame(f: Frame<'_>) {
    let original = frame(f.tag, f.body);
    check_body(f.body);
    match f.tag {
        b'P' => {
            if let Ok(p) = Parse::decode(f.body) {
                let mut out = BytesMut::new();
                write_parse(&mut out, p.name, p.rest);
                assert_eq!(&out[..], &original[..], "Parse does not re-encode exactly");
            }
        }
        b'B' => {
            if let Ok(b) = Bind::decode(f.body) {
                let mut out = BytesMut::new();
                b.write_renamed(&mut out, b.statement);
                assert_eq!(&out[..], &original[..], "Bind does not re-encode exactly");
            }
        }
        b'D' | b'C' => {
            if let Ok(t) = Target::decode(f.body) {
                let mut out = BytesMut::new();
                write_target(&mut out, f.tag, t.kind, t.name);
                assert_eq!(
                    &out[..],
                    &original[..],
                    "{} does not re-encode",
                    f.tag as char
                );
            }
        }
        b'Q' => {
            if let Ok(q) = query_text(f.body) {
                let mut out = BytesMut::new();
                write_query(&mut out, q);
                if f.body.len() == q.len() + 1 {
                    assert_eq!(&out[..], &original[..], "Query does not re-encode exactly");
                }
                assert_eq!(query_text(&out[5..]), Ok(q));
            }
        }
        _ => {}
    }
}

/// Every decoder over one body, whatever the tag: none may panic, and successful decodes
/// survive renaming.
pub fn check_body(body: &[u8]) {
    let _ = parse_names_statement(body);
    let _ = parse_password(body);
    if let Ok(s) = parse_sasl_initial(body) {
        assert!(s.data.len() <= body.len());
    }
    let _ = query_text(body);
    let _ = read_cstr(body, "fuzz");
    if let Ok(p) = Parse::decode(body) {
        let q = p.query();
        assert!(q.len() < p.rest.len(), "query text longer than the body");
        // Renaming (what the relay does for mapped statements) keeps the rest verbatim.
        let mut out = BytesMut::new();
        write_parse(&mut out, b"sluice_42", p.rest);
        assert_eq!(frame_len(&out, MAX_FRAME_LEN), Ok(Some(out.len())));
        let again = Parse::decode(&out[5..]).unwrap();
        assert_eq!(
            (again.name, again.rest, again.query()),
            (&b"sluice_42"[..], p.rest, q)
        );
    }
    if let Ok(b) = Bind::decode(body) {
        let mut out = BytesMut::new();
        b.write_renamed(&mut out, b"sluice_7");
        assert_eq!(frame_len(&out, MAX_FRAME_LEN), Ok(Some(out.len())));
        let again = Bind::decode(&out[5..]).unwrap();
        assert_eq!(
            (again.portal, again.statement, again.rest),
            (b.portal, &b"sluice_7"[..], b.rest)
        );
    }
    if let Ok(t) = Target::decode(body) {
        assert!(t.kind == b'S' || t.kind == b'P');
        assert_eq!(t.name.len() + 2, body.len());
    }
}

/// Fuzz entry for the frontend: first byte picks the frame limit, the next two give a split
/// point; the rest is the byte stream.
pub fn fuzz_frontend(data: &[u8]) {
    let Some((&limit, rest)) = data.split_first() else {
        return;
    };
    let max = frame_limit(limit);
    let (cut, stream) = match rest {
        [a, b, stream @ ..] => (usize::from(u16::from_be_bytes([*a, *b])), stream),
        _ => (0, rest),
    };
    let cuts = [cut % (stream.len() + 1), 1, 5, cut % 7];
    check_split_invariance(stream, max, &cuts);
    // Byte-at-a-time for short inputs: every split point at once.
    if stream.len() <= 64 {
        let all: Vec<usize> = (0..=stream.len()).collect();
        check_split_invariance(stream, max, &all);
    }
}

// ------------------------------------------------------------------------------------------
// Startup packet
// ------------------------------------------------------------------------------------------

/// Runs the startup packet decoder over arbitrary bytes, as the listener would.
pub fn check_startup(data: &[u8]) {
    // Robust even on undelimited input (the listener never does this, but it must not panic).
    let _ = parse_startup(data);
    let Ok(Some(n)) = startup_len(data) else {
        if let Ok(None) = startup_len(data) {
            assert!(
                data.len() < declared(data),
                "complete packet reported incomplete"
            );
        }
        return;
    };
    assert!((8..=MAX_STARTUP_LEN).contains(&n) && n <= data.len());
    // Every prefix is incomplete, never an error once the header is there.
    for cut in [0, 1, 3, 4, 5, 7, n - 1] {
        if cut < n {
            let r = startup_len(&data[..cut]);
            assert_eq!(r, Ok(None), "prefix of {cut} bytes of a {n}-byte packet");
        }
    }
    let packet = &data[..n];
    match parse_startup(packet) {
        Ok(StartupPacket::Startup(p)) => {
            let _ = p.user();
            let _ = p.database();
            let _ = p.protocol_options().count();
            for (k, v) in &p.params {
                assert!(!k.is_empty() && !k.contains('\0') && !v.contains('\0'));
                if let Some(name) = setting_name(k) {
                    assert_eq!(name, k.to_ascii_lowercase());
                }
            }
            let state = ClientState::from_startup(&p.params);
            assert!(state.settings.contains_key("application_name"));
            for name in state.settings.keys() {
                assert!(setting_name(name).is_some(), "unsafe setting name {name:?}");
            }
            // Round trip (write_startup always writes 3.0).
            let pairs: Vec<(&str, &str)> = p
                .params
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let mut buf = Vec::new();
            write_startup(&mut buf, &pairs);
            if buf.len() <= MAX_STARTUP_LEN {
                assert_eq!(startup_len(&buf), Ok(Some(buf.len())));
                match parse_startup(&buf) {
                    Ok(StartupPacket::Startup(q)) => {
                        assert_eq!(q.params, p.params);
                        assert_eq!(q.minor_version, 0);
                    }
                    other => panic!("re-encoded startup parsed as {other:?}"),
                }
            }
        }
        Ok(StartupPacket::Cancel { pid, secret }) => {
            assert_eq!(
                parse_startup(&write_cancel(pid, secret)),
                Ok(StartupPacket::Cancel { pid, secret })
            );
        }
        Ok(StartupPacket::SslRequest | StartupPacket::GssEncRequest) | Err(_) => {}
    }
}

fn declared(data: &[u8]) -> usize {
    data.get(..4)
        .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]).max(0) as usize)
        .unwrap_or(usize::MAX)
}

// ------------------------------------------------------------------------------------------
// SCRAM-SHA-256 server
// ------------------------------------------------------------------------------------------

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut m = HmacSha256::new_from_slice(key).unwrap();
    m.update(msg);
    m.finalize().into_bytes().into()
}

/// A fixed test credential: the SaltedPassword and the verifier derived from it (the PBKDF2
/// step is skipped; only its output matters to the exchange).
struct Cred {
    client_key: [u8; 32],
    verifier: ScramVerifier,
}

fn cred() -> &'static Cred {
    static CRED: OnceLock<Cred> = OnceLock::new();
    CRED.get_or_init(|| {
        let salted = [0x5au8; 32];
        let client_key = hmac(&salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let server_key = hmac(&salted, b"Server Key");
        Cred {
            client_key,
            verifier: ScramVerifier {
                iterations: 4096,
                salt: b"fuzz-salt-16byte".to_vec(),
                stored_key,
                server_key,
            },
        }
    })
}

const SERVER_NONCE: &str = "c2VydmVyLW5vbmNlLWZ1eno";

/// A SCRAM nonce from arbitrary bytes: printable ASCII except `,`, never empty.
pub fn nonce_from(bytes: &[u8]) -> String {
    let s: String = bytes
        .iter()
        .map(|&b| 0x21 + (b % 0x5e))
        .filter(|&c| c != b',')
        .map(char::from)
        .take(64)
        .collect();
    if s.is_empty() {
        "x".to_owned()
    } else {
        s
    }
}

/// Extension attributes (`,x=value`) from arbitrary bytes, well formed.
fn extensions_from(bytes: &[u8]) -> String {
    bytes
        .iter()
        .take(4)
        .map(|&b| format!(",{}={}", char::from(b'a' + b % 26), b))
        .collect()
}

/// After an error, every later step errors too (errors are sticky).
fn assert_sticky(server: &mut ScramServer) {
    assert!(server.handle_client_first(b"n,,n=,r=abc").is_err());
    assert!(server.handle_client_final(b"c=biws,r=abc,p=AAAA").is_err());
    assert!(!server.is_done());
}

/// Runs a raw two-message exchange with arbitrary client messages.
pub fn check_scram_raw(first: &[u8], last: &[u8]) {
    let mut server = ScramServer::new(cred().verifier.clone(), SERVER_NONCE.to_owned());
    match server.handle_client_first(first) {
        Ok(reply) => {
            let text = std::str::from_utf8(&reply).expect("server-first is UTF-8");
            assert!(text.starts_with("r="), "server-first {text:?}");
            assert!(text.contains(SERVER_NONCE));
            assert!(!server.is_done());
            match server.handle_client_final(last) {
                // Forging a proof by chance is not expected; if it happens the message was
                // a valid exchange, which is fine.
                Ok(_) => assert!(server.is_done()),
                Err(_) => assert_sticky(&mut server),
            }
        }
        Err(_) => {
            assert_sticky(&mut server);
        }
    }
    // Out of order: the final message first.
    let mut server = ScramServer::new(cred().verifier.clone(), SERVER_NONCE.to_owned());
    assert_eq!(
        server.handle_client_final(last),
        Err(AuthError::InvalidState)
    );
}

/// A well-formed client-first with a fuzzed nonce, then a final message whose nonce is right
/// and whose tail (extensions, proof) is arbitrary text.
pub fn check_scram_tail(nonce_bytes: &[u8], tail: &[u8]) {
    let client_nonce = nonce_from(nonce_bytes);
    let mut server = ScramServer::new(cred().verifier.clone(), SERVER_NONCE.to_owned());
    let first = format!("n,,n=,r={client_nonce}");
    server
        .handle_client_first(first.as_bytes())
        .expect("valid client-first refused");
    let mut last = format!("c=biws,r={client_nonce}{SERVER_NONCE}").into_bytes();
    last.extend_from_slice(tail);
    if server.handle_client_final(&last).is_err() {
        assert_sticky(&mut server);
    }
}

/// A complete, correct exchange (fuzzed nonce, gs2 flag, extensions) must succeed with the
/// right server signature; the same exchange with one proof bit flipped, or against a
/// failing server, must fail with InvalidPassword.
pub fn check_scram_valid(flags: u8, nonce_bytes: &[u8], ext_bytes: &[u8], flip: u8) {
    let cred = cred();
    let client_nonce = nonce_from(nonce_bytes);
    let (gs2, cbind) = if flags & 1 == 0 {
        ("n,,", "biws")
    } else {
        ("y,,", "eSws")
    };
    let bare = format!("n=ignored,r={client_nonce}{}", extensions_from(ext_bytes));
    let first = format!("{gs2}{bare}");
    let failing = flags & 2 != 0;
    let mut server = if failing {
        ScramServer::new_failing("someone", SERVER_NONCE.to_owned())
    } else {
        ScramServer::new(cred.verifier.clone(), SERVER_NONCE.to_owned())
    };
    let server_first = server
        .handle_client_first(first.as_bytes())
        .unwrap_or_else(|e| panic!("valid client-first {first:?} refused: {e:?}"));
    let server_first = String::from_utf8(server_first).unwrap();
    let nonce = format!("{client_nonce}{SERVER_NONCE}");
    assert!(server_first.starts_with(&format!("r={nonce},s=")));
    let without_proof = format!(
        "c={cbind},r={nonce}{}",
        extensions_from(&ext_bytes[ext_bytes.len().min(2)..])
    );
    let auth_message = format!("{bare},{server_first},{without_proof}");
    let signature = hmac(&cred.verifier.stored_key, auth_message.as_bytes());
    let mut proof = cred.client_key;
    for (p, s) in proof.iter_mut().zip(signature) {
        *p ^= s;
    }
    let tamper = flags & 4 != 0;
    if tamper {
        proof[usize::from(flip) % 32] ^= 1 << (flip % 8);
    }
    let last = format!("{without_proof},p={}", STANDARD.encode(proof));
    let result = server.handle_client_final(last.as_bytes());
    if failing || tamper {
        assert_eq!(result, Err(AuthError::InvalidPassword), "{last:?}");
        assert!(!server.is_done());
    } else {
        let reply = result.unwrap_or_else(|e| panic!("valid exchange failed: {e:?} ({last:?})"));
        let expected = format!(
            "v={}",
            STANDARD.encode(hmac(&cred.verifier.server_key, auth_message.as_bytes()))
        );
        assert_eq!(String::from_utf8(reply).unwrap(), expected);
        assert!(server.is_done());
        // A finished exchange accepts nothing more.
        assert_eq!(
            server.handle_client_final(last.as_bytes()),
            Err(AuthError::InvalidState)
        );
    }
}

/// Fuzz entry for SCRAM: the first byte picks the scenario.
pub fn fuzz_scram(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let split = rest.first().map_or(0, |&b| usize::from(b)).min(rest.len());
    let (a, b) = rest.split_at(split);
    match mode % 3 {
        0 => check_scram_raw(a, b),
        1 => check_scram_tail(a, b),
        _ => {
            let flip = b.first().copied().unwrap_or(0);
            check_scram_valid(mode / 3, a, b, flip);
        }
    }
}

// ------------------------------------------------------------------------------------------
// MongoDB wire messages
// ------------------------------------------------------------------------------------------

/// Decodes `data` as a stream of MongoDB messages fed in `pieces` (cut at the given
/// offsets); returns the frames and whether the stream ended in an error.
fn mongo_frames(data: &[u8], limit: usize, cuts: &[usize]) -> (Vec<MongoFrame>, bool) {
    let decoder = FrameDecoder::new(limit);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut start = 0;
    let mut ends: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    ends.sort_unstable();
    ends.push(data.len());
    for end in ends {
        buf.extend_from_slice(&data[start..end.max(start)]);
        start = end.max(start);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    assert_eq!(frame.data.len(), frame.header.length as usize);
                    assert!(frame.data.len() <= limit);
                    frames.push(frame);
                }
                Ok(None) => break,
                Err(_) => return (frames, true),
            }
        }
        // Room is reserved as bytes arrive, never for a whole claimed length up front.
        assert!(
            buf.capacity() <= buf.len() + 64 * 1024 + 8 * 1024,
            "reserved {}",
            buf.capacity()
        );
    }
    (frames, false)
}

/// MongoDB wire: the frame decoder (the same frames at any split point, lengths checked,
/// no up-front allocation of a claimed length), then every view Sluice takes of a frame —
/// OP_MSG sections, OP_QUERY, the routing facts (`lsid`, `txnNumber`, `$readPreference`,
/// cursor ids), `hello` options, reply inspection, OP_COMPRESSED (decompressed within
/// the limit, and a round trip per compressor), and the header rewrite.
pub fn fuzz_mongo(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let limit = if first == 0 {
        48_000_000
    } else {
        16 + usize::from(first) * 8
    };
    let (whole, whole_err) = mongo_frames(rest, limit, &[]);
    let cut = usize::from(first) * 7;
    let (split, split_err) = mongo_frames(rest, limit, &[cut, cut / 3]);
    assert_eq!(whole_err, split_err);
    assert_eq!(whole, split, "split points changed the frames");
    for frame in whole {
        let _ = frame.msg_flags();
        let _ = peek_command_name(frame.body());
        check_compression(&frame, limit);
        if let Ok(msg) = OpMsg::parse(frame.body()) {
            let name = msg.command_name();
            let info = RequestInfo::parse(name, msg.body);
            assert_eq!(info.name, name);
            let _ = reply_cursor_id(msg.body);
            let _ = reply_says_not_primary(msg.body);
            let _ = HelloRequest::parse(name, msg.body);
            let _ = msg.more_to_come();
        }
        if let Ok(q) = OpQuery::parse(frame.body()) {
            if q.is_command() {
                let _ = q.command_name();
                let _ = HelloRequest::parse(q.command_name(), q.command());
            }
        }
        let mut forwarded = frame.clone();
        forwarded.prepare_forward(true);
        forwarded.set_ids(7, 9);
        let n = forwarded.data.len();
        // Only the ids, the OP_MSG flags and a stripped checksum may change.
        assert!(n == frame.data.len() || n + 4 == frame.data.len());
        assert_eq!(forwarded.header.length as usize, n);
        assert_eq!(
            (forwarded.header.request_id, forwarded.header.response_to),
            (7, 9)
        );
        let from = if frame.msg_flags().is_some() { 20 } else { 16 };
        assert_eq!(&forwarded.data[from.min(n)..], &frame.data[from.min(n)..n]);
    }
}

/// OP_COMPRESSED: whatever decompresses fits the limit and is no OP_COMPRESSED itself; a
/// frame compressed with each compressor comes back unchanged.
fn check_compression(frame: &MongoFrame, limit: usize) {
    if let Ok(d) = mongo_decompress(frame, limit) {
        assert!(d.frame.data.len() <= limit);
        assert_eq!(d.frame.header.length as usize, d.frame.data.len());
        assert_ne!(d.frame.header.op_code, OpCode::Compressed);
    }
    if frame.header.op_code == OpCode::Compressed {
        return;
    }
    for c in [
        Compressor::Noop,
        Compressor::Snappy,
        Compressor::Zlib,
        Compressor::Zstd,
    ] {
        let packed = mongo_compress(frame, c).expect("compress");
        let packed = MongoFrame::from_bytes(packed).expect("a whole OP_COMPRESSED");
        let back = mongo_decompress(&packed, frame.data.len()).expect("round trip");
        assert_eq!((back.compressor, &back.frame), (c, frame));
    }
}

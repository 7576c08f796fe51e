//! Property tests for the sans-IO decoders, in the normal test run (fast, no PostgreSQL).
//!
//! The oracles are shared with the cargo-fuzz targets (`fuzz/src/lib.rs`): random and
//! mutated input to the frontend frame decoder, the message views, the startup packet
//! parser and the SCRAM server never panics; valid frames round-trip through the writers;
//! every split point of a valid frame stream gives the same frames.
#![allow(clippy::unwrap_used)]

#[path = "../../fuzz/src/lib.rs"]
mod oracles;

use oracles::{
    check_body, check_frames, check_scram_raw, check_scram_tail, check_scram_valid,
    check_split_invariance, check_startup, frame, frame_limit, fuzz_frontend, fuzz_mongo,
    fuzz_scram,
};
use proptest::collection::vec;
use proptest::prelude::*;
use sluice_pg::protocol::frame::MAX_FRAME_LEN;

/// A C string without interior NULs.
fn cstr() -> impl Strategy<Value = String> {
    "[^\u{0}]{0,24}"
}

/// One valid frontend frame of the kinds Sluice decodes (and a few it only forwards).
fn valid_frame() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // Parse: name, query, parameter types.
        (cstr(), cstr(), vec(any::<u32>(), 0..4)).prop_map(|(name, query, types)| {
            let mut body = name.into_bytes();
            body.push(0);
            body.extend(query.into_bytes());
            body.push(0);
            body.extend((types.len() as i16).to_be_bytes());
            for t in types {
                body.extend(t.to_be_bytes());
            }
            frame(b'P', &body)
        }),
        // Bind: portal, statement, arbitrary rest.
        (cstr(), cstr(), vec(any::<u8>(), 0..16)).prop_map(|(portal, stmt, rest)| {
            let mut body = portal.into_bytes();
            body.push(0);
            body.extend(stmt.into_bytes());
            body.push(0);
            body.extend(rest);
            frame(b'B', &body)
        }),
        // Describe / Close.
        (
            prop_oneof![Just(b'D'), Just(b'C')],
            prop_oneof![Just(b'S'), Just(b'P')],
            cstr()
        )
            .prop_map(|(tag, kind, name)| {
                let mut body = vec![kind];
                body.extend(name.into_bytes());
                body.push(0);
                frame(tag, &body)
            }),
        // Simple query.
        cstr().prop_map(|q| {
            let mut body = q.into_bytes();
            body.push(0);
            frame(b'Q', &body)
        }),
        // Sync, Flush, Terminate, Execute, CopyData: forwarded as is.
        (
            prop_oneof![Just(b'S'), Just(b'H'), Just(b'X'), Just(b'E'), Just(b'd')],
            vec(any::<u8>(), 0..32)
        )
            .prop_map(|(tag, body)| frame(tag, &body)),
    ]
}

fn valid_stream() -> impl Strategy<Value = Vec<u8>> {
    vec(valid_frame(), 0..8).prop_map(|frames| frames.concat())
}

/// A valid stream with a few bytes overwritten, inserted or cut off.
fn mutated_stream() -> impl Strategy<Value = Vec<u8>> {
    (
        valid_stream(),
        vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
    )
        .prop_map(|(mut data, edits)| {
            for (at, byte, op) in edits {
                if data.is_empty() {
                    data.push(byte);
                    continue;
                }
                let i = at.index(data.len());
                match op {
                    0 => data[i] = byte,
                    1 => data.insert(i, byte),
                    _ => data.truncate(i),
                }
            }
            data
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn valid_streams_decode_whole_and_round_trip(data in valid_stream()) {
        let scan = check_frames(&data, MAX_FRAME_LEN);
        prop_assert!(!scan.error);
        prop_assert_eq!(scan.consumed, data.len());
        let re: Vec<u8> = scan.frames.iter().map(|(t, b)| frame(*t, b)).collect::<Vec<_>>().concat();
        prop_assert_eq!(re, data);
    }

    #[test]
    fn every_split_point_gives_the_same_frames(data in valid_stream()) {
        // Two-way splits at every point, and byte-at-a-time delivery.
        for cut in 0..=data.len() {
            check_split_invariance(&data, MAX_FRAME_LEN, &[cut]);
        }
        let all: Vec<usize> = (0..=data.len()).collect();
        check_split_invariance(&data, MAX_FRAME_LEN, &all);
    }

    #[test]
    fn mutated_streams_never_panic(data in mutated_stream(), limit in any::<u8>(), cuts in vec(0usize..512, 0..4)) {
        check_split_invariance(&data, frame_limit(limit), &cuts);
    }

    #[test]
    fn random_bytes_never_panic(data in vec(any::<u8>(), 0..256)) {
        fuzz_frontend(&data);
        check_body(&data);
        check_startup(&data);
        fuzz_scram(&data);
    }

    #[test]
    fn startup_packets_round_trip(
        params in vec(("[a-zA-Z_.]{1,12}", cstr()), 0..6),
        minor in prop_oneof![Just(0u16), any::<u16>()],
        junk in vec(any::<u8>(), 0..8),
    ) {
        let mut body = (0x0003_0000i32 | i32::from(minor)).to_be_bytes().to_vec();
        for (k, v) in &params {
            body.extend(k.as_bytes());
            body.push(0);
            body.extend(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        packet.extend(body);
        let n = packet.len();
        packet.extend(junk);
        check_startup(&packet);
        let parsed = sluice_pg::protocol::startup::parse_startup(&packet[..n]).unwrap();
        let sluice_pg::protocol::startup::StartupPacket::Startup(p) = parsed else {
            panic!("not a StartupMessage: {parsed:?}");
        };
        let want: Vec<(String, String)> = params;
        prop_assert_eq!(p.params, want);
        prop_assert_eq!(p.minor_version, minor);
    }

    #[test]
    fn mutated_startup_packets_never_panic(
        params in vec(("[a-z_]{1,8}", cstr()), 0..4),
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut packet = Vec::new();
        let pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        sluice_pg::protocol::startup::write_startup(&mut packet, &pairs);
        for (at, byte) in edits {
            let i = at.index(packet.len());
            packet[i] = byte;
        }
        check_startup(&packet);
    }

    #[test]
    fn scram_random_messages(first in vec(any::<u8>(), 0..64), last in vec(any::<u8>(), 0..64)) {
        check_scram_raw(&first, &last);
    }

    #[test]
    fn scram_text_messages(first in "[ -~]{0,48}", last in "[ -~]{0,64}") {
        check_scram_raw(first.as_bytes(), last.as_bytes());
        check_scram_raw(format!("n,,n=,r={first}").as_bytes(), last.as_bytes());
    }

    #[test]
    fn scram_right_nonce_arbitrary_tail(nonce in vec(any::<u8>(), 0..24), tail in "[ -~]{0,64}") {
        check_scram_tail(&nonce, tail.as_bytes());
    }

    #[test]
    fn scram_complete_exchanges(
        flags in any::<u8>(),
        nonce in vec(any::<u8>(), 0..24),
        ext in vec(any::<u8>(), 0..6),
        flip in any::<u8>(),
    ) {
        check_scram_valid(flags, &nonce, &ext, flip);
    }

    #[test]
    fn mongo_random_bytes_never_panic(data in vec(any::<u8>(), 0..512)) {
        fuzz_mongo(&data);
    }

    #[test]
    fn mongo_mutated_messages(
        limit in any::<u8>(),
        flags in any::<u32>(),
        name in "[a-zA-Z$]{1,12}",
        flips in vec((0usize..256, any::<u8>()), 0..4),
    ) {
        // A well-formed OP_MSG (kind-0 body with a few routing fields), then byte flips.
        let body = mongodb::bson::doc! {
            name: 1, "lsid": {"id": 1}, "txnNumber": 3_i64, "autocommit": false,
            "$readPreference": {"mode": "secondary", "tags": [{"dc": "x"}]},
            "getMore": 5_i64, "cursors": [1_i64, 2_i64],
        };
        let mut doc = Vec::new();
        body.to_writer(&mut doc).unwrap();
        let mut msg = sluice_mongo::wire::encode_op_msg(1, 0, flags & 0x3, &doc).to_vec();
        for (at, b) in flips {
            let i = at % msg.len();
            msg[i] ^= b;
        }
        let mut input = vec![limit];
        input.extend_from_slice(&msg);
        fuzz_mongo(&input);
    }

    #[test]
    fn mongo_mutated_compressed_messages(
        limit in any::<u8>(),
        id in 0u8..4,
        text in "[a-z]{0,200}",
        flips in vec((0usize..512, any::<u8>()), 0..4),
    ) {
        // A well-formed OP_COMPRESSED of each compressor, then byte flips (sizes, ids,
        // the compressed data itself).
        use sluice_mongo::wire::{compress, Compressor, Frame};
        let body = mongodb::bson::doc! {"insert": "c", "s": text, "$db": "t"};
        let mut doc = Vec::new();
        body.to_writer(&mut doc).unwrap();
        let plain = Frame::from_bytes(sluice_mongo::wire::encode_op_msg(1, 0, 0, &doc)).unwrap();
        let c = Compressor::from_id(id).unwrap();
        let mut msg = compress(&plain, c).unwrap().to_vec();
        for (at, b) in flips {
            let i = at % msg.len();
            msg[i] ^= b;
        }
        let mut input = vec![limit];
        input.extend_from_slice(&msg);
        fuzz_mongo(&input);
    }
}

//! OP_COMPRESSED tests: a round trip per compressor, and every way a bad message fails
//! (truncated, oversized, unknown compressor, lying sizes, decompression bombs).
#![allow(clippy::unwrap_used)]

use bson::rawdoc;
use bytes::{BufMut, BytesMut};

use super::*;

const MAX: usize = 1 << 20;

fn ping(request_id: i32) -> Frame {
    let body = rawdoc! {"find": "c", "filter": {"s": "x".repeat(500)}, "$db": "test"};
    Frame::from_bytes(encode_op_msg(request_id, 3, 0, body.as_bytes())).unwrap()
}

/// An OP_COMPRESSED built by hand: header, originalOpcode 2013, `size`, `id`, `data`.
fn hand_made(size: i32, id: u8, data: &[u8]) -> Frame {
    let mut out = BytesMut::new();
    out.resize(HEADER_LEN, 0);
    out.put_i32_le(2013);
    out.put_i32_le(size);
    out.put_u8(id);
    out.put_slice(data);
    let header = Header {
        length: i32::try_from(out.len()).unwrap(),
        request_id: 9,
        response_to: 0,
        op_code: OpCode::Compressed,
    };
    header.write(&mut out[..HEADER_LEN]);
    Frame::from_bytes(out).unwrap()
}

#[test]
fn round_trip_per_compressor() {
    let original = ping(5);
    for c in [
        Compressor::Noop,
        Compressor::Snappy,
        Compressor::Zlib,
        Compressor::Zstd,
    ] {
        let bytes = compress(&original, c).unwrap();
        let frame = FrameDecoder::new(MAX)
            .decode(&mut bytes.clone())
            .unwrap()
            .unwrap();
        assert_eq!(frame.header.op_code, OpCode::Compressed);
        assert_eq!((frame.header.request_id, frame.header.response_to), (5, 3));
        assert_eq!(frame.body()[8], c.id());
        if c != Compressor::Noop {
            assert!(bytes.len() < original.data.len(), "{c} did not compress");
        }
        let back = decompress(&frame, MAX).unwrap();
        assert_eq!(back.compressor, c);
        assert_eq!(back.frame, original, "{c}");
        let msg = OpMsg::parse(back.frame.body()).unwrap();
        assert_eq!(msg.command_name(), "find");
    }
}

#[test]
fn names_ids_and_choice() {
    for c in Compressor::SUPPORTED {
        assert_eq!(Compressor::from_name(c.name()), Some(c));
        assert_eq!(Compressor::from_id(c.id()), Some(c));
    }
    assert_eq!(Compressor::from_name("noop"), None);
    assert_eq!(Compressor::from_id(4), None);
    let ours = [Compressor::Zlib, Compressor::Zstd];
    // The peer's order wins; unknown names are skipped.
    let chosen = Compressor::choose(["lz4", "zstd", "zlib"], &ours);
    assert_eq!(chosen, Some(Compressor::Zstd));
    assert_eq!(Compressor::choose(["snappy"], &ours), None);
    assert!(!may_compress("saslStart") && !may_compress("hello") && may_compress("find"));
}

#[test]
fn peeks_the_command_name() {
    let f = ping(1);
    assert_eq!(peek_command_name(f.body()), Some("find"));
    assert_eq!(peek_command_name(&[0, 0, 0, 0, 1]), None);
    assert_eq!(peek_command_name(&[0, 0]), None);
}

#[test]
fn truncated_input_is_an_error() {
    let whole = compress(&ping(1), Compressor::Zstd).unwrap();
    for cut in HEADER_LEN..HEADER_LEN + 9 {
        let mut part = BytesMut::from(&whole[..cut]);
        let length = i32::try_from(cut).unwrap();
        part[..4].copy_from_slice(&length.to_le_bytes());
        let frame = Frame::from_bytes(part).unwrap();
        assert!(matches!(
            decompress(&frame, MAX),
            Err(WireError::Malformed { .. })
        ));
    }
    // Compressed data cut short, for each compressor.
    for c in Compressor::SUPPORTED {
        let whole = compress(&ping(1), c).unwrap();
        let data = &whole[HEADER_LEN + 9..];
        let size = i32::try_from(ping(1).body().len()).unwrap();
        let frame = hand_made(size, c.id(), &data[..data.len() / 2]);
        assert!(decompress(&frame, MAX).is_err(), "{c}");
    }
}

#[test]
fn oversized_unknown_and_nested_are_errors() {
    let frame = hand_made(i32::MAX, 3, &[1, 2, 3]);
    assert_eq!(
        decompress(&frame, MAX),
        Err(WireError::UncompressedTooLarge {
            size: i32::MAX,
            max: MAX
        })
    );
    let frame = hand_made(-1, 0, &[]);
    assert!(matches!(
        decompress(&frame, MAX),
        Err(WireError::Malformed { .. })
    ));
    let frame = hand_made(3, 9, &[1, 2, 3]);
    assert_eq!(
        decompress(&frame, MAX),
        Err(WireError::UnknownCompressor(9))
    );
    let mut nested = hand_made(0, 0, &[]);
    nested.data[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&2012_i32.to_le_bytes());
    assert!(matches!(
        decompress(&nested, MAX),
        Err(WireError::Malformed { .. })
    ));
}

#[test]
fn lying_sizes_and_bombs_are_bounded() {
    // 64 MiB of zeros compresses to a few kilobytes; declared small, it stops at the
    // declared size + 1 and fails, without expanding the whole bomb.
    let zeros = vec![0u8; 64 << 20];
    let bombs = [
        (Compressor::Zstd, zstd::bulk::compress(&zeros, 3).unwrap()),
        (Compressor::Zlib, {
            use std::io::Write;
            let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
            z.write_all(&zeros).unwrap();
            z.finish().unwrap()
        }),
    ];
    for (c, bomb) in &bombs {
        assert!(bomb.len() < 1 << 20);
        let frame = hand_made(1000, c.id(), bomb);
        let err = decompress(&frame, MAX).unwrap_err();
        assert!(err.to_string().contains("more than 1000"), "{c}: {err}");
    }
    // A Snappy stream stating a length other than uncompressedSize, or more than the
    // data could hold, is refused before anything is allocated.
    let snappy = snap::raw::Encoder::new().compress_vec(&[7u8; 100]).unwrap();
    let frame = hand_made(99, 1, &snappy);
    assert!(decompress(&frame, MAX).is_err());
    let claims_a_lot = [0x80, 0x80, 0x40]; // varint 1 MiB, then nothing
    let frame = hand_made(1 << 20, 1, &claims_a_lot);
    assert!(decompress(&frame, (1 << 20) + HEADER_LEN).is_err());
    // Data shorter than declared.
    let frame = hand_made(10, 0, b"short");
    assert!(decompress(&frame, MAX).is_err());
}

#[test]
fn a_zstd_frame_asking_for_a_huge_window_is_refused() {
    use std::io::Write;
    // Ten bytes in a frame that declares a 128 MiB window and no content size: decoding
    // it would allocate the window up front.
    let mut z = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    z.window_log(27).unwrap();
    z.include_contentsize(false).unwrap();
    z.write_all(b"0123456789").unwrap();
    let data = z.finish().unwrap();
    let frame = hand_made(10, 3, &data);
    let err = decompress(&frame, MAX).unwrap_err();
    assert!(matches!(err, WireError::Compression { .. }), "{err}");
    // The same bytes with a small window decode.
    let data = zstd::bulk::compress(b"0123456789", 3).unwrap();
    let frame = hand_made(10, 3, &data);
    assert_eq!(decompress(&frame, MAX).unwrap().frame.body(), b"0123456789");
}

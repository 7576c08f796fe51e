//! Codec tests: every split point of a frame, flags, sections, checksum, legacy OP_QUERY.
#![allow(clippy::unwrap_used)]

use bson::{doc, rawdoc, RawDocumentBuf};
use bytes::{BufMut, BytesMut};

use super::*;

fn bson_bytes(d: bson::Document) -> Vec<u8> {
    let mut out = Vec::new();
    d.to_writer(&mut out).unwrap();
    out
}

/// An OP_MSG with a body and one document sequence, built by hand.
fn insert_msg(msg_flags: u32, checksum: bool) -> BytesMut {
    let body = bson_bytes(doc! {"insert": "c", "$db": "test"});
    let docs = [bson_bytes(doc! {"_id": 1}), bson_bytes(doc! {"_id": 2})];
    let mut seq = BytesMut::new();
    seq.put_slice(b"documents\0");
    for d in &docs {
        seq.put_slice(d);
    }
    let mut out = BytesMut::new();
    out.resize(HEADER_LEN, 0);
    let f = if checksum {
        msg_flags | flags::CHECKSUM_PRESENT
    } else {
        msg_flags
    };
    out.put_u32_le(f);
    out.put_u8(0);
    out.put_slice(&body);
    out.put_u8(1);
    out.put_i32_le(i32::try_from(4 + seq.len()).unwrap());
    out.put_slice(&seq);
    if checksum {
        out.put_u32_le(0xdead_beef);
    }
    let header = Header {
        length: i32::try_from(out.len()).unwrap(),
        request_id: 7,
        response_to: 0,
        op_code: OpCode::Msg,
    };
    header.write(&mut out[..HEADER_LEN]);
    out
}

#[test]
fn every_split_point_yields_the_same_frames() {
    let one = insert_msg(0, false);
    let two = encode_op_msg(8, 0, 0, &bson_bytes(doc! {"ping": 1, "$db": "admin"}));
    let mut stream = one.clone();
    stream.extend_from_slice(&two);
    let decoder = FrameDecoder::new(1 << 20);
    for split in 0..=stream.len() {
        let mut buf = BytesMut::from(&stream[..split]);
        let mut frames = Vec::new();
        while let Some(f) = decoder.decode(&mut buf).unwrap() {
            frames.push(f);
        }
        buf.extend_from_slice(&stream[split..]);
        while let Some(f) = decoder.decode(&mut buf).unwrap() {
            frames.push(f);
        }
        assert!(buf.is_empty(), "split {split}");
        assert_eq!(frames.len(), 2, "split {split}");
        assert_eq!(frames[0].data, one);
        assert_eq!(frames[1].data, two);
        assert_eq!(frames[1].header.request_id, 8);
    }
}

#[test]
fn lengths_are_checked_before_buffering() {
    let decoder = FrameDecoder::new(1000);
    let mut buf = BytesMut::new();
    buf.put_i32_le(15);
    buf.put_slice(&[0; 12]);
    assert_eq!(decoder.decode(&mut buf), Err(WireError::TooShort(15)));
    let mut buf = BytesMut::new();
    buf.put_i32_le(2_000_000_000);
    buf.put_slice(&[0; 12]);
    assert!(matches!(
        decoder.decode(&mut buf),
        Err(WireError::TooLarge { .. })
    ));
    assert!(buf.capacity() < 1000, "nothing reserved for a bad length");
    let mut buf = BytesMut::new();
    buf.put_i32_le(-1);
    buf.put_slice(&[0; 12]);
    assert_eq!(decoder.decode(&mut buf), Err(WireError::TooShort(-1)));
    // A legal but large claimed length reserves room only as bytes arrive.
    let decoder = FrameDecoder::new(48_000_000);
    let mut buf = BytesMut::new();
    buf.put_i32_le(40_000_000);
    buf.put_slice(&[0; 12]);
    assert_eq!(decoder.decode(&mut buf), Ok(None));
    assert!(buf.capacity() <= 128 * 1024, "reserved {}", buf.capacity());
}

#[test]
fn op_msg_sections_and_flags() {
    let data = insert_msg(flags::MORE_TO_COME, false);
    let frame = Frame::from_bytes(data).unwrap();
    let msg = OpMsg::parse(frame.body()).unwrap();
    assert_eq!(msg.command_name(), "insert");
    assert!(msg.more_to_come());
    assert_eq!(msg.sequences.len(), 1);
    assert_eq!(msg.sequences[0].identifier, "documents");
    assert_eq!(msg.sequences[0].documents.len(), 2);
    assert_eq!(msg.checksum, None);
}

#[test]
fn checksum_and_exhaust_are_dropped_when_forwarding() {
    let data = insert_msg(flags::EXHAUST_ALLOWED, true);
    let original_len = data.len();
    let mut frame = Frame::from_bytes(data).unwrap();
    let msg = OpMsg::parse(frame.body()).unwrap();
    assert_eq!(msg.checksum, Some(0xdead_beef));
    frame.set_ids(99, 5);
    frame.prepare_forward(true);
    assert_eq!(frame.data.len(), original_len - 4);
    let reparsed = Frame::from_bytes(frame.data.clone()).unwrap();
    assert_eq!(reparsed.header.request_id, 99);
    assert_eq!(reparsed.header.response_to, 5);
    assert_eq!(reparsed.msg_flags(), Some(0));
    let msg = OpMsg::parse(reparsed.body()).unwrap();
    assert_eq!(msg.checksum, None);
    assert_eq!(msg.sequences[0].documents.len(), 2);
}

#[test]
fn set_ids_changes_only_the_ids() {
    let data = insert_msg(0, false);
    let mut frame = Frame::from_bytes(data.clone()).unwrap();
    frame.set_ids(1234, 42);
    assert_eq!(frame.data[..4], data[..4]);
    assert_eq!(frame.data[12..], data[12..]);
    assert_eq!(Header::parse(&frame.data).unwrap().request_id, 1234);
}

#[test]
fn malformed_op_msgs_are_rejected() {
    let good = bson_bytes(doc! {"ping": 1});
    // Unknown required flag bit.
    let msg = encode_op_msg(1, 0, 1 << 3, &good);
    assert!(OpMsg::parse(&msg[HEADER_LEN..]).is_err());
    // Optional (high) unknown bits are fine.
    let msg = encode_op_msg(1, 0, 1 << 20, &good);
    assert!(OpMsg::parse(&msg[HEADER_LEN..]).is_ok());
    // Document length past the end.
    let mut msg = encode_op_msg(1, 0, 0, &good);
    msg[HEADER_LEN + 5] = 0xff;
    assert!(OpMsg::parse(&msg[HEADER_LEN..]).is_err());
    // No body at all, and an unknown section kind.
    assert!(OpMsg::parse(&[0, 0, 0, 0]).is_err());
    assert!(OpMsg::parse(&[0, 0, 0, 0, 7]).is_err());
    // Two bodies.
    let mut body = vec![0, 0, 0, 0, 0];
    body.extend_from_slice(&good);
    body.push(0);
    body.extend_from_slice(&good);
    assert!(OpMsg::parse(&body).is_err());
}

#[test]
fn legacy_is_master_query() {
    let query = bson_bytes(doc! {"$query": {"isMaster": 1, "client": {}}, "$readPreference": {}});
    let mut body = BytesMut::new();
    body.put_i32_le(0);
    body.put_slice(b"admin.$cmd\0");
    body.put_i32_le(0);
    body.put_i32_le(-1);
    body.put_slice(&query);
    let q = OpQuery::parse(&body).unwrap();
    assert!(q.is_command());
    assert_eq!(q.command_name(), "isMaster");
    let reply = encode_op_reply(3, 9, &bson_bytes(doc! {"ok": 1.0}));
    let header = Header::parse(&reply).unwrap();
    assert_eq!(header.op_code, OpCode::Reply);
    assert_eq!(header.response_to, 9);
    assert_eq!(usize::try_from(header.length).unwrap(), reply.len());
    assert!(OpQuery::parse(&body[..10]).is_err());
}

#[test]
fn error_documents() {
    let d = error_doc(ErrorCode::HostUnreachable, "down");
    assert_eq!(d.get_f64("ok").unwrap(), 0.0);
    assert_eq!(d.get_i32("code").unwrap(), 6);
    assert_eq!(d.get_str("codeName").unwrap(), "HostUnreachable");
    let raw = RawDocumentBuf::from_document(&d).unwrap();
    assert_eq!(raw, RawDocumentBuf::from_document(&d).unwrap());
    let _ = rawdoc! {"x": 1};
}

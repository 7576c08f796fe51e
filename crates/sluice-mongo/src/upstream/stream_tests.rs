//! Exhaust streams towards the upstream against a fake server on a socket: the request
//! keeps `exhaustAllowed` (a round trip clears it), replies with `moreToCome` are read one
//! by one whether they answer the previous reply (mongod) or the request (SecantusDB), and
//! the connection is reusable only once the stream has ended.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bson::rawdoc;
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use super::{Target, UpstreamConn};
use crate::wire::{encode_op_msg, flags, Frame, FrameDecoder};

async fn read(sock: &mut TcpStream, buf: &mut BytesMut) -> Frame {
    let decoder = FrameDecoder::new(1 << 20);
    loop {
        if let Some(frame) = decoder.decode(buf).unwrap() {
            return frame;
        }
        assert!(sock.read_buf(buf).await.unwrap() > 0, "client closed");
    }
}

/// Answers the hello, then one getMore with three replies (two with `moreToCome`),
/// chaining `responseTo` as mongod does or, with `to_request`, as SecantusDB does; then a
/// ping, and keeps the socket open until `done`. Returns the flag bits of the getMore and of the ping.
async fn fake_server(
    listener: TcpListener,
    to_request: bool,
    done: oneshot::Receiver<()>,
) -> (u32, u32) {
    let (mut sock, _) = listener.accept().await.unwrap();
    let mut buf = BytesMut::new();
    let hello = read(&mut sock, &mut buf).await;
    let reply = rawdoc! {"isWritablePrimary": true, "maxWireVersion": 21, "ok": 1.0};
    let bytes = encode_op_msg(100, hello.header.request_id, 0, reply.as_bytes());
    sock.write_all(&bytes).await.unwrap();
    let get_more = read(&mut sock, &mut buf).await;
    let mut to = get_more.header.request_id;
    for (id, more) in [(201, true), (202, true), (203, false)] {
        let bits = if more { flags::MORE_TO_COME } else { 0 };
        let batch =
            rawdoc! {"cursor": {"id": i64::from(more), "nextBatch": [{"n": id}]}, "ok": 1.0};
        sock.write_all(&encode_op_msg(id, to, bits, batch.as_bytes()))
            .await
            .unwrap();
        if !to_request {
            to = id;
        }
    }
    let ping = read(&mut sock, &mut buf).await;
    let ok = rawdoc! {"ok": 1.0};
    sock.write_all(&encode_op_msg(
        300,
        ping.header.request_id,
        0,
        ok.as_bytes(),
    ))
    .await
    .unwrap();
    // Open until the client is done with the connection (it checks it is reusable).
    let _ = done.await;
    (get_more.msg_flags().unwrap(), ping.msg_flags().unwrap())
}

fn request(bits: u32, cmd: &bson::RawDocument) -> Frame {
    Frame::from_bytes(encode_op_msg(7, 0, bits, cmd.as_bytes())).unwrap()
}

async fn run(to_request: bool) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (finished, done) = oneshot::channel();
    let server = tokio::spawn(fake_server(listener, to_request, done));
    let uri = format!("mongodb://127.0.0.1:{port}/?directConnection=true");
    let target = Target::parse(&uri).await.unwrap();
    let mut conn = UpstreamConn::connect(&target, &[], Duration::from_secs(5))
        .await
        .unwrap();
    let get_more = rawdoc! {"getMore": 1_i64, "collection": "c", "$db": "d"};
    let first = conn
        .open_stream(request(flags::EXHAUST_ALLOWED, &get_more))
        .await
        .unwrap();
    assert_eq!(first.header.request_id, 201);
    assert!(!conn.is_reusable(), "mid-stream");
    assert_eq!(conn.next_streamed().await.unwrap().header.request_id, 202);
    let last = conn.next_streamed().await.unwrap();
    assert_eq!(last.msg_flags().unwrap() & flags::MORE_TO_COME, 0);
    assert!(conn.next_streamed().await.is_err(), "the stream is over");
    let ping = rawdoc! {"ping": 1, "$db": "admin"};
    conn.round_trip(request(flags::EXHAUST_ALLOWED, &ping))
        .await
        .unwrap();
    let reusable = conn.is_reusable();
    let _ = finished.send(());
    let (get_more_bits, ping_bits) = server.await.unwrap();
    assert_eq!(get_more_bits, flags::EXHAUST_ALLOWED, "kept for the stream");
    assert_eq!(ping_bits, 0, "cleared on a round trip");
    assert!(reusable, "once the stream is over");
}

#[tokio::test]
async fn replies_answering_the_previous_reply_are_streamed() {
    run(false).await;
}

#[tokio::test]
async fn replies_answering_the_request_are_streamed() {
    run(true).await;
}

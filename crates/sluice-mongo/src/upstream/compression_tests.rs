//! Compression towards the upstream against a fake server on a socket: the offer in the
//! handshake, the server's choice taken, requests compressed with it (the handshake and
//! credential commands never), compressed replies read.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bson::{doc, rawdoc, Document, RawDocumentBuf};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{Target, UpstreamConn};
use crate::wire::{
    compress, decompress, encode_op_msg, Compressor, Frame, FrameDecoder, OpCode, OpMsg,
};

/// Reads one message; returns it decompressed, with the compressor it came with.
async fn read(sock: &mut TcpStream, buf: &mut BytesMut) -> (Frame, Option<Compressor>) {
    let decoder = FrameDecoder::new(1 << 20);
    loop {
        if let Some(frame) = decoder.decode(buf).unwrap() {
            if frame.header.op_code == OpCode::Compressed {
                let d = decompress(&frame, 1 << 20).unwrap();
                return (d.frame, Some(d.compressor));
            }
            return (frame, None);
        }
        assert!(sock.read_buf(buf).await.unwrap() > 0, "client closed");
    }
}

fn body(frame: &Frame) -> Document {
    let msg = OpMsg::parse(frame.body()).unwrap();
    RawDocumentBuf::from_bytes(msg.body.as_bytes().to_vec())
        .unwrap()
        .to_document()
        .unwrap()
}

async fn answer(
    sock: &mut TcpStream,
    to: &Frame,
    reply: &bson::RawDocument,
    c: Option<Compressor>,
) {
    let bytes = encode_op_msg(100, to.header.request_id, 0, reply.as_bytes());
    let bytes = match c {
        Some(c) => compress(&Frame::from_bytes(bytes).unwrap(), c).unwrap(),
        None => bytes,
    };
    sock.write_all(&bytes).await.unwrap();
}

/// A fake server that agrees to `agree` (its `compression` answer), then answers one
/// `ping` and one `createUser`; returns what it saw: the offer, and the compressor of
/// each request.
async fn fake_server(listener: TcpListener, agree: Vec<&'static str>) -> Vec<String> {
    let (mut sock, _) = listener.accept().await.unwrap();
    let mut buf = BytesMut::new();
    let mut seen = Vec::new();
    let (hello, c) = read(&mut sock, &mut buf).await;
    assert_eq!(c, None, "hello is never compressed");
    let offer: Vec<String> = body(&hello)
        .get_array("compression")
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    seen.push(offer.join(","));
    let mut reply = rawdoc! {"isWritablePrimary": true, "maxWireVersion": 21, "ok": 1.0};
    if !agree.is_empty() {
        reply.append(
            "compression",
            bson::RawArrayBuf::from_iter(agree.iter().copied()),
        );
    }
    answer(&mut sock, &hello, &reply, None).await;
    for _ in 0..2 {
        let (req, c) = read(&mut sock, &mut buf).await;
        let name = OpMsg::parse(req.body()).unwrap().command_name().to_owned();
        seen.push(format!("{name}:{}", c.map_or("plain", Compressor::name)));
        // Replies compressed the same way, as mongod does.
        answer(&mut sock, &req, &rawdoc! {"ok": 1.0}, c).await;
    }
    seen
}

async fn run(offer: Vec<Compressor>, agree: Vec<&'static str>) -> Vec<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(fake_server(listener, agree));
    let uri = format!("mongodb://127.0.0.1:{port}/?directConnection=true");
    let mut target = Target::parse(&uri).await.unwrap();
    target.compressors = offer;
    let mut conn = UpstreamConn::connect(&target, &[], Duration::from_secs(5))
        .await
        .unwrap();
    let ping = conn
        .command(&doc! {"ping": 1, "$db": "admin"})
        .await
        .unwrap();
    assert_eq!(ping.get_f64("ok").unwrap(), 1.0);
    let create = doc! {"createUser": "u", "pwd": "p", "roles": [], "$db": "admin"};
    conn.command(&create).await.unwrap();
    server.await.unwrap()
}

#[tokio::test]
async fn the_servers_first_agreed_compressor_is_used() {
    let seen = run(
        vec![Compressor::Zstd, Compressor::Snappy],
        vec!["snappy", "zstd"],
    )
    .await;
    assert_eq!(seen, ["zstd,snappy", "ping:snappy", "createUser:plain"]);
    let seen = run(vec![Compressor::Zlib], vec!["zlib"]).await;
    assert_eq!(seen, ["zlib", "ping:zlib", "createUser:plain"]);
}

#[tokio::test]
async fn no_agreement_means_plain_messages() {
    // The server names nothing back (SecantusDB does not compress).
    let seen = run(vec![Compressor::Zstd], vec![]).await;
    assert_eq!(seen, ["zstd", "ping:plain", "createUser:plain"]);
    // Nothing offered: no `compression` field at all.
    let seen = run(vec![], vec!["zstd"]).await;
    assert_eq!(seen, ["", "ping:plain", "createUser:plain"]);
}

//! MongoDB wire compression (OP_COMPRESSED) end to end, with the real sluice program in
//! front of the test server.
//!
//! Towards clients: pymongo with `compressors=snappy`, `zlib`, `zstd` (and a list, to show
//! the client's order wins) agrees on the compressor in Sluice's own hello answer and runs
//! CRUD, a cursor, a large document, a w:0 write and an error; a [`WireTap`] between them
//! counts the OP_COMPRESSED messages each way, so a test fails if either side went
//! uncompressed. Without `compressors` nothing is compressed.
//!
//! Towards the upstream: SecantusDB does not compress (its hello names no compressor), so
//! a compressing [`WireTap`] in front of it plays a server that does; Sluice, configured
//! with `compressors`, must then send compressed requests (handshake and login excepted)
//! and read compressed replies. Against SecantusDB itself, an offer that is not taken up
//! leaves every message plain. On a raw socket: a compressor that was not agreed, a
//! decompression bomb and corrupt data get error replies, and the connection goes on.

use std::future::IntoFuture;
use std::time::Duration;

use mongodb::bson::{doc, Document};
use mongodb::Client;
use sluice_mongo::wire::{
    compress, decompress, encode_op_msg, Compressor, Frame, FrameDecoder, OpCode, OpMsg,
};
use sluice_tests::mongo::{run_pymongo, shared_mongo, MongoSluice, MongoSluiceBuilder};
use sluice_tests::wire_tap::{Direction, TapMode, WireTap};
use sluice_tests::{unique_name, within};

const HANG: Duration = Duration::from_secs(180);
const OP_MSG: i32 = 2013;
const OP_COMPRESSED: i32 = 2012;

/// Runs the pymongo script against `uri`; it checks that the handshake agreed on
/// `expected` ("none" for no compression).
async fn pymongo(uri: &str, expected: &str) {
    let args = [uri.to_owned(), unique_name("comp"), expected.to_owned()];
    let context = || format!(" (expecting {expected})");
    run_pymongo(
        "mongo_pymongo_compression.py",
        &args,
        "ALL OK",
        HANG,
        context,
    )
    .await;
}

/// Sluice in front of `upstream` (a URI), offering `compressors` (TOML array text).
fn sluice(upstream: &str, compressors: &str) -> MongoSluice {
    MongoSluiceBuilder::new(upstream)
        .max_pool_size(3)
        .setting("compressors", compressors)
        .start()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pymongo_compresses_both_ways_with_each_compressor() {
    let sluice = sluice(shared_mongo().uri(), "[]");
    // (what the client offers, what must be agreed: the client's first supported one)
    let cases = [
        ("snappy", "snappy"),
        ("zlib", "zlib"),
        ("zstd", "zstd"),
        ("zlib,zstd,snappy", "zlib"),
    ];
    for (offer, agreed) in cases {
        let tap = WireTap::start(&format!("127.0.0.1:{}", sluice.port()), TapMode::Observe).await;
        let uri = format!("mongodb://{}/?compressors={offer}", tap.host());
        pymongo(&uri, agreed).await;
        let sent = tap.count(Direction::Request, OP_COMPRESSED, Some(agreed));
        let got = tap.count(Direction::Reply, OP_COMPRESSED, Some(agreed));
        let all_sent = tap.count(Direction::Request, OP_COMPRESSED, None);
        let all_got = tap.count(Direction::Reply, OP_COMPRESSED, None);
        let summary = tap.summary();
        // ping, inserts, find + getMores, the big document, aggregate, count, the error.
        assert!(sent >= 20, "{offer}: {sent} compressed requests: {summary}");
        // Every compressed request but the w:0 one is answered compressed.
        assert!(
            got + 1 >= sent,
            "{offer}: {got} compressed replies: {summary}"
        );
        assert_eq!((all_sent, all_got), (sent, got), "{offer}: {summary}");
        // The handshake stays plain both ways.
        assert!(
            tap.count(Direction::Request, OP_MSG, None) >= 1,
            "{summary}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_compressors_nothing_is_compressed() {
    let sluice = sluice(shared_mongo().uri(), "[]");
    let tap = WireTap::start(&format!("127.0.0.1:{}", sluice.port()), TapMode::Observe).await;
    pymongo(&format!("mongodb://{}/", tap.host()), "none").await;
    let summary = tap.summary();
    assert_eq!(
        tap.count(Direction::Request, OP_COMPRESSED, None),
        0,
        "{summary}"
    );
    assert_eq!(
        tap.count(Direction::Reply, OP_COMPRESSED, None),
        0,
        "{summary}"
    );
    assert!(tap.count(Direction::Reply, OP_MSG, None) >= 10, "{summary}");
}

/// Inserts `n` documents through `client` and reads them back.
async fn crud(client: &Client, db: &str, n: i32) {
    let coll = client.database(db).collection::<Document>("c");
    let docs: Vec<Document> = (0..n)
        .map(|i| doc! {"_id": i, "s": "compressible ".repeat(40)})
        .collect();
    within(HANG, "insert", coll.insert_many(docs).into_future())
        .await
        .expect("insert");
    let count = within(HANG, "count", coll.count_documents(doc! {}).into_future())
        .await
        .expect("count");
    assert_eq!(count, u64::try_from(n).unwrap_or_default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_use_the_compressor_the_server_agrees_to() {
    let backend = shared_mongo().host();
    for name in ["snappy", "zlib", "zstd"] {
        let tap = WireTap::start(&backend, TapMode::Compressing).await;
        let upstream = format!("mongodb://{}/?directConnection=true", tap.host());
        let sluice = sluice(&upstream, &format!("[{name:?}]"));
        let db = unique_name("upcomp");
        crud(&sluice.client().await, &db, 500).await;
        // The data is really there, read without Sluice.
        let direct = shared_mongo().direct_client().await;
        let n = direct
            .database(&db)
            .collection::<Document>("c")
            .count_documents(doc! {})
            .await
            .expect("direct count");
        assert_eq!(n, 500);
        let summary = tap.summary();
        let sent = tap.count(Direction::Request, OP_COMPRESSED, Some(name));
        let got = tap.count(Direction::Reply, OP_COMPRESSED, Some(name));
        assert!(sent >= 2, "{name}: {sent} compressed requests: {summary}");
        assert_eq!(got, sent, "{name}: every reply compressed: {summary}");
        // The handshake (hello) went plain.
        assert!(
            tap.count(Direction::Request, OP_MSG, None) >= 1,
            "{summary}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sides_compress_independently() {
    let tap = WireTap::start(&shared_mongo().host(), TapMode::Compressing).await;
    let upstream = format!("mongodb://{}/?directConnection=true", tap.host());
    let sluice = sluice(&upstream, r#"["snappy", "zlib"]"#);
    // zstd towards the client, snappy (the tap takes the first offered) upstream.
    pymongo(&sluice.uri("compressors=zstd"), "zstd").await;
    let summary = tap.summary();
    assert!(
        tap.count(Direction::Request, OP_COMPRESSED, Some("snappy")) >= 20,
        "{summary}"
    );
    assert_eq!(
        tap.count(Direction::Request, OP_COMPRESSED, Some("zstd")),
        0,
        "{summary}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_does_not_compress_gets_plain_messages() {
    // SecantusDB names no compressor back: the offer is dropped, everything works.
    let tap = WireTap::start(&shared_mongo().host(), TapMode::Observe).await;
    let upstream = format!("mongodb://{}/?directConnection=true", tap.host());
    let sluice = sluice(&upstream, r#"["zstd", "snappy", "zlib"]"#);
    crud(&sluice.client().await, &unique_name("plainup"), 200).await;
    let summary = tap.summary();
    assert_eq!(
        tap.count(Direction::Request, OP_COMPRESSED, None),
        0,
        "{summary}"
    );
    assert!(
        tap.count(Direction::Request, OP_MSG, None) >= 3,
        "{summary}"
    );
}

/// One request on a raw socket; returns the reply, decompressed, and whether it came
/// compressed (and with which compressor).
async fn raw_request(
    sock: &mut tokio::net::TcpStream,
    buf: &mut bytes::BytesMut,
    request: &[u8],
) -> (Document, Option<Compressor>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    sock.write_all(request).await.expect("write");
    let decoder = FrameDecoder::new(64 << 20);
    let frame = loop {
        if let Some(frame) = decoder.decode(buf).expect("reply frame") {
            break frame;
        }
        let n = within(HANG, "reply", sock.read_buf(buf))
            .await
            .expect("read");
        assert!(n > 0, "sluice closed the connection");
    };
    let (frame, compressor) = if frame.header.op_code == OpCode::Compressed {
        let d = decompress(&frame, 64 << 20).expect("decompress reply");
        (d.frame, Some(d.compressor))
    } else {
        (frame, None)
    };
    let msg = OpMsg::parse(frame.body()).expect("OP_MSG reply");
    (
        Document::try_from(msg.body).expect("reply document"),
        compressor,
    )
}

fn op_msg(id: i32, cmd: &Document) -> Frame {
    let mut bytes = Vec::new();
    cmd.to_writer(&mut bytes).expect("encode");
    Frame::from_bytes(encode_op_msg(id, 0, 0, &bytes)).expect("frame")
}

fn compressed(id: i32, cmd: &Document, c: Compressor) -> Vec<u8> {
    compress(&op_msg(id, cmd), c).expect("compress").to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_compressed_requests_get_errors_and_the_connection_goes_on() {
    let sluice = sluice(shared_mongo().uri(), "[]");
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", sluice.port()))
        .await
        .expect("connect");
    let mut buf = bytes::BytesMut::new();
    let ping = doc! {"ping": 1, "$db": "admin"};
    // Before any hello agreed on zstd, a zstd request is refused (noop is always fine).
    let (reply, c) =
        raw_request(&mut sock, &mut buf, &compressed(1, &ping, Compressor::Zstd)).await;
    assert_eq!((reply.get_f64("ok"), c), (Ok(0.0), None), "{reply}");
    assert!(reply
        .get_str("errmsg")
        .unwrap_or_default()
        .contains("not negotiated"));
    let (reply, c) =
        raw_request(&mut sock, &mut buf, &compressed(2, &ping, Compressor::Noop)).await;
    assert_eq!((reply.get_f64("ok"), c), (Ok(1.0), Some(Compressor::Noop)));
    // The hello picks the client's first supported compressor, and answers uncompressed.
    let hello = doc! {"hello": 1, "compression": ["lz4", "zstd", "zlib"], "$db": "admin"};
    let (reply, c) = raw_request(&mut sock, &mut buf, &op_msg(3, &hello).data).await;
    assert_eq!(c, None);
    let agreed = reply.get_array("compression").expect("compression");
    assert_eq!(agreed, &vec![mongodb::bson::Bson::String("zstd".into())]);
    let (reply, c) =
        raw_request(&mut sock, &mut buf, &compressed(4, &ping, Compressor::Zstd)).await;
    assert_eq!((reply.get_f64("ok"), c), (Ok(1.0), Some(Compressor::Zstd)));
    // A plain request still gets a plain reply.
    let (reply, c) = raw_request(&mut sock, &mut buf, &op_msg(5, &ping).data).await;
    assert_eq!((reply.get_f64("ok"), c), (Ok(1.0), None));
    // A decompression bomb: 64 MiB of zeros declared as 64 MiB, over the limit.
    let zeros = vec![0u8; 64 << 20];
    let mut bomb = compressed(6, &ping, Compressor::Zstd);
    let packed = zstd_frame(&zeros);
    bomb.truncate(16 + 9);
    bomb.extend_from_slice(&packed);
    let len = i32::try_from(bomb.len()).expect("len");
    bomb[..4].copy_from_slice(&len.to_le_bytes());
    bomb[20..24].copy_from_slice(&i32::try_from(zeros.len()).expect("size").to_le_bytes());
    let (reply, _) = raw_request(&mut sock, &mut buf, &bomb).await;
    assert_eq!(reply.get_i32("code"), Ok(10334), "{reply}");
    // Corrupt data.
    let mut corrupt = compressed(7, &ping, Compressor::Zstd);
    let end = corrupt.len();
    corrupt[16 + 9..end].fill(0xee);
    let (reply, _) = raw_request(&mut sock, &mut buf, &corrupt).await;
    assert_eq!(reply.get_i32("code"), Ok(9), "{reply}");
    // The connection is still in step.
    let (reply, c) =
        raw_request(&mut sock, &mut buf, &compressed(8, &ping, Compressor::Zstd)).await;
    assert_eq!((reply.get_f64("ok"), c), (Ok(1.0), Some(Compressor::Zstd)));
}

/// `data` compressed with zstd: what follows the 9-byte prefix of an OP_COMPRESSED.
fn zstd_frame(data: &[u8]) -> Vec<u8> {
    let mut raw = bytes::BytesMut::new();
    raw.resize(16, 0);
    raw.extend_from_slice(data);
    let len = i32::try_from(raw.len()).expect("len");
    raw[..4].copy_from_slice(&len.to_le_bytes());
    raw[12..16].copy_from_slice(&OP_MSG.to_le_bytes());
    let frame = Frame::from_bytes(raw).expect("frame");
    let packed = compress(&frame, Compressor::Zstd).expect("compress");
    packed[16 + 9..].to_vec()
}

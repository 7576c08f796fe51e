//! The MongoDB listener's guards end to end, with raw OP_MSG clients (and the Rust
//! driver) against the real sluice program and SecantusDB: `max_client_conn` (and its
//! reload), `client_login_timeout`, `client_idle_timeout` with an open cursor, the
//! pre-authentication message cap, and shutdown with an awaitable hello held open.

use std::time::Duration;

use mongodb::bson::{doc, Bson, Document};
use mongodb::Client;
use sluice_tests::mongo::{shared_mongo, MongoSluice, MongoSluiceBuilder};
use sluice_tests::{unique_name, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HANG: Duration = Duration::from_secs(120);
/// How long a test waits for something that should happen in about a second.
const PATIENCE: Duration = Duration::from_secs(10);

async fn connect(sluice: &MongoSluice) -> TcpStream {
    TcpStream::connect(("127.0.0.1", sluice.port()))
        .await
        .expect("connect")
}

/// Sends `cmd` as an OP_MSG with `requestID` `id`.
async fn send(s: &mut TcpStream, id: i32, cmd: &Document) {
    let mut body = Vec::new();
    cmd.to_writer(&mut body).expect("bson");
    let len = i32::try_from(16 + 4 + 1 + body.len()).expect("len");
    let mut msg = Vec::new();
    for v in [len, id, 0, 2013] {
        msg.extend_from_slice(&v.to_le_bytes());
    }
    msg.extend_from_slice(&0u32.to_le_bytes());
    msg.push(0);
    msg.extend_from_slice(&body);
    s.write_all(&msg).await.expect("write");
}

/// Reads one OP_MSG reply: its `responseTo` and document.
async fn read_reply(s: &mut TcpStream) -> (i32, Document) {
    let mut header = [0u8; 16];
    s.read_exact(&mut header).await.expect("reply header");
    let field = |i: usize| i32::from_le_bytes(header[i * 4..i * 4 + 4].try_into().expect("4"));
    assert_eq!(field(3), 2013, "OP_MSG reply");
    let mut rest = vec![0u8; usize::try_from(field(0) - 16).expect("len")];
    s.read_exact(&mut rest).await.expect("reply body");
    let doc = Document::from_reader(&rest[5..]).expect("reply document");
    (field(2), doc)
}

async fn command(s: &mut TcpStream, id: i32, cmd: Document) -> Document {
    send(s, id, &cmd).await;
    let (to, doc) = tokio::time::timeout(PATIENCE, read_reply(s))
        .await
        .unwrap_or_else(|_| panic!("no reply to {cmd}"));
    assert_eq!(to, id, "responseTo");
    doc
}

/// Whether the peer closes the socket within [`PATIENCE`] (anything read before is
/// ignored).
async fn closed_soon(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    let wait = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(PATIENCE, wait).await.is_ok()
}

fn ok(doc: &Document) -> bool {
    matches!(doc.get("ok"), Some(Bson::Double(v)) if *v == 1.0)
}

/// Over `max_client_conn`, a new connection's first request gets `{ok: 0, code: 6}`
/// naming the key and the socket is closed; a freed place admits again, and a reload
/// raises the cap for the next connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_cap_refuses_then_admits_when_a_place_frees() {
    let sluice = MongoSluiceBuilder::new(shared_mongo().uri())
        .setting("max_client_conn", "2")
        .start();
    within(HANG, "max_client_conn", async {
        let mut a = connect(&sluice).await;
        assert!(ok(
            &command(&mut a, 1, doc! {"hello": 1, "$db": "admin"}).await
        ));
        let mut b = connect(&sluice).await;
        assert!(ok(
            &command(&mut b, 1, doc! {"hello": 1, "$db": "admin"}).await
        ));

        let mut c = connect(&sluice).await;
        let refused = command(&mut c, 5, doc! {"hello": 1, "$db": "admin"}).await;
        assert_eq!(refused.get_f64("ok").expect("ok"), 0.0, "{refused}");
        assert_eq!(refused.get_i32("code").expect("code"), 6, "{refused}");
        assert!(
            refused
                .get_str("errmsg")
                .expect("errmsg")
                .contains("max_client_conn = 2"),
            "{refused}"
        );
        assert!(closed_soon(&mut c).await, "refused socket left open");

        // The driver's error names the limit too.
        let driver = Client::with_uri_str(sluice.uri("serverSelectionTimeoutMS=2000"))
            .await
            .expect("client");
        let err = driver
            .database("admin")
            .run_command(doc! {"ping": 1})
            .await
            .expect_err("over the cap");
        assert!(err.to_string().contains("max_client_conn"), "{err}");
        drop(driver);

        drop(a);
        let mut admitted = None;
        for _ in 0..100 {
            let mut d = connect(&sluice).await;
            if ok(&command(&mut d, 1, doc! {"hello": 1, "$db": "admin"}).await) {
                admitted = Some(d);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _d = admitted.expect("a closed client frees its place");

        let reply = sluice.reload_with(&[("max_client_conn", "3")]);
        let (applied, restart) = reply
            .split_once("needs restart:")
            .unwrap_or_else(|| panic!("no reload plan in {reply}"));
        assert!(
            applied.contains("mongo.max_client_conn"),
            "applied live: {reply}"
        );
        assert!(
            !restart.contains("max_client_conn"),
            "needs no restart: {reply}"
        );
        let mut e = connect(&sluice).await;
        let hello = command(&mut e, 1, doc! {"hello": 1, "$db": "admin"}).await;
        assert!(
            ok(&hello),
            "the reloaded cap admits a third client: {hello}"
        );
        drop(b);
    })
    .await;
}

/// With `[[mongo.users]]`, a client that does not log in and stays silent past
/// `client_login_timeout` is closed (with or without a hello first); a client that
/// logged in is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_timeout_closes_silent_unauthenticated_clients() {
    let sluice = MongoSluiceBuilder::new(shared_mongo().uri())
        .user("app", "secret")
        .setting("client_login_timeout", "\"1s\"")
        .start();
    within(HANG, "client_login_timeout", async {
        let mut silent = connect(&sluice).await;
        let mut greeted = connect(&sluice).await;
        assert!(ok(&command(&mut greeted, 1, doc! {"hello": 1, "$db": "admin"}).await));

        // A driver that logs in (its monitors poll fast enough to stay open).
        let uri = format!(
            "mongodb://app:secret@127.0.0.1:{}/?heartbeatFrequencyMS=500&serverSelectionTimeoutMS=10000",
            sluice.port()
        );
        let driver = Client::with_uri_str(&uri).await.expect("client");
        let coll = driver
            .database(&unique_name("login"))
            .collection::<Document>("c");
        coll.insert_one(doc! {"_id": 1}).await.expect("insert");

        assert!(closed_soon(&mut silent).await, "silent client left open");
        assert!(closed_soon(&mut greeted).await, "hello-only client left open");

        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(
            coll.find_one(doc! {"_id": 1})
                .await
                .expect("logged-in client still served")
                .is_some()
        );
    })
    .await;
}

/// `client_idle_timeout` closes a logged-in client that sends nothing, but not one with
/// an open cursor — until that cursor is exhausted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_spares_a_client_with_an_open_cursor() {
    let server = shared_mongo();
    let db = unique_name("idle");
    let direct = server.direct_client().await;
    direct
        .database(&db)
        .collection::<Document>("c")
        .insert_many((0..3).map(|i| doc! {"_id": i}))
        .await
        .expect("setup");
    let sluice = MongoSluiceBuilder::new(server.uri())
        .setting("client_idle_timeout", "\"1s\"")
        .start();
    within(HANG, "client_idle_timeout", async {
        let mut idle = connect(&sluice).await;
        assert!(ok(
            &command(&mut idle, 1, doc! {"ping": 1, "$db": "admin"}).await
        ));

        let mut reader = connect(&sluice).await;
        let found = command(
            &mut reader,
            1,
            doc! {"find": "c", "batchSize": 1, "sort": {"_id": 1}, "$db": &db},
        )
        .await;
        assert!(ok(&found), "{found}");
        let id = found
            .get_document("cursor")
            .and_then(|c| c.get_i64("id"))
            .expect("cursor id");
        assert_ne!(id, 0, "the find leaves a cursor open");

        assert!(closed_soon(&mut idle).await, "idle client left open");
        // Well past the idle timeout, the cursor's client is still served.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let more = command(
            &mut reader,
            2,
            doc! {"getMore": id, "collection": "c", "batchSize": 10, "$db": &db},
        )
        .await;
        assert!(ok(&more), "{more}");
        let cursor = more.get_document("cursor").expect("cursor");
        assert_eq!(cursor.get_i64("id").expect("id"), 0, "exhausted: {more}");
        assert_eq!(cursor.get_array("nextBatch").expect("batch").len(), 2);
        // Nothing open any more: now it idles out too.
        assert!(closed_soon(&mut reader).await, "idle client left open");
    })
    .await;
}

/// Before authentication, a header claiming more than 16 KiB gets 10334 without its
/// body being awaited, and the socket is closed; other clients carry on, and a logged-in
/// client may still send large messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_before_login_is_refused() {
    let sluice = MongoSluiceBuilder::new(shared_mongo().uri())
        .user("app", "secret")
        .start();
    within(HANG, "pre-auth cap", async {
        let mut s = connect(&sluice).await;
        let mut msg = Vec::new();
        for v in [20_000i32, 42, 0, 2013] {
            msg.extend_from_slice(&v.to_le_bytes());
        }
        msg.extend_from_slice(&[0u8; 100]);
        s.write_all(&msg).await.expect("write");
        let (to, doc) = tokio::time::timeout(PATIENCE, read_reply(&mut s))
            .await
            .expect("no reply: the body is being awaited");
        assert_eq!(to, 42, "responseTo");
        assert_eq!(doc.get_i32("code").expect("code"), 10334, "{doc}");
        assert!(
            doc.get_str("errmsg")
                .expect("errmsg")
                .contains("before authentication"),
            "{doc}"
        );
        assert!(closed_soon(&mut s).await, "socket left open");

        let uri = format!(
            "mongodb://app:secret@127.0.0.1:{}/?serverSelectionTimeoutMS=10000",
            sluice.port()
        );
        let driver = Client::with_uri_str(&uri).await.expect("client");
        let coll = driver
            .database(&unique_name("preauth"))
            .collection::<Document>("c");
        let big = "x".repeat(1024 * 1024);
        coll.insert_one(doc! {"_id": 1, "big": &big})
            .await
            .expect("a 1 MiB insert after login");
    })
    .await;
}

/// SIGTERM while Sluice holds an awaitable hello: the hello is answered at once with
/// ShutdownInProgress (91) and the program exits, instead of holding shutdown for
/// `maxAwaitTimeMS`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_a_pending_awaitable_hello() {
    let mut sluice = MongoSluiceBuilder::new(shared_mongo().uri()).start();
    within(HANG, "awaitable hello at shutdown", async {
        let mut s = connect(&sluice).await;
        let hello = command(&mut s, 1, doc! {"hello": 1, "$db": "admin"}).await;
        let tv = hello
            .get_document("topologyVersion")
            .expect("topologyVersion")
            .clone();
        send(
            &mut s,
            2,
            &doc! {"hello": 1, "topologyVersion": tv, "maxAwaitTimeMS": 60_000, "$db": "admin"},
        )
        .await;
        let early = tokio::time::timeout(Duration::from_millis(500), read_reply(&mut s)).await;
        assert!(early.is_err(), "the awaitable hello is held");

        sluice.sigterm();
        let (to, reply) = tokio::time::timeout(PATIENCE, read_reply(&mut s))
            .await
            .expect("the held hello is answered at shutdown");
        assert_eq!(to, 2);
        assert_eq!(reply.get_i32("code").expect("code"), 91, "{reply}");
        assert!(closed_soon(&mut s).await, "socket left open");
    })
    .await;
    let status = sluice.wait_exit(PATIENCE);
    assert!(
        status.is_some_and(|s| s.success()),
        "sluice still running (or failed) after SIGTERM: {status:?}"
    );
}

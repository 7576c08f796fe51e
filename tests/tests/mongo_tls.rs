//! TLS for MongoDB clients (`[mongo.tls]`) end to end: pymongo with `tls=true` and
//! `tlsCAFile` inserts and finds through Sluice; `require` closes a plaintext client (and
//! logs it once); `allow` serves TLS and plaintext clients on one port; a SIGHUP reload
//! serves a new certificate to new connections, and keeps the old one when the new files
//! are bad.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{ca, leaf, write_file as write};
use mongodb::bson::doc;
use mongodb::Client;
use sluice_tests::mongo::{run_pymongo, shared_mongo, MongoSluice, MongoSluiceBuilder};
use sluice_tests::{unique_name, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HANG: Duration = Duration::from_secs(180);

/// The text a refused plaintext client leaves in the log.
const REFUSED_LOG: &str = "did not start TLS";

/// Certificate files for Sluice in `dir` (`sluice.crt`, `sluice.key`) signed by a new CA;
/// returns the CA file's path.
fn certificates(dir: &Path, ca_name: &str) -> String {
    let authority = ca(ca_name);
    let server = leaf(&authority);
    write(dir, "sluice.crt", &server.cert.pem());
    write(dir, "sluice.key", &server.key_pair.serialize_pem());
    write(dir, &format!("{ca_name}.pem"), &authority.cert.pem())
}

/// Sluice in front of the shared test server with `[mongo.tls]` in `mode`.
fn start(dir: &Path, mode: &str) -> MongoSluice {
    let path = |name: &str| format!("{:?}", dir.join(name).display().to_string());
    MongoSluiceBuilder::new(shared_mongo().uri())
        .max_pool_size(3)
        .setting("tls.mode", &format!("{mode:?}"))
        .setting("tls.cert_file", &path("sluice.crt"))
        .setting("tls.key_file", &path("sluice.key"))
        .start()
}

/// `mongodb://localhost:PORT/` with TLS options trusting `ca_file`, or plaintext.
fn uri(sluice: &MongoSluice, ca_file: Option<&str>) -> String {
    match ca_file {
        Some(ca) => format!(
            "mongodb://localhost:{}/?tls=true&tlsCAFile={ca}",
            sluice.port()
        ),
        None => format!("mongodb://localhost:{}/", sluice.port()),
    }
}

/// Runs the pymongo script (`expect`: "ok" or "refused") and checks its verdict.
async fn pymongo(uri: &str, expect: &str) {
    let want = if expect == "ok" { "ALL OK" } else { "REFUSED" };
    let args = [uri.to_owned(), unique_name("tls"), expect.to_owned()];
    run_pymongo("mongo_pymongo_tls.py", &args, want, HANG, String::new).await;
}

/// A ping over the Rust driver, failing fast.
async fn rust_ping(uri: &str) -> Result<(), mongodb::error::Error> {
    let sep = if uri.contains('?') { '&' } else { '?' };
    let client = Client::with_uri_str(format!("{uri}{sep}serverSelectionTimeoutMS=2000")).await?;
    client
        .database("admin")
        .run_command(doc! {"ping": 1})
        .await
        .map(|_| ())
}

/// Polls Sluice's log until it holds `text` `n` times (up to 5 s); returns the count.
async fn log_count(sluice: &MongoSluice, text: &str, n: usize) -> usize {
    let mut count = 0;
    for _ in 0..100 {
        count = sluice.stderr().matches(text).count();
        if count >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    count
}

/// A plaintext hello on a raw socket: Sluice must close without answering.
async fn plaintext_is_closed(sluice: &MongoSluice) {
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", sluice.port()))
        .await
        .expect("connect");
    let body = doc! {"hello": 1, "$db": "admin"};
    let mut bytes = Vec::new();
    body.to_writer(&mut bytes).expect("bson");
    let len = i32::try_from(16 + 5 + bytes.len()).expect("len");
    let mut msg = Vec::new();
    for v in [len, 1, 0, 2013] {
        msg.extend_from_slice(&v.to_le_bytes());
    }
    msg.extend_from_slice(&[0, 0, 0, 0, 0]);
    msg.extend_from_slice(&bytes);
    tcp.write_all(&msg).await.expect("write");
    let mut reply = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut reply))
        .await
        .expect("Sluice neither answered nor closed");
    // A clean close, or a reset (the unread hello was discarded).
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "a plaintext client got an answer: {read:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_serves_tls_refuses_plaintext_and_reloads_certificates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first_ca = certificates(dir.path(), "first-ca");
    let sluice = start(dir.path(), "require");
    within(HANG, "mongo tls require", async {
        pymongo(&uri(&sluice, Some(&first_ca)), "ok").await;

        plaintext_is_closed(&sluice).await;
        assert_eq!(
            log_count(&sluice, REFUSED_LOG, 1).await,
            1,
            "one refused client, one log line:\n{}",
            sluice.stderr()
        );
        pymongo(&uri(&sluice, None), "refused").await;
        assert!(rust_ping(&uri(&sluice, None)).await.is_err());

        // A new certificate from another CA, then SIGHUP: new connections get it.
        let second_ca = certificates(dir.path(), "second-ca");
        sluice.signal("HUP");
        let mut last = None;
        for _ in 0..50 {
            match rust_ping(&uri(&sluice, Some(&second_ca))).await {
                Ok(()) => {
                    last = None;
                    break;
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(last.is_none(), "rotated certificate not served: {last:?}");
        pymongo(&uri(&sluice, Some(&second_ca)), "ok").await;
        pymongo(&uri(&sluice, Some(&first_ca)), "refused").await;

        // Bad files: the reload is rejected and the running certificate stays.
        write(dir.path(), "sluice.key", "not a key\n");
        sluice.signal("HUP");
        assert_eq!(
            log_count(&sluice, "reload rejected: TLS files", 1).await,
            1,
            "{}",
            sluice.stderr()
        );
        rust_ping(&uri(&sluice, Some(&second_ca)))
            .await
            .expect("the certificate in force before the bad reload");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_serves_tls_and_plaintext_on_one_port() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = certificates(dir.path(), "allow-ca");
    let sluice = start(dir.path(), "allow");
    within(HANG, "mongo tls allow", async {
        pymongo(&uri(&sluice, Some(&ca_file)), "ok").await;
        pymongo(&uri(&sluice, None), "ok").await;
        rust_ping(&uri(&sluice, Some(&ca_file)))
            .await
            .expect("Rust driver over TLS");
        rust_ping(&uri(&sluice, None))
            .await
            .expect("Rust driver in plaintext");
        assert_eq!(sluice.stderr().matches(REFUSED_LOG).count(), 0);
    })
    .await;
}

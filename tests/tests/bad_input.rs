//! Bad input from clients: garbage, lying lengths (a bad startup length is closed without an
//! answer, as PostgreSQL does), unsupported protocol versions, a
//! startup packet without a user, unknown message types. Each gets an ErrorResponse with a
//! proper SQLSTATE (where the protocol allows) and a closed socket, and never disturbs
//! other clients.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::sluice_for;
use sluice_tests::{scalar, shared_cluster, PoolMode, APP_PASSWORD, APP_USER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `bytes` on a fresh connection and returns everything Sluice answers until it
/// closes the socket (bounded at 10 s).
async fn exchange(port: u16, bytes: &[u8]) -> Vec<u8> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    assert!(
        read.is_ok(),
        "socket not closed after bad input; got {out:?}"
    );
    out
}

/// The SQLSTATE of the first ErrorResponse in `out`.
fn sqlstate(out: &[u8]) -> Option<String> {
    let start = out.iter().position(|&b| b == b'E')?;
    let body = out.get(start + 5..)?;
    let mut rest = body;
    while let Some((&field, tail)) = rest.split_first() {
        let nul = tail.iter().position(|&b| b == 0)?;
        if field == b'C' {
            return Some(String::from_utf8_lossy(&tail[..nul]).into_owned());
        }
        rest = &tail[nul + 1..];
    }
    None
}

fn startup(params: &[(&str, &str)], version: i32) -> Vec<u8> {
    let mut body = version.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    out.extend(body);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_protocol_error_and_a_closed_socket() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("bad_input").await;
    let sluice = sluice_for(cluster, &db, PoolMode::Transaction).start();
    let port = sluice.port();
    // A healthy client throughout.
    let good = sluice.connect(APP_USER, APP_PASSWORD, &db).await.unwrap();

    // Garbage where a startup packet belongs: a length far beyond the startup limit.
    // PostgreSQL closes such a socket without a byte ("invalid length of startup packet" is
    // only logged), and so does Sluice.
    let out = exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(out, b"", "closed without an answer");

    // A length that lies (shorter than the header).
    let out = exchange(port, &[0, 0, 0, 2, 0, 3, 0, 0]).await;
    assert_eq!(out, b"", "closed without an answer");

    // A Terminate before the StartupMessage (node-postgres, when a client ends in the tick
    // it connected): closed without an answer, as PostgreSQL does.
    let mut early = b"X\0\0\0\x04".to_vec();
    early.extend(startup(&[("user", APP_USER), ("database", &db)], 3 << 16));
    let out = exchange(port, &early).await;
    assert_eq!(out, b"", "closed without an answer");

    // Protocol 2.0.
    let out = exchange(port, &startup(&[("user", APP_USER)], 2 << 16)).await;
    assert_eq!(sqlstate(&out).as_deref(), Some("08P01"), "{out:?}");

    // No user name.
    let out = exchange(port, &startup(&[("database", &db)], 3 << 16)).await;
    assert_eq!(sqlstate(&out).as_deref(), Some("28000"), "{out:?}");

    // Protocol 3.2 with an unknown _pq_ option: NegotiateProtocolVersion first, then the
    // login goes on (here it stops at the password request, which we do not answer).
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(&startup(
        &[("user", APP_USER), ("database", &db), ("_pq_.fancy", "1")],
        (3 << 16) | 2,
    ))
    .await
    .unwrap();
    let mut first = [0u8; 1];
    s.read_exact(&mut first).await.unwrap();
    assert_eq!(first[0], b'v', "expected NegotiateProtocolVersion");
    drop(s);

    // Bytes smuggled after an SSLRequest, before Sluice answered it.
    let mut smuggle = vec![0, 0, 0, 8, 4, 210, 22, 47];
    smuggle.extend(startup(&[("user", APP_USER)], 3 << 16));
    let out = exchange(port, &smuggle).await;
    assert_eq!(sqlstate(&out).as_deref(), Some("08P01"), "{out:?}");

    // A password message whose length lies (1: shorter than the length field itself).
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    raw.write_all(&startup(&[("user", APP_USER), ("database", &db)], 3 << 16))
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = raw.read(&mut buf).await.unwrap();
    assert!(
        n > 0 && buf[0] == b'R',
        "expected an authentication request"
    );
    raw.write_all(&[b'p', 0, 0, 0, 1]).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), raw.read_to_end(&mut out)).await;
    assert_eq!(sqlstate(&out).as_deref(), Some("08P01"), "{out:?}");

    // The healthy client never noticed.
    assert_eq!(scalar(&good, "select 42").await, "42");
    let again = sluice.connect(APP_USER, APP_PASSWORD, &db).await.unwrap();
    assert_eq!(scalar(&again, "select 1").await, "1");
}

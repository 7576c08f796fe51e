//! Shared helpers of the integration tests (each test file includes this module).
#![allow(dead_code)]

use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, CertifiedKey, IsCa, KeyPair};
use sluice_tests::{PgCluster, PoolMode, Sluice, SluiceBuilder};

/// Both pool modes, for tests that run in each.
pub const MODES: [PoolMode; 2] = [PoolMode::Session, PoolMode::Transaction];

/// A builder for the program under test with one database `db` of `cluster`.
pub fn sluice_for(cluster: &PgCluster, db: &str, mode: PoolMode) -> SluiceBuilder {
    Sluice::for_db(cluster, db, mode).binary(env!("CARGO_BIN_EXE_sluice-e2e"))
}

/// A builder for the program under test without databases.
pub fn sluice() -> SluiceBuilder {
    Sluice::builder().binary(env!("CARGO_BIN_EXE_sluice-e2e"))
}

/// Asserts that `res` is an error whose SQLSTATE is one of `codes`, returning the error.
#[track_caller]
pub fn expect_sqlstate<T: std::fmt::Debug>(
    res: Result<T, tokio_postgres::Error>,
    codes: &[&str],
) -> tokio_postgres::Error {
    match res {
        Ok(v) => panic!("expected an error with SQLSTATE {codes:?}, got Ok({v:?})"),
        Err(e) => {
            let code = sluice_tests::sqlstate(&e);
            assert!(
                code.as_deref().is_some_and(|c| codes.contains(&c)),
                "expected SQLSTATE {codes:?}, got {code:?}: {e:?}"
            );
            e
        }
    }
}

/// Polls `pg_stat_activity` until the number of client backends on `db` is `want` (up to
/// 10 s) and returns the last count seen.
pub async fn wait_backends(su: &tokio_postgres::Client, db: &str, want: i64) -> i64 {
    let mut n = -1;
    for _ in 0..200 {
        n = PgCluster::backend_count(su, db).await;
        if n == want {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    n
}

/// Runs a client program without blocking the async runtime (hang guard 300 s).
pub async fn run(mut cmd: std::process::Command) -> std::process::Output {
    cmd.stdin(std::process::Stdio::null())
        .env("PGCONNECT_TIMEOUT", "20");
    let what = format!("{cmd:?}");
    tokio::time::timeout(
        std::time::Duration::from_secs(300),
        tokio::task::spawn_blocking(move || {
            cmd.output()
                .unwrap_or_else(|e| panic!("could not run {cmd:?}: {e}"))
        }),
    )
    .await
    .unwrap_or_else(|_| panic!("hang guard: {what} ran over 300 s"))
    .expect("client program task")
}

/// A program's status, stdout and stderr, for assertion messages.
pub fn text(out: &std::process::Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs pgbench against 127.0.0.1:`port` as the app user and checks that it succeeded: no
/// failed transactions, no aborted clients, and with `-c C -t N` all C×N transactions done.
pub async fn pgbench(cluster: &PgCluster, port: u16, db: &str, args: &[&str]) {
    let mut cmd = std::process::Command::new(cluster.client_tool("pgbench"));
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-U",
        sluice_tests::APP_USER,
    ])
    .args(args)
    .arg(db)
    .env("PGPASSWORD", sluice_tests::APP_PASSWORD);
    let out = run(cmd).await;
    let all = text(&out);
    assert!(out.status.success(), "pgbench {args:?} failed: {all}");
    if args.contains(&"-i") {
        return;
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let value = |flag: &str| -> Option<u64> {
        let i = args.iter().position(|a| *a == flag)?;
        args.get(i + 1)?.parse().ok()
    };
    if let (Some(c), Some(t)) = (value("-c"), value("-t")) {
        let want = format!(
            "number of transactions actually processed: {}/{}",
            c * t,
            c * t
        );
        assert!(
            stdout.contains(&want),
            "pgbench {args:?}: missing {want:?}: {all}"
        );
    }
    assert!(
        stdout.contains("number of failed transactions: 0 "),
        "pgbench {args:?}: failed transactions: {all}"
    );
    assert!(
        !all.contains("aborted"),
        "pgbench {args:?}: aborted clients: {all}"
    );
}

/// A throwaway certificate authority for TLS tests.
pub struct Ca {
    /// Its self-signed certificate.
    pub cert: rcgen::Certificate,
    key: KeyPair,
}

/// A new CA named `name`.
pub fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let key = KeyPair::generate().expect("key pair");
    let cert = params.self_signed(&key).expect("self-signed CA");
    Ca { cert, key }
}

/// A server certificate for localhost / 127.0.0.1 signed by `ca`.
pub fn leaf(ca: &Ca) -> CertifiedKey {
    let params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("leaf params");
    let key = KeyPair::generate().expect("key pair");
    let cert = params
        .signed_by(&key, &ca.cert, &ca.key)
        .expect("signed leaf");
    CertifiedKey {
        cert,
        key_pair: key,
    }
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write test file");
    p.display().to_string()
}

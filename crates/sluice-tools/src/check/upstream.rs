//! The PostgreSQL side of `sluice-tools check`: each upstream directly, a query through
//! Sluice, and whom to log in as.

use std::net::SocketAddr;
use std::time::Duration;

use sluice_config::{Config, DatabaseConfig, SslMode};

use super::report::Report;
use crate::cli::CheckArgs;
use crate::pg::pg_error;

/// Connects to `db`'s upstream directly with the configured credentials.
pub(super) async fn check_upstream(report: &mut Report, db: &DatabaseConfig, config: &Config) {
    let up = &db.upstream;
    let what = format!(
        "upstream of {} ({}@{}/{})",
        db.name,
        up.user,
        up.address(),
        up.database
    );
    let ssl = match db.sslmode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            report.note(format!(
                "{what}: sslmode {:?} — not checked directly (plaintext only here); the query through Sluice below uses TLS",
                db.sslmode
            ));
            return;
        }
    };
    let mut pg = tokio_postgres::Config::new();
    pg.host(&up.host)
        .port(up.port)
        .user(&up.user)
        .dbname(&up.database)
        .ssl_mode(ssl)
        .application_name("sluice check")
        .connect_timeout(config.postgres.server_connect_timeout);
    if let Some(p) = &up.password {
        pg.password(p);
    }
    let limit = config.postgres.server_connect_timeout + Duration::from_secs(5);
    let result = tokio::time::timeout(limit, async {
        let (client, connection) = pg.connect(tokio_postgres::NoTls).await?;
        let conn = tokio::spawn(connection);
        let row = client.query_one("SHOW server_version", &[]).await;
        drop(client);
        let _ = conn.await;
        row.map(|r| r.get::<_, String>(0))
    })
    .await;
    match result {
        Ok(Ok(version)) => report.ok(format!("{what}: connected (PostgreSQL {version})")),
        Ok(Err(e)) => report.fail(format!("{what}: {}", pg_error(&e))),
        Err(_) => report.fail(format!("{what}: no answer within {limit:?}")),
    }
}

/// Who `sluice-tools check` logs in to the running Sluice as, for database `db`.
pub(super) fn client_credentials(
    config: &Config,
    db: &DatabaseConfig,
    args: &CheckArgs,
) -> Option<(String, String)> {
    if let (Some(user), Some(password)) = (&args.user, &args.password) {
        return Some((user.clone(), password.clone()));
    }
    let users = &config.postgres.users;
    if users.is_empty() {
        return Some(upstream_credentials(db));
    }
    // A configured user whose password is plaintext (not a SCRAM verifier or md5 hash).
    let plaintext = |p: &str| {
        !(p.starts_with("SCRAM-SHA-256$")
            || (p.len() == 35
                && p.starts_with("md5")
                && p[3..].bytes().all(|b| b.is_ascii_hexdigit())))
    };
    users
        .iter()
        .find(|u| u.name == db.upstream.user && plaintext(&u.password))
        .or_else(|| users.iter().find(|u| plaintext(&u.password)))
        .map(|u| (u.name.clone(), u.password.clone()))
}

/// The upstream URL's user and password: what clients use when no users are configured.
pub(super) fn upstream_credentials(db: &DatabaseConfig) -> (String, String) {
    (
        db.upstream.user.clone(),
        db.upstream.password.clone().unwrap_or_default(),
    )
}

/// Connects through Sluice at `addr` and runs `SELECT 1`.
pub(super) async fn query_through(
    addr: SocketAddr,
    user: &str,
    password: &str,
    db: &str,
) -> Result<(), String> {
    let mut pg = tokio_postgres::Config::new();
    pg.host(addr.ip().to_string())
        .port(addr.port())
        .user(user)
        .password(password)
        .dbname(db)
        .application_name("sluice check")
        .ssl_mode(tokio_postgres::config::SslMode::Prefer)
        .connect_timeout(Duration::from_secs(10));
    let (client, connection) = pg
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| pg_error(&e))?;
    let conn = tokio::spawn(connection);
    let result = client.simple_query("SELECT 1").await;
    drop(client);
    let _ = conn.await;
    result.map(|_| ()).map_err(|e| pg_error(&e))
}

//! `sluice check`: verifies an installation the way an operator would by hand — the
//! configuration, every upstream with the configured credentials, a query through Sluice
//! (the running one on `postgres.listen`, else one started in-process on free ports),
//! `/health` and `/admin/pool-stats` — one ✓/✗ line each.
//!
//! `sluice health`: GET `/health` of the admin listener, exit 0 when it answers 200 (for
//! container HEALTHCHECKs and scripts).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_config::{ClientTlsConfig, ClientTlsMode, Config, DatabaseConfig, SslMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::cli::{CheckArgs, HealthArgs};

/// The ✓/✗ lines printed so far, and the failures among them.
#[derive(Default)]
struct Report {
    failures: Vec<String>,
}

impl Report {
    fn ok(&mut self, line: impl AsRef<str>) {
        println!("✓ {}", line.as_ref());
    }

    fn fail(&mut self, line: impl Into<String>) {
        let line = line.into();
        println!("✗ {line}");
        self.failures.push(line);
    }

    fn note(&mut self, line: impl AsRef<str>) {
        println!("· {}", line.as_ref());
    }

    fn finish(self) -> ExitCode {
        if self.failures.is_empty() {
            println!("✓ All checks passed");
            ExitCode::SUCCESS
        } else {
            println!("✗ {} check(s) failed:", self.failures.len());
            for f in &self.failures {
                println!("    {f}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Runs `sluice check`.
pub async fn main(args: CheckArgs) -> ExitCode {
    let mut report = Report::default();
    let source = match &args.config {
        Some(path) => path.display().to_string(),
        None => match std::env::var(sluice_config::CONFIG_ENV) {
            Ok(p) if !p.trim().is_empty() => format!("{p} (from ${})", sluice_config::CONFIG_ENV),
            _ => "built-in defaults (no --config, no $SLUICE_CONFIG)".to_owned(),
        },
    };
    let config = match Config::load(args.config.as_deref(), &|k| std::env::var(k).ok(), &[]) {
        Ok(c) => c,
        Err(e) => {
            report.fail(format!("configuration {source}: {e}"));
            return report.finish();
        }
    };
    let pg = &config.postgres;
    report.ok(format!(
        "configuration {source} is valid: {} database(s), pool_mode {}, pool_size {}, listen {}{}",
        pg.databases.len(),
        pg.pool_mode,
        pg.pool_size,
        pg.listen,
        if config.admin.enabled {
            format!(", admin http://{}", config.admin.listen)
        } else {
            String::new()
        }
    ));
    if pg.databases.is_empty() {
        report.fail("no [[postgres.databases]] configured: Sluice has nothing to pool");
        return report.finish();
    }

    for db in &pg.databases {
        check_upstream(&mut report, db, &config).await;
    }
    if config.mongo.is_some() {
        report.note("[mongo] upstream: not checked by `sluice check` (PostgreSQL only)");
    }

    // Through Sluice: the running one when it answers and we can log in, else in-process.
    let listen = loopback(pg.listen);
    let running = tokio::time::timeout(
        Duration::from_secs(1),
        tokio::net::TcpStream::connect(listen),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    let credentials: Option<Vec<(String, String)>> = pg
        .databases
        .iter()
        .map(|db| client_credentials(&config, db, &args))
        .collect();
    let mut in_process = None;
    let (target, admin, creds) = match credentials {
        Some(creds) if running && pg.tls.mode != ClientTlsMode::Require => {
            report.note(format!("Sluice answers on {listen}: checking through it"));
            let admin = config.admin.enabled.then(|| loopback(config.admin.listen));
            (listen, admin, creds)
        }
        _ => {
            if running {
                report.note(format!(
                    "Sluice answers on {listen}, but {}: checking through an in-process Sluice instead",
                    if pg.tls.mode == ClientTlsMode::Require {
                        "it requires TLS from clients".to_owned()
                    } else {
                        "no client password is known (pass --user and --password)".to_owned()
                    }
                ));
            }
            match InProcess::start(&config).await {
                Ok(sluice) => {
                    if !running {
                        report.note(format!(
                            "no Sluice answers on {listen}: started one in-process on {} (admin http://{})",
                            sluice.listen, sluice.admin
                        ));
                    }
                    let creds = pg.databases.iter().map(upstream_credentials).collect();
                    let target = (sluice.listen, Some(sluice.admin), creds);
                    in_process = Some(sluice);
                    target
                }
                Err(e) => {
                    report.fail(format!("starting an in-process Sluice: {e}"));
                    return report.finish();
                }
            }
        }
    };

    for (db, (user, password)) in pg.databases.iter().zip(&creds) {
        let started = Instant::now();
        let limit = pg.server_connect_timeout + pg.pool_timeout.min(Duration::from_secs(10));
        match tokio::time::timeout(limit, query_through(target, user, password, &db.name)).await
        {
            Ok(Ok(())) => report.ok(format!(
                "query through Sluice ({target}) to database {} as {user}: ok in {} ms",
                db.name,
                started.elapsed().as_millis()
            )),
            Ok(Err(e)) => report.fail(format!(
                "query through Sluice ({target}) to database {} as {user}: {e}",
                db.name
            )),
            Err(_) => report.fail(format!(
                "query through Sluice ({target}) to database {} as {user}: no answer within {limit:?}",
                db.name
            )),
        }
    }

    match admin {
        None => report.note("admin listener disabled (admin.enabled = false): /health and /admin/pool-stats not checked"),
        Some(admin) => {
            let token = config.admin.token.as_deref();
            check_health(&mut report, admin).await;
            let names: Vec<&str> = pg.databases.iter().map(|d| d.name.as_str()).collect();
            check_pool_stats(&mut report, admin, token, &names).await;
        }
    }

    if let Some(sluice) = in_process {
        sluice.stop().await;
    }
    report.finish()
}

/// Connects to `db`'s upstream directly with the configured credentials.
async fn check_upstream(report: &mut Report, db: &DatabaseConfig, config: &Config) {
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

/// A tokio-postgres error as one line: the server's message and SQLSTATE, or the
/// error with its causes.
pub(crate) fn pg_error(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} (SQLSTATE {})", db.message(), db.code().code());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// Who `sluice check` logs in to the running Sluice as, for database `db`.
fn client_credentials(
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
fn upstream_credentials(db: &DatabaseConfig) -> (String, String) {
    (
        db.upstream.user.clone(),
        db.upstream.password.clone().unwrap_or_default(),
    )
}

/// Connects through Sluice at `addr` and runs `SELECT 1`.
async fn query_through(
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

async fn check_health(report: &mut Report, admin: SocketAddr) {
    match http_get(admin, "/health", None, Duration::from_secs(5)).await {
        Ok((200, body)) if body.contains("\"status\":\"ok\"") => {
            report.ok(format!("GET http://{admin}/health: 200 ok"));
        }
        Ok((status, body)) => report.fail(format!(
            "GET http://{admin}/health: {status} {}",
            shorten(&body)
        )),
        Err(e) => report.fail(format!("GET http://{admin}/health: {e}")),
    }
}

/// GET /admin/pool-stats: JSON with a pool for every configured database (else the Sluice
/// that answers runs another configuration).
async fn check_pool_stats(
    report: &mut Report,
    admin: SocketAddr,
    token: Option<&str>,
    databases: &[&str],
) {
    let url = format!("http://{admin}/admin/pool-stats");
    match http_get(admin, "/admin/pool-stats", token, Duration::from_secs(5)).await {
        Ok((200, body)) => match serde_json::from_str::<serde_json::Value>(&body) {
            Ok(json) if json["pools"].is_array() => {
                let served: Vec<&str> = json["pools"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p["name"].as_str())
                    .filter_map(|n| n.rsplit_once('/').map(|(db, _user)| db))
                    .collect();
                let missing: Vec<&str> = databases
                    .iter()
                    .copied()
                    .filter(|d| !served.contains(d))
                    .collect();
                if !missing.is_empty() {
                    report.fail(format!(
                        "GET {url}: no pool for database(s) {} — this Sluice runs another configuration",
                        missing.join(", ")
                    ));
                    return;
                }
                let pools = served.len();
                report.ok(format!(
                    "GET {url}: 200, {pools} pool(s), {} of {} server connections active, {} client(s) waiting",
                    json["postgres_active"], json["postgres_max"], json["postgres_waiting"]
                ));
            }
            Ok(_) => report.fail(format!("GET {url}: 200 without a `pools` list")),
            Err(e) => report.fail(format!("GET {url}: 200 but not JSON ({e})")),
        },
        Ok((401, _)) => report.fail(format!(
            "GET {url}: 401 (admin.token / SLUICE_ADMIN_TOKEN differs from the running Sluice's)"
        )),
        Ok((status, body)) => report.fail(format!("GET {url}: {status} {}", shorten(&body))),
        Err(e) => report.fail(format!("GET {url}: {e}")),
    }
}

fn shorten(body: &str) -> String {
    let body = body.trim();
    match body.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &body[..i]),
        None => body.to_owned(),
    }
}

/// `addr` with an unspecified IP (`0.0.0.0`, `::`) replaced by loopback: where to connect
/// to reach a listener bound there.
pub(crate) fn loopback(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port()))
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv6Addr::LOCALHOST, addr.port()))
        }
        _ => addr,
    }
}

/// A minimal HTTP/1.1 GET: (status, body).
pub(crate) async fn http_get(
    addr: SocketAddr,
    path: &str,
    bearer: Option<&str>,
    limit: Duration,
) -> Result<(u16, String), String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let auth = bearer
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: sluice\r\n{auth}Connection: close\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("sending the request: {e}"))?;
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .await
            .map_err(|e| format!("reading the answer: {e}"))?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| "not an HTTP answer".to_owned())?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| "not an HTTP answer".to_owned())?;
        Ok((status, body.to_owned()))
    };
    tokio::time::timeout(limit, exchange)
        .await
        .map_err(|_| format!("no answer within {limit:?}"))?
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub(crate) fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// Sluice running inside this process, on free loopback ports, on a runtime (threads) of
/// its own: client work in this process (SCRAM key derivation is CPU-bound) must not delay
/// Sluice's accept loop, as it could not if Sluice were its own process.
pub(crate) struct InProcess {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// The HTTP admin listener.
    pub admin: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    runtime: tokio::runtime::Runtime,
}

impl InProcess {
    /// Starts Sluice with `config` moved to free loopback ports (admin listener on), without
    /// client users (clients log in with the upstream credentials), client TLS, MongoDB or
    /// warm connections, and waits until it accepts connections.
    async fn start(config: &Config) -> Result<InProcess, String> {
        let mut c = config.clone();
        c.postgres.users.clear();
        c.postgres.admin_users.clear();
        c.postgres.tls = ClientTlsConfig::default();
        c.postgres.min_pool_size = 0;
        for db in &mut c.postgres.databases {
            db.min_pool_size = None;
        }
        c.postgres.pool_timeout = c.postgres.pool_timeout.min(Duration::from_secs(10));
        c.general.shutdown_timeout = Duration::from_secs(2);
        c.mongo = None;
        Self::start_exact(c).await
    }

    /// Starts Sluice with `config` as given, except that both listeners move to free
    /// loopback ports.
    pub(crate) async fn start_exact(mut c: Config) -> Result<InProcess, String> {
        let port = |what| free_port().map_err(|e| format!("no free port for {what}: {e}"));
        c.postgres.listen = SocketAddr::from((Ipv4Addr::LOCALHOST, port("postgres.listen")?));
        c.admin.enabled = true;
        c.admin.listen = SocketAddr::from((Ipv4Addr::LOCALHOST, port("admin.listen")?));
        c.validate().map_err(|e| e.to_string())?;
        let (listen, admin) = (c.postgres.listen, c.admin.listen);
        let config = Arc::new(c);
        let for_loader = config.clone();
        let loader: crate::Loader = Arc::new(move || Ok((*for_loader).clone()));
        let stop = CancellationToken::new();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name("sluice-in-process")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a runtime: {e}"))?;
        let mut task = runtime.spawn(crate::run(config, loader, stop.clone().cancelled_owned()));
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if tokio::net::TcpStream::connect(listen).await.is_ok() {
                return Ok(InProcess {
                    listen,
                    admin,
                    stop,
                    task,
                    runtime,
                });
            }
            if task.is_finished() {
                let result = (&mut task).await;
                runtime.shutdown_background();
                return Err(match result {
                    Ok(Err(e)) => format!("{e:#}"),
                    Ok(Ok(())) => "stopped at once".to_owned(),
                    Err(e) => e.to_string(),
                });
            }
            if Instant::now() > deadline {
                stop.cancel();
                runtime.shutdown_background();
                return Err(format!("not listening on {listen} after 15 s"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Shuts it down (gracefully, bounded by its shutdown_timeout) and waits.
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(35), self.task).await;
        self.runtime.shutdown_background();
    }
}

/// Runs `sluice health`.
pub async fn health(args: HealthArgs) -> ExitCode {
    let admin = match args.admin {
        Some(addr) => addr,
        None => match Config::load(args.config.as_deref(), &|k| std::env::var(k).ok(), &[]) {
            Ok(c) => c.admin.listen,
            Err(e) => {
                eprintln!("sluice health: configuration error ({e}); asking 127.0.0.1:9930");
                SocketAddr::from((Ipv4Addr::LOCALHOST, 9930))
            }
        },
    };
    let admin = loopback(admin);
    match http_get(
        admin,
        "/health",
        None,
        Duration::from_secs(args.timeout.max(1)),
    )
    .await
    {
        Ok((200, body)) => {
            println!("{}", body.trim());
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            eprintln!(
                "sluice health: http://{admin}/health answered {status}: {}",
                body.trim()
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("sluice health: http://{admin}/health: {e}");
            ExitCode::FAILURE
        }
    }
}

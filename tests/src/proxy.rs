//! Running the real sluice program against a test cluster.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

use crate::pg::tail;
use crate::{free_port, APP_PASSWORD, APP_USER};

/// How long [`SluiceBuilder::start`] waits for the listen port.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// The path of the sluice program under test.
pub fn sluice_binary() -> PathBuf {
    if let Ok(p) = std::env::var("SLUICE_BIN") {
        return PathBuf::from(p);
    }
    // Integration tests of this crate get the binary from Cargo; the library can't use
    // `env!("CARGO_BIN_EXE_...")`, so find it next to the test executable.
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("exe dir");
    let candidates = [
        deps.join("sluice-e2e"),
        deps.parent()
            .map(|p| p.join("sluice-e2e"))
            .unwrap_or_default(),
    ];
    for c in &candidates {
        if c.is_file() {
            return c.clone();
        }
    }
    panic!(
        "sluice-e2e binary not found next to {} (set SLUICE_BIN)",
        exe.display()
    );
}

/// Pool mode of a database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    /// A client keeps its server connection until it disconnects.
    Session,
    /// The server connection goes back to the pool at the end of each transaction.
    Transaction,
}

impl PoolMode {
    /// The configuration file's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
        }
    }
}

/// One `[[postgres.databases]]` entry.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// What clients ask for.
    pub name: String,
    /// Where it goes (with Sluice's credentials).
    pub upstream: String,
    /// Per-database pool size override.
    pub pool_size: Option<u32>,
    /// Per-database minimum pool size override.
    pub min_pool_size: Option<u32>,
    /// Per-database pool mode override.
    pub pool_mode: Option<PoolMode>,
    /// Raw TOML lines added to this database's table (e.g. `sslmode = "verify-full"`).
    pub extra: String,
}

impl DatabaseConfig {
    /// An entry without overrides.
    pub fn new(name: &str, upstream: &str) -> DatabaseConfig {
        DatabaseConfig {
            name: name.to_string(),
            upstream: upstream.to_string(),
            pool_size: None,
            min_pool_size: None,
            pool_mode: None,
            extra: String::new(),
        }
    }
}

/// Builds a sluice configuration and starts the program with it.
#[derive(Debug, Clone)]
pub struct SluiceBuilder {
    mode: PoolMode,
    pool_size: u32,
    min_pool_size: u32,
    pool_timeout: Duration,
    max_client_conn: u32,
    server_reset_query: Option<String>,
    auth_type: Option<String>,
    shutdown_timeout: Duration,
    databases: Vec<DatabaseConfig>,
    users: Vec<(String, String)>,
    rust_log: String,
    extra_postgres: String,
    binary: Option<PathBuf>,
    worker_threads: Option<usize>,
}

impl Default for SluiceBuilder {
    fn default() -> Self {
        SluiceBuilder {
            mode: PoolMode::Transaction,
            pool_size: 5,
            min_pool_size: 0,
            pool_timeout: Duration::from_secs(30),
            max_client_conn: 1000,
            server_reset_query: None,
            auth_type: None,
            shutdown_timeout: Duration::from_secs(30),
            databases: Vec::new(),
            users: Vec::new(),
            rust_log: std::env::var("SLUICE_TEST_LOG").unwrap_or_else(|_| "info".to_string()),
            extra_postgres: String::new(),
            binary: None,
            worker_threads: None,
        }
    }
}

/// A duration as the configuration file spells it: `"30s"`, or plain seconds like `"0.5"`.
pub fn config_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}", d.as_secs_f64())
    }
}

fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl SluiceBuilder {
    /// Sets the pool mode (default transaction).
    pub fn mode(mut self, mode: PoolMode) -> Self {
        self.mode = mode;
        self
    }
    /// Sets `pool_size` (default 5).
    pub fn pool_size(mut self, n: u32) -> Self {
        self.pool_size = n;
        self
    }
    /// Sets `min_pool_size` (default 0).
    pub fn min_pool_size(mut self, n: u32) -> Self {
        self.min_pool_size = n;
        self
    }
    /// Sets `general.worker_threads` (default: unset, one thread).
    pub fn worker_threads(mut self, n: usize) -> Self {
        self.worker_threads = Some(n);
        self
    }
    /// Sets `pool_timeout` (default 30 s).
    pub fn pool_timeout(mut self, d: Duration) -> Self {
        self.pool_timeout = d;
        self
    }
    /// Sets `max_client_conn` (default 1000).
    pub fn max_client_conn(mut self, n: u32) -> Self {
        self.max_client_conn = n;
        self
    }
    /// Sets `server_reset_query` (default: the program's default).
    pub fn server_reset_query(mut self, q: &str) -> Self {
        self.server_reset_query = Some(q.to_string());
        self
    }
    /// Sets `auth_type` (`scram-sha-256`, `md5`, `trust`; default: the program's default).
    pub fn auth_type(mut self, t: &str) -> Self {
        self.auth_type = Some(t.to_string());
        self
    }
    /// Sets `general.shutdown_timeout` (default 30 s).
    pub fn shutdown_timeout(mut self, d: Duration) -> Self {
        self.shutdown_timeout = d;
        self
    }
    /// Adds a database `name` forwarded to `upstream`.
    pub fn database(mut self, name: &str, upstream: &str) -> Self {
        self.databases.push(DatabaseConfig::new(name, upstream));
        self
    }
    /// Adds a database entry with overrides.
    pub fn database_config(mut self, db: DatabaseConfig) -> Self {
        self.databases.push(db);
        self
    }
    /// Adds a `[[postgres.users]]` entry (plaintext, `md5...` or `SCRAM-SHA-256$...`).
    pub fn user(mut self, name: &str, password: &str) -> Self {
        self.users.push((name.to_string(), password.to_string()));
        self
    }
    /// Sets `RUST_LOG` for the program (default `info`, or `$SLUICE_TEST_LOG`).
    pub fn rust_log(mut self, filter: &str) -> Self {
        self.rust_log = filter.to_string();
        self
    }
    /// The program to run (integration tests pass `env!("CARGO_BIN_EXE_sluice-e2e")`);
    /// without it the binary is looked for next to the test executable.
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }
    /// Raw TOML lines added to the `[postgres]` table.
    pub fn extra_postgres(mut self, toml: &str) -> Self {
        self.extra_postgres.push_str(toml);
        self.extra_postgres.push('\n');
        self
    }

    /// The configuration file for listen port `port` and admin port `admin_port`.
    pub fn to_toml(&self, port: u16, admin_port: u16) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "[admin]");
        let _ = writeln!(
            s,
            "listen = {}\n",
            toml_str(&format!("127.0.0.1:{admin_port}"))
        );
        let _ = writeln!(s, "[general]");
        let _ = writeln!(
            s,
            "shutdown_timeout = {}",
            toml_str(&config_duration(self.shutdown_timeout))
        );
        if let Some(n) = self.worker_threads {
            let _ = writeln!(s, "worker_threads = {n}");
        }
        let _ = writeln!(s, "\n[postgres]");
        let _ = writeln!(s, "listen = {}", toml_str(&format!("127.0.0.1:{port}")));
        let _ = writeln!(s, "pool_mode = {}", toml_str(self.mode.as_str()));
        let _ = writeln!(s, "max_client_conn = {}", self.max_client_conn);
        let _ = writeln!(s, "pool_size = {}", self.pool_size);
        let _ = writeln!(s, "min_pool_size = {}", self.min_pool_size);
        let _ = writeln!(
            s,
            "pool_timeout = {}",
            toml_str(&config_duration(self.pool_timeout))
        );
        if let Some(q) = &self.server_reset_query {
            let _ = writeln!(s, "server_reset_query = {}", toml_str(q));
        }
        if let Some(a) = &self.auth_type {
            let _ = writeln!(s, "auth_type = {}", toml_str(a));
        }
        s.push_str(&self.extra_postgres);
        for db in &self.databases {
            let _ = writeln!(s, "\n[[postgres.databases]]");
            let _ = writeln!(s, "name = {}", toml_str(&db.name));
            let _ = writeln!(s, "upstream = {}", toml_str(&db.upstream));
            if let Some(n) = db.pool_size {
                let _ = writeln!(s, "pool_size = {n}");
            }
            if let Some(n) = db.min_pool_size {
                let _ = writeln!(s, "min_pool_size = {n}");
            }
            if let Some(m) = db.pool_mode {
                let _ = writeln!(s, "pool_mode = {}", toml_str(m.as_str()));
            }
            s.push_str(&db.extra);
        }
        for (name, password) in &self.users {
            let _ = writeln!(s, "\n[[postgres.users]]");
            let _ = writeln!(s, "name = {}", toml_str(name));
            let _ = writeln!(s, "password = {}", toml_str(password));
        }
        s
    }

    /// Writes the configuration and starts the program, waiting until its port accepts TCP.
    ///
    /// # Panics
    /// If the program exits or the port does not open within 15 s (with its stderr).
    pub fn start(self) -> Sluice {
        let dir = tempfile::Builder::new()
            .prefix("sluice-proxy-")
            .tempdir()
            .expect("temp dir for sluice");
        let port = free_port();
        let admin_port = free_port();
        let config_path = dir.path().join("sluice.toml");
        std::fs::write(&config_path, self.to_toml(port, admin_port)).expect("write sluice config");
        let stderr_path = dir.path().join("sluice.stderr");
        let stdout_path = dir.path().join("sluice.stdout");
        let stderr = std::fs::File::create(&stderr_path).expect("create stderr file");
        let stdout = std::fs::File::create(&stdout_path).expect("create stdout file");
        let binary = self.binary.clone().unwrap_or_else(sluice_binary);
        let child = Command::new(binary)
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", &self.rust_log)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawn sluice");
        let mut sluice = Sluice {
            child,
            port,
            admin_port,
            dir,
            config_path,
            stderr_path,
            exit: None,
        };
        sluice.wait_listening();
        sluice
    }
}

/// A running sluice program. Dropping it kills the process (and prints its stderr if the
/// test is panicking).
pub struct Sluice {
    child: Child,
    port: u16,
    admin_port: u16,
    dir: tempfile::TempDir,
    config_path: PathBuf,
    stderr_path: PathBuf,
    exit: Option<ExitStatus>,
}

impl Sluice {
    /// A builder with test defaults: transaction mode, pool_size 5, min_pool_size 0,
    /// pool_timeout 30 s, max_client_conn 1000.
    pub fn builder() -> SluiceBuilder {
        SluiceBuilder::default()
    }

    /// A builder in mode `mode` with one database `db` of the shared cluster (reached as
    /// `app`/`secret`).
    pub fn for_db(cluster: &crate::PgCluster, db: &str, mode: PoolMode) -> SluiceBuilder {
        Sluice::builder()
            .mode(mode)
            .database(db, &cluster.app_url(db))
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exit = Some(status);
                panic!(
                    "sluice exited during startup with {status}\nconfig:\n{}\nstderr:\n{}",
                    std::fs::read_to_string(&self.config_path).unwrap_or_default(),
                    self.stderr()
                );
            }
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "sluice did not listen on {addr} within {START_TIMEOUT:?}\nstderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The configuration file the program was started with (tests rewrite it before a
    /// reload).
    pub fn config_path(&self) -> &std::path::Path {
        &self.config_path
    }

    /// The admin (HTTP) listener's port on 127.0.0.1.
    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    /// The listen port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The temporary directory holding the config and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `postgres://user:pass@127.0.0.1:PORT/db` pointing at the proxy.
    pub fn url(&self, user: &str, pass: &str, db: &str) -> String {
        format!("postgres://{user}:{pass}@127.0.0.1:{}/{db}", self.port)
    }

    /// A tokio-postgres configuration pointing at the proxy.
    pub fn pg_config(&self, user: &str, pass: &str, db: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(self.port)
            .user(user)
            .password(pass)
            .dbname(db)
            .connect_timeout(Duration::from_secs(20));
        config
    }

    /// Connects through the proxy (NoTls) and spawns the connection task.
    pub async fn connect(
        &self,
        user: &str,
        pass: &str,
        db: &str,
    ) -> Result<Client, tokio_postgres::Error> {
        self.connect_with_params(user, pass, db)
            .await
            .map(|(client, _)| client)
    }

    /// Like [`Sluice::connect`], also returning the ParameterStatus values the client got
    /// during startup (for the usual parameter names).
    pub async fn connect_with_params(
        &self,
        user: &str,
        pass: &str,
        db: &str,
    ) -> Result<(Client, HashMap<String, String>), tokio_postgres::Error> {
        let (client, connection) = self.pg_config(user, pass, db).connect(NoTls).await?;
        let mut params = HashMap::new();
        for name in [
            "server_version",
            "server_encoding",
            "client_encoding",
            "application_name",
            "DateStyle",
            "IntervalStyle",
            "TimeZone",
            "integer_datetimes",
            "standard_conforming_strings",
            "is_superuser",
            "session_authorization",
        ] {
            if let Some(v) = connection.parameter(name) {
                params.insert(name.to_string(), v.to_string());
            }
        }
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok((client, params))
    }

    /// Connects to `db` as `app`/`secret`.
    ///
    /// # Panics
    /// If the connection fails.
    pub async fn client(&self, db: &str) -> Client {
        self.connect(APP_USER, APP_PASSWORD, db)
            .await
            .unwrap_or_else(|e| panic!("connect to sluice ({db}) failed: {e:?}"))
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    /// Sends SIGINT.
    pub fn sigint(&self) {
        self.signal("INT");
    }

    /// Sends a signal by name (e.g. "HUP") to the program.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} failed");
    }

    /// Waits (asynchronously) for the process to exit, up to `limit`; `None` if it is still
    /// running then.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.exit {
                return Some(s);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exit = Some(status);
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.exit.is_none() && matches!(self.child.try_wait(), Ok(None))
    }

    /// What the program wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() || std::env::var_os("SLUICE_TEST_SHOW_LOG").is_some() {
            eprintln!(
                "---- sluice stderr (port {}) ----\n{}\n---- end sluice stderr ----",
                self.port,
                tail(&self.stderr(), 200)
            );
        }
    }
}

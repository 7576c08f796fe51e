//! The MongoDB side of the harness: a throwaway SecantusDB server (see
//! `shared/MONGO-TESTING.md`; `.ci/run` installs it into `/opt/secantus`), or a genuine
//! MongoDB named by `SLUICE_TEST_MONGODB_URI`, and the real sluice program with a `[mongo]`
//! section in front of it.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use mongodb::bson::doc;
use mongodb::Client;

use crate::free_port;
use crate::proxy::sluice_binary;

/// Environment variable with the URI of a real MongoDB to test against instead.
pub const MONGODB_URI_ENV: &str = "SLUICE_TEST_MONGODB_URI";

/// The SecantusDB program (override with `SLUICE_TEST_SECANTUS`).
fn secantus_binary() -> PathBuf {
    std::env::var_os("SLUICE_TEST_SECANTUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/secantus/bin/secantusd-py"))
}

/// The Python with pymongo used by the driver tests (override with `SLUICE_TEST_PYTHON`).
pub fn pymongo_python() -> PathBuf {
    std::env::var_os("SLUICE_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/secantus/bin/python"))
}

/// Runs the driver script `tests/drivers/<script>` with [`pymongo_python`] and `args`,
/// within `limit`, and returns its stdout. Panics, with both outputs and what `context`
/// says then, when it fails or does not print `want` (the scripts print `ALL OK` when
/// every check passed).
pub async fn run_pymongo(
    script: &str,
    args: &[String],
    want: &str,
    limit: std::time::Duration,
    context: impl Fn() -> String,
) -> String {
    let path = format!("{}/drivers/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = tokio::process::Command::new(pymongo_python())
        .arg(path)
        .args(args)
        .output();
    let out = crate::within(limit, "pymongo", out)
        .await
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains(want),
        "pymongo {script} {args:?} failed{}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        context()
    );
    stdout
}

/// A MongoDB-wire server for tests.
pub struct MongoServer {
    uri: String,
    child: Option<Child>,
    log: Option<tempfile::NamedTempFile>,
    /// Port and extra arguments, for [`MongoServer::restart`] (port 0: external server).
    port: u16,
    extra_args: Vec<String>,
    /// `--storage-path`: `:memory:`, or a directory kept across restarts.
    storage: String,
}

/// The server shared by the tests of one test process, started on first use.
pub fn shared_mongo() -> &'static MongoServer {
    static SHARED: OnceLock<MongoServer> = OnceLock::new();
    SHARED.get_or_init(|| MongoServer::start(&[]))
}

impl MongoServer {
    /// Starts a fresh SecantusDB with extra arguments (e.g. `--auth`), or, with
    /// `SLUICE_TEST_MONGODB_URI` set, uses that server.
    ///
    /// # Panics
    /// If the server does not answer a ping within 60 s.
    pub fn start(extra_args: &[&str]) -> MongoServer {
        Self::start_with_storage(extra_args, ":memory:")
    }

    /// Like [`MongoServer::start`], with data kept in `storage` (a directory), so that
    /// users created before a [`MongoServer::restart_with`] survive it.
    pub fn start_with_storage(extra_args: &[&str], storage: &str) -> MongoServer {
        if let Ok(uri) = std::env::var(MONGODB_URI_ENV) {
            return MongoServer {
                uri,
                child: None,
                log: None,
                port: 0,
                extra_args: Vec::new(),
                storage: String::new(),
            };
        }
        let port = free_port();
        let log = tempfile::NamedTempFile::new().expect("temp log file");
        let mut server = MongoServer {
            uri: format!("mongodb://127.0.0.1:{port}/?directConnection=true"),
            child: None,
            log: Some(log),
            port,
            extra_args: extra_args.iter().map(|a| (*a).to_owned()).collect(),
            storage: storage.to_owned(),
        };
        server.spawn();
        server
    }

    /// Starts the server process on `self.port` and waits until it listens.
    fn spawn(&mut self) {
        let port = self.port;
        let log = self.log.as_ref().expect("log file of a spawned server");
        // The shell wrapper stops the server when the test process goes away, even if
        // this value is never dropped (the shared server lives in a static).
        let script = r#"
            parent=$1; shift
            "$@" &
            child=$!
            trap 'kill "$child" 2>/dev/null; wait "$child"; exit 0' TERM
            while [ -d "/proc/$parent" ] && [ -d "/proc/$child" ]; do sleep 0.5; done
            kill "$child" 2>/dev/null
            wait "$child"
        "#;
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("sluice-mongo-watchdog")
            .arg(std::process::id().to_string())
            .arg(secantus_binary())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--storage-path", &self.storage, "--log-level", "WARNING"])
            .args(["--enable-test-commands"])
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(
                log.reopen()
                    .expect("log")
                    .try_clone()
                    .map(Stdio::from)
                    .unwrap_or(Stdio::null()),
            )
            .stderr(log.reopen().map(Stdio::from).unwrap_or(Stdio::null()))
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({e}); install it as .ci/run does, or set {MONGODB_URI_ENV}",
                    secantus_binary().display()
                )
            });
        self.child = Some(child);
        self.wait_ready(port);
    }

    /// Whether this harness owns the server process (so it can stop and restart it);
    /// false with `SLUICE_TEST_MONGODB_URI`.
    pub fn is_managed(&self) -> bool {
        self.port != 0
    }

    /// Stops the server process and waits until the port refuses connections. The
    /// storage is `:memory:`, so data is lost.
    ///
    /// # Panics
    /// For an external server (`SLUICE_TEST_MONGODB_URI`).
    pub fn stop(&mut self) {
        assert!(self.is_managed(), "cannot stop an external MongoDB");
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            assert!(
                Instant::now() < deadline,
                "SecantusDB still listens on {addr}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts the server again on the same port (after [`MongoServer::stop`]).
    ///
    /// # Panics
    /// For an external server, or if it does not listen within 60 s.
    pub fn restart(&mut self) {
        assert!(self.is_managed(), "cannot restart an external MongoDB");
        if self.child.is_some() {
            self.stop();
        }
        self.spawn();
    }

    /// Stops the server and starts it again on the same port and storage with other
    /// extra arguments (e.g. `--auth` once a user exists).
    ///
    /// # Panics
    /// As [`MongoServer::restart`].
    pub fn restart_with(&mut self, extra_args: &[&str]) {
        self.extra_args = extra_args.iter().map(|a| (*a).to_owned()).collect();
        self.restart();
    }

    fn wait_ready(&self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if Instant::now() > deadline {
                panic!("SecantusDB did not listen on {addr}:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What the server logged so far.
    pub fn log_text(&self) -> String {
        self.log
            .as_ref()
            .and_then(|l| std::fs::read_to_string(l.path()).ok())
            .unwrap_or_default()
    }

    /// The direct URI (no credentials).
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// `host:port` of the server.
    pub fn host(&self) -> String {
        let rest = self.uri.trim_start_matches("mongodb://");
        let rest = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
        rest.split(['/', '?']).next().unwrap_or(rest).to_owned()
    }

    /// The direct URI with credentials inserted (`mongodb://user:pass@host/...`).
    pub fn uri_with_user(&self, user: &str, password: &str) -> String {
        self.uri
            .replacen("mongodb://", &format!("mongodb://{user}:{password}@"), 1)
            .replacen("/?", "/?authSource=admin&", 1)
    }

    /// A driver client connected directly (not through Sluice).
    pub async fn direct_client(&self) -> Client {
        let client = Client::with_uri_str(&self.uri)
            .await
            .expect("direct client");
        client
            .database("admin")
            .run_command(doc! {"ping": 1})
            .await
            .expect("direct ping");
        client
    }

    /// `serverStatus().connections.current`.
    pub async fn current_connections(client: &Client) -> i64 {
        let status = client
            .database("admin")
            .run_command(doc! {"serverStatus": 1})
            .await
            .expect("serverStatus");
        let conns = status.get_document("connections").expect("connections");
        match conns.get("current") {
            Some(mongodb::bson::Bson::Int32(n)) => i64::from(*n),
            Some(mongodb::bson::Bson::Int64(n)) => *n,
            Some(mongodb::bson::Bson::Double(n)) => *n as i64,
            other => panic!("serverStatus.connections.current: {other:?}"),
        }
    }
}

impl Drop for MongoServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }
}

/// Builds a sluice configuration with a `[mongo]` section and starts the program.
#[derive(Debug, Clone)]
pub struct MongoSluiceBuilder {
    upstream: String,
    max_pool_size: u32,
    min_pool_size: u32,
    pool_timeout: String,
    users: Vec<(String, String)>,
    /// Further `key = value` lines of the `[mongo]` section, as written.
    settings: Vec<(String, String)>,
}

impl MongoSluiceBuilder {
    /// Defaults: max_pool_size 5, min_pool_size 0, pool_timeout 30 s.
    pub fn new(upstream: &str) -> Self {
        MongoSluiceBuilder {
            upstream: upstream.to_owned(),
            max_pool_size: 5,
            min_pool_size: 0,
            pool_timeout: "30s".into(),
            users: Vec::new(),
            settings: Vec::new(),
        }
    }
    /// Sets `max_pool_size`.
    pub fn max_pool_size(mut self, n: u32) -> Self {
        self.max_pool_size = n;
        self
    }
    /// Sets `min_pool_size`.
    pub fn min_pool_size(mut self, n: u32) -> Self {
        self.min_pool_size = n;
        self
    }
    /// Sets `pool_timeout` (as the file spells it, e.g. `"1s"`).
    pub fn pool_timeout(mut self, t: &str) -> Self {
        self.pool_timeout = t.to_owned();
        self
    }
    /// Sets any other `[mongo]` key; `value` is TOML (`"2s"` with its quotes, `3`).
    pub fn setting(mut self, key: &str, value: &str) -> Self {
        self.settings.push((key.to_owned(), value.to_owned()));
        self
    }
    /// Adds a `[[mongo.users]]` entry.
    pub fn user(mut self, name: &str, password: &str) -> Self {
        self.users.push((name.to_owned(), password.to_owned()));
        self
    }

    /// Writes the configuration and starts the program.
    ///
    /// # Panics
    /// If it exits or does not listen within 15 s.
    pub fn start(self) -> MongoSluice {
        let dir = tempfile::Builder::new()
            .prefix("sluice-mongo-")
            .tempdir()
            .expect("temp dir");
        let (port, pg_port, admin_port) = (free_port(), free_port(), free_port());
        let mut toml = String::new();
        let _ = writeln!(toml, "[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n");
        let _ = writeln!(toml, "[postgres]\nlisten = \"127.0.0.1:{pg_port}\"\n");
        let _ = writeln!(toml, "[mongo]\nlisten = \"127.0.0.1:{port}\"");
        let _ = writeln!(toml, "upstream = {:?}", self.upstream);
        let _ = writeln!(toml, "max_pool_size = {}", self.max_pool_size);
        let _ = writeln!(toml, "min_pool_size = {}", self.min_pool_size);
        let _ = writeln!(toml, "pool_timeout = {:?}", self.pool_timeout);
        for (key, value) in &self.settings {
            let _ = writeln!(toml, "{key} = {value}");
        }
        for (name, password) in &self.users {
            let _ = writeln!(
                toml,
                "\n[[mongo.users]]\nname = {name:?}\npassword = {password:?}"
            );
        }
        let config = dir.path().join("sluice.toml");
        std::fs::write(&config, &toml).expect("write config");
        let stderr_path = dir.path().join("sluice.stderr");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let child = Command::new(sluice_binary())
            .arg("run")
            .arg("--config")
            .arg(&config)
            .env(
                "RUST_LOG",
                std::env::var("SLUICE_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn sluice");
        let mut sluice = MongoSluice {
            child,
            port,
            admin_port,
            stderr_path,
            config,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = sluice.child.try_wait() {
                panic!(
                    "sluice exited with {status}\nconfig:\n{toml}\nstderr:\n{}",
                    sluice.stderr()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "sluice did not listen on {addr}\nstderr:\n{}",
                    sluice.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        sluice
    }
}

/// A running sluice with a MongoDB listener; killed on drop (its stderr is printed when
/// the test is failing).
pub struct MongoSluice {
    child: Child,
    port: u16,
    admin_port: u16,
    stderr_path: PathBuf,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

impl MongoSluice {
    /// The MongoDB listen port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The admin HTTP port.
    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    /// `mongodb://127.0.0.1:PORT/` plus `options` (e.g. `"maxPoolSize=1"`).
    pub fn uri(&self, options: &str) -> String {
        format!("mongodb://127.0.0.1:{}/?{options}", self.port)
    }

    /// A driver client through Sluice.
    pub async fn client(&self) -> Client {
        Client::with_uri_str(self.uri("serverSelectionTimeoutMS=10000"))
            .await
            .expect("client through sluice")
    }

    /// What the program wrote to stderr.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Sends SIGTERM (graceful shutdown).
    pub fn sigterm(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// Sends a signal by name (e.g. "HUP": reload) to the program.
    ///
    /// # Panics
    /// If `kill` fails.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} failed");
    }

    /// Waits up to `limit` for the program to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `GET path` on the admin listener; returns the body.
    pub fn admin_get(&self, path: &str) -> String {
        self.admin_request("GET", path)
    }

    /// Rewrites `key = value` lines of the `[mongo]` section in the config file and asks
    /// Sluice to reload it (`POST /admin/reload`); returns the reply body.
    ///
    /// # Panics
    /// If the config file cannot be read or written, or a key is not in it.
    pub fn reload_with(&self, changes: &[(&str, &str)]) -> String {
        let text = std::fs::read_to_string(&self.config).expect("read config");
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        for (key, value) in changes {
            let line = lines
                .iter_mut()
                .find(|l| l.starts_with(&format!("{key} = ")))
                .unwrap_or_else(|| panic!("{key} not in the config:\n{text}"));
            *line = format!("{key} = {value}");
        }
        std::fs::write(&self.config, lines.join("\n") + "\n").expect("write config");
        self.admin_request("POST", "/admin/reload")
    }

    fn admin_request(&self, method: &str, path: &str) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.admin_port)).expect("admin");
        let _ = write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or(out)
    }
}

impl Drop for MongoSluice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() || std::env::var_os("SLUICE_TEST_SHOW_LOG").is_some() {
            eprintln!("---- sluice stderr ----\n{}\n---- end ----", self.stderr());
        }
    }
}

/// A TCP relay in front of a real server that rewrites the server's `hello` replies (the
/// rest of the traffic passes unchanged): it lets one single-node test server play a
/// replica-set secondary, so Sluice's replica-set monitor and `$readPreference` routing
/// can be driven with real data on real servers. Besides the rewrite function given at
/// start, fields set with [`HelloRewriter::set`] are written over every later reply
/// (a primary's `electionId`, a secondary's old `lastWrite`, the set's `hosts`). Its
/// `me` is the relay's own address. Stops when dropped.
pub struct HelloRewriter {
    port: u16,
    task: tokio::task::JoinHandle<()>,
    overrides: Overrides,
}

/// Fields written over each `hello` reply (a `Null` value removes the field).
type Overrides = std::sync::Arc<std::sync::Mutex<mongodb::bson::Document>>;

impl HelloRewriter {
    /// Listens on a free port and relays to `backend` (`host:port`), passing each `hello`
    /// reply body through `rewrite`. Must be called inside a tokio runtime.
    ///
    /// # Panics
    /// If it cannot listen.
    pub async fn start(backend: &str, rewrite: fn(&mut mongodb::bson::Document)) -> HelloRewriter {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind rewriter");
        let port = listener.local_addr().expect("addr").port();
        let backend = backend.to_owned();
        let overrides = Overrides::default();
        let fields = overrides.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let backend = backend.clone();
                let fields = fields.clone();
                tokio::spawn(async move {
                    if let Ok(server) = tokio::net::TcpStream::connect(&backend).await {
                        let rewrite = move |body: &mut mongodb::bson::Document| {
                            // The member knows itself by the relay's name, as a real
                            // member at this address would.
                            if body.contains_key("me") {
                                body.insert("me", format!("127.0.0.1:{port}"));
                            }
                            rewrite(body);
                            let fields = fields.lock().map(|f| f.clone()).unwrap_or_default();
                            for (k, v) in fields {
                                if v == mongodb::bson::Bson::Null {
                                    body.remove(&k);
                                } else {
                                    body.insert(k, v);
                                }
                            }
                        };
                        relay_rewriting(client, server, rewrite).await;
                    }
                });
            }
        });
        HelloRewriter {
            port,
            task,
            overrides,
        }
    }

    /// From now on, writes `fields` over every `hello` reply (replacing the fields set
    /// before; a `Null` value removes that field from the reply).
    pub fn set(&self, fields: mongodb::bson::Document) {
        if let Ok(mut f) = self.overrides.lock() {
            *f = fields;
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// A rewrite that leaves the reply as the server sent it (with [`HelloRewriter::set`]
/// doing the work).
pub fn unchanged(_: &mut mongodb::bson::Document) {}

impl Drop for HelloRewriter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const OP_MSG: i32 = 2013;

async fn read_message(r: &mut (impl tokio::io::AsyncRead + Unpin)) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut header = [0u8; 16];
    r.read_exact(&mut header).await?;
    let len = i32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let len = usize::try_from(len)
        .ok()
        .filter(|l| (16..=64 << 20).contains(l))
        .ok_or_else(|| std::io::Error::other("bad message length"))?;
    let mut msg = header.to_vec();
    msg.resize(len, 0);
    r.read_exact(&mut msg[16..]).await?;
    Ok(msg)
}

fn field(msg: &[u8], at: usize) -> i32 {
    i32::from_le_bytes([msg[at], msg[at + 1], msg[at + 2], msg[at + 3]])
}

/// The kind-0 body of an OP_MSG (flags at 16, section kind at 20, document at 21).
fn op_msg_body(msg: &[u8]) -> Option<mongodb::bson::Document> {
    if field(msg, 12) != OP_MSG || msg.len() < 26 || msg[20] != 0 {
        return None;
    }
    mongodb::bson::Document::from_reader(&msg[21..]).ok()
}

async fn relay_rewriting(
    client: tokio::net::TcpStream,
    server: tokio::net::TcpStream,
    rewrite: impl Fn(&mut mongodb::bson::Document) + Send,
) {
    use tokio::io::AsyncWriteExt;
    let hellos = std::sync::Arc::new(hello_ids::Pending::default());
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let seen = hellos.clone();
    let up = async move {
        while let Ok(msg) = read_message(&mut cr).await {
            let is_hello = op_msg_body(&msg).is_some_and(|d| {
                d.keys()
                    .next()
                    .is_some_and(|k| ["hello", "isMaster", "ismaster"].contains(&k.as_str()))
            });
            if is_hello {
                seen.insert(field(&msg, 4));
            }
            if sw.write_all(&msg).await.is_err() {
                break;
            }
        }
    };
    let down = async move {
        while let Ok(msg) = read_message(&mut sr).await {
            let out = match op_msg_body(&msg) {
                Some(mut body) if hellos.take(field(&msg, 8)) => {
                    rewrite(&mut body);
                    let mut doc = Vec::new();
                    let _ = body.to_writer(&mut doc);
                    let len = 16 + 4 + 1 + doc.len();
                    let mut out = Vec::with_capacity(len);
                    out.extend_from_slice(&(len as i32).to_le_bytes());
                    out.extend_from_slice(&msg[4..16]);
                    out.extend_from_slice(&0u32.to_le_bytes()); // flags: no checksum
                    out.push(0);
                    out.extend_from_slice(&doc);
                    out
                }
                _ => msg,
            };
            if cw.write_all(&out).await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

mod hello_ids {
    /// The request ids of `hello`s waiting for their reply.
    #[derive(Default)]
    pub struct Pending(std::sync::Mutex<Vec<i32>>);

    impl Pending {
        pub fn insert(&self, id: i32) {
            if let Ok(mut v) = self.0.lock() {
                v.push(id);
            }
        }

        /// Removes `id`; true when it was there.
        pub fn take(&self, id: i32) -> bool {
            let Ok(mut v) = self.0.lock() else {
                return false;
            };
            match v.iter().position(|x| *x == id) {
                Some(i) => {
                    v.swap_remove(i);
                    true
                }
                None => false,
            }
        }
    }
}

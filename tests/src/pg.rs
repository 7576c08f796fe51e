//! A throwaway PostgreSQL 15 cluster for tests.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use crate::{free_port, running_as_root};

/// The cluster's superuser role.
pub const SUPERUSER: &str = "postgres";
/// The superuser's password.
pub const SUPERUSER_PASSWORD: &str = "postgres-secret";
/// The application role every cluster has (owner of database `app` and of the databases
/// made by [`PgCluster::create_database`]).
pub const APP_USER: &str = "app";
/// The application role's password.
pub const APP_PASSWORD: &str = "secret";

/// Where the PostgreSQL server programs are looked for first (`PG_BINDIR` overrides).
const DEFAULT_BINDIR: &str = "/usr/lib/postgresql/15/bin";

/// A PostgreSQL cluster in a temporary directory, listening on 127.0.0.1 with SCRAM
/// authentication for everything (TCP and the Unix socket in the directory).
///
/// Dropping it stops the server (`pg_ctl stop -m immediate`) and removes the directory. A
/// watchdog process does the same if the test process goes away without dropping it (as
/// with the [`shared_cluster`] static).
pub struct PgCluster {
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    data: PathBuf,
    log: PathBuf,
    bindir: PathBuf,
    port: u16,
    as_postgres: bool,
    watchdog: Option<Child>,
}

/// The cluster shared by all tests of one test process, started on first use.
pub fn shared_cluster() -> &'static PgCluster {
    static SHARED: OnceLock<PgCluster> = OnceLock::new();
    SHARED.get_or_init(PgCluster::start)
}

fn find_bindir() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BINDIR") {
        return PathBuf::from(dir);
    }
    if Path::new(DEFAULT_BINDIR).join("initdb").exists() {
        return PathBuf::from(DEFAULT_BINDIR);
    }
    // Fall back to pg_config's idea of it.
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if Path::new(&dir).join("initdb").exists() {
                return PathBuf::from(dir);
            }
        }
    }
    PathBuf::from(DEFAULT_BINDIR)
}

fn check(what: &str, out: std::io::Result<Output>) -> Output {
    let out = out.unwrap_or_else(|e| panic!("{what}: could not run: {e}"));
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

impl PgCluster {
    /// Creates and starts a new cluster with role `app` (password `secret`) and database
    /// `app` owned by it.
    ///
    /// # Panics
    /// If any step fails (the message includes the tool's output or the server log).
    pub fn start() -> PgCluster {
        let mut cluster = Self::prepare();
        let (root, data) = (cluster.root.clone(), cluster.data.clone());
        let sock = root.join("sock");
        let pwfile = root.join("pwfile");
        let mut initdb = cluster.tool("initdb");
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", SUPERUSER, "--auth=scram-sha-256", "-E", "UTF8"])
            .args(["--locale=C", "--no-sync", "--no-instructions"])
            .arg(format!("--pwfile={}", pwfile.display()));
        check("initdb", initdb.output());

        let conf = format!(
            "\n# sluice-tests\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n\
             max_connections = 300\npassword_encryption = 'scram-sha-256'\n\
             shared_buffers = '64MB'\nlog_min_messages = warning\n",
            sock.display()
        );
        append(&data.join("postgresql.conf"), &conf);

        cluster.start_on_free_port();

        cluster.psql_superuser(&format!(
            "CREATE ROLE {APP_USER} LOGIN PASSWORD '{APP_PASSWORD}'"
        ));
        cluster.psql_superuser(&format!("CREATE DATABASE app OWNER {APP_USER}"));
        cluster
    }

    /// A cluster directory (data, socket dir, password file) and its watchdog; nothing
    /// is initialised or started.
    fn prepare() -> PgCluster {
        let as_postgres = running_as_root();
        let dir = tempfile::Builder::new()
            .prefix("sluice-pg-")
            .tempdir()
            .expect("create temp dir for PostgreSQL");
        let root = dir.path().to_path_buf();
        let sock = root.join("sock");
        std::fs::create_dir(&sock).expect("create socket dir");
        let pwfile = root.join("pwfile");
        std::fs::write(&pwfile, format!("{SUPERUSER_PASSWORD}\n")).expect("write pwfile");
        if as_postgres {
            chown_postgres(&root);
            chown_postgres(&sock);
            chown_postgres(&pwfile);
        }
        let mut cluster = PgCluster {
            dir: Some(dir),
            root: root.clone(),
            data: root.join("data"),
            log: root.join("postgres.log"),
            bindir: find_bindir(),
            port: 0,
            as_postgres,
            watchdog: None,
        };
        cluster.spawn_watchdog();
        cluster
    }

    /// Picks a port and starts the server on it (the port may be taken between picking
    /// and binding: a few are tried).
    fn start_on_free_port(&mut self) {
        let mut last_err = String::new();
        for _ in 0..5 {
            let port = free_port();
            append(
                &self.data.join("postgresql.conf"),
                &format!("port = {port}\n"),
            );
            self.port = port;
            let out = self.pg_ctl_start();
            if out.status.success() {
                return;
            }
            last_err = format!(
                "pg_ctl start failed: {}\n{}\n{}\nlog:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.server_log()
            );
        }
        panic!("{last_err}");
    }

    /// A streaming replica of this cluster (`pg_basebackup -R`), started on a port of
    /// its own, with the same roles and databases.
    ///
    /// # Panics
    /// If the base backup or the start fails.
    pub fn replica(&self) -> PgCluster {
        let mut replica = Self::prepare();
        let mut backup = replica.tool("pg_basebackup");
        backup
            .arg("-D")
            .arg(&replica.data)
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                SUPERUSER,
                "-R",
                "-X",
                "stream",
                "--no-sync",
                "--checkpoint=fast",
            ])
            .arg("-p")
            .arg(self.port.to_string())
            .env("PGPASSWORD", SUPERUSER_PASSWORD);
        check("pg_basebackup", backup.output());
        let conf = format!(
            "\n# sluice-tests replica\nunix_socket_directories = '{}'\n",
            replica.root.join("sock").display()
        );
        append(&replica.data.join("postgresql.conf"), &conf);
        replica.start_on_free_port();
        replica
    }

    /// Promotes this replica to a primary (`pg_ctl promote`, waiting until it is done).
    ///
    /// # Panics
    /// If pg_ctl fails.
    pub fn promote(&self) {
        let mut cmd = self.tool("pg_ctl");
        cmd.arg("-D").arg(&self.data).args(["-w", "promote"]);
        check("pg_ctl promote", cmd.output());
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding the data directory, socket and log.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `postgres://user:pass@127.0.0.1:PORT/db` for this cluster.
    pub fn url(&self, user: &str, pass: &str, db: &str) -> String {
        format!("postgres://{user}:{pass}@127.0.0.1:{}/{db}", self.port)
    }

    /// The URL Sluice should use to reach database `db` as role `app`.
    pub fn app_url(&self, db: &str) -> String {
        self.url(APP_USER, APP_PASSWORD, db)
    }

    /// The contents of the server log.
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Connects directly (no proxy) to `db` as `user`.
    pub async fn connect(
        &self,
        user: &str,
        pass: &str,
        db: &str,
    ) -> Result<Client, tokio_postgres::Error> {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(self.port)
            .user(user)
            .password(pass)
            .dbname(db)
            .connect_timeout(Duration::from_secs(10));
        let (client, connection) = config.connect(NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// A direct superuser connection to database `postgres`.
    ///
    /// # Panics
    /// If the connection fails.
    pub async fn superuser(&self) -> Client {
        self.connect(SUPERUSER, SUPERUSER_PASSWORD, "postgres")
            .await
            .unwrap_or_else(|e| panic!("superuser connection failed: {e:?}"))
    }

    /// The `app` role's SCRAM verifier as PostgreSQL stores it (`pg_authid.rolpassword`),
    /// what a PgBouncer userlist or a `[[postgres.users]]` entry holds instead of a password.
    pub async fn app_verifier(&self) -> String {
        let su = self.superuser().await;
        let row = su
            .query_one(
                "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
                &[&APP_USER],
            )
            .await
            .unwrap_or_else(|e| panic!("reading the app verifier: {e:?}"));
        row.get(0)
    }

    /// Creates database `name` owned by `app` and returns its name.
    ///
    /// # Panics
    /// If it cannot be created.
    pub async fn create_database(&self, name: &str) -> String {
        let su = self.superuser().await;
        let sql = format!("CREATE DATABASE \"{name}\" OWNER {APP_USER}");
        let mut tries = 0;
        loop {
            match su.batch_execute(&sql).await {
                Ok(()) => return name.to_string(),
                // Concurrent CREATE DATABASE from template1 can collide; retry a little.
                Err(e) if tries < 10 && crate::sqlstate(&e).as_deref() == Some("55006") => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("CREATE DATABASE {name} failed: {e:?}"),
            }
        }
    }

    /// Creates a database with a fresh name starting with `prefix` and returns the name.
    pub async fn fresh_database(&self, prefix: &str) -> String {
        self.create_database(&crate::unique_name(prefix)).await
    }

    /// Number of client backends connected to database `db`, as `pg_stat_activity` shows
    /// them to the given superuser client.
    ///
    /// # Panics
    /// If the query fails.
    pub async fn backend_count(su: &Client, db: &str) -> i64 {
        let row = su
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = $1 AND backend_type = 'client backend'",
                &[&db],
            )
            .await
            .unwrap_or_else(|e| panic!("pg_stat_activity query failed: {e:?}"));
        row.get(0)
    }

    /// Runs SQL as the superuser with `psql` (synchronous; usable outside async code).
    ///
    /// # Panics
    /// If psql fails.
    pub fn psql_superuser(&self, sql: &str) -> String {
        let out = Command::new(self.client_tool("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", SUPERUSER, "-d", "postgres", "-c", sql])
            .env("PGPASSWORD", SUPERUSER_PASSWORD)
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null())
            .output();
        let out = check("psql (setup)", out);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Path of a client program (`psql`, `pgbench`): the server's bindir if it has it, else
    /// whatever `PATH` finds.
    pub fn client_tool(&self, name: &str) -> PathBuf {
        let p = self.bindir.join(name);
        if p.exists() {
            p
        } else {
            PathBuf::from(name)
        }
    }

    /// Restarts the server (`pg_ctl restart -m fast`: running sessions are terminated) and
    /// waits until it accepts connections again.
    ///
    /// # Panics
    /// If pg_ctl fails.
    pub fn restart(&self) {
        let mut cmd = self.tool("pg_ctl");
        cmd.arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-m", "fast", "-w", "-t", "60", "restart"]);
        cmd.process_group(0);
        let out = cmd.output();
        if !matches!(&out, Ok(o) if o.status.success()) {
            check("pg_ctl restart", out);
        }
    }

    /// Turns TLS on with this certificate and key (PEM) and restarts the server.
    ///
    /// # Panics
    /// If writing the files or the restart fails.
    pub fn enable_ssl(&self, cert_pem: &str, key_pem: &str) {
        use std::os::unix::fs::PermissionsExt;
        let cert = self.data.join("server.crt");
        let key = self.data.join("server.key");
        std::fs::write(&cert, cert_pem).expect("write server.crt");
        std::fs::write(&key, key_pem).expect("write server.key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod key");
        if self.as_postgres {
            chown_postgres(&cert);
            chown_postgres(&key);
        }
        append(&self.data.join("postgresql.conf"), "ssl = on\n");
        self.restart();
    }

    /// Stops the server (`pg_ctl stop -m fast`), leaving the data directory in place.
    ///
    /// # Panics
    /// If pg_ctl fails.
    pub fn stop(&self) {
        self.stop_with("fast");
    }

    /// Kills the server like a crash (`pg_ctl stop -m immediate`): the postmaster and every
    /// backend die at once.
    ///
    /// # Panics
    /// If pg_ctl fails.
    pub fn kill(&self) {
        self.stop_with("immediate");
    }

    fn stop_with(&self, mode: &str) {
        let mut cmd = self.tool("pg_ctl");
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-m", mode, "-w", "-t", "60", "stop"]);
        check("pg_ctl stop", cmd.output());
    }

    /// Starts the server again after [`PgCluster::stop`], on the same port.
    ///
    /// # Panics
    /// If pg_ctl fails.
    pub fn start_again(&self) {
        let out = self.pg_ctl_start();
        if !out.status.success() {
            panic!(
                "pg_ctl start failed: {}\n{}\nlog:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                self.server_log()
            );
        }
    }

    fn pg_ctl_start(&self) -> Output {
        let mut cmd = self.tool("pg_ctl");
        cmd.arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "60", "start"]);
        // Keep the postmaster out of the terminal's process group (Ctrl-C in a terminal
        // should not reach it; the watchdog or Drop stops it).
        cmd.process_group(0);
        cmd.output().expect("run pg_ctl start")
    }

    /// A command for a server tool, run as the `postgres` OS user when we are root.
    fn tool(&self, name: &str) -> Command {
        let path = self.bindir.join(name);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=postgres", "--regid=postgres", "--init-groups"]);
            c.arg(path);
            c
        } else {
            Command::new(path)
        };
        cmd.current_dir(&self.root).stdin(Stdio::null());
        cmd
    }

    /// Starts a process that stops the server and removes the directory once this test
    /// process is gone (statics are never dropped).
    fn spawn_watchdog(&mut self) {
        let script = r#"
            while [ -d "/proc/$1" ]; do sleep 0.5; done
            if [ -f "$3/postmaster.pid" ]; then "$2" -D "$3" -m immediate -w stop >/dev/null 2>&1; fi
            rm -rf "$4"
        "#;
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "sh",
            ]);
            c
        } else {
            Command::new("sh")
        };
        cmd.arg("-c")
            .arg(script)
            .arg("sluice-pg-watchdog")
            .arg(std::process::id().to_string())
            .arg(self.bindir.join("pg_ctl"))
            .arg(&self.data)
            .arg(&self.root)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        match cmd.spawn() {
            Ok(child) => self.watchdog = Some(child),
            Err(e) => eprintln!("warning: could not start PostgreSQL watchdog: {e}"),
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- PostgreSQL log ({}) ----\n{}",
                self.log.display(),
                tail(&self.server_log(), 100)
            );
        }
        if self.data.join("postmaster.pid").exists() {
            let mut cmd = self.tool("pg_ctl");
            cmd.arg("-D")
                .arg(&self.data)
                .args(["-m", "immediate", "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let _ = cmd.status();
        }
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}

/// The last `n` lines of `s`.
pub(crate) fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn postgres_ids() -> (u32, u32) {
    let out = check(
        "id postgres",
        Command::new("id").args(["-u", "postgres"]).output(),
    );
    let uid = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("uid of postgres");
    let out = check(
        "id postgres",
        Command::new("id").args(["-g", "postgres"]).output(),
    );
    let gid = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("gid of postgres");
    (uid, gid)
}

fn chown_postgres(path: &Path) {
    let (uid, gid) = postgres_ids();
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

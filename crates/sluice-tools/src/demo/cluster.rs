//! A throwaway PostgreSQL cluster for the demo: finding the server programs, initdb and
//! pg_ctl in a temporary directory (as the `postgres` OS user when run as root), and
//! cleaning up — with a watchdog process should this one die first.

use std::fmt::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::in_process::free_port;

/// Finds PostgreSQL's server programs: `explicit`, `pg_config --bindir`, the newest
/// `/usr/lib/postgresql/*/bin`, then `$PATH`. The error says what to install.
pub(super) fn find_bindir(explicit: Option<&Path>) -> Result<PathBuf, String> {
    let has_server = |d: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|p| d.join(p).is_file())
    };
    let mut candidates: Vec<PathBuf> = Vec::new();
    match explicit {
        Some(dir) => candidates.push(dir.to_path_buf()),
        None => {
            if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
                if out.status.success() {
                    candidates.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
                }
            }
            let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let version = name.split('.').map(|p| p.parse().unwrap_or(0)).collect();
                    (version, e.path().join("bin"))
                })
                .collect();
            versions.sort_by(|a, b| b.0.cmp(&a.0));
            candidates.extend(versions.into_iter().map(|(_, p)| p));
            if let Some(path) = std::env::var_os("PATH") {
                candidates.extend(std::env::split_paths(&path));
            }
        }
    }
    if let Some(dir) = candidates.into_iter().find(|d| has_server(d)) {
        return Ok(dir);
    }
    let looked = match explicit {
        Some(dir) => dir.display().to_string(),
        None => "`pg_config --bindir`, /usr/lib/postgresql/*/bin and $PATH".to_owned(),
    };
    Err(format!(
        "sluice-tools demo: no PostgreSQL server programs (initdb, pg_ctl, postgres) in {looked}.\n\
         Install them and run `sluice-tools demo` again:\n  \
         Debian/Ubuntu:  sudo apt-get install postgresql\n  \
         Fedora/RHEL:    sudo dnf install postgresql-server\n  \
         macOS:          brew install postgresql@16\n\
         or compare against a PostgreSQL you already run:\n  \
         sluice-tools demo --upstream postgres://user:password@host:5432/dbname"
    ))
}

/// Whether this process runs as root (PostgreSQL refuses to; its tools then run as the
/// `postgres` OS user).
fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Uid and gid of the `postgres` OS user.
fn postgres_ids() -> Result<(u32, u32), String> {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, "postgres"]).output().ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    match (id("-u"), id("-g")) {
        (Some(u), Some(g)) => Ok((u, g)),
        _ => Err(
            "running as root, and PostgreSQL refuses to run as root: there is no \
                  `postgres` OS user to run it as (the postgresql package creates one). \
                  Run `sluice-tools demo` as a normal user, or create that user."
                .to_owned(),
        ),
    }
}

/// A throwaway PostgreSQL cluster in a temporary directory, listening on 127.0.0.1.
/// Dropping it stops the server and removes the directory; a watchdog process does the
/// same if this process dies without dropping it.
pub(super) struct Cluster {
    /// The temporary directory (removed on drop).
    dir: Option<tempfile::TempDir>,
    /// Its path: the data directory, socket directory and server log are in it.
    pub(super) root: PathBuf,
    /// The data directory.
    data: PathBuf,
    /// Where initdb, pg_ctl and postgres are.
    bindir: PathBuf,
    /// The TCP port on 127.0.0.1.
    pub(super) port: u16,
    /// The `postgres` superuser's password (also used for the demo role).
    pub(super) password: String,
    /// The server version, e.g. `16.4`.
    pub(super) version: String,
    /// Uid and gid to run the server programs as (when we are root).
    run_as: Option<(u32, u32)>,
    /// Stops the server and removes the directory if this process dies first.
    watchdog: Option<Child>,
}

impl Cluster {
    /// Creates a cluster in a fresh temporary directory (initdb, SCRAM passwords, settings
    /// for a benchmark that needs no durability) and starts it on a free port.
    pub(super) fn start(bindir: PathBuf, max_connections: usize) -> Result<Cluster, String> {
        let mut cluster = Cluster::prepare(bindir)?;
        cluster.spawn_watchdog();
        cluster.initdb()?;
        cluster.version = Command::new(cluster.bindir.join("postgres"))
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .nth(2)
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        let conf = cluster.data.join("postgresql.conf");
        append(
            &conf,
            &format!(
                "\n# sluice demo\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
                 max_connections = {max_connections}\nfsync = off\nsynchronous_commit = off\n\
                 full_page_writes = off\npassword_encryption = 'scram-sha-256'\n",
                cluster.root.join("sock").display()
            ),
        )?;
        cluster.start_server(&conf)?;
        Ok(cluster)
    }

    /// The temporary directory with the socket directory and the superuser's password
    /// file, owned by the `postgres` OS user when we are root.
    fn prepare(bindir: PathBuf) -> Result<Cluster, String> {
        let run_as = if running_as_root() {
            Some(postgres_ids()?)
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("sluice-demo-")
            .tempdir()
            .map_err(|e| format!("creating a temporary directory: {e}"))?;
        let root = dir.path().to_path_buf();
        let sock = root.join("sock");
        let pwfile = root.join("pwfile");
        let password = random_password();
        let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
        std::fs::create_dir(&sock).map_err(|e| io("creating the socket directory", e))?;
        std::fs::write(&pwfile, format!("{password}\n")).map_err(|e| io("writing pwfile", e))?;
        if let Some((uid, gid)) = run_as {
            for p in [&root, &sock, &pwfile] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid))
                    .map_err(|e| io(&format!("chown {}", p.display()), e))?;
            }
        }
        Ok(Cluster {
            dir: Some(dir),
            data: root.join("data"),
            root,
            bindir,
            port: 0,
            password,
            version: String::new(),
            run_as,
            watchdog: None,
        })
    }

    /// initdb with the password file [`Cluster::prepare`] wrote (removed afterwards).
    fn initdb(&self) -> Result<(), String> {
        let pwfile = self.root.join("pwfile");
        let mut initdb = self.tool("initdb");
        initdb
            .arg("-D")
            .arg(&self.data)
            .args(["-U", "postgres", "--auth=scram-sha-256", "-E", "UTF8"])
            .args(["--locale=C", "--no-sync"])
            .arg(format!("--pwfile={}", pwfile.display()));
        run("initdb", &mut initdb)?;
        let _ = std::fs::remove_file(&pwfile);
        Ok(())
    }

    /// pg_ctl start on a free port (appended to `conf`), up to five ports should another
    /// process take one first.
    fn start_server(&mut self, conf: &Path) -> Result<(), String> {
        let log = self.root.join("postgres.log");
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port().map_err(|e| format!("finding a free port: {e}"))?;
            append(conf, &format!("port = {port}\n"))?;
            self.port = port;
            let mut start = self.tool("pg_ctl");
            start
                .arg("-D")
                .arg(&self.data)
                .arg("-l")
                .arg(&log)
                .args(["-w", "-t", "60", "start"]);
            // Out of the terminal's process group: Ctrl-C reaches only us, and we stop it.
            start.process_group(0);
            match run("pg_ctl start", &mut start) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    last = format!(
                        "{e}\nserver log:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
            }
        }
        Err(last)
    }

    /// Client configuration for the `postgres` superuser, database `postgres`.
    pub(super) fn superuser_config(&self) -> tokio_postgres::Config {
        let mut pg = tokio_postgres::Config::new();
        pg.host("127.0.0.1")
            .port(self.port)
            .user("postgres")
            .password(&self.password)
            .dbname("postgres")
            .application_name("sluice demo monitor")
            .ssl_mode(tokio_postgres::config::SslMode::Disable)
            .connect_timeout(Duration::from_secs(30));
        pg
    }

    /// A server program, run as the `postgres` OS user when we are root.
    fn tool(&self, name: &str) -> Command {
        let path = self.bindir.join(name);
        let mut cmd = match self.run_as {
            Some(_) => {
                let mut c = Command::new("setpriv");
                c.args(["--reuid=postgres", "--regid=postgres", "--init-groups"]);
                c.arg(path);
                c
            }
            None => Command::new(path),
        };
        cmd.current_dir(&self.root).stdin(Stdio::null());
        cmd
    }

    /// A `sh` loop that waits for this process to end, then stops the server and removes
    /// the directory (killed on drop).
    fn spawn_watchdog(&mut self) {
        let script = r#"
            while [ -d "/proc/$1" ]; do sleep 0.5; done
            if [ -f "$3/postmaster.pid" ]; then "$2" -D "$3" -m immediate -w stop >/dev/null 2>&1; fi
            rm -rf "$4"
        "#;
        let mut cmd = match self.run_as {
            Some(_) => {
                let mut c = Command::new("setpriv");
                c.args([
                    "--reuid=postgres",
                    "--regid=postgres",
                    "--init-groups",
                    "sh",
                ]);
                c
            }
            None => Command::new("sh"),
        };
        cmd.arg("-c")
            .arg(script)
            .arg("sluice-demo-watchdog")
            .arg(std::process::id().to_string())
            .arg(self.bindir.join("pg_ctl"))
            .arg(&self.data)
            .arg(&self.root)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        self.watchdog = cmd.spawn().ok();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.data.join("postmaster.pid").exists() {
            let mut stop = self.tool("pg_ctl");
            stop.arg("-D")
                .arg(&self.data)
                .args(["-m", "immediate", "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let _ = stop.status();
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

/// Runs `cmd` to completion; an error carries its output.
fn run(what: &str, cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{what}: cannot run {:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// Appends `text` to the file at `path`.
fn append(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

/// A password for the throwaway cluster's roles (it listens on 127.0.0.1 only, but other
/// local users exist).
fn random_password() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::from("demo-");
    for _ in 0..2 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
        );
        let _ = write!(out, "{:016x}", h.finish());
    }
    out
}

//! `sluice demo`: starts a throwaway PostgreSQL cluster (or uses `--upstream`), starts
//! Sluice in front of it in this process, runs the same many-client workload directly and
//! through Sluice, and prints what pooling changed — measured, not quoted.

use std::fmt::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use sluice_config::{Config, Upstream};
use tokio_util::sync::CancellationToken;

use crate::check::{free_port, pg_error, InProcess};
use crate::cli::DemoArgs;

/// Exit code when the PostgreSQL server programs are missing (`EX_UNAVAILABLE`).
const EXIT_UNAVAILABLE: u8 = 69;
/// Exit code after Ctrl-C (128 + SIGINT).
const EXIT_INTERRUPTED: u8 = 130;
/// The demo's table, created in the demo database and dropped at the end.
const TABLE: &str = "sluice_demo_accounts";
/// Rows in [`TABLE`]: enough that concurrent clients rarely touch the same row.
const ROWS: i32 = 10_000;

/// What has to be undone, whatever happens.
#[derive(Default)]
struct Cleanup {
    cluster: Option<Cluster>,
    sluice: Option<InProcess>,
    /// `--upstream`: drop the demo table there.
    upstream_table: Option<tokio_postgres::Config>,
}

impl Cleanup {
    async fn run(&mut self) {
        if let Some(sluice) = self.sluice.take() {
            sluice.stop().await;
        }
        if let Some(pg) = self.upstream_table.take() {
            let drop_table = async {
                let client = connect(&pg).await.ok()?;
                client
                    .batch_execute(&format!("DROP TABLE IF EXISTS {TABLE}"))
                    .await
                    .ok()
            };
            if tokio::time::timeout(Duration::from_secs(10), drop_table)
                .await
                .ok()
                .flatten()
                .is_none()
            {
                eprintln!("note: could not drop table {TABLE} on the upstream; drop it by hand");
            }
        }
        if let Some(cluster) = self.cluster.take() {
            let root = cluster.root.clone();
            let _ = tokio::task::spawn_blocking(move || drop(cluster)).await;
            println!(
                "Cleaned up: PostgreSQL stopped, {} removed.",
                root.display()
            );
        }
    }
}

/// Why the demo stopped early.
enum Stop {
    /// The message says what to do; exit with the code.
    Failed(String, u8),
}

/// Runs `sluice demo`.
pub async fn main(args: DemoArgs) -> ExitCode {
    if args.clients == 0 || args.transactions == 0 || args.pool_size == 0 {
        eprintln!("sluice demo: --clients, --transactions and --pool-size must be at least 1");
        return ExitCode::from(2);
    }
    let mut cleanup = Cleanup::default();
    let outcome = tokio::select! {
        r = demo(&args, &mut cleanup) => r,
        _ = crate::signal::shutdown_signal() => {
            eprintln!("\nInterrupted: cleaning up.");
            Err(Stop::Failed(String::new(), EXIT_INTERRUPTED))
        }
    };
    cleanup.run().await;
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Stop::Failed(message, code)) => {
            if !message.is_empty() {
                eprintln!("{message}");
            }
            ExitCode::from(code)
        }
    }
}

fn failed(message: impl Into<String>) -> Stop {
    Stop::Failed(format!("sluice demo: {}", message.into()), 1)
}

async fn demo(args: &DemoArgs, cleanup: &mut Cleanup) -> Result<(), Stop> {
    // 1. A PostgreSQL to talk to.
    let (upstream_url, monitor) = match &args.upstream {
        Some(url) => {
            let up = Upstream::parse(url).map_err(|e| failed(format!("--upstream: {e}")))?;
            println!(
                "Using the PostgreSQL at {} (database {}).",
                up.address(),
                up.database
            );
            let pg = pg_config(&up);
            cleanup.upstream_table = Some(pg.clone());
            (url.clone(), pg)
        }
        None => {
            let bindir = find_bindir(args.pg_bindir.as_deref())
                .map_err(|m| Stop::Failed(m, EXIT_UNAVAILABLE))?;
            let max_connections = args.clients + 50;
            println!(
                "Starting a throwaway PostgreSQL ({}, max_connections {max_connections})...",
                bindir.display()
            );
            let cluster =
                tokio::task::spawn_blocking(move || Cluster::start(bindir, max_connections))
                    .await
                    .map_err(|e| failed(e.to_string()))?
                    .map_err(failed)?;
            println!(
                "PostgreSQL {} on 127.0.0.1:{} (data in {}).",
                cluster.version,
                cluster.port,
                cluster.root.display()
            );
            let setup = cluster.superuser_config();
            let password = cluster.password.clone();
            let port = cluster.port;
            cleanup.cluster = Some(cluster);
            let su = connect(&setup)
                .await
                .map_err(|e| failed(format!("connecting as the superuser: {}", pg_error(&e))))?;
            for sql in [
                format!("CREATE ROLE demo LOGIN PASSWORD '{password}'"),
                "CREATE DATABASE demo OWNER demo".to_owned(),
            ] {
                su.batch_execute(&sql).await.map_err(|e| {
                    failed(format!("creating role and database demo: {}", pg_error(&e)))
                })?;
            }
            let mut monitor = setup;
            monitor.dbname("demo");
            (
                format!("postgres://demo:{password}@127.0.0.1:{port}/demo"),
                monitor,
            )
        }
    };
    let upstream = Upstream::parse(&upstream_url).map_err(|e| failed(e.to_string()))?;
    let direct = pg_config(&upstream);
    create_table(&direct).await?;

    println!(
        "\nWorkload: {} concurrent clients, each connects and runs {} short transactions \
         (SELECT + UPDATE of one row), {} ms apart.",
        args.clients, args.transactions, args.think_ms
    );
    // 2. Directly. Sluice starts afterwards, so none of its connections count here.
    let idle = backends(&monitor).await?;
    let direct_run = workload("direct", args, &direct, &monitor).await?;
    settle(&monitor, idle).await;

    // 3. Sluice in front of it, in this process; the same workload through it.
    let config = demo_config(args, &upstream)?;
    let sluice = InProcess::start_exact(config)
        .await
        .map_err(|e| failed(format!("starting Sluice: {e}")))?;
    // Same user, password and database name; Sluice's address (a fresh Config: `host`
    // and `port` append to the list).
    let through = pg_config(&Upstream {
        host: sluice.listen.ip().to_string(),
        port: sluice.listen.port(),
        ..upstream.clone()
    });
    println!(
        "Sluice on {} (pool_size {}, transaction mode); its admin listener, up while the demo runs:\n  \
         http://{admin}/admin/pool-stats   http://{admin}/metrics   http://{admin}/health",
        sluice.listen,
        args.pool_size,
        admin = sluice.admin
    );
    cleanup.sluice = Some(sluice);
    let sluice_run = workload("through Sluice", args, &through, &monitor).await?;

    // 4. The table.
    print!("{}", benefits(args, &direct_run, &sluice_run));
    for (name, run) in [("direct", &direct_run), ("through Sluice", &sluice_run)] {
        if let Some(e) = &run.first_error {
            println!("first error {name}: {e}");
        }
    }
    Ok(())
}

/// Sluice's configuration for the demo: one database, transaction pooling, no warm
/// connections (so the server-connection count is the workload's alone).
fn demo_config(args: &DemoArgs, upstream: &Upstream) -> Result<Config, Stop> {
    let mut url = format!("postgres://{}", enc(&upstream.user));
    if let Some(p) = &upstream.password {
        let _ = write!(url, ":{}", enc(p));
    }
    let host = if upstream.host.contains(':') {
        format!("[{}]", upstream.host)
    } else {
        upstream.host.clone()
    };
    let _ = write!(url, "@{host}:{}/{}", upstream.port, enc(&upstream.database));
    let toml = format!(
        "[general]\nshutdown_timeout = \"5s\"\n\
         [postgres]\npool_mode = \"transaction\"\npool_size = {pool}\nmin_pool_size = 0\n\
         max_client_conn = {max_clients}\npool_timeout = \"60s\"\n\
         [[postgres.databases]]\nname = {name}\nupstream = {url}\nsslmode = \"disable\"\n",
        pool = args.pool_size,
        max_clients = args.clients * 2 + 100,
        name = toml_str(&upstream.database),
        url = toml_str(&url),
    );
    Config::from_toml_str(&toml).map_err(|e| failed(format!("Sluice configuration: {e}")))
}

/// Percent-encodes everything but unreserved characters (for a URL component).
fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A plaintext tokio-postgres configuration for `up`.
fn pg_config(up: &Upstream) -> tokio_postgres::Config {
    let mut pg = tokio_postgres::Config::new();
    pg.host(&up.host)
        .port(up.port)
        .user(&up.user)
        .dbname(&up.database)
        .application_name("sluice demo")
        .ssl_mode(tokio_postgres::config::SslMode::Disable)
        .connect_timeout(Duration::from_secs(30));
    if let Some(p) = &up.password {
        pg.password(p);
    }
    pg
}

async fn connect(
    pg: &tokio_postgres::Config,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = pg.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

async fn create_table(pg: &tokio_postgres::Config) -> Result<(), Stop> {
    let client = connect(pg)
        .await
        .map_err(|e| failed(format!("connecting to the demo database: {}", pg_error(&e))))?;
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {TABLE};\n\
             CREATE TABLE {TABLE} (id int PRIMARY KEY, balance bigint NOT NULL DEFAULT 0);\n\
             INSERT INTO {TABLE} (id) SELECT generate_series(1, {ROWS});\n\
             ANALYZE {TABLE};"
        ))
        .await
        .map_err(|e| failed(format!("creating table {TABLE}: {}", pg_error(&e))))
}

/// Counts the client backends on the monitored database (other than the counting one).
const COUNT_BACKENDS: &str = "SELECT count(*) FROM pg_stat_activity \
     WHERE datname = current_database() AND backend_type = 'client backend' \
     AND pid <> pg_backend_pid()";

async fn backends(monitor: &tokio_postgres::Config) -> Result<i64, Stop> {
    let mon = connect(monitor)
        .await
        .map_err(|e| failed(format!("monitor connection: {}", pg_error(&e))))?;
    mon.query_one(COUNT_BACKENDS, &[])
        .await
        .map(|r| r.get(0))
        .map_err(|e| failed(format!("reading pg_stat_activity: {}", pg_error(&e))))
}

/// Waits (up to 5 s) until the backends of a finished run have exited, so the next run
/// starts from `idle`.
async fn settle(monitor: &tokio_postgres::Config, idle: i64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match backends(monitor).await {
            Ok(n) if n > idle => tokio::time::sleep(Duration::from_millis(50)).await,
            _ => return,
        }
    }
}

/// What one run measured.
struct RunStats {
    /// Most server connections open at once (beyond those open before the run).
    peak_server_connections: i64,
    /// Connect + first query, per client that got that far.
    acquire: Vec<Duration>,
    committed: u64,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
}

impl RunStats {
    fn throughput(&self) -> f64 {
        self.committed as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn acquire_percentile(&self, p: usize) -> Option<Duration> {
        let mut v = self.acquire.clone();
        if v.is_empty() {
            return None;
        }
        v.sort();
        let rank = (p * v.len()).div_ceil(100).clamp(1, v.len());
        Some(v[rank - 1])
    }
}

/// What one client did.
#[derive(Default)]
struct ClientStats {
    acquire: Option<Duration>,
    committed: u64,
    errors: u64,
    first_error: Option<String>,
}

/// Runs `args.clients` concurrent clients against `target` while sampling the server
/// connections on `monitor`'s database.
async fn workload(
    name: &str,
    args: &DemoArgs,
    target: &tokio_postgres::Config,
    monitor: &tokio_postgres::Config,
) -> Result<RunStats, Stop> {
    let total = (args.clients * args.transactions) as u64;
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>15} [{bar:30.cyan/blue}] {pos:>6}/{len} tx {elapsed:>4} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix(name.to_owned());
    bar.enable_steady_tick(Duration::from_millis(100));

    let mon = connect(monitor)
        .await
        .map_err(|e| failed(format!("monitor connection: {}", pg_error(&e))))?;
    let count_sql = COUNT_BACKENDS;
    let baseline: i64 = mon
        .query_one(count_sql, &[])
        .await
        .map_err(|e| failed(format!("reading pg_stat_activity: {}", pg_error(&e))))?
        .get(0);
    let stop = CancellationToken::new();
    let sampler = {
        let stop = stop.clone();
        let bar = bar.clone();
        tokio::spawn(async move {
            let mut peak = baseline;
            while !stop.is_cancelled() {
                if let Ok(row) = mon.query_one(count_sql, &[]).await {
                    let now: i64 = row.get(0);
                    peak = peak.max(now);
                    bar.set_message(format!(
                        "server connections: {} now, {} peak",
                        now - baseline,
                        peak - baseline
                    ));
                }
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
            peak - baseline
        })
    };

    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..args.clients {
        let pg = target.clone();
        let bar = bar.clone();
        let transactions = args.transactions;
        let think = Duration::from_millis(args.think_ms);
        clients.spawn(client(i as u64, pg, transactions, think, bar));
    }
    let mut results = Vec::with_capacity(args.clients);
    while let Some(r) = clients.join_next().await {
        results.push(r.unwrap_or_else(|e| ClientStats {
            errors: 1,
            first_error: Some(format!("client task failed: {e}")),
            ..ClientStats::default()
        }));
    }
    let elapsed = started.elapsed();
    stop.cancel();
    let peak = sampler.await.unwrap_or(0).max(0);
    let stats = RunStats {
        peak_server_connections: peak,
        acquire: results.iter().filter_map(|c| c.acquire).collect(),
        committed: results.iter().map(|c| c.committed).sum(),
        errors: results.iter().map(|c| c.errors).sum(),
        first_error: results.iter().find_map(|c| c.first_error.clone()),
        elapsed,
    };
    bar.finish_and_clear();
    println!(
        "{name:>15}: {} transactions in {:.1} s, {} errors, peak {} server connections",
        stats.committed,
        elapsed.as_secs_f64(),
        stats.errors,
        stats.peak_server_connections
    );
    Ok(stats)
}

/// One client: connect, first query (the acquisition time), then short transactions.
async fn client(
    index: u64,
    pg: tokio_postgres::Config,
    transactions: usize,
    think: Duration,
    bar: ProgressBar,
) -> ClientStats {
    let mut stats = ClientStats::default();
    let fail = |stats: &mut ClientStats, e: String| {
        stats.errors += 1;
        stats.first_error.get_or_insert(e);
    };
    let started = Instant::now();
    let mut client = match connect(&pg).await {
        Ok(c) => c,
        Err(e) => {
            fail(&mut stats, format!("connect: {}", pg_error(&e)));
            bar.inc(transactions as u64);
            return stats;
        }
    };
    if let Err(e) = client.simple_query("SELECT 1").await {
        fail(&mut stats, format!("first query: {}", pg_error(&e)));
        bar.inc(transactions as u64);
        return stats;
    }
    stats.acquire = Some(started.elapsed());
    let statements = async {
        let select = client
            .prepare(&format!("SELECT balance FROM {TABLE} WHERE id = $1"))
            .await?;
        let update = client
            .prepare(&format!(
                "UPDATE {TABLE} SET balance = balance + 1 WHERE id = $1"
            ))
            .await?;
        Ok::<_, tokio_postgres::Error>((select, update))
    };
    let (select, update) = match statements.await {
        Ok(s) => s,
        Err(e) => {
            fail(&mut stats, format!("prepare: {}", pg_error(&e)));
            bar.inc(transactions as u64);
            return stats;
        }
    };
    // xorshift: a different, reproducible row sequence per client.
    let mut state = index.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for n in 0..transactions {
        if n > 0 && !think.is_zero() {
            tokio::time::sleep(think).await;
        }
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let id = (state % ROWS as u64) as i32 + 1;
        let tx = async {
            let tx = client.transaction().await?;
            tx.query_one(&select, &[&id]).await?;
            tx.execute(&update, &[&id]).await?;
            tx.commit().await
        };
        match tx.await {
            Ok(()) => stats.committed += 1,
            Err(e) => fail(&mut stats, format!("transaction: {}", pg_error(&e))),
        }
        bar.inc(1);
        if client.is_closed() {
            bar.inc((transactions - n - 1) as u64);
            break;
        }
    }
    stats
}

fn ms(d: Option<Duration>) -> String {
    match d {
        Some(d) => format!("{:.1} ms", d.as_secs_f64() * 1000.0),
        None => "-".to_owned(),
    }
}

/// The "Benefits" table.
fn benefits(args: &DemoArgs, direct: &RunStats, sluice: &RunStats) -> String {
    let rows = [
        (
            "server connections used (peak)".to_owned(),
            direct.peak_server_connections.to_string(),
            sluice.peak_server_connections.to_string(),
        ),
        (
            "connection acquisition p50".to_owned(),
            ms(direct.acquire_percentile(50)),
            ms(sluice.acquire_percentile(50)),
        ),
        (
            "connection acquisition p99".to_owned(),
            ms(direct.acquire_percentile(99)),
            ms(sluice.acquire_percentile(99)),
        ),
        (
            "throughput".to_owned(),
            format!("{:.0} tx/s", direct.throughput()),
            format!("{:.0} tx/s", sluice.throughput()),
        ),
        (
            "errors".to_owned(),
            direct.errors.to_string(),
            sluice.errors.to_string(),
        ),
    ];
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nBenefits (measured just now: {} clients × {} transactions, Sluice pool_size {})\n",
        args.clients, args.transactions, args.pool_size
    );
    let _ = writeln!(s, "  {:<32} {:>14} {:>16}", "", "direct", "through Sluice");
    for (what, d, t) in rows {
        let _ = writeln!(s, "  {what:<32} {d:>14} {t:>16}");
    }
    let _ = writeln!(
        s,
        "\nServer connections are PostgreSQL backends (one process and its memory each), \
         counted in pg_stat_activity.\nAcquisition is connect + first query as the client sees it."
    );
    s
}

/// Finds PostgreSQL's server programs: `explicit`, `pg_config --bindir`, the newest
/// `/usr/lib/postgresql/*/bin`, then `$PATH`. The error says what to install.
fn find_bindir(explicit: Option<&Path>) -> Result<PathBuf, String> {
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
        "sluice demo: no PostgreSQL server programs (initdb, pg_ctl, postgres) in {looked}.\n\
         Install them and run `sluice demo` again:\n  \
         Debian/Ubuntu:  sudo apt-get install postgresql\n  \
         Fedora/RHEL:    sudo dnf install postgresql-server\n  \
         macOS:          brew install postgresql@16\n\
         or compare against a PostgreSQL you already run:\n  \
         sluice demo --upstream postgres://user:password@host:5432/dbname"
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
                  Run `sluice demo` as a normal user, or create that user."
                .to_owned(),
        ),
    }
}

/// A throwaway PostgreSQL cluster in a temporary directory, listening on 127.0.0.1.
/// Dropping it stops the server and removes the directory; a watchdog process does the
/// same if this process dies without dropping it.
struct Cluster {
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    data: PathBuf,
    bindir: PathBuf,
    port: u16,
    password: String,
    version: String,
    run_as: Option<(u32, u32)>,
    watchdog: Option<Child>,
}

impl Cluster {
    fn start(bindir: PathBuf, max_connections: usize) -> Result<Cluster, String> {
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
        let mut cluster = Cluster {
            dir: Some(dir),
            data: root.join("data"),
            root,
            bindir,
            port: 0,
            password,
            version: String::new(),
            run_as,
            watchdog: None,
        };
        cluster.spawn_watchdog();

        let mut initdb = cluster.tool("initdb");
        initdb
            .arg("-D")
            .arg(&cluster.data)
            .args(["-U", "postgres", "--auth=scram-sha-256", "-E", "UTF8"])
            .args(["--locale=C", "--no-sync"])
            .arg(format!("--pwfile={}", pwfile.display()));
        run("initdb", &mut initdb)?;
        let _ = std::fs::remove_file(&pwfile);
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
                sock.display()
            ),
        )?;
        let log = cluster.root.join("postgres.log");
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port().map_err(|e| format!("finding a free port: {e}"))?;
            append(&conf, &format!("port = {port}\n"))?;
            cluster.port = port;
            let mut start = cluster.tool("pg_ctl");
            start
                .arg("-D")
                .arg(&cluster.data)
                .arg("-l")
                .arg(&log)
                .args(["-w", "-t", "60", "start"]);
            // Out of the terminal's process group: Ctrl-C reaches only us, and we stop it.
            start.process_group(0);
            match run("pg_ctl start", &mut start) {
                Ok(()) => return Ok(cluster),
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

    fn superuser_config(&self) -> tokio_postgres::Config {
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

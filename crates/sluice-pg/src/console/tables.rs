//! Result sets of the console's `SHOW` commands, built from the same statistics the HTTP
//! admin listener serves (encoded by `protocol::backend` as RowDescription / DataRow).

use std::collections::HashMap;

use bytes::BytesMut;
use sluice_stats::PoolSource;

use super::command::Show;
use crate::context::PgContext;
use crate::protocol::{backend, messages};

/// What `SHOW VERSION` and the console's `server_version` say.
pub const VERSION: &str = concat!("Sluice ", env!("CARGO_PKG_VERSION"));

/// A result set of text columns.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ResultSet {
    /// Column names.
    pub columns: Vec<&'static str>,
    /// Rows of text values (`None`: NULL).
    pub rows: Vec<Vec<Option<String>>>,
}

impl ResultSet {
    pub(super) fn new(columns: &[&'static str]) -> Self {
        Self {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    pub(super) fn row(&mut self, values: Vec<String>) {
        self.rows.push(values.into_iter().map(Some).collect());
    }

    /// Appends RowDescription, the DataRows and CommandComplete `SHOW`.
    pub fn encode(&self, out: &mut BytesMut) {
        backend::row_description_text(out, &self.columns);
        for row in &self.rows {
            backend::data_row(out, row.iter().map(|v| v.as_deref().map(str::as_bytes)));
        }
        messages::write_command_complete(out, "SHOW");
    }
}

/// Builds the result of one `SHOW`.
pub fn show(what: Show, ctx: &PgContext) -> ResultSet {
    match what {
        Show::Pools => pools(ctx),
        Show::Stats => stats(ctx),
        Show::Clients => clients(ctx),
        Show::Servers => servers(ctx),
        Show::Databases => databases(ctx),
        Show::Config => config(ctx),
        Show::Users => users(ctx),
        Show::Lists => lists(ctx),
        Show::Mem => mem(ctx),
        Show::Hosts => super::hosts_table::hosts(ctx),
        Show::Version => {
            let mut rs = ResultSet::new(&["version"]);
            rs.row(vec![VERSION.to_owned()]);
            rs
        }
    }
}

/// SHOW POOLS' columns: PgBouncer's, then Sluice's own.
const POOLS_COLUMNS: &[&str] = &[
    "database",
    "user",
    "cl_active",
    "cl_waiting",
    "sv_active",
    "sv_idle",
    "sv_used",
    "sv_tested",
    "sv_login",
    "maxwait",
    "maxwait_us",
    "pool_mode",
    // Sluice's own: the pool's shared statement registry (PgBouncer 1.21+ shows
    // `prepared_statements` per client and server; this is the pool-wide index).
    "prepared_statements",
    // Sluice's own: servers pinned by a client for session state.
    "pinned",
    // Sluice's own: the server's host:port (a database may have several).
    "host",
];

fn pools(ctx: &PgContext) -> ResultSet {
    let mut rs = ResultSet::new(POOLS_COLUMNS);
    let mut clients: HashMap<(String, String), u64> = HashMap::new();
    for c in ctx.cancel.list() {
        *clients
            .entry((c.info.database.to_string(), c.info.user.to_string()))
            .or_default() += 1;
    }
    for (db, d) in sorted(ctx) {
        let pools: Vec<_> = sorted_pools(&d)
            .into_iter()
            .map(|(user, pool)| (user, pool.snapshot(), pool))
            .collect();
        let active = active_clients(&pools, |user| {
            clients.get(&(db.clone(), user.to_owned())).copied()
        });
        for ((user, s, pool), active) in pools.iter().zip(active) {
            let wait = s.longest_wait_seconds;
            rs.row(vec![
                db.clone(),
                user.clone(),
                active.to_string(),
                s.waiting.to_string(),
                s.active.to_string(),
                s.idle.to_string(),
                "0".into(),
                "0".into(),
                s.size.saturating_sub(s.idle + s.active).to_string(),
                (wait.trunc() as u64).to_string(),
                ((wait.fract() * 1e6) as u64).to_string(),
                s.mode.clone(),
                pool.statements().len().to_string(),
                s.pinned.len().to_string(),
                upstream_address(pool),
            ]);
        }
    }
    rs
}

/// `cl_active` of each of a database's pool rows (`clients`: a user's clients). A user of a
/// multi-host database has a row per host, but a client is tied to no host between
/// transactions: counted once, on the user's first row, less those waiting on any row.
fn active_clients(
    pools: &[(String, sluice_stats::PoolSnapshot, crate::pool::PgPool)],
    clients: impl Fn(&str) -> Option<u64>,
) -> Vec<u64> {
    let mut waiting: HashMap<&str, u64> = HashMap::new();
    for (user, s, _) in pools {
        *waiting.entry(user.as_str()).or_default() += s.waiting;
    }
    let mut counted = std::collections::HashSet::new();
    pools
        .iter()
        .map(|(user, _, _)| {
            if !counted.insert(user.as_str()) {
                return 0;
            }
            let total = clients(user).unwrap_or(0);
            total.saturating_sub(waiting.get(user.as_str()).copied().unwrap_or(0))
        })
        .collect()
}

fn stats(ctx: &PgContext) -> ResultSet {
    let mut rs = ResultSet::new(&[
        "database",
        "user",
        "total_xact_count",
        "total_query_count",
        "total_received",
        "total_sent",
        "total_wait_time",
        "total_server_connects",
        "total_errors",
    ]);
    for (db, d) in sorted(ctx) {
        for (user, pool) in sorted_pools(&d) {
            let c = pool.snapshot().counters;
            rs.row(vec![
                db.clone(),
                user,
                c.transactions_total.to_string(),
                c.queries_total.to_string(),
                c.bytes_in_total.to_string(),
                c.bytes_out_total.to_string(),
                ((c.checkout_wait.sum_seconds * 1e6) as u64).to_string(),
                c.server_connects_total.to_string(),
                c.errors.total().to_string(),
            ]);
        }
    }
    rs
}

fn clients(ctx: &PgContext) -> ResultSet {
    let mut rs = ResultSet::new(&[
        "type",
        "user",
        "database",
        "state",
        "addr",
        "port",
        "connect_time",
        "application_name",
        "ptr",
        "link",
        "id",
    ]);
    let mut list = ctx.cancel.list();
    list.sort_by_key(|c| c.pid);
    for c in list {
        let (addr, port) = c
            .info
            .who
            .as_ref()
            .map(|w| (w.addr.ip().to_string(), w.addr.port().to_string()))
            .unwrap_or_default();
        rs.row(vec![
            "C".into(),
            c.info.user.to_string(),
            c.info.database.to_string(),
            if c.server_pid.is_some() {
                "active"
            } else {
                "idle"
            }
            .into(),
            addr,
            port,
            c.info.connected_at.to_string(),
            c.info
                .who
                .as_ref()
                .map(|w| w.application_name.to_string())
                .unwrap_or_default(),
            c.pid.to_string(),
            c.server_pid.map(|p| p.to_string()).unwrap_or_default(),
            c.id.to_string(),
        ]);
    }
    rs
}

fn servers(ctx: &PgContext) -> ResultSet {
    let mut rs = ResultSet::new(&[
        "type",
        "user",
        "database",
        "state",
        "addr",
        "port",
        "pid",
        "state_age",
        "link",
    ]);
    for (db, d) in sorted(ctx) {
        for (user, pool) in sorted_pools(&d) {
            let up = &pool.settings().upstream;
            for (pid, active, age, link) in pool.servers() {
                rs.row(vec![
                    "S".into(),
                    user.clone(),
                    db.clone(),
                    if active { "active" } else { "idle" }.into(),
                    up.host.clone(),
                    up.port.to_string(),
                    pid.to_string(),
                    format!("{age:.3}"),
                    link.map(|a| a.to_string()).unwrap_or_default(),
                ]);
            }
        }
    }
    rs
}

fn databases(ctx: &PgContext) -> ResultSet {
    let mut rs = ResultSet::new(&[
        "name",
        "host",
        "port",
        "database",
        "force_user",
        "pool_size",
        "min_pool_size",
        "pool_mode",
        "current_connections",
        "paused",
    ]);
    let pg = &ctx.config.postgres;
    for (db, d) in sorted(ctx) {
        let c = &d.config;
        let pools = d.pools();
        let current: u64 = pools.iter().map(|(_, p)| p.snapshot().size).sum();
        let paused = pools.iter().any(|(_, p)| p.is_paused());
        rs.row(vec![
            db,
            c.upstream.host.clone(),
            c.upstream.port.to_string(),
            c.upstream.database.clone(),
            c.upstream.user.clone(),
            c.pool_size(pg).to_string(),
            c.min_pool_size(pg).to_string(),
            c.pool_mode(pg).to_string(),
            current.to_string(),
            u8::from(paused).to_string(),
        ]);
    }
    rs
}

/// `SHOW CONFIG`: a key's value in force (a key that needs a restart shows the value at
/// start), and whether a reload changes it, from the reload table.
fn config(ctx: &PgContext) -> ResultSet {
    let mut rs = ResultSet::new(&["key", "value", "changeable"]);
    let secs = |d: std::time::Duration| format!("{}", d.as_secs_f64());
    let rows = |c: &sluice_config::Config| {
        let pg = &c.postgres;
        [
            ("listen", pg.listen.to_string()),
            ("pool_mode", pg.pool_mode.to_string()),
            ("max_client_conn", pg.max_client_conn.to_string()),
            ("pool_size", pg.pool_size.to_string()),
            ("min_pool_size", pg.min_pool_size.to_string()),
            ("pool_timeout", secs(pg.pool_timeout)),
            ("server_reset_query", pg.server_reset_query.clone()),
            ("auth_type", pg.auth_type.to_string()),
            ("server_connect_timeout", secs(pg.server_connect_timeout)),
            (
                "max_prepared_statements",
                pg.max_prepared_statements.to_string(),
            ),
            (
                "prepared_statement_registry_size",
                pg.prepared_statement_registry_size.to_string(),
            ),
            ("shutdown_timeout", secs(c.general.shutdown_timeout)),
            ("admin_listen", c.admin.listen.to_string()),
        ]
    };
    for ((k, now), (_, at_start)) in rows(&ctx.config).into_iter().zip(rows(&ctx.started)) {
        let path = match k {
            "shutdown_timeout" => "general.shutdown_timeout".to_owned(),
            "admin_listen" => "admin.listen".to_owned(),
            k => format!("postgres.{k}"),
        };
        let live = sluice_config::Key::find(&path)
            .is_some_and(|key| key.apply == sluice_config::Apply::Live);
        let v = if live { now } else { at_start };
        rs.row(vec![k.into(), v, if live { "yes" } else { "no" }.into()]);
    }
    rs
}

/// The users clients log in as: `[[postgres.users]]` and `auth_file`, else the upstream
/// users of the databases (as PgBouncer lists its auth_file and forced users).
fn user_names(ctx: &PgContext) -> Vec<String> {
    let pg = &ctx.config.postgres;
    let mut names: Vec<String> = if pg.users.is_empty() {
        pg.databases
            .iter()
            .map(|d| d.upstream.user.clone())
            .collect()
    } else {
        pg.users.iter().map(|u| u.name.clone()).collect()
    };
    names.sort();
    names.dedup();
    names
}

/// `SHOW USERS`: PgBouncer's `name` and `pool_mode` (the user's own from
/// `[[postgres.user_settings]]`; empty: each database's).
fn users(ctx: &PgContext) -> ResultSet {
    let mut rs = ResultSet::new(&["name", "pool_mode"]);
    let pg = &ctx.config.postgres;
    for name in user_names(ctx) {
        let mode = pg
            .user_settings(&name)
            .and_then(|s| s.pool_mode)
            .map(|m| m.to_string())
            .unwrap_or_default();
        rs.row(vec![name, mode]);
    }
    rs
}

/// `SHOW LISTS`: PgBouncer's rows that mean something in Sluice (no DNS cache, no
/// separate login list: clients still logging in are not counted).
fn lists(ctx: &PgContext) -> ResultSet {
    let mut rs = ResultSet::new(&["list", "items"]);
    let pools: Vec<_> = sorted(ctx)
        .into_iter()
        .flat_map(|(_, d)| d.pools().into_iter().map(|(_, p)| p.snapshot()))
        .collect();
    let clients = ctx.stats.clients().snapshot();
    let servers_used: u64 = pools.iter().map(|p| p.active).sum();
    let servers_free: u64 = pools.iter().map(|p| p.idle).sum();
    for (list, items) in [
        ("databases", ctx.all_databases().len() as u64),
        ("users", user_names(ctx).len() as u64),
        ("pools", pools.len() as u64),
        ("free_clients", clients.idle + clients.waiting),
        ("used_clients", clients.active),
        ("free_servers", servers_free),
        ("used_servers", servers_used),
    ] {
        rs.row(vec![list.into(), items.to_string()]);
    }
    rs
}

/// `SHOW MEM`: what holds memory, as counts Sluice keeps (PgBouncer's slab caches have
/// no equivalent; sizes are given only where they are measured).
fn mem(ctx: &PgContext) -> ResultSet {
    let mut rs = ResultSet::new(&["name", "items", "bytes"]);
    let pools = ctx.pools();
    let statements: usize = pools.iter().map(|p| p.statements().len()).sum();
    let clients = ctx.clients.load(std::sync::atomic::Ordering::Relaxed);
    let servers: u64 = pools.iter().map(|p| p.snapshot().size).sum();
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?.to_owned();
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map(|kb| (kb * 1024).to_string())
        .unwrap_or_default();
    for (name, items, bytes) in [
        ("client_connections", clients.to_string(), String::new()),
        ("server_connections", servers.to_string(), String::new()),
        ("pools", pools.len().to_string(), String::new()),
        ("prepared_statements", statements.to_string(), String::new()),
        (
            "auth_cache",
            ctx.auth_query.cached().to_string(),
            String::new(),
        ),
        ("process_resident", String::new(), rss),
    ] {
        rs.row(vec![name.into(), items, bytes]);
    }
    rs
}

fn sorted(ctx: &PgContext) -> Vec<(String, std::sync::Arc<crate::context::Database>)> {
    ctx.all_databases()
}

/// `host:port` of the server a pool connects to.
fn upstream_address(pool: &crate::pool::PgPool) -> String {
    let up = &pool.settings().upstream;
    format!("{}:{}", up.host, up.port)
}

fn sorted_pools(d: &crate::context::Database) -> Vec<(String, crate::pool::PgPool)> {
    d.pools()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::{Frames, MAX_FRAME_LEN};

    #[test]
    fn encodes_a_result_set() {
        let mut rs = ResultSet::new(&["a", "b"]);
        rs.row(vec!["1".into(), "xy".into()]);
        rs.rows.push(vec![None, Some(String::new())]);
        let mut out = BytesMut::new();
        rs.encode(&mut out);
        let tags: Vec<u8> = Frames::new(&out, MAX_FRAME_LEN).map(|f| f.tag).collect();
        assert_eq!(tags, b"TDDC");
        let mut buf = out.clone();
        use postgres_protocol::message::backend::Message;
        match Message::parse(&mut buf).unwrap() {
            Some(Message::RowDescription(body)) => {
                use fallible_iterator::FallibleIterator;
                let names: Vec<String> = body
                    .fields()
                    .map(|f| Ok(f.name().to_owned()))
                    .collect()
                    .unwrap();
                assert_eq!(names, ["a", "b"]);
            }
            _ => panic!("expected RowDescription"),
        }
    }
}

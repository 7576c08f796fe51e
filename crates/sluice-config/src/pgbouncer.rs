//! `sluice import-pgbouncer`: turns a pgbouncer.ini into an equivalent `proxy.toml`.
//! Every PgBouncer key Sluice supports is mapped; every other key is kept as a comment
//! saying why it is not (so nothing is dropped silently). Pure text in, text out.

use std::fmt::Write as _;

mod ini;

pub use ini::ImportError;
use ini::{connect_string, parse_ini};

/// `[pgbouncer]` keys mapped one to one: (PgBouncer key, Sluice key, kind).
const MAPPED: &[(&str, &str, Kind)] = &[
    ("pool_mode", "pool_mode", Kind::Mode),
    ("max_client_conn", "max_client_conn", Kind::Int),
    ("max_db_connections", "max_db_connections", Kind::Int),
    ("max_user_connections", "max_user_connections", Kind::Int),
    (
        "max_db_client_connections",
        "max_db_client_connections",
        Kind::Int,
    ),
    (
        "max_user_client_connections",
        "max_user_client_connections",
        Kind::Int,
    ),
    ("default_pool_size", "pool_size", Kind::Int),
    ("min_pool_size", "min_pool_size", Kind::Int),
    ("server_reset_query", "server_reset_query", Kind::Str),
    ("server_idle_timeout", "server_idle_timeout", Kind::Secs),
    ("server_lifetime", "server_lifetime", Kind::Secs),
    (
        "server_connect_timeout",
        "server_connect_timeout",
        Kind::Secs,
    ),
    ("server_login_retry", "server_login_retry", Kind::Secs),
    ("client_login_timeout", "client_login_timeout", Kind::Secs),
    ("client_idle_timeout", "client_idle_timeout", Kind::Secs),
    (
        "idle_transaction_timeout",
        "idle_transaction_timeout",
        Kind::Secs,
    ),
    ("query_wait_timeout", "pool_timeout", Kind::Secs),
    ("query_timeout", "query_timeout", Kind::Secs),
    ("server_check_query", "server_check_query", Kind::Str),
    ("reserve_pool_size", "reserve_pool_size", Kind::Int),
    ("reserve_pool_timeout", "reserve_pool_timeout", Kind::Secs),
    ("server_check_delay", "server_check_delay", Kind::Secs),
    ("transaction_timeout", "transaction_timeout", Kind::Secs),
    ("max_packet_size", "max_packet_size", Kind::Int),
    (
        "max_prepared_statements",
        "max_prepared_statements",
        Kind::Int,
    ),
    ("auth_file", "auth_file", Kind::Str),
    ("auth_user", "auth_user", Kind::Str),
    ("auth_query", "auth_query", Kind::Str),
];

/// `[pgbouncer]` keys Sluice does not need or does differently, with the reason.
const NOT_NEEDED: &[(&str, &str)] = &[
    ("logfile", "Sluice logs to stderr (RUST_LOG sets the level)"),
    (
        "pidfile",
        "Sluice does not daemonize; use systemd or a container",
    ),
    (
        "user",
        "Sluice does not change user; use systemd's User= or the container's",
    ),
    ("unix_socket_dir", "Sluice listens on TCP only"),
    ("unix_socket_mode", "Sluice listens on TCP only"),
    ("unix_socket_group", "Sluice listens on TCP only"),
    (
        "ignore_startup_parameters",
        "Sluice carries every startup parameter to the server",
    ),
    (
        "track_extra_parameters",
        "Sluice carries every setting, however it is set",
    ),
    (
        "stats_period",
        "Sluice's counters are exact at every scrape of /metrics",
    ),
    (
        "stats_users",
        "the console has one user list: add them to admin_users",
    ),
    (
        "so_reuseport",
        "one Sluice process uses several threads (worker_threads)",
    ),
    ("application_name_add_host", "not supported"),
    (
        "log_connections",
        "Sluice logs at debug level (RUST_LOG=sluice_pg=debug)",
    ),
    (
        "log_disconnections",
        "Sluice logs at debug level (RUST_LOG=sluice_pg=debug)",
    ),
    ("log_pooler_errors", "Sluice always logs them"),
    ("tcp_keepalive", "not supported"),
    ("pkt_buf", "Sluice sizes its buffers itself"),
    ("sbuf_loopcnt", "Sluice's relay never starves a client"),
];

#[derive(Clone, Copy)]
enum Kind {
    Int,
    Secs,
    Str,
    Mode,
}

/// What the `[pgbouncer]` section turns into.
#[derive(Default)]
struct General {
    /// `[postgres]` lines.
    pg: String,
    addr: Option<String>,
    port: Option<String>,
    /// `[postgres.tls]` lines.
    tls: String,
    server_sslmode: Option<String>,
    server_ca: Option<String>,
    /// Keys not imported, with the reason.
    skipped: Vec<String>,
}

impl General {
    /// Takes one `[pgbouncer]` key.
    fn key(&mut self, line: usize, key: &str, value: &str, userlist: Option<&str>) {
        if let Some((_, to, kind)) = MAPPED.iter().find(|(k, _, _)| *k == key) {
            let value = if key == "auth_file" {
                userlist.unwrap_or(value)
            } else {
                value
            };
            match render(*kind, value) {
                Some(v) => {
                    let _ = writeln!(self.pg, "{to} = {v}");
                }
                None => self
                    .skipped
                    .push(format!("{key} = {value}: not a value Sluice accepts here")),
            }
            return;
        }
        match key {
            "listen_addr" => {
                self.addr = Some(if value == "*" {
                    "0.0.0.0".into()
                } else {
                    value.into()
                })
            }
            "listen_port" => self.port = Some(value.into()),
            "auth_type" => match value {
                "scram-sha-256" | "md5" | "trust" => {
                    let _ = writeln!(self.pg, "auth_type = {}", quote(value));
                }
                other => self.skipped.push(format!(
                    "auth_type = {other}: Sluice supports scram-sha-256, md5 and trust"
                )),
            },
            "admin_users" => {
                let users: Vec<String> = value
                    .split(',')
                    .map(str::trim)
                    .filter(|u| !u.is_empty())
                    .map(quote)
                    .collect();
                let _ = writeln!(self.pg, "admin_users = [{}]", users.join(", "));
            }
            "client_tls_sslmode" => self.client_tls(value),
            "client_tls_cert_file" => {
                let _ = writeln!(self.tls, "cert_file = {}", quote(value));
            }
            "client_tls_key_file" => {
                let _ = writeln!(self.tls, "key_file = {}", quote(value));
            }
            "server_tls_sslmode" => self.server_sslmode = Some(value.to_owned()),
            "server_tls_ca_file" => self.server_ca = Some(value.to_owned()),
            _ => match NOT_NEEDED.iter().find(|(k, _)| *k == key) {
                Some((_, why)) => self.skipped.push(format!("{key} = {value}: {why}")),
                None => self
                    .skipped
                    .push(format!("{key} = {value}: not supported (line {line})")),
            },
        }
    }

    /// `client_tls_sslmode`: Sluice's modes are disable, allow and require.
    fn client_tls(&mut self, value: &str) {
        let mode = match value {
            "disable" => "disable",
            "allow" | "prefer" => "allow",
            "require" | "verify-ca" | "verify-full" => "require",
            other => {
                self.skipped
                    .push(format!("client_tls_sslmode = {other}: unknown mode"));
                return;
            }
        };
        if value.starts_with("verify") {
            self.skipped.push(format!(
                "client_tls_sslmode = {value}: Sluice does not verify client certificates; mapped to require"
            ));
        }
        let _ = writeln!(self.tls, "mode = \"{mode}\"");
    }
}

/// The `proxy.toml` equivalent to `ini`; `userlist` (when given) replaces `auth_file`.
pub fn import(ini: &str, userlist: Option<&str>) -> Result<String, ImportError> {
    let sections = parse_ini(ini)?;
    let empty = Vec::new();
    let get = |name: &str| sections.get(name).unwrap_or(&empty);
    let mut general = General::default();
    for (line, key, value) in get("pgbouncer") {
        general.key(*line, key, value, userlist);
    }
    let mut out = String::from("# Generated by `sluice import-pgbouncer` from pgbouncer.ini.\n");
    let listen = format!(
        "{}:{}",
        general.addr.as_deref().unwrap_or("127.0.0.1"),
        general.port.as_deref().unwrap_or("6432")
    );
    let _ = writeln!(out, "\n[postgres]\nlisten = {}", quote(&listen));
    out.push_str(&general.pg);
    if !general.tls.is_empty() {
        let _ = write!(out, "\n[postgres.tls]\n{}", general.tls);
    }
    let mut skipped = std::mem::take(&mut general.skipped);
    let tls = (
        general.server_sslmode.as_deref(),
        general.server_ca.as_deref(),
    );
    for (line, name, conn) in get("databases") {
        match database(name, conn, tls) {
            Ok(block) => out.push_str(&block),
            Err(why) => skipped.push(format!("[databases] {name} (line {line}): {why}")),
        }
    }
    for (line, name, value) in get("users") {
        match user_settings(name, value) {
            Ok((block, ignored)) => {
                out.push_str(&block);
                skipped.extend(
                    ignored
                        .into_iter()
                        .map(|k| format!("[users] {name} {k} (line {line}): not supported")),
                );
            }
            Err(why) => skipped.push(format!("[users] {name} (line {line}): {why}")),
        }
    }
    for name in sections.keys() {
        if !matches!(name.as_str(), "pgbouncer" | "databases" | "users") {
            skipped.push(format!("[{name}]: unknown section"));
        }
    }
    if !skipped.is_empty() {
        out.push_str("\n# Not imported:\n");
        for s in skipped {
            let _ = writeln!(out, "#   {}", s.replace('\n', " "));
        }
    }
    Ok(out)
}

/// A `[[postgres.databases]]` block for `name = <connect string>`.
fn database(
    name: &str,
    conn: &str,
    (sslmode, ca): (Option<&str>, Option<&str>),
) -> Result<String, String> {
    let fields = connect_string(conn)?;
    let field = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    // Without user=, each client logs in upstream as itself (as in PgBouncer).
    let user = field("user")
        .map(|u| format!("{}@", encode(u)))
        .unwrap_or_default();
    let host = field("host").unwrap_or("127.0.0.1");
    if host.starts_with('/') {
        return Err(format!(
            "host={host}: Unix sockets are not supported; use a TCP host"
        ));
    }
    let port = field("port").unwrap_or("5432");
    // The wildcard's database is each client's; its URL needs one all the same.
    let dbname = field("dbname").unwrap_or(if name == "*" { "postgres" } else { name });
    let mut out = format!("\n[[postgres.databases]]\nname = {}\n", quote(name));
    let url = format!("postgres://{}{}:{}/{}", user, host, port, encode(dbname));
    let _ = writeln!(out, "upstream = {}", quote(&url));
    if let Some(pw) = field("password") {
        let _ = writeln!(out, "password = {}", quote(pw));
    }
    database_options(&fields, sslmode, ca, &mut out)?;
    Ok(out)
}

/// A `[[postgres.user_settings]]` block for `[users] name = <settings>`, and the keys it
/// could not carry.
fn user_settings(name: &str, value: &str) -> Result<(String, Vec<String>), String> {
    let fields = connect_string(value)?;
    let mut out = format!("\n[[postgres.user_settings]]\nname = {}\n", quote(name));
    let mut ignored = Vec::new();
    for (key, v) in &fields {
        let kind = match key.as_str() {
            "pool_mode" => Kind::Mode,
            "pool_size" | "max_user_connections" | "max_user_client_connections" => Kind::Int,
            _ => {
                ignored.push(key.clone());
                continue;
            }
        };
        let rendered = render(kind, v).ok_or_else(|| match kind {
            Kind::Mode => format!("pool_mode={v}: Sluice has session and transaction"),
            _ => format!("{key}={v} is not a number"),
        })?;
        let _ = writeln!(out, "{key} = {rendered}");
    }
    Ok((out, ignored))
}

/// The per-database options of a connect string, appended to `out`.
fn database_options(
    fields: &[(String, String)],
    sslmode: Option<&str>,
    ca: Option<&str>,
    out: &mut String,
) -> Result<(), String> {
    let field = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    for (from, to) in [
        ("pool_size", "pool_size"),
        ("min_pool_size", "min_pool_size"),
        ("max_db_connections", "max_db_connections"),
        ("max_db_client_connections", "max_db_client_connections"),
    ] {
        if let Some(v) = field(from) {
            let n: usize = v
                .parse()
                .map_err(|_| format!("{from}={v} is not a number"))?;
            let _ = writeln!(*out, "{to} = {n}");
        }
    }
    if let Some(mode) = field("pool_mode") {
        let v = render(Kind::Mode, mode).ok_or(format!(
            "pool_mode={mode}: Sluice has session and transaction"
        ))?;
        let _ = writeln!(*out, "pool_mode = {v}");
    }
    if let Some(mode) = sslmode {
        let _ = writeln!(*out, "sslmode = {}", quote(mode));
    }
    if let Some(ca) = ca {
        let _ = writeln!(*out, "sslrootcert = {}", quote(ca));
    }
    let ignored: Vec<&str> = fields
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| {
            !matches!(
                *k,
                "user"
                    | "host"
                    | "port"
                    | "dbname"
                    | "password"
                    | "pool_size"
                    | "min_pool_size"
                    | "max_db_connections"
                    | "max_db_client_connections"
                    | "pool_mode"
            )
        })
        .collect();
    if !ignored.is_empty() {
        let _ = writeln!(
            out,
            "# not imported for this database: {}",
            ignored.join(", ")
        );
    }
    Ok(())
}

/// A PgBouncer value as TOML for `kind`, or None when it does not fit.
fn render(kind: Kind, value: &str) -> Option<String> {
    match kind {
        Kind::Int => value.parse::<u64>().ok().map(|n| n.to_string()),
        // PgBouncer takes seconds (fractions allowed); 0 disables, as in Sluice.
        Kind::Secs => value
            .parse::<f64>()
            .ok()
            .filter(|s| *s >= 0.0)
            .map(|s| format!("\"{s}s\"")),
        Kind::Str => Some(quote(value)),
        Kind::Mode => matches!(value, "session" | "transaction").then(|| quote(value)),
    }
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// Percent-encodes what a URL's user or path cannot hold as is.
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests;

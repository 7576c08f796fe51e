//! The demo's configurations: Sluice's (one database, transaction pooling) and the
//! tokio-postgres client's.

use std::fmt::Write as _;
use std::time::Duration;

use sluice_config::{Config, Upstream};

use super::{failed, Stop};
use crate::cli::DemoArgs;

/// Sluice's configuration for the demo: one database, transaction pooling, no warm
/// connections (so the server-connection count is the workload's alone).
pub(super) fn demo_config(args: &DemoArgs, upstream: &Upstream) -> Result<Config, Stop> {
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

/// `s` as a TOML basic string (quoted, escaped).
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
pub(super) fn pg_config(up: &Upstream) -> tokio_postgres::Config {
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

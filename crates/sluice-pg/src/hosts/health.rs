//! The periodic health check of a multi-host database: every `health_check_interval`,
//! each host is asked `pg_is_in_recovery()` and its replay lag over a connection of its
//! own (kept between checks, reopened after a failure), bounded by
//! `server_connect_timeout`. A host that cannot be reached or answer is banned for
//! `ban_time`; an `auto` host takes the role it reports, so a promoted replica becomes the
//! primary within one interval.

use std::sync::{Arc, Weak};
use std::time::Duration;

use sluice_config::{SslMode, Upstream};

use super::{CheckResult, HostSet};
use crate::upstream::{ServerConn, UpstreamSecret};

/// Whether the host is in recovery, and how far its replay is behind the WAL it received:
/// zero when caught up (so an idle primary does not make its replicas look late), else the
/// age of the last transaction replayed (or, with none replayed since it started, the
/// time since it started).
const CHECK_QUERY: &[u8] = b"SELECT pg_is_in_recovery(), CASE WHEN NOT pg_is_in_recovery() \
    OR pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 \
    ELSE EXTRACT(EPOCH FROM now() - COALESCE(pg_last_xact_replay_timestamp(), \
    pg_postmaster_start_time())) END";

/// How the check logs in: the database's upstream user (its host replaced per host).
pub(crate) struct CheckLogin {
    /// The upstream URL's user, password and database.
    pub upstream: Upstream,
    /// TLS towards the hosts, as the pools use it.
    pub tls: Option<tokio_rustls::TlsConnector>,
    /// The database's sslmode.
    pub sslmode: SslMode,
}

/// Starts checking `set`'s hosts until it is closed or dropped.
pub(crate) fn spawn(set: &Arc<HostSet>, login: CheckLogin) {
    let weak = Arc::downgrade(set);
    tokio::spawn(run(weak, login));
}

async fn run(set: Weak<HostSet>, login: CheckLogin) {
    let mut conns: Vec<Option<ServerConn>> = Vec::new();
    loop {
        let Some(hosts) = set.upgrade().filter(|s| !s.is_closed()) else {
            return;
        };
        conns.resize_with(hosts.hosts.len(), || None);
        let settings = hosts.settings();
        for (i, conn) in conns.iter_mut().enumerate() {
            let mut up = login.upstream.clone();
            up.host.clone_from(&hosts.hosts[i].config.host);
            up.port = hosts.hosts[i].config.port;
            let outcome = check(conn, &up, &login, settings.timeout).await;
            let ban = match outcome {
                Ok(result) => hosts.record(i, result),
                Err(why) => {
                    *conn = None;
                    Some(why)
                }
            };
            if let Some(why) = ban {
                let pools: Vec<_> = hosts.hosts[i].pools.read().values().cloned().collect();
                hosts.ban(i, &why, &pools);
            }
        }
        drop(hosts);
        tokio::time::sleep(settings.interval).await;
    }
}

/// One check of the host `up` names, over `conn` (opened first if need be).
async fn check(
    conn: &mut Option<ServerConn>,
    up: &Upstream,
    login: &CheckLogin,
    timeout: Duration,
) -> Result<CheckResult, String> {
    if conn.is_none() {
        let secret = UpstreamSecret::of(up);
        let opened = ServerConn::connect(up, &secret, timeout, login.tls.as_ref(), login.sslmode);
        *conn = Some(Box::pin(opened).await.map_err(|e| e.to_string())?);
    }
    let Some(server) = conn.as_mut() else {
        return Err("no connection".to_owned());
    };
    let row = tokio::time::timeout(timeout, server.query_first_row(CHECK_QUERY))
        .await
        .map_err(|_| format!("health check timed out after {timeout:?}"))?
        .map_err(|e| e.to_string())?
        .ok_or("health check returned no row")?;
    parse_row(&row).ok_or_else(|| "health check returned an unexpected row".to_owned())
}

/// `(in_recovery, lag seconds)` from the check's row.
fn parse_row(row: &[Option<Vec<u8>>]) -> Option<CheckResult> {
    let in_recovery = match row.first()?.as_deref()? {
        b"t" => true,
        b"f" => false,
        _ => return None,
    };
    let lag: f64 = std::str::from_utf8(row.get(1)?.as_deref()?)
        .ok()?
        .parse()
        .ok()?;
    Some(CheckResult {
        in_recovery,
        lag: Duration::try_from_secs_f64(lag.max(0.0)).ok()?,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rows_parse() {
        let row = |a: &str, b: &str| vec![Some(a.as_bytes().to_vec()), Some(b.as_bytes().to_vec())];
        assert_eq!(
            parse_row(&row("t", "2.5")),
            Some(CheckResult {
                in_recovery: true,
                lag: Duration::from_millis(2500)
            })
        );
        assert_eq!(parse_row(&row("f", "0")).unwrap().lag, Duration::ZERO);
        assert_eq!(parse_row(&row("x", "0")), None);
        assert_eq!(parse_row(&[Some(b"t".to_vec()), None]), None);
    }
}

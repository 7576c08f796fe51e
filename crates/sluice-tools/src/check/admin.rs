//! The admin listener's checks: `/health` and `/admin/pool-stats`.

use std::net::SocketAddr;
use std::time::Duration;

use sluice::health::http_get;

use super::report::Report;

/// GET /health: 200 with `"status":"ok"`.
pub(super) async fn check_health(report: &mut Report, admin: SocketAddr) {
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
pub(super) async fn check_pool_stats(
    report: &mut Report,
    admin: SocketAddr,
    token: Option<&str>,
    databases: &[&str],
) {
    let url = format!("http://{admin}/admin/pool-stats");
    match http_get(admin, "/admin/pool-stats", token, Duration::from_secs(5)).await {
        Ok((200, body)) => match serde_json::from_str::<serde_json::Value>(&body) {
            Ok(json) if json["pools"].is_array() => pools_cover(report, &url, &json, databases),
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

/// The pool-stats answer `json` (from `url`) has a pool for each of `databases`.
fn pools_cover(report: &mut Report, url: &str, json: &serde_json::Value, databases: &[&str]) {
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

/// `body` trimmed and cut to 300 characters, for a ✗ line.
fn shorten(body: &str) -> String {
    let body = body.trim();
    match body.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &body[..i]),
        None => body.to_owned(),
    }
}

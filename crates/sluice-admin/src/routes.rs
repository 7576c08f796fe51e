//! Request routing and handlers. [`handle`] is transport-independent so it can
//! be unit-tested without a socket.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use serde_json::json;
use sluice_stats::{ClientSnapshot, PoolSnapshot, Summary, PROMETHEUS_CONTENT_TYPE};

use crate::AdminState;

/// Response body type of every admin response.
pub type AdminBody = Full<Bytes>;

const JSON: &str = "application/json";

/// Body of `GET /admin/pool-stats`.
#[derive(Serialize)]
struct PoolStats {
    #[serde(flatten)]
    summary: Summary,
    clients: ClientSnapshot,
    pools: Vec<PoolSnapshot>,
    /// The MongoDB pool(s), apart so `pools` keeps meaning Postgres pools.
    mongo_pools: Vec<PoolSnapshot>,
}

/// Answers one admin request. The request body is never read, so any body
/// type works (tests pass `()`).
pub async fn handle<B>(state: &AdminState, req: Request<B>) -> Response<AdminBody> {
    let method = req.method().clone();
    let path = req.uri().path();
    tracing::debug!(%method, path, "admin request");

    if path.starts_with("/admin/") && !authorized(state, &req) {
        let mut resp = error(StatusCode::UNAUTHORIZED, "missing or invalid bearer token");
        resp.headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return resp;
    }

    let (allowed, allow_header) = match path {
        "/health" | "/metrics" | "/admin/pool-stats" => (Method::GET, "GET"),
        "/admin/reload" => (Method::POST, "POST"),
        _ => return error(StatusCode::NOT_FOUND, "not found"),
    };
    if method != allowed {
        let mut resp = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static(allow_header));
        return resp;
    }

    match path {
        "/health" => health(state),
        "/metrics" => metrics(state),
        "/admin/pool-stats" => pool_stats(state),
        _ => reload(state).await,
    }
}

fn health(state: &AdminState) -> Response<AdminBody> {
    let mut report = state.hooks.health();
    for (name, health) in state.registry.mongo_health() {
        report.pools.push(crate::PoolHealth {
            name,
            healthy: health.is_ok(),
            reason: health.err(),
        });
    }
    if report.is_healthy() {
        json_response(
            StatusCode::OK,
            &json!({"status": "ok", "pools": report.pools}),
        )
    } else {
        let failing = report.failing();
        tracing::debug!(failing = failing.len(), "health check failing");
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "unhealthy", "pools": failing}),
        )
    }
}

fn metrics(state: &AdminState) -> Response<AdminBody> {
    match state.metrics.render() {
        Ok(text) => response(StatusCode::OK, PROMETHEUS_CONTENT_TYPE, text.into()),
        Err(e) => {
            tracing::error!(error = %e, "rendering /metrics");
            error(StatusCode::INTERNAL_SERVER_ERROR, "metrics unavailable")
        }
    }
}

fn pool_stats(state: &AdminState) -> Response<AdminBody> {
    let pools = state.registry.pool_snapshots();
    let mongo_pools = state.registry.mongo_snapshots();
    let body = PoolStats {
        summary: Summary::from_snapshots(&pools).with_mongo(&mongo_pools),
        clients: state.registry.clients().snapshot(),
        pools,
        mongo_pools,
    };
    json_response(StatusCode::OK, &body)
}

async fn reload(state: &AdminState) -> Response<AdminBody> {
    match state.hooks.reload().await {
        Ok(plan) => {
            let detail = plan.to_string();
            tracing::info!(%detail, "configuration reloaded via admin API");
            json_response(
                StatusCode::OK,
                &json!({"status": "reloaded", "detail": detail}),
            )
        }
        Err(e) => {
            tracing::warn!(error = %e, "admin reload failed");
            json_response(
                StatusCode::BAD_REQUEST,
                &json!({"status": "error", "error": e.to_string()}),
            )
        }
    }
}

/// True when no token is configured or the request carries the right one.
fn authorized<B>(state: &AdminState, req: &Request<B>) -> bool {
    let Some(expected) = state.token.as_deref() else {
        return true;
    };
    let Some(value) = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((scheme, token)) = value.trim().split_once(' ') else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer")
        && constant_time_eq(token.trim().as_bytes(), expected.as_bytes())
}

/// Compares without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn error(status: StatusCode, message: &str) -> Response<AdminBody> {
    json_response(status, &json!({"status": "error", "error": message}))
}

fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response<AdminBody> {
    match serde_json::to_vec(body) {
        Ok(bytes) => response(status, JSON, bytes.into()),
        Err(e) => {
            tracing::error!(error = %e, "serializing admin response");
            response(
                StatusCode::INTERNAL_SERVER_ERROR,
                JSON,
                Bytes::from_static(br#"{"status":"error","error":"serialization failed"}"#),
            )
        }
    }
}

fn response(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<AdminBody> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

#[cfg(test)]
mod unit {
    use super::constant_time_eq;

    #[test]
    fn ct_eq() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(constant_time_eq(b"", b""));
    }
}

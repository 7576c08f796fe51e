//! Route tests (calling [`handle`] directly) and one real-socket test.

use std::sync::Arc;

use http_body_util::BodyExt;
use hyper::header::{ALLOW, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Request, StatusCode};
use parking_lot::Mutex;
use serde_json::Value;
use sluice_config::ConfigError;
use sluice_stats::{PoolCounters, PoolSnapshot, PoolSource, Registry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::*;

struct FakePool(&'static str, u64, u64);

impl PoolSource for FakePool {
    fn snapshot(&self) -> PoolSnapshot {
        let counters = PoolCounters::new();
        counters.inc_checkouts();
        PoolSnapshot {
            name: self.0.into(),
            database: self.0.into(),
            user: "app".into(),
            mode: "transaction".into(),
            max: self.1,
            active: self.2,
            ..Default::default()
        }
        .with_counters(counters.snapshot())
    }
}

#[derive(Default)]
struct FakeHooks {
    health: Mutex<HealthReport>,
    /// The next reload's answer: the changed keys, or the rejected key and why.
    reload: Mutex<Option<Result<ReloadPlan, (String, String)>>>,
}

impl AdminHooks for FakeHooks {
    fn health(&self) -> HealthReport {
        self.health.lock().clone()
    }

    fn reload(&self) -> ReloadFuture {
        let result = self
            .reload
            .lock()
            .clone()
            .unwrap_or_else(|| Ok(ReloadPlan::default()))
            .map_err(|(key, message)| ReloadError::Config(ConfigError::Invalid { key, message }));
        Box::pin(async move { result })
    }
}

fn setup(token: Option<&str>) -> (AdminState, Arc<FakeHooks>) {
    let registry = Arc::new(Registry::new());
    registry.register(Arc::new(FakePool("a", 10, 5)));
    registry.register(Arc::new(FakePool("b", 10, 1)));
    let hooks = Arc::new(FakeHooks::default());
    let state =
        AdminState::new(registry, token.map(str::to_owned), hooks.clone()).expect("admin state");
    (state, hooks)
}

async fn call(
    state: &AdminState,
    method: &str,
    path: &str,
    auth: Option<&str>,
) -> (StatusCode, hyper::HeaderMap, String) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(auth) = auth {
        req = req.header(AUTHORIZATION, auth);
    }
    let resp = handle(state, req.body(()).expect("request")).await;
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8(bytes.to_vec()).expect("utf8"),
    )
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).expect("json body")
}

#[tokio::test]
async fn health_ok_and_unhealthy() {
    let (state, hooks) = setup(Some("secret"));
    let (status, headers, body) = call(&state, "GET", "/health", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[CONTENT_TYPE], "application/json");
    assert_eq!(
        json(&body),
        serde_json::json!({"status": "ok", "pools": []})
    );

    *hooks.health.lock() = HealthReport {
        pools: vec![
            PoolHealth {
                name: "a".into(),
                healthy: true,
                reason: None,
            },
            PoolHealth {
                name: "b".into(),
                healthy: false,
                reason: Some("connection refused".into()),
            },
        ],
    };
    let (status, _, body) = call(&state, "GET", "/health", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let v = json(&body);
    assert_eq!(v["status"], "unhealthy");
    assert_eq!(v["pools"].as_array().map(Vec::len), Some(1));
    assert_eq!(v["pools"][0]["name"], "b");
    assert_eq!(v["pools"][0]["reason"], "connection refused");

    hooks.health.lock().pools[1].healthy = true;
    let (status, _, body) = call(&state, "GET", "/health?verbose=1", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)["pools"].as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn pool_stats_json() {
    let (state, _) = setup(Some("secret"));
    let (status, headers, body) =
        call(&state, "GET", "/admin/pool-stats", Some("Bearer secret")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[CONTENT_TYPE], "application/json");
    let v = json(&body);
    assert_eq!(v["postgres_max"], 20);
    assert_eq!(v["postgres_active"], 6);
    assert_eq!(v["postgres_idle"], 0);
    assert_eq!(v["postgres_waiting"], 0);
    assert_eq!(v["postgres_utilization"], 0.3);
    assert_eq!(v["pools"][0]["name"], "a");
    assert_eq!(v["pools"][0]["mode"], "transaction");
    assert_eq!(v["pools"][1]["counters"]["checkouts_total"], 1);
    assert_eq!(v["clients"]["active"], 0);
}

#[tokio::test]
async fn metrics_text() {
    let (state, _) = setup(None);
    let (status, headers, body) = call(&state, "GET", "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[CONTENT_TYPE], sluice_stats::PROMETHEUS_CONTENT_TYPE);
    assert!(body.contains("# TYPE sluice_pool_wait_seconds histogram\n"));
    assert!(
        body.contains("sluice_pool_max_connections{database=\"a\",user=\"app\",pool=\"a\"} 10\n")
    );
    assert!(body.contains("process_open_fds "));
    // Process metrics come from the `prometheus` crate's collector, which also
    // reports the fd limit and thread count.
    #[cfg(target_os = "linux")]
    for family in ["process_max_fds", "process_threads"] {
        assert!(
            body.contains(&format!("# TYPE {family} gauge\n")),
            "{family}"
        );
    }
}

#[tokio::test]
async fn reload_success_and_failure() {
    let (state, hooks) = setup(None);
    *hooks.reload.lock() = Some(Ok(ReloadPlan {
        applied: vec!["postgres.pool_size"],
        restart: vec![],
    }));
    let (status, _, body) = call(&state, "POST", "/admin/reload", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        json(&body),
        serde_json::json!({"status": "reloaded", "detail": "applied: postgres.pool_size; needs restart: none"})
    );

    *hooks.reload.lock() = Some(Err(("bad config".into(), "line 3".into())));
    let (status, _, body) = call(&state, "POST", "/admin/reload", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        json(&body),
        serde_json::json!({"status": "error", "error": "bad config: line 3"})
    );
}

#[tokio::test]
async fn bearer_token_enforced_on_admin_only() {
    let (state, _) = setup(Some("secret"));
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Basic secret"),
        Some("secret"),
        Some("Bearer secre"),
    ] {
        for (method, path) in [
            ("GET", "/admin/pool-stats"),
            ("POST", "/admin/reload"),
            ("GET", "/admin/nope"),
        ] {
            let (status, headers, body) = call(&state, method, path, auth).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path} {auth:?}");
            assert_eq!(headers[WWW_AUTHENTICATE], "Bearer");
            assert_eq!(json(&body)["status"], "error");
        }
    }
    for auth in ["Bearer secret", "bearer secret", "BEARER  secret "] {
        let (status, _, _) = call(&state, "POST", "/admin/reload", Some(auth)).await;
        assert_eq!(status, StatusCode::OK, "{auth:?}");
    }
    // Public routes never need the token.
    assert_eq!(
        call(&state, "GET", "/metrics", None).await.0,
        StatusCode::OK
    );
    assert_eq!(call(&state, "GET", "/health", None).await.0, StatusCode::OK);
}

#[tokio::test]
async fn not_found_and_method_not_allowed() {
    let (state, _) = setup(Some("secret"));
    let auth = Some("Bearer secret");
    for path in ["/", "/nope", "/health/", "/adminx"] {
        assert_eq!(
            call(&state, "GET", path, None).await.0,
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
    assert_eq!(
        call(&state, "GET", "/admin/nope", auth).await.0,
        StatusCode::NOT_FOUND
    );

    for (method, path, allow) in [
        ("POST", "/health", "GET"),
        ("DELETE", "/metrics", "GET"),
        ("POST", "/admin/pool-stats", "GET"),
        ("GET", "/admin/reload", "POST"),
    ] {
        let (status, headers, _) = call(&state, method, path, auth).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert_eq!(headers[ALLOW], allow);
    }
}

#[tokio::test]
async fn real_socket_roundtrip() {
    let (state, _) = setup(Some("secret"));
    let server = AdminServer::bind("127.0.0.1:0".parse().expect("addr"), state)
        .await
        .expect("bind");
    let addr = server.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server.run(shutdown.clone()));

    let raw = async |request: &str| -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut out = String::new();
        stream.read_to_string(&mut out).await.expect("read");
        out
    };
    let resp = raw("GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
    assert!(
        resp.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{resp}"
    );
    assert!(
        resp.ends_with(r#"{"pools":[],"status":"ok"}"#)
            || resp.ends_with(r#"{"status":"ok","pools":[]}"#),
        "{resp}"
    );

    let resp = raw(
        "POST /admin/reload HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer secret\r\n\
         Content-Length: 2\r\nConnection: close\r\n\r\n{}",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
    assert!(resp.contains("\"reloaded\""), "{resp}");

    let resp =
        raw("GET /admin/pool-stats HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{resp}");

    shutdown.cancel();
    tokio::time::timeout(std::time::Duration::from_secs(5), task)
        .await
        .expect("server stops on shutdown")
        .expect("server task");
}

//! The operator files under `deploy/` (Prometheus alerting rules, Grafana dashboard) parse,
//! and every metric, label and label value their queries use is one the real program
//! exports on GET /metrics. The alert thresholds are checked with `promtool test rules`
//! on series that carry the label sets Sluice really exports. The Kubernetes manifests,
//! the Dockerfile and the systemd unit use the ports, paths, commands and configuration
//! the program really serves and accepts.
#![allow(clippy::unwrap_used, clippy::vec_init_then_push)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::sluice_for;
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;
use sluice_tests::mongo::{shared_mongo, MongoSluiceBuilder};
use sluice_tests::{scalar, shared_cluster, PoolMode, APP_PASSWORD, APP_USER};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn alerts_path() -> PathBuf {
    deploy_dir().join("prometheus/alerts.yml")
}

fn dashboard_path() -> PathBuf {
    deploy_dir().join("grafana/sluice.json")
}

/// Every regular file under `dir`, recursively, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("read {}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Every document of a (possibly multi-document) YAML file.
fn load_yaml_docs(path: &Path) -> Vec<Yaml> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line.trim_end() == "---" {
            docs.push(String::new());
        } else {
            let doc = docs.last_mut().unwrap();
            doc.push_str(line);
            doc.push('\n');
        }
    }
    docs.iter()
        .map(|d| {
            serde_yaml::from_str(d)
                .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()))
        })
        .filter(|d: &Yaml| !d.is_null())
        .collect()
}

fn load_yaml(path: &Path) -> Yaml {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()))
}

fn load_json(path: &Path) -> Json {
    let text = std::fs::read_to_string(path).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// One alerting rule of alerts.yml.
struct Alert {
    name: String,
    expr: String,
    severity: String,
}

fn alerts() -> Vec<Alert> {
    let doc = load_yaml(&alerts_path());
    let groups = doc["groups"].as_sequence().expect("groups: a list");
    assert!(!groups.is_empty(), "no rule groups");
    let mut out = Vec::new();
    for g in groups {
        let group = g["name"].as_str().expect("group name");
        for r in g["rules"].as_sequence().expect("rules: a list") {
            let name = r["alert"]
                .as_str()
                .unwrap_or_else(|| panic!("{group}: a rule without `alert` (recording rules?)"));
            let expr = r["expr"].as_str().expect("expr").to_string();
            let severity = r["labels"]["severity"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: no severity label"))
                .to_string();
            assert!(
                ["warning", "critical"].contains(&severity.as_str()),
                "{name}: severity {severity}"
            );
            for a in ["summary", "description"] {
                let text = r["annotations"][a].as_str().unwrap_or_default();
                assert!(!text.trim().is_empty(), "{name}: no {a} annotation");
            }
            out.push(Alert {
                name: name.to_string(),
                expr,
                severity,
            });
        }
    }
    let names: BTreeSet<_> = out.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names.len(), out.len(), "duplicate alert names");
    out
}

/// The dashboard's PromQL: panel target expressions and templating queries.
fn dashboard_queries() -> Vec<String> {
    let dash = load_json(&dashboard_path());
    let schema = dash["schemaVersion"].as_i64().expect("schemaVersion");
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    assert!(dash["title"].as_str().is_some_and(|t| !t.is_empty()));
    let vars: Vec<&Json> = dash["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .collect();
    assert!(
        vars.iter()
            .any(|v| v["type"] == "datasource" && v["name"] == "datasource"),
        "a `datasource` templating variable"
    );
    let mut out = Vec::new();
    for v in &vars {
        if v["type"] == "query" {
            let q = v["query"]["query"]
                .as_str()
                .or_else(|| v["query"].as_str())
                .expect("query variable's query");
            out.push(q.to_string());
        }
    }
    let mut ids = BTreeSet::new();
    let mut titles = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        let id = p["id"].as_i64().expect("panel id");
        assert!(ids.insert(id), "duplicate panel id {id}");
        for k in ["x", "y", "w", "h"] {
            assert!(p["gridPos"][k].is_i64(), "panel {id}: gridPos.{k}");
        }
        if p["type"] == "row" {
            continue;
        }
        titles.push(p["title"].as_str().expect("panel title").to_string());
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "panel {id} datasource"
        );
        let targets = p["targets"].as_array().expect("panel targets");
        assert!(!targets.is_empty(), "panel {id} has no target");
        let mut refs = BTreeSet::new();
        for t in targets {
            assert!(refs.insert(t["refId"].as_str().expect("refId")), "refIds");
            out.push(t["expr"].as_str().expect("target expr").to_string());
        }
    }
    for want in [
        "Pool utilization",
        "Waiting clients",
        "Checkout wait p99",
        "Transactions/s",
        "Queries/s",
        "Errors by kind",
        "Server connections by state",
        "Client connections by state",
        "Resident memory",
        "Open file descriptors",
        "CPU",
    ] {
        assert!(
            titles.iter().any(|t| t == want),
            "no panel {want:?}: {titles:?}"
        );
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Metric names (`sluice_*`, `process_*`) in a PromQL expression, each with the text of
/// the `{...}` selector right after it (if any).
fn metric_refs(expr: &str) -> Vec<(String, Option<String>)> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if !is_ident(chars[i]) || (i > 0 && (is_ident(chars[i - 1]) || chars[i - 1] == '$')) {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && is_ident(chars[i]) {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        // Skip identifiers inside quoted label values.
        let quotes = chars[..start].iter().filter(|&&c| c == '"').count();
        if quotes % 2 == 1 {
            continue;
        }
        if word.starts_with("sluice_") || word.starts_with("process_") {
            let selector = (i < chars.len() && chars[i] == '{').then(|| {
                let end = chars[i..].iter().position(|&c| c == '}').unwrap() + i;
                chars[i + 1..end].iter().collect::<String>()
            });
            out.push((word, selector));
        }
    }
    out
}

/// Label names of `by (...)` / `without (...)` clauses and of `{{label}}` legends.
fn grouping_labels(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    for kw in ["by", "without"] {
        let mut rest = expr;
        while let Some(pos) = rest.find(kw) {
            let before_ok = rest[..pos].chars().last().is_none_or(|c| !is_ident(c));
            let after = rest[pos + kw.len()..].trim_start();
            if before_ok && after.starts_with('(') {
                let end = after.find(')').unwrap();
                out.extend(
                    after[1..end]
                        .split(',')
                        .map(|l| l.trim().to_string())
                        .filter(|l| !l.is_empty()),
                );
            }
            rest = &rest[pos + kw.len()..];
        }
    }
    out
}

/// A parsed `label op "value"` matcher.
fn matchers(selector: &str) -> Vec<(String, String, String)> {
    selector
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(|m| {
            let op_at = m.find(['=', '!']).unwrap_or_else(|| panic!("matcher {m}"));
            let label = m[..op_at].trim().to_string();
            let rest = &m[op_at..];
            let op_len =
                if rest.starts_with("=~") || rest.starts_with("!=") || rest.starts_with("!~") {
                    2
                } else {
                    1
                };
            let value = rest[op_len..].trim().trim_matches('"').to_string();
            (label, rest[..op_len].to_string(), value)
        })
        .collect()
}

/// What GET /metrics exported: family types, and for each family the label sets of its
/// series (histograms: without `le`).
struct Exported {
    types: BTreeMap<String, String>,
    series: BTreeMap<String, Vec<BTreeMap<String, String>>>,
    sample_names: BTreeSet<String>,
    /// The finite `le` bounds of `sluice_pool_wait_seconds_bucket`, as exported.
    wait_bounds: Vec<String>,
}

impl Exported {
    fn parse(text: &str) -> Exported {
        let mut types = BTreeMap::new();
        let mut sample_names = BTreeSet::new();
        let mut wait_bounds = Vec::new();
        for line in text.lines() {
            if line.starts_with("sluice_pool_wait_seconds_bucket{") {
                let le = line
                    .split("le=\"")
                    .nth(1)
                    .unwrap()
                    .split('"')
                    .next()
                    .unwrap();
                if le != "+Inf" && !wait_bounds.iter().any(|b| b == le) {
                    wait_bounds.push(le.to_string());
                }
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split_whitespace();
                let name = it.next().unwrap().to_string();
                let kind = it.next().unwrap().to_string();
                assert!(
                    types.insert(name.clone(), kind).is_none(),
                    "TYPE of {name} twice"
                );
            } else if !line.starts_with('#') && !line.trim().is_empty() {
                let end = line.find(['{', ' ']).unwrap();
                sample_names.insert(line[..end].to_string());
            }
        }
        let scrape =
            prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
        let mut series: BTreeMap<String, Vec<BTreeMap<String, String>>> = BTreeMap::new();
        for s in &scrape.samples {
            let family = family_of(&s.metric, &types);
            let labels = s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            series.entry(family).or_default().push(labels);
        }
        Exported {
            types,
            series,
            sample_names,
            wait_bounds,
        }
    }

    /// `self` plus the series of another scrape (of the same program).
    fn merge(mut self, other: Exported) -> Exported {
        for (name, kind) in other.types {
            let known = self
                .types
                .entry(name.clone())
                .or_insert_with(|| kind.clone());
            assert_eq!(*known, kind, "TYPE of {name}");
        }
        for (family, series) in other.series {
            self.series.entry(family).or_default().extend(series);
        }
        self.sample_names.extend(other.sample_names);
        self
    }

    fn all_label_names(&self) -> BTreeSet<String> {
        self.series
            .values()
            .flatten()
            .flat_map(|l| l.keys().cloned())
            .collect()
    }
}

/// The family a sample name belongs to (`x_bucket`, `x_sum`, `x_count` of histogram `x`).
fn family_of(name: &str, types: &BTreeMap<String, String>) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types.get(base).map(String::as_str) == Some("histogram") {
                return base.to_string();
            }
        }
    }
    name.to_string()
}

#[test]
fn every_deploy_file_parses() {
    let files = files_under(&deploy_dir());
    let mut yaml = 0;
    let mut json = 0;
    for f in &files {
        match f.extension().and_then(|e| e.to_str()) {
            Some("yml" | "yaml") => {
                assert!(!load_yaml_docs(f).is_empty(), "{}: empty", f.display());
                yaml += 1;
            }
            Some("json") => {
                load_json(f);
                json += 1;
            }
            _ => {}
        }
    }
    assert!(yaml >= 1 && json >= 1, "files under deploy/: {files:?}");
    // The structural checks run inside these.
    assert!(alerts().len() >= 6);
    assert!(dashboard_queries().len() >= 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referenced_metrics_are_exported() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("deploy").await;
    let sluice = sluice_for(cluster, &db, PoolMode::Transaction)
        .pool_size(3)
        .start();
    let client = sluice.connect(APP_USER, APP_PASSWORD, &db).await.unwrap();
    for i in 0..10 {
        assert_eq!(scalar(&client, &format!("select {i}")).await, i.to_string());
    }
    client
        .batch_execute("begin; select 1; select 2; commit")
        .await
        .unwrap();
    let (status, text) = sluice_tests::http(sluice.admin_port(), "GET", "/metrics", "").await;
    assert_eq!(status, 200, "{text}");
    // A MongoDB front end too, for the series of its pools (member and role labels).
    let mongo = MongoSluiceBuilder::new(shared_mongo().uri()).start();
    mongo
        .client()
        .await
        .database("deploy")
        .run_command(mongodb::bson::doc! {"count": "none"})
        .await
        .unwrap();
    let exported = Exported::parse(&text).merge(Exported::parse(&mongo.admin_get("/metrics")));

    let mut queries: Vec<(String, String)> = alerts()
        .into_iter()
        .map(|a| (format!("alert {}", a.name), a.expr))
        .collect();
    queries.extend(
        dashboard_queries()
            .into_iter()
            .map(|q| ("dashboard".to_string(), q)),
    );
    let known_labels = exported.all_label_names();
    let mut referenced = BTreeSet::new();
    for (origin, expr) in &queries {
        for (name, selector) in metric_refs(expr) {
            assert!(
                exported.sample_names.contains(&name),
                "{origin}: {name} is not exported\nexpr: {expr}"
            );
            let family = family_of(&name, &exported.types);
            assert!(
                exported.types.contains_key(&family),
                "{origin}: {name} has no TYPE"
            );
            if name != family {
                assert_eq!(exported.types[&family], "histogram", "{name}");
            }
            if name.ends_with("_total") {
                assert_eq!(exported.types[&family], "counter", "{origin}: {name}");
            }
            referenced.insert(family.clone());
            let series = &exported.series[&family];
            for (label, op, value) in matchers(selector.as_deref().unwrap_or_default()) {
                if label == "job" || label == "instance" {
                    continue; // added by Prometheus at scrape time
                }
                assert!(
                    series.iter().any(|s| s.contains_key(&label)),
                    "{origin}: {family} has no label {label}\nexpr: {expr}"
                );
                if op == "=" && !value.contains('$') {
                    assert!(
                        series
                            .iter()
                            .any(|s| s.get(&label).map(String::as_str) == Some(value.as_str())),
                        "{origin}: no {family} series with {label}={value:?}"
                    );
                }
            }
        }
        for label in grouping_labels(expr) {
            assert!(
                ["le", "job", "instance"].contains(&label.as_str())
                    || known_labels.contains(&label),
                "{origin}: groups by {label}, which no series has\nexpr: {expr}"
            );
        }
    }
    // The files cover the pool, client and process families.
    for family in [
        "sluice_pool_utilization",
        "sluice_pool_waiting_clients",
        "sluice_pool_wait_seconds",
        "sluice_pool_errors_total",
        "sluice_pool_transactions_total",
        "sluice_pool_queries_total",
        "sluice_pool_connections",
        "sluice_client_connections",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_cpu_seconds_total",
    ] {
        assert!(
            referenced.contains(family),
            "{family} is used by no alert or panel"
        );
    }
    // Dashboard legends only name labels that exist.
    let dash = std::fs::read_to_string(dashboard_path()).unwrap();
    for part in dash.split("{{").skip(1) {
        let label = part.split("}}").next().unwrap().trim();
        assert!(
            ["job", "instance"].contains(&label) || known_labels.contains(label),
            "legend uses unknown label {label}"
        );
    }

    promtool_alert_tests(&exported);
}

fn promtool() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("promtool"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool is missing (.ci/run installs Debian's prometheus package)"
        );
        eprintln!("promtool not found: skipping the alert unit tests");
    }
    found
}

/// A series selector with the exported label set `labels` plus job and instance.
fn series(name: &str, labels: &BTreeMap<String, String>, extra: &[(&str, &str)]) -> String {
    let mut all: BTreeMap<String, String> = labels.clone();
    all.insert("job".into(), "sluice".into());
    all.insert("instance".into(), "sluice:9930".into());
    for (k, v) in extra {
        all.insert((*k).into(), (*v).into());
    }
    let body: Vec<String> = all.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{name}{{{}}}", body.join(","))
}

fn yaml_str(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Runs `promtool test rules` on the alert rules (annotations stripped: their text is not
/// what is tested) with input series that carry the label sets Sluice exports.
fn promtool_alert_tests(exported: &Exported) {
    let Some(promtool) = promtool() else {
        return;
    };
    let pool = exported.series["sluice_pool_utilization"][0].clone();
    // A MongoDB pool's label set, as the primary's pool and as a secondary's.
    let primary = exported.series["sluice_pool_utilization"]
        .iter()
        .find(|s| s.get("database").map(String::as_str) == Some("mongo"))
        .expect("a MongoDB pool series")
        .clone();
    let mut member = primary.clone();
    for (k, v) in [
        ("pool", "mongo@db2:27017"),
        ("member", "db2:27017"),
        ("role", "secondary"),
    ] {
        member.insert(k.into(), v.into());
    }
    // A PostgreSQL pool on a host of a multi-host database, banned and not.
    let host = |role: &str| {
        let mut h = pool.clone();
        h.insert("member".into(), "db2:5432".into());
        h.insert("role".into(), role.into());
        h
    };
    let banned_labels = format!(
        "{{database: {}, instance: 'sluice:9930', member: 'db2:5432', severity: warning}}",
        yaml_str(&pool["database"])
    );
    // The bucket bounds come from the real scrape.
    let bounds = &exported.wait_bounds;
    assert!(bounds.len() > 5, "bucket bounds {bounds:?}");

    let alert_labels = |severity: &str, extra: &[(&str, &str)]| {
        let mut m = pool.clone();
        m.insert("instance".into(), "sluice:9930".into());
        m.insert("severity".into(), severity.into());
        for (k, v) in extra {
            m.insert((*k).into(), (*v).into());
        }
        let body: Vec<String> = m
            .iter()
            .map(|(k, v)| format!("{k}: {}", yaml_str(v)))
            .collect();
        format!("{{{}}}", body.join(", "))
    };
    let fires = |at: &str, alert: &str, labels: &str| {
        format!(
            "      - eval_time: {at}\n        alertname: {alert}\n        exp_alerts:\n          - exp_labels: {labels}\n"
        )
    };
    let silent = |at: &str, alert: &str| {
        format!("      - eval_time: {at}\n        alertname: {alert}\n        exp_alerts: []\n")
    };
    let test = |inputs: &[(String, &str)], checks: &[String]| {
        let mut s = String::from("  - interval: 1m\n    input_series:\n");
        for (sel, values) in inputs {
            s.push_str(&format!(
                "      - series: {}\n        values: '{values}'\n",
                yaml_str(sel)
            ));
        }
        s.push_str("    alert_rule_test:\n");
        for c in checks {
            s.push_str(c);
        }
        s
    };
    let util = || series("sluice_pool_utilization", &pool, &[]);
    // Checkouts that all wait between 0.5 s and 1 s: p99 ~ 0.995 s.
    let mut buckets: Vec<(String, &str)> = bounds
        .iter()
        .map(|le| {
            let v: f64 = le.parse().unwrap_or(f64::INFINITY);
            let values = if v >= 1.0 { "0+60x20" } else { "0x20" };
            (
                series("sluice_pool_wait_seconds_bucket", &pool, &[("le", le)]),
                values,
            )
        })
        .collect();
    buckets.push((
        series("sluice_pool_wait_seconds_bucket", &pool, &[("le", "+Inf")]),
        "0+60x20",
    ));
    let tests = vec![
        // 80% busy: warning after 5 minutes, never critical.
        test(
            &[(util(), "0.8x20")],
            &[
                silent("4m", "SluicePoolUtilizationHigh"),
                fires(
                    "6m",
                    "SluicePoolUtilizationHigh",
                    &alert_labels("warning", &[]),
                ),
                silent("10m", "SluicePoolUtilizationCritical"),
            ],
        ),
        // 95% busy: critical after 2 minutes.
        test(
            &[(util(), "0.95x20")],
            &[
                silent("1m", "SluicePoolUtilizationCritical"),
                fires(
                    "3m",
                    "SluicePoolUtilizationCritical",
                    &alert_labels("critical", &[]),
                ),
            ],
        ),
        // Six waiting clients for a minute.
        test(
            &[
                (series("sluice_pool_waiting_clients", &pool, &[]), "6x10"),
                (
                    series("sluice_pool_longest_wait_seconds", &pool, &[]),
                    "1x10",
                ),
            ],
            &[
                fires(
                    "2m",
                    "SluicePoolClientsWaiting",
                    &alert_labels("warning", &[]),
                ),
                silent("5m", "SluiceClientWaitingLong"),
            ],
        ),
        test(
            &[(series("sluice_pool_waiting_clients", &pool, &[]), "5x10")],
            &[silent("5m", "SluicePoolClientsWaiting")],
        ),
        test(
            &buckets,
            &[
                fires(
                    "8m",
                    "SluiceCheckoutWaitP99High",
                    &alert_labels("warning", &[]),
                ),
                silent("8m", "SluiceCheckoutWaitP99Critical"),
            ],
        ),
        // Connect errors: critical after 2 minutes; timeouts.
        test(
            &[
                (
                    series("sluice_pool_errors_total", &pool, &[("kind", "connect")]),
                    "0+1x20",
                ),
                (
                    series("sluice_pool_errors_total", &pool, &[("kind", "timeout")]),
                    "0+5x20",
                ),
                (
                    series("sluice_pool_errors_total", &pool, &[("kind", "auth")]),
                    "0x20",
                ),
            ],
            &[
                fires(
                    "5m",
                    "SluiceUpstreamConnectFailures",
                    &alert_labels("critical", &[]),
                ),
                fires("5m", "SluicePoolTimeouts", &alert_labels("critical", &[])),
                fires(
                    "10m",
                    "SluicePoolErrorsRising",
                    &alert_labels("warning", &[("kind", "timeout")]),
                ),
            ],
        ),
        // No errors: nothing fires.
        test(
            &[(
                series("sluice_pool_errors_total", &pool, &[("kind", "connect")]),
                "0x20",
            )],
            &[
                silent("10m", "SluiceUpstreamConnectFailures"),
                silent("10m", "SluicePoolErrorsRising"),
            ],
        ),
        // Broken server connections; a client queued for 10 s.
        test(
            &[
                (
                    series(
                        "sluice_pool_errors_total",
                        &pool,
                        &[("kind", "server_lost")],
                    ),
                    "0+3x20",
                ),
                (
                    series("sluice_pool_longest_wait_seconds", &pool, &[]),
                    "10x10",
                ),
            ],
            &[
                fires(
                    "5m",
                    "SluiceServerConnectionsLost",
                    &alert_labels("warning", &[]),
                ),
                fires(
                    "3m",
                    "SluiceClientWaitingLong",
                    &alert_labels("warning", &[]),
                ),
            ],
        ),
        // A secondary's pool that cannot connect: the member alert names it.
        test(
            &[(
                series("sluice_pool_errors_total", &member, &[("kind", "connect")]),
                "0+1x20",
            )],
            &[fires(
                "5m",
                "SluiceMongoMemberErrors",
                "{instance: 'sluice:9930', kind: connect, member: 'db2:27017', \
                 pool: 'mongo@db2:27017', role: secondary, severity: warning}",
            )],
        ),
        // Errors of the primary's pool are left to the other alerts.
        test(
            &[(
                series("sluice_pool_errors_total", &primary, &[("kind", "connect")]),
                "0+1x20",
            )],
            &[silent("10m", "SluiceMongoMemberErrors")],
        ),
        // A banned PostgreSQL host: named while the ban lasts; a replica in use is not.
        test(
            &[(
                series("sluice_pool_open_connections", &host("banned"), &[]),
                "1x10",
            )],
            &[fires("3m", "SluicePostgresHostBanned", &banned_labels)],
        ),
        test(
            &[(
                series("sluice_pool_open_connections", &host("replica"), &[]),
                "1x10",
            )],
            &[silent("5m", "SluicePostgresHostBanned")],
        ),
        // Nothing scraped at all.
        test(
            &[("other_metric".to_string(), "1x10")],
            &[fires(
                "6m",
                "SluiceMetricsAbsent",
                "{job: sluice, severity: warning}",
            )],
        ),
        // The scrape fails.
        test(
            &[(
                "up{job=\"sluice\",instance=\"sluice:9930\"}".to_string(),
                "1 1 0 0 0 0",
            )],
            &[
                silent("2m", "SluiceDown"),
                fires(
                    "4m",
                    "SluiceDown",
                    "{job: sluice, instance: 'sluice:9930', severity: critical}",
                ),
            ],
        ),
    ];

    let dir = tempfile::tempdir().unwrap();
    let mut rules = load_yaml(&alerts_path());
    for g in rules["groups"].as_sequence_mut().unwrap() {
        for r in g["rules"].as_sequence_mut().unwrap() {
            r.as_mapping_mut().unwrap().remove("annotations");
        }
    }
    std::fs::write(
        dir.path().join("rules.yml"),
        serde_yaml::to_string(&rules).unwrap(),
    )
    .unwrap();
    let test_file = format!(
        "rule_files: [rules.yml]\nevaluation_interval: 1m\ntests:\n{}",
        tests.concat()
    );
    std::fs::write(dir.path().join("tests.yml"), &test_file).unwrap();
    let out = Command::new(promtool)
        .args(["test", "rules", "tests.yml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool test rules failed:\n{}\n{}\ntests:\n{test_file}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Every alert is covered by at least one of these tests.
    for a in alerts() {
        assert!(
            test_file.contains(&format!("alertname: {}\n", a.name)),
            "alert {} ({}) has no promtool test",
            a.name,
            a.severity
        );
    }
}

// ---- Kubernetes, Dockerfile, systemd ------------------------------------------------

/// The ports the program serves by default or as the deploy files configure it.
const POSTGRES_PORT: i64 = 6432;
const MONGO_PORT: i64 = 27018;
const ADMIN_PORT: i64 = 9930;
/// Where the image and the unit put the binary and the configuration.
const BINARY: &str = "/usr/local/bin/sluice";
const CONFIG_PATH: &str = "/etc/sluice/proxy.toml";

/// Runs the program under test; returns (success, stdout + stderr).
fn run_sluice(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice-e2e"))
        .args(args)
        .env_remove("SLUICE_CONFIG")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A command line of the program (`[binary, args...]` with `binary` the installed path):
/// the program accepts those arguments (checked with `--help` appended, which parses them
/// first).
fn assert_command_accepted(origin: &str, argv: &[String]) {
    let args: Vec<&str> = argv.iter().map(String::as_str).collect();
    let (ok, text) = run_sluice(&[&args[..], &["--help"]].concat());
    assert!(
        ok,
        "{origin}: `sluice {}` is not accepted: {text}",
        args.join(" ")
    );
}

fn str_list(v: &Yaml) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .map(|x| x.as_str().expect("a string").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The port a probe or Service targets: a number, or the name of a container port.
fn resolve_port(port: &Yaml, container: &Yaml) -> i64 {
    if let Some(n) = port.as_i64() {
        return n;
    }
    let name = port.as_str().expect("port: number or name");
    container["ports"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|p| p["name"].as_str() == Some(name))
        .and_then(|p| p["containerPort"].as_i64())
        .unwrap_or_else(|| panic!("no container port named {name}"))
}

/// Loads the ConfigMap's proxy.toml as the program does, with `env` as the sluice
/// container's environment (`${NAME}` is expanded from it).
fn load_config(template: &str, env: &[(String, String)]) -> sluice::Config {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, template).unwrap();
    let lookup = |name: &str| env.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    sluice::Config::load(Some(&path), &lookup, &[])
        .unwrap_or_else(|e| panic!("proxy.toml is invalid: {e}\n{template}"))
}

#[test]
fn k8s_manifests_match_the_program() {
    let dir = deploy_dir().join("k8s");
    let mut checked = Vec::new();
    for file in ["sidecar.yaml", "standalone.yaml"] {
        let path = dir.join(file);
        let docs = load_yaml_docs(&path);
        let kind = |k: &str| -> Vec<&Yaml> { docs.iter().filter(|d| d["kind"] == k).collect() };
        let config_maps = kind("ConfigMap");
        let secrets = kind("Secret");
        let deployments = kind("Deployment");
        assert_eq!(config_maps.len(), 1, "{file}: one ConfigMap");
        assert_eq!(secrets.len(), 1, "{file}: one Secret");
        assert_eq!(deployments.len(), 1, "{file}: one Deployment");
        for d in &docs {
            assert!(d["apiVersion"].is_string(), "{file}: apiVersion");
            assert!(d["metadata"]["name"].is_string(), "{file}: metadata.name");
        }
        let template = config_maps[0]["data"]["proxy.toml"]
            .as_str()
            .expect("ConfigMap data proxy.toml");
        let secret = secrets[0]["stringData"]
            .as_mapping()
            .expect("Secret stringData");
        let secret_name = secrets[0]["metadata"]["name"].as_str().unwrap();
        let deployment = deployments[0];
        let pod = &deployment["spec"]["template"];
        assert_eq!(
            pod["metadata"]["labels"], deployment["spec"]["selector"]["matchLabels"],
            "{file}: selector matches the pod labels"
        );
        // Prometheus scrapes the admin listener's /metrics.
        let ann = &pod["metadata"]["annotations"];
        assert_eq!(ann["prometheus.io/scrape"], "true", "{file}");
        assert_eq!(
            ann["prometheus.io/port"],
            ADMIN_PORT.to_string().as_str(),
            "{file}"
        );
        assert_eq!(ann["prometheus.io/path"], "/metrics", "{file}");

        let containers = pod["spec"]["containers"].as_sequence().unwrap();
        let sluice = containers
            .iter()
            .find(|c| c["name"] == "sluice")
            .unwrap_or_else(|| panic!("{file}: no sluice container"));
        let args = str_list(&sluice["args"]);
        assert_eq!(args, ["run", "--config", CONFIG_PATH], "{file}: args");
        assert_command_accepted(file, &args);
        assert!(
            sluice["volumeMounts"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|m| m["mountPath"] == "/etc/sluice"),
            "{file}: the config volume is mounted at /etc/sluice"
        );
        for probe in ["readinessProbe", "livenessProbe"] {
            let get = &sluice[probe]["httpGet"];
            assert_eq!(get["path"], "/health", "{file}: {probe} path");
            assert_eq!(
                resolve_port(&get["port"], sluice),
                ADMIN_PORT,
                "{file}: {probe} port"
            );
        }
        // Secrets come in through the environment, from this file's Secret.
        let mut secret_env = Vec::new();
        for c in containers.iter().chain(
            pod["spec"]["initContainers"]
                .as_sequence()
                .into_iter()
                .flatten(),
        ) {
            for e in c["env"].as_sequence().into_iter().flatten() {
                let Some(r) = e["valueFrom"]["secretKeyRef"].as_mapping() else {
                    continue;
                };
                let r = Yaml::Mapping(r.clone());
                assert_eq!(r["name"], secret_name, "{file}: secretKeyRef name");
                let key = r["key"].as_str().unwrap();
                assert!(secret.contains_key(key), "{file}: Secret has no key {key}");
                secret_env.push((e["name"].as_str().unwrap().to_string(), key.to_string()));
            }
        }
        assert!(
            secret_env.iter().any(|(n, _)| n == "SLUICE_ADMIN_TOKEN"),
            "{file}: admin token from the Secret"
        );

        // No init container: the ConfigMap is the file, and Sluice expands the Secret's
        // values from the sluice container's environment.
        assert!(
            pod["spec"]["initContainers"].is_null(),
            "{file}: an init container is no longer needed"
        );
        let mut env: Vec<(String, String)> = Vec::new();
        for e in sluice["env"].as_sequence().unwrap() {
            let name = e["name"].as_str().unwrap().to_string();
            // A password that would need percent-encoding in a URL.
            env.push((name, "p@ss:w/rd%\"#".to_string()));
        }
        {
            let config = load_config(template, &env);
            assert_eq!(config.admin.listen.port() as i64, ADMIN_PORT, "{file}");
            assert_eq!(
                config.postgres.listen.port() as i64,
                POSTGRES_PORT,
                "{file}"
            );
            assert!(!config.postgres.databases.is_empty(), "{file}");
            for db in &config.postgres.databases {
                assert_eq!(
                    db.upstream.password.as_deref(),
                    Some("p@ss:w/rd%\"#"),
                    "{file}: the Secret's password reaches the upstream intact"
                );
            }
            if file == "sidecar.yaml" {
                assert!(config.postgres.listen.ip().is_loopback(), "{file}");
                // The application connects to the sidecar on localhost.
                let app = containers.iter().find(|c| c["name"] != "sluice").unwrap();
                let url = app["env"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .find(|e| e["name"] == "DATABASE_URL")
                    .and_then(|e| e["value"].as_str())
                    .expect("DATABASE_URL");
                let rest = url.split('@').nth(1).unwrap();
                let (hostport, db) = rest.split_once('/').unwrap();
                assert_eq!(hostport, format!("127.0.0.1:{POSTGRES_PORT}"), "{url}");
                assert!(config.database(db).is_some(), "{url}: no database {db}");
            } else {
                assert!(config.postgres.listen.ip().is_unspecified(), "{file}");
            }
            assert!(
                config.admin.listen.ip().is_unspecified(),
                "{file}: probes reach it"
            );
        }

        if file == "standalone.yaml" {
            let services = kind("Service");
            assert_eq!(services.len(), 1, "{file}: one Service");
            let svc = &services[0]["spec"];
            assert_eq!(
                svc["selector"], pod["metadata"]["labels"],
                "{file}: Service selects the pods"
            );
            let mut ports = BTreeSet::new();
            for p in svc["ports"].as_sequence().unwrap() {
                let target = resolve_port(&p["targetPort"], sluice);
                assert_eq!(p["port"].as_i64(), Some(target), "{file}: Service port");
                ports.insert(target);
            }
            assert_eq!(ports, BTreeSet::from([POSTGRES_PORT, ADMIN_PORT]), "{file}");
        }
        checked.push(file);
    }
    assert_eq!(checked.len(), 2);
}

#[test]
fn dockerfile_matches_the_program() {
    let text = std::fs::read_to_string(deploy_dir().join("Dockerfile")).unwrap();
    // Instructions, with line continuations joined.
    let joined = text.replace("\\\n", " ");
    let lines: Vec<&str> = joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let all = |kw: &str| -> Vec<&str> {
        lines
            .iter()
            .filter_map(|l| l.strip_prefix(kw).map(str::trim))
            .collect()
    };
    let froms = all("FROM ");
    assert_eq!(froms.len(), 2, "multi-stage: {froms:?}");
    assert!(
        froms[0].starts_with("rust:") && froms[0].ends_with(" AS builder"),
        "{froms:?}"
    );
    assert!(
        froms[1].starts_with("debian:") && froms[1].contains("slim"),
        "{froms:?}"
    );
    assert!(
        all("COPY ")
            .iter()
            .any(|c| c.starts_with("--from=builder") && c.ends_with(BINARY)),
        "the runtime stage gets {BINARY} from the builder"
    );
    let user = all("USER ");
    assert_eq!(user.len(), 1, "{user:?}");
    assert!(
        !["root", "0", "0:0"].contains(&user[0]),
        "non-root user: {user:?}"
    );
    let mut exposed: Vec<i64> = all("EXPOSE ")
        .iter()
        .flat_map(|e| e.split_whitespace().map(|p| p.parse::<i64>().unwrap()))
        .collect();
    exposed.sort();
    assert_eq!(exposed, [POSTGRES_PORT, ADMIN_PORT, MONGO_PORT], "EXPOSE");
    assert!(
        all("ENV ")
            .iter()
            .any(|e| e.contains(&format!("SLUICE_CONFIG={CONFIG_PATH}"))),
        "the image reads {CONFIG_PATH}"
    );

    // exec-form JSON arrays of HEALTHCHECK CMD, ENTRYPOINT and CMD.
    let json_array = |s: &str| -> Vec<String> {
        serde_json::from_str::<Vec<String>>(s.trim())
            .unwrap_or_else(|e| panic!("not an exec-form array: {s}: {e}"))
    };
    let health = all("HEALTHCHECK ");
    assert_eq!(health.len(), 1);
    let check = json_array(
        health[0]
            .split(" CMD ")
            .nth(1)
            .expect("HEALTHCHECK ... CMD"),
    );
    assert_eq!(check[0], BINARY);
    assert_eq!(check[1..], ["health"]);
    assert_command_accepted("HEALTHCHECK", &check[1..]);
    let entrypoint = json_array(all("ENTRYPOINT ")[0]);
    assert_eq!(entrypoint, [BINARY]);
    let cmd = json_array(all("CMD ")[0]);
    assert_command_accepted("CMD", &cmd);
}

/// `[Section]` → key → values (keys may repeat) of a systemd unit file.
fn parse_unit(text: &str) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut out: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        assert!(!section.is_empty(), "a key outside any section: {line}");
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not key=value: {line}"));
        out.entry(section.clone())
            .or_default()
            .entry(k.trim().to_string())
            .or_default()
            .push(v.trim().to_string());
    }
    out
}

#[test]
fn systemd_unit_is_hardened_and_runs_the_program() {
    let path = deploy_dir().join("systemd/sluice.service");
    let text = std::fs::read_to_string(&path).unwrap();
    let unit = parse_unit(&text);
    assert!(unit.contains_key("Unit") && unit.contains_key("Install"));
    let service = &unit["Service"];
    let one = |k: &str| -> &str {
        let v = service.get(k).unwrap_or_else(|| panic!("no {k}="));
        assert_eq!(v.len(), 1, "{k}= given {} times", v.len());
        &v[0]
    };
    assert_eq!(
        one("ExecStart"),
        format!("{BINARY} run --config {CONFIG_PATH}")
    );
    assert_eq!(one("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(one("Restart"), "on-failure");
    assert_eq!(one("DynamicUser"), "yes");
    assert_eq!(one("ProtectSystem"), "strict");
    assert_eq!(one("LimitNOFILE"), "65536");
    assert_eq!(one("NoNewPrivileges"), "yes");
    // A configuration error (exit 78) is not retried.
    assert_eq!(one("RestartPreventExitStatus"), "78");
    // Stopping waits longer than the default shutdown_timeout (30 s) of the drain.
    let stop = one("TimeoutStopSec")
        .trim_end_matches('s')
        .parse::<u64>()
        .unwrap();
    assert!(stop > 30, "TimeoutStopSec {stop}");
    let args: Vec<String> = one("ExecStart")
        .split_whitespace()
        .skip(1)
        .map(str::to_string)
        .collect();
    assert_command_accepted("ExecStart", &args);

    // systemd's own verdict, with ExecStart pointing at the program under test.
    let Some(analyze) = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .iter()
        .find(|p| Path::new(p).exists())
    else {
        eprintln!("systemd-analyze not found: skipping `systemd-analyze verify`");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("sluice.service");
    std::fs::write(
        &copy,
        text.replace(BINARY, env!("CARGO_BIN_EXE_sluice-e2e")),
    )
    .unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("sluice.service:"),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
}

//! Tests of loading, layering and validation through the public API.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use crate::*;

const EXAMPLE: &str = include_str!("../../../proxy.toml.example");

const MINIMAL: &str = r#"
[[postgres.databases]]
name = "app"
upstream = "postgres://app:secret@127.0.0.1/app"
"#;

fn env_from(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |key| map.get(key).cloned()
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn temp_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(text.as_bytes()).expect("write temp file");
    file
}

fn error_of(text: &str) -> String {
    Config::from_toml_str(text)
        .expect_err("config should be rejected")
        .to_string()
}

#[test]
fn defaults() {
    let config = Config::from_toml_str(MINIMAL).expect("minimal config");
    assert_eq!(config.general.shutdown_timeout, Duration::from_secs(30));
    let pg = &config.postgres;
    assert_eq!(pg.listen, "127.0.0.1:6432".parse().expect("addr"));
    assert_eq!(pg.pool_mode, PoolMode::Transaction);
    assert_eq!(pg.max_client_conn, 10_000);
    assert_eq!(pg.max_prepared_statements, 200);
    assert_eq!(pg.prepared_statement_registry_size, 10_000);
    assert_eq!(pg.pool_size, 15);
    assert_eq!(pg.min_pool_size, 5);
    assert_eq!(pg.pool_timeout, Duration::from_secs(30));
    assert_eq!(pg.server_reset_query, "DISCARD ALL");
    assert_eq!(pg.auth_type, AuthType::ScramSha256);
    assert_eq!(pg.server_connect_timeout, Duration::from_secs(5));
    assert!(pg.users.is_empty());
    let db = config.database("app").expect("app database");
    assert_eq!(db.pool_size(pg), 15);
    assert_eq!(db.min_pool_size(pg), 5);
    assert_eq!(db.pool_mode(pg), PoolMode::Transaction);
    assert!(config.database("other").is_none());

    let expected = PostgresConfig {
        databases: pg.databases.clone(),
        ..PostgresConfig::default()
    };
    assert_eq!(*pg, expected);
}

#[test]
fn example_file_parses() {
    let config = Config::from_toml_str(EXAMPLE).expect("proxy.toml.example must be valid");
    let pg = &config.postgres;
    assert_eq!(pg.databases.len(), 1);
    let db = &pg.databases[0];
    assert_eq!(db.name, "app");
    assert_eq!(db.upstream.user, "app");
    assert_eq!(db.upstream.password.as_deref(), Some("secret"));
    assert_eq!(db.pool_size(pg), 20);
    assert_eq!(pg.users.len(), 1);
    assert_eq!(pg.user("app").map(|u| u.password.as_str()), Some("secret"));
    // The example shows the defaults.
    let defaults = PostgresConfig {
        databases: pg.databases.clone(),
        users: pg.users.clone(),
        ..PostgresConfig::default()
    };
    assert_eq!(*pg, defaults);
}

#[test]
fn durations_and_overrides_in_file() {
    let config = Config::from_toml_str(&format!(
        r#"
[general]
shutdown_timeout = 10
[postgres]
pool_timeout = 0.5
server_connect_timeout = "2500ms"
pool_mode = "session"
auth_type = "md5"
server_reset_query = ""
[[postgres.databases]]
name = "a"
upstream = "postgresql://u:p@h/d"
pool_size = 3
pool_mode = "transaction"
{MINIMAL}"#
    ))
    .expect("valid");
    let pg = &config.postgres;
    assert_eq!(config.general.shutdown_timeout, Duration::from_secs(10));
    assert_eq!(pg.pool_timeout, Duration::from_millis(500));
    assert_eq!(pg.server_connect_timeout, Duration::from_millis(2500));
    assert_eq!(pg.auth_type, AuthType::Md5);
    assert_eq!(pg.server_reset_query, "");
    let a = config.database("a").expect("a");
    assert_eq!(a.pool_mode(pg), PoolMode::Transaction);
    // Inherited min_pool_size is capped at the database's pool size.
    assert_eq!(a.min_pool_size(pg), 3);
    let app = config.database("app").expect("app");
    assert_eq!(app.pool_mode(pg), PoolMode::Session);
}

#[test]
fn precedence_file_env_overrides() {
    let file = temp_file(&format!(
        "[postgres]\npool_size = 30\nmin_pool_size = 2\npool_timeout = \"10s\"\nlisten = \"0.0.0.0:7000\"\n{MINIMAL}"
    ));
    let env = env_from(&[
        ("POSTGRES_POOL_MAX_SIZE", "40"),
        ("POSTGRES_POOL_TIMEOUT", "0.5"),
        ("SLUICE_POOL_MODE", "session"),
        ("SLUICE_MAX_CLIENT_CONN", "50"),
        ("POSTGRES_POOL_MIN_SIZE", ""),
    ]);
    let overrides = [("postgres.pool_size", "50".to_owned())];
    let config = Config::load(Some(file.path()), &env, &overrides).expect("valid");
    let pg = &config.postgres;
    assert_eq!(pg.pool_size, 50, "override beats env beats file");
    assert_eq!(
        pg.pool_timeout,
        Duration::from_millis(500),
        "env beats file"
    );
    assert_eq!(pg.min_pool_size, 2, "empty env value is ignored");
    assert_eq!(pg.listen.port(), 7000, "file beats default");
    assert_eq!(pg.pool_mode, PoolMode::Session);
    assert_eq!(pg.max_client_conn, 50);

    let config = Config::load(Some(file.path()), &no_env, &[]).expect("valid");
    assert_eq!(config.postgres.pool_size, 30);
}

#[test]
fn every_override_key_applies() {
    let file = temp_file(MINIMAL);
    let overrides: Vec<(&str, String)> = vec![
        ("postgres.listen", "[::1]:7432".into()),
        ("postgres.pool_mode", "session".into()),
        ("postgres.pool_size", "8".into()),
        ("postgres.min_pool_size", "1".into()),
        ("postgres.pool_timeout", "2m".into()),
        ("postgres.max_client_conn", "100".into()),
        ("general.shutdown_timeout", "1h".into()),
        ("admin.listen", "127.0.0.1:9931".into()),
    ];
    assert_eq!(overrides.len(), OVERRIDE_KEYS.len());
    let config = Config::load(Some(file.path()), &no_env, &overrides).expect("valid");
    let pg = &config.postgres;
    assert_eq!(pg.listen, "[::1]:7432".parse().expect("addr"));
    assert_eq!(config.admin.listen, "127.0.0.1:9931".parse().expect("addr"));
    assert_eq!(pg.pool_mode, PoolMode::Session);
    assert_eq!((pg.pool_size, pg.min_pool_size), (8, 1));
    assert_eq!(pg.pool_timeout, Duration::from_secs(120));
    assert_eq!(pg.max_client_conn, 100);
    assert_eq!(config.general.shutdown_timeout, Duration::from_secs(3600));
}

#[test]
fn config_path_from_env_and_missing_file() {
    let file = temp_file(MINIMAL);
    let path = file.path().to_str().expect("utf-8 path").to_owned();
    let env = env_from(&[("SLUICE_CONFIG", &path)]);
    let config = Config::load(None, &env, &[]).expect("file from SLUICE_CONFIG");
    assert!(config.database("app").is_some());

    // No file at all: defaults only, which lack a database.
    let err = Config::load(None, &no_env, &[]).expect_err("no databases");
    assert_eq!(
        err.to_string(),
        "postgres.databases: at least one database is required"
    );

    let missing = std::path::Path::new("/nonexistent/sluice.toml");
    let err = Config::load(Some(missing), &no_env, &[]).expect_err("missing file");
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(
        err.to_string().contains("/nonexistent/sluice.toml"),
        "{err}"
    );
}

#[test]
fn default_min_pool_size_is_lowered_to_fit() {
    let env = env_from(&[("POSTGRES_POOL_MAX_SIZE", "2")]);
    let file = temp_file(MINIMAL);
    let config = Config::load(Some(file.path()), &env, &[]).expect("valid");
    assert_eq!(config.postgres.min_pool_size, 2);

    let env = env_from(&[
        ("POSTGRES_POOL_MAX_SIZE", "2"),
        ("POSTGRES_POOL_MIN_SIZE", "3"),
    ]);
    let err = Config::load(Some(file.path()), &env, &[]).expect_err("explicit min too big");
    assert_eq!(
        err.to_string(),
        "postgres.min_pool_size: must not exceed postgres.pool_size (got 3 > 2)"
    );
}

#[test]
fn env_and_override_errors_name_their_source() {
    let file = temp_file(MINIMAL);
    let load = |vars: &[(&str, &str)], overrides: &[(&str, String)]| {
        Config::load(Some(file.path()), &env_from(vars), overrides)
            .expect_err("invalid")
            .to_string()
    };
    assert_eq!(
        load(&[("POSTGRES_POOL_TIMEOUT", "abc")], &[]),
        "POSTGRES_POOL_TIMEOUT: not a duration: \"abc\" (use seconds like 30 or 30.0, or 500ms, 2m)"
    );
    assert!(load(&[("POSTGRES_POOL_TIMEOUT", "-1")], &[]).starts_with("POSTGRES_POOL_TIMEOUT: "));
    assert!(load(&[("POSTGRES_POOL_MAX_SIZE", "x")], &[]).starts_with("POSTGRES_POOL_MAX_SIZE: "));
    assert!(load(&[("POSTGRES_POOL_MIN_SIZE", "-1")], &[]).starts_with("POSTGRES_POOL_MIN_SIZE: "));
    assert!(load(&[("SLUICE_POOL_MODE", "statement")], &[]).starts_with("SLUICE_POOL_MODE: "));
    assert!(
        load(&[("SLUICE_POSTGRES_LISTEN", "nope")], &[]).starts_with("SLUICE_POSTGRES_LISTEN: ")
    );
    assert!(
        load(&[("SLUICE_MAX_CLIENT_CONN", "many")], &[]).starts_with("SLUICE_MAX_CLIENT_CONN: ")
    );
    assert!(load(&[], &[("postgres.pool_timeout", "soon".into())])
        .starts_with("postgres.pool_timeout: not a duration"));
    assert_eq!(
        load(&[("POSTGRES_POOL_TIMEOUT", "0")], &[]),
        "postgres.pool_timeout: must be greater than zero"
    );
    let err = load(&[], &[("postgres.auth_type", "trust".into())]);
    assert!(
        err.starts_with("unknown override key \"postgres.auth_type\""),
        "{err}"
    );
    assert!(err.contains("postgres.pool_size"), "{err}");
}

#[test]
fn file_errors_name_their_key() {
    let cases = [
        ("[postgres]\npool_size = 0\n", "postgres.pool_size: must be at least 1 (got 0)"),
        ("[postgres]\nmax_client_conn = 0\n", "postgres.max_client_conn: must be at least 1 (got 0)"),
        ("[postgres]\nprepared_statement_registry_size = 0\n", "postgres.prepared_statement_registry_size: must be at least 1 (got 0)"),
        ("[postgres]\nmin_pool_size = 20\n", "postgres.min_pool_size: must not exceed postgres.pool_size (got 20 > 15)"),
        ("[postgres]\npool_timeout = \"0s\"\n", "postgres.pool_timeout: must be greater than zero"),
        ("[postgres]\nserver_connect_timeout = 0\n", "postgres.server_connect_timeout: must be greater than zero"),
        ("[postgres]\npool_timeout = \"abc\"\n", "postgres.pool_timeout: not a duration: \"abc\" (use seconds like 30 or 30.0, or 500ms, 2m) (line 2)"),
        ("[postgres]\npool_timeout = -5\n", "postgres.pool_timeout: not a duration: -5 (must not be negative) (line 2)"),
        ("[postgres]\npool_timeout = nan\n", "postgres.pool_timeout: not a duration: NaN (must be a number) (line 2)"),
        ("[general]\nshutdown_timeout = true\n", "general.shutdown_timeout: expected a duration like \"30s\" or a number of seconds, found a boolean (line 2)"),
        ("[postgres]\nlisten = \"localhost\"\n", "postgres.listen: not a socket address: \"localhost\" (expected ip:port like 127.0.0.1:6432 or [::]:6432) (line 2)"),
    ];
    for (prefix, expected) in cases {
        assert_eq!(error_of(&format!("{prefix}{MINIMAL}")), expected);
    }
}

#[test]
fn database_and_user_rules() {
    let db = |name: &str, extra: &str| {
        format!("[[postgres.databases]]\nname = \"{name}\"\nupstream = \"postgres://u:p@h/d\"\n{extra}\n")
    };
    assert_eq!(
        error_of(&format!("{MINIMAL}{}", db("app", ""))),
        "postgres.databases[1].name: duplicate database name \"app\" (also postgres.databases[0])"
    );
    assert_eq!(
        error_of(&db("", "")),
        "postgres.databases[0].name: must not be empty"
    );
    for reserved in ["sluice", "pgbouncer"] {
        assert_eq!(
            error_of(&db(reserved, "")),
            format!("postgres.databases[0].name: \"{reserved}\" is reserved for the admin console")
        );
    }
    assert_eq!(
        error_of(&db("x", "pool_size = 0")),
        "postgres.databases[0].pool_size: must be at least 1 (got 0)"
    );
    assert_eq!(
        error_of(&db("x", "pool_size = 2\nmin_pool_size = 3")),
        "postgres.databases[0].min_pool_size: must not exceed the database's pool_size (got 3 > 2)"
    );
    let err = error_of(&format!(
        "{MINIMAL}[[postgres.databases]]\nname = \"b\"\nupstream = \"mysql://u:topsecret@h/d\"\n"
    ));
    assert!(
        err.starts_with("postgres.databases[1].upstream: unsupported scheme \"mysql\""),
        "{err}"
    );
    assert!(err.ends_with("(line 7)"), "{err}");
    assert!(!err.contains("topsecret"));

    let users = "[[postgres.users]]\nname = \"a\"\npassword = \"x\"\n[[postgres.users]]\nname = \"a\"\npassword = \"y\"\n";
    assert_eq!(
        error_of(&format!("{MINIMAL}{users}")),
        "postgres.users[1].name: duplicate user name \"a\" (also postgres.users[0])"
    );
    assert_eq!(
        error_of(&format!(
            "{MINIMAL}[[postgres.users]]\nname = \"a\"\npassword = \"\"\n"
        )),
        "postgres.users[0].password: must not be empty"
    );
}

#[test]
fn upstream_password_needed_without_users() {
    let no_password =
        "[[postgres.databases]]\nname = \"app\"\nupstream = \"postgres://app@h/app\"\n";
    let err = error_of(no_password);
    assert!(
        err.starts_with("postgres.databases[0].upstream: has no password"),
        "{err}"
    );
    let trusted = format!("[postgres]\nauth_type = \"trust\"\n{no_password}");
    assert_eq!(
        Config::from_toml_str(&trusted)
            .expect("trust")
            .postgres
            .auth_type,
        AuthType::Trust
    );
    let with_users = format!(
        "{no_password}[[postgres.users]]\nname = \"app\"\npassword = \"md5{}\"\n",
        "0".repeat(32)
    );
    assert!(Config::from_toml_str(&with_users).is_ok());
}

#[test]
fn schema_errors_come_from_toml() {
    let err = Config::from_toml_str(&format!("[postgres]\npool_sise = 3\n{MINIMAL}"))
        .expect_err("unknown key");
    assert!(matches!(err, ConfigError::Toml { .. }));
    let msg = err.to_string();
    assert!(msg.contains("pool_sise") && msg.contains("line 2"), "{msg}");

    let msg = error_of(&format!("[general]\nverbose = true\n{MINIMAL}"));
    assert!(msg.contains("unknown field `verbose`"), "{msg}");
    let msg = error_of(&format!("{MINIMAL}extra = 1\n"));
    assert!(msg.contains("unknown field `extra`"), "{msg}");
    let msg = error_of(&format!("[postgres]\npool_mode = \"statement\"\n{MINIMAL}"));
    assert!(msg.contains("statement") && msg.contains("line 2"), "{msg}");
    let msg = error_of("[postgres\n");
    assert!(
        msg.starts_with("config: TOML parse error at line 1"),
        "{msg}"
    );
    let msg = error_of("[[postgres.databases]]\nname = \"x\"\n");
    assert!(msg.contains("missing field `upstream`"), "{msg}");

    let file = temp_file("[postgres\n");
    let err = Config::load(Some(file.path()), &no_env, &[]).expect_err("syntax");
    assert!(
        err.to_string()
            .starts_with(&file.path().display().to_string()),
        "{err}"
    );
}

#[test]
fn debug_output_hides_secrets() {
    let config = Config::from_toml_str(EXAMPLE).expect("valid");
    let debug = format!("{config:?}");
    assert!(!debug.contains("secret"), "{debug}");
}

const MONGO_ONLY: &str =
    "[mongo]\nupstream = \"mongodb://u:p@127.0.0.1:27017/?authSource=admin\"\n";

#[test]
fn example_mongo_section_shows_the_defaults() {
    let config = Config::from_toml_str(EXAMPLE).expect("example");
    let mongo = config.mongo.expect("[mongo] in the example");
    assert_eq!(mongo.users.len(), 1);
    let expected = crate::MongoConfig {
        upstream: mongo.upstream.clone(),
        users: mongo.users.clone(),
        ..crate::MongoConfig::default()
    };
    assert_eq!(mongo, expected);
}

#[test]
fn mongo_only_configuration_and_env() {
    let config = Config::from_toml_str(MONGO_ONLY).expect("mongo alone is enough");
    assert!(config.postgres.databases.is_empty());
    assert_eq!(config.mongo.as_ref().map(|m| m.max_pool_size), Some(20));
    assert!(
        Config::from_toml_str("").is_err(),
        "still needs something to pool"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.toml");
    std::fs::write(&path, MONGO_ONLY).expect("write");
    let env = |var: &str| match var {
        "MONGO_MAX_POOL_SIZE" => Some("3".to_owned()),
        _ => None,
    };
    let config = Config::load(Some(&path), &env, &[]).expect("load");
    let mongo = config.mongo.expect("mongo");
    assert_eq!(mongo.max_pool_size, 3);
    assert_eq!(
        mongo.min_pool_size, 3,
        "default minimum capped at the maximum"
    );
    let env = |var: &str| match var {
        "MONGO_MAX_POOL_SIZE" => Some("3".to_owned()),
        "MONGO_MIN_POOL_SIZE" => Some("4".to_owned()),
        _ => None,
    };
    let err = Config::load(Some(&path), &env, &[]).expect_err("min > max");
    assert_eq!(err.key(), Some("mongo.min_pool_size"));
}

#[test]
fn mongo_validation() {
    let err = |text: &str| Config::from_toml_str(text).expect_err(text).to_string();
    assert!(err("[mongo]\nupstream = \"postgres://x\"\n")
        .starts_with("mongo.upstream: expected a MongoDB URI"));
    assert!(err(&format!("{MONGO_ONLY}listen = \"0.0.0.0:27018\"\n"))
        .starts_with("mongo.listen: 0.0.0.0:27018 is not a loopback address"));
    let with_user = format!(
        "{MONGO_ONLY}listen = \"0.0.0.0:27018\"\n[[mongo.users]]\nname = \"a\"\npassword = \"b\"\n"
    );
    assert!(Config::from_toml_str(&with_user).is_ok());
    assert!(err(&format!("{MONGO_ONLY}max_pool_size = 0\n")).starts_with("mongo.max_pool_size"));
    assert!(err(&format!("{MONGO_ONLY}pool_timeout = 0\n")).starts_with("mongo.pool_timeout"));
    assert!(err(&format!("{MONGO_ONLY}max_client_conn = 0\n")).starts_with("mongo.max_client_conn"));
    assert!(
        err(&format!("{MONGO_ONLY}client_idle_timeout = \"soon\"\n"))
            .starts_with("mongo.client_idle_timeout")
    );
}

#[test]
fn mongo_compressors_parse_in_order() {
    use crate::MongoCompressor::{Snappy, Zstd};
    let text = format!("{MONGO_ONLY}compressors = [\"zstd\", \"snappy\"]\n");
    let config = Config::from_toml_str(&text).expect("compressors");
    assert_eq!(config.mongo.expect("mongo").compressors, vec![Zstd, Snappy]);
    let bad = format!("{MONGO_ONLY}compressors = [\"lz4\"]\n");
    let err = Config::from_toml_str(&bad).expect_err("lz4").to_string();
    assert!(err.contains("lz4") && err.contains("zstd"), "{err}");
}

#[test]
fn mongo_tls_parses_and_validates() {
    let defaults = Config::from_toml_str(MONGO_ONLY).expect("defaults");
    let tls = defaults.mongo.expect("mongo").tls;
    assert_eq!(tls, crate::ClientTlsConfig::default());
    assert_eq!(tls.mode, crate::ClientTlsMode::Disable);

    let text = format!(
        "{MONGO_ONLY}[mongo.tls]\nmode = \"require\"\ncert_file = \"/c.pem\"\nkey_file = \"/k.pem\"\n"
    );
    let config = Config::from_toml_str(&text).expect("mongo tls");
    let tls = config.mongo.expect("mongo").tls;
    assert_eq!(tls.mode, crate::ClientTlsMode::Require);
    assert_eq!(
        tls.cert_file.as_deref(),
        Some(std::path::Path::new("/c.pem"))
    );
    assert_eq!(
        tls.key_file.as_deref(),
        Some(std::path::Path::new("/k.pem"))
    );
    assert_eq!(
        config.postgres.tls,
        crate::ClientTlsConfig::default(),
        "[mongo.tls] leaves [postgres.tls] alone"
    );

    let err = |text: &str| Config::from_toml_str(text).expect_err(text).to_string();
    let no_key = format!("{MONGO_ONLY}[mongo.tls]\nmode = \"allow\"\ncert_file = \"/c.pem\"\n");
    assert!(err(&no_key).starts_with("mongo.tls: mode \"allow\" or \"require\" needs"));
    assert!(err(&format!("{MONGO_ONLY}[mongo.tls]\nmode = \"prefer\"\n")).contains("prefer"));
    assert!(err(&format!("{MONGO_ONLY}[mongo.tls]\ncert = \"/c.pem\"\n")).contains("cert"));
}

#[test]
fn mongo_client_guards_parse() {
    let text = format!(
        "{MONGO_ONLY}max_client_conn = 7\nclient_login_timeout = \"2s\"\nclient_idle_timeout = 90\n"
    );
    let mongo = Config::from_toml_str(&text)
        .expect("guards")
        .mongo
        .expect("mongo");
    assert_eq!(mongo.max_client_conn, 7);
    assert_eq!(mongo.client_login_timeout, Duration::from_secs(2));
    assert_eq!(mongo.client_idle_timeout, Duration::from_secs(90));
    let defaults = Config::from_toml_str(MONGO_ONLY)
        .expect("defaults")
        .mongo
        .expect("mongo");
    assert_eq!(defaults.max_client_conn, 10_000);
    assert_eq!(defaults.client_login_timeout, Duration::from_secs(60));
    assert!(
        defaults.client_idle_timeout.is_zero(),
        "idle timeout off by default"
    );
}

#[test]
#[allow(clippy::unwrap_used)]
fn environment_expansion_and_secret_files() {
    let dir = std::env::temp_dir().join(format!("sluice-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pw = dir.join("pw");
    std::fs::write(&pw, "s3cr\"et\n").unwrap();
    let token = dir.join("token");
    std::fs::write(&token, "tok\n").unwrap();
    let file = dir.join("proxy.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[admin]
token_file = "{token}"
[postgres]
pool_size = ${{POOL:-9}}
[[postgres.databases]]
name = "app"
upstream = "postgres://app:${{DB_PASSWORD}}@${{DB_HOST:-localhost}}:5432/app"
[[postgres.users]]
name = "app"
password_file = "{pw}"
"#,
            token = token.display(),
            pw = pw.display()
        ),
    )
    .unwrap();
    let env = |name: &str| match name {
        "DB_PASSWORD" => Some("p@ss".to_owned()),
        _ => None,
    };
    let config = Config::load(Some(&file), &env, &[]).unwrap();
    assert_eq!(config.postgres.pool_size, 9);
    assert_eq!(config.postgres.users[0].password, "s3cr\"et");
    assert_eq!(config.admin.token.as_deref(), Some("tok"));
    let db = &config.postgres.databases[0];
    assert_eq!(db.upstream.host, "localhost");
    assert_eq!(db.upstream.password.as_deref(), Some("p@ss"));
    // A database's password may stand apart from its URL (no URL-encoding).
    let text = "[[postgres.databases]]\nname = \"a\"\nupstream = \"postgres://u@h/a\"\npassword = \"p@ss:w/rd%#\"\n";
    let c = Config::from_toml_str(text).unwrap();
    assert_eq!(
        c.postgres.databases[0].upstream.password.as_deref(),
        Some("p@ss:w/rd%#")
    );
    let both = text.replace("u@h", "u:x@h");
    assert!(Config::from_toml_str(&both).is_err());
    // An unset variable without a default is an error naming it.
    let e = Config::load(Some(&file), &|_: &str| None, &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("DB_PASSWORD is not set"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
#[allow(clippy::unwrap_used)]
fn pgbouncer_auth_file_adds_users() {
    let dir = std::env::temp_dir().join(format!("sluice-userlist-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let list = dir.join("userlist.txt");
    std::fs::write(
        &list,
        "; PgBouncer users\n\"bob\" \"md5d41d8cd98f00b204e9800998ecf8427e\"\n\"carol\" \"pw\"\n",
    )
    .unwrap();
    let text = format!(
        "[postgres]\nauth_file = \"{}\"\n[[postgres.users]]\nname = \"app\"\npassword = \"x\"\n\
         [[postgres.databases]]\nname = \"a\"\nupstream = \"postgres://u:p@h/a\"\n",
        list.display()
    );
    let c = Config::from_toml_str(&text).unwrap();
    let names: Vec<&str> = c.postgres.users.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["app", "bob", "carol"]);
    std::fs::write(&list, "\"app\" \"dup\"\n").unwrap();
    let e = Config::from_toml_str(&text).unwrap_err().to_string();
    assert!(
        e.contains("postgres.auth_file") && e.contains("also in"),
        "{e}"
    );
    std::fs::write(&list, "app secret\n").unwrap();
    let e = Config::from_toml_str(&text).unwrap_err().to_string();
    assert!(e.contains("line 1"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#![allow(clippy::unwrap_used)]

use super::*;
use crate::{Config, PoolMode};

/// A typical production file: two databases, transaction pooling, SCRAM, console users.
const TYPICAL: &str = r#"
;; pgbouncer.ini
[databases]
app = host=10.0.0.5 port=5433 dbname=app_prod user=app password='s3cret p@ss' pool_size=40 max_db_connections=50
reports = host=replica.internal dbname=reports user=reporter pool_mode=session
* = host=10.0.0.5

[pgbouncer]
listen_addr = *
listen_port = 6432
auth_type = scram-sha-256
auth_file = /etc/pgbouncer/userlist.txt
admin_users = postgres, ops
stats_users = grafana
pool_mode = transaction
max_client_conn = 5000
default_pool_size = 25
min_pool_size = 5
server_reset_query = DISCARD ALL
server_idle_timeout = 600
query_wait_timeout = 120
client_tls_sslmode = require
client_tls_cert_file = /etc/pgbouncer/server.crt
client_tls_key_file = /etc/pgbouncer/server.key
server_tls_sslmode = verify-full
server_tls_ca_file = /etc/ssl/ca.pem
logfile = /var/log/pgbouncer/pgbouncer.log
pidfile = /run/pgbouncer/pgbouncer.pid
max_db_connections = 100
auth_user = pgbouncer_auth
auth_query = SELECT usename, passwd FROM pgbouncer.get_auth($1)
query_timeout = 30
ignore_startup_parameters = extra_float_digits

[users]
ops = pool_mode=session
batch = pool_size=2 max_user_connections=4 max_user_client_connections=50 reserve_pool_size=1
"#;

#[test]
fn a_typical_file_maps_every_supported_key_and_names_the_rest() {
    let toml = import(TYPICAL, Some("/tmp/users.txt")).unwrap();
    for want in [
        "listen = \"0.0.0.0:6432\"",
        "auth_type = \"scram-sha-256\"",
        "auth_file = \"/tmp/users.txt\"",
        "admin_users = [\"postgres\", \"ops\"]",
        "pool_mode = \"transaction\"",
        "max_client_conn = 5000",
        "pool_size = 25",
        "server_idle_timeout = \"600s\"",
        "pool_timeout = \"120s\"",
        "max_db_connections = 100",
        "name = \"*\"\nupstream = \"postgres://10.0.0.5:5432/postgres\"",
        "auth_user = \"pgbouncer_auth\"",
        "auth_query = \"SELECT usename, passwd FROM pgbouncer.get_auth($1)\"",
        "query_timeout = \"30s\"",
        "[postgres.tls]",
        "mode = \"require\"",
        "upstream = \"postgres://app@10.0.0.5:5433/app_prod\"",
        "password = \"s3cret p@ss\"",
        "pool_size = 40\nmax_db_connections = 50",
        "upstream = \"postgres://reporter@replica.internal:5432/reports\"",
        "pool_mode = \"session\"",
        "sslmode = \"verify-full\"",
        "sslrootcert = \"/etc/ssl/ca.pem\"",
        "[[postgres.user_settings]]\nname = \"ops\"\npool_mode = \"session\"",
        "name = \"batch\"\npool_size = 2\nmax_user_connections = 4\nmax_user_client_connections = 50\n",
    ] {
        assert!(toml.contains(want), "missing {want:?} in:\n{toml}");
    }
    for skipped in [
        "#   stats_users = grafana",
        "#   logfile",
        "#   [users] batch reserve_pool_size (line 37): not supported",
    ] {
        assert!(toml.contains(skipped), "missing {skipped:?} in:\n{toml}");
    }
}

#[test]
fn the_output_is_a_valid_configuration() {
    // Without auth_file and TLS files (which must exist), the result loads as is.
    let ini = "[databases]\napp = host=127.0.0.1 user=app password=pw dbname=app\n\
               [pgbouncer]\nlisten_port = 7432\npool_mode = transaction\ndefault_pool_size = 3\n\
               min_pool_size = 1\nserver_lifetime = 1800.5\nauth_type = md5\n\
               [users]\napp = pool_mode=session pool_size=2\n";
    let toml = import(ini, None).unwrap();
    let config = Config::from_toml_str(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
    assert_eq!(config.postgres.listen.port(), 7432);
    assert_eq!(config.postgres.pool_size, 3);
    let db = config.database("app").unwrap();
    assert_eq!(db.upstream.password.as_deref(), Some("pw"));
    assert_eq!(config.postgres.server_lifetime.as_secs_f64(), 1800.5);
    assert_eq!(db.pool_mode_for(&config.postgres, "app"), PoolMode::Session);
    assert_eq!(db.pool_size_for(&config.postgres, "app"), 2);
    assert_eq!(db.pool_size_for(&config.postgres, "other"), 3);
}

#[test]
fn odd_inputs() {
    // A user name needing URL encoding, statement mode, an unknown key, no user=.
    let ini = "[databases]\nx = user=we@ird host=h\ny = host=h\n[pgbouncer]\npool_mode = statement\nfoo = 1\n";
    let toml = import(ini, None).unwrap();
    assert!(toml.contains("postgres://we%40ird@h:5432/x"), "{toml}");
    assert!(
        toml.contains("pool_mode = statement: not a value"),
        "{toml}"
    );
    assert!(toml.contains("foo = 1: not supported"), "{toml}");
    // No user=: each client logs in as itself.
    assert!(
        toml.contains("upstream = \"postgres://h:5432/y\""),
        "{toml}"
    );
    let e = import("key = 1\n", None).unwrap_err();
    assert_eq!(e.line, 1);
    assert!(import("[pgbouncer]\n%include other.ini\n", None).is_err());
    assert!(import("[databases]\nx = user='unterminated\n", None)
        .unwrap()
        .contains("unterminated quote"));
}

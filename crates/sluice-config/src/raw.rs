//! The file layer: the TOML schema as written, before it is merged over defaults.

use serde::Deserialize;
use toml::{Spanned, Value};

use crate::builder::Builder;
use crate::model::{AuthType, ClientTlsConfig, ClientTlsMode, MongoConfig, PoolMode};
use crate::source::Source;
use crate::ConfigError;

/// The whole file. Every section and key is optional; unknown keys are errors.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    general: RawGeneral,
    #[serde(default)]
    postgres: RawPostgres,
    #[serde(default)]
    admin: RawAdmin,
    mongo: Option<RawMongo>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMongo {
    listen: Option<Spanned<String>>,
    upstream: Spanned<String>,
    max_pool_size: Option<usize>,
    min_pool_size: Option<usize>,
    pool_timeout: Option<Spanned<Value>>,
    connect_timeout: Option<Spanned<Value>>,
    max_client_conn: Option<usize>,
    client_login_timeout: Option<Spanned<Value>>,
    client_idle_timeout: Option<Spanned<Value>>,
    compressors: Option<Vec<crate::MongoCompressor>>,
    #[serde(default)]
    tls: RawTls,
    #[serde(default)]
    users: Vec<RawUser>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    enabled: Option<bool>,
    listen: Option<Spanned<String>>,
    token: Option<String>,
    /// A file holding `token` (a mounted secret).
    token_file: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawGeneral {
    shutdown_timeout: Option<Spanned<Value>>,
    worker_threads: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPostgres {
    #[serde(default)]
    tls: RawTls,
    listen: Option<Spanned<String>>,
    pool_mode: Option<PoolMode>,
    max_client_conn: Option<usize>,
    max_db_client_connections: Option<usize>,
    max_user_client_connections: Option<usize>,
    max_db_connections: Option<usize>,
    max_user_connections: Option<usize>,
    pool_size: Option<usize>,
    min_pool_size: Option<usize>,
    pool_timeout: Option<Spanned<Value>>,
    server_reset_query: Option<String>,
    pin_session_state: Option<bool>,
    max_pinned_servers: Option<usize>,
    auth_type: Option<AuthType>,
    server_connect_timeout: Option<Spanned<Value>>,
    max_prepared_statements: Option<usize>,
    prepared_statement_registry_size: Option<usize>,
    max_packet_size: Option<usize>,
    query_wait_timeout: Option<Spanned<Value>>,
    client_login_timeout: Option<Spanned<Value>>,
    client_idle_timeout: Option<Spanned<Value>>,
    idle_transaction_timeout: Option<Spanned<Value>>,
    query_timeout: Option<Spanned<Value>>,
    server_check_query: Option<String>,
    reserve_pool_size: Option<usize>,
    reserve_pool_timeout: Option<Spanned<Value>>,
    server_check_delay: Option<Spanned<Value>>,
    transaction_timeout: Option<Spanned<Value>>,
    server_idle_timeout: Option<Spanned<Value>>,
    server_lifetime: Option<Spanned<Value>>,
    server_login_retry: Option<Spanned<Value>>,
    ban_time: Option<Spanned<Value>>,
    health_check_interval: Option<Spanned<Value>>,
    max_replica_lag: Option<Spanned<Value>>,
    admin_users: Option<Vec<String>>,
    #[serde(default)]
    databases: Vec<crate::raw_db::RawDatabase>,
    /// PgBouncer's userlist.txt, read for more users.
    auth_file: Option<String>,
    auth_user: Option<String>,
    auth_query: Option<String>,
    auth_cache_ttl: Option<Spanned<Value>>,
    #[serde(default)]
    users: Vec<RawUser>,
    #[serde(default)]
    user_settings: Vec<crate::raw_db::RawUserSettings>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTls {
    mode: Option<ClientTlsMode>,
    cert_file: Option<std::path::PathBuf>,
    key_file: Option<std::path::PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    password: Option<String>,
    /// A file holding `password` (a mounted secret).
    password_file: Option<String>,
}

impl RawTls {
    /// Overwrites the keys of a `tls` table (`[postgres.tls]`, `[mongo.tls]`) it sets.
    fn apply(self, tls: &mut ClientTlsConfig) {
        set(&mut tls.mode, self.mode);
        set(&mut tls.cert_file, self.cert_file.map(Some));
        set(&mut tls.key_file, self.key_file.map(Some));
    }
}

impl RawUser {
    fn into_parts(self) -> crate::secrets::UserEntry {
        crate::secrets::UserEntry {
            name: self.name,
            password: self.password,
            password_file: self.password_file,
        }
    }
}

/// Overwrites `slot` when the file gives a value.
fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *slot = value;
    }
}

/// Parses TOML text and applies every key it sets onto `builder`.
///
/// `origin` is the file path, or `None` for text given directly.
pub(crate) fn apply_toml(
    builder: &mut Builder,
    text: &str,
    origin: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    let expanded = crate::expand::expand(text, env)?;
    let text = expanded.as_str();
    let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Toml {
        origin: origin.unwrap_or("config").to_owned(),
        message: e.to_string().trim_end().to_owned(),
    })?;
    let source = Source { text, origin };
    if let Some(mongo) = raw.mongo {
        apply_mongo(builder, &source, mongo)?;
    }
    let admin = &mut builder.config.admin;
    set(&mut admin.enabled, raw.admin.enabled);
    source.set_listen(&mut admin.listen, "admin.listen", &raw.admin.listen)?;
    let token = crate::secrets::secret("admin.token_file", raw.admin.token, raw.admin.token_file)?;
    set(&mut admin.token, token.filter(|t| !t.is_empty()).map(Some));
    let general = &mut builder.config.general;
    set(&mut general.worker_threads, raw.general.worker_threads);
    let shutdown = &raw.general.shutdown_timeout;
    source.set_duration(
        &mut general.shutdown_timeout,
        "general.shutdown_timeout",
        shutdown,
    )?;
    apply_postgres(builder, &source, raw.postgres)
}

/// Applies the `[postgres]` section.
fn apply_postgres(
    builder: &mut Builder,
    source: &Source<'_>,
    raw: RawPostgres,
) -> Result<(), ConfigError> {
    if raw.min_pool_size.is_some() {
        builder.min_pool_size_explicit = true;
    }
    let pg = &mut builder.config.postgres;
    postgres_timeouts(pg, source, &raw)?;
    postgres_limits(pg, source, &raw)?;
    source.set_listen(&mut pg.listen, "postgres.listen", &raw.listen)?;
    set(&mut pg.pool_mode, raw.pool_mode);
    set(&mut pg.max_client_conn, raw.max_client_conn);
    set(
        &mut pg.max_db_client_connections,
        raw.max_db_client_connections,
    );
    set(
        &mut pg.max_user_client_connections,
        raw.max_user_client_connections,
    );
    set(&mut pg.max_db_connections, raw.max_db_connections);
    set(&mut pg.max_user_connections, raw.max_user_connections);
    set(&mut pg.pool_size, raw.pool_size);
    set(&mut pg.min_pool_size, raw.min_pool_size);
    set(&mut pg.server_reset_query, raw.server_reset_query);
    set(&mut pg.server_check_query, raw.server_check_query);
    set(&mut pg.reserve_pool_size, raw.reserve_pool_size);
    set(&mut pg.pin_session_state, raw.pin_session_state);
    set(&mut pg.max_pinned_servers, raw.max_pinned_servers.map(Some));
    set(&mut pg.admin_users, raw.admin_users);
    raw.tls.apply(&mut pg.tls);
    set(&mut pg.max_packet_size, raw.max_packet_size);
    set(&mut pg.max_prepared_statements, raw.max_prepared_statements);
    set(
        &mut pg.prepared_statement_registry_size,
        raw.prepared_statement_registry_size,
    );
    set(&mut pg.auth_type, raw.auth_type);
    set(&mut pg.auth_user, raw.auth_user.map(Some));
    set(&mut pg.auth_query, raw.auth_query);
    pg.databases = crate::raw_db::databases(source, raw.databases)?;
    pg.user_settings = crate::raw_db::user_settings(raw.user_settings);
    pg.users = crate::secrets::users(
        "postgres",
        raw.users.into_iter().map(RawUser::into_parts).collect(),
    )?;
    if let Some(path) = raw.auth_file {
        pg.users
            .extend(crate::secrets::auth_file_users(&path, &pg.users)?);
        pg.auth_file = Some(path.into());
    }
    Ok(())
}

/// Applies the `[postgres]` limits on clients' requests and transactions, and the
/// `auth_query` cache's lifetime.
fn postgres_limits(
    pg: &mut crate::PostgresConfig,
    source: &Source<'_>,
    raw: &RawPostgres,
) -> Result<(), ConfigError> {
    for (slot, key, value) in [
        (
            &mut pg.auth_cache_ttl,
            "postgres.auth_cache_ttl",
            &raw.auth_cache_ttl,
        ),
        (&mut pg.ban_time, "postgres.ban_time", &raw.ban_time),
        (
            &mut pg.health_check_interval,
            "postgres.health_check_interval",
            &raw.health_check_interval,
        ),
        (
            &mut pg.max_replica_lag,
            "postgres.max_replica_lag",
            &raw.max_replica_lag,
        ),
        (
            &mut pg.query_timeout,
            "postgres.query_timeout",
            &raw.query_timeout,
        ),
        (
            &mut pg.transaction_timeout,
            "postgres.transaction_timeout",
            &raw.transaction_timeout,
        ),
        (
            &mut pg.server_check_delay,
            "postgres.server_check_delay",
            &raw.server_check_delay,
        ),
        (
            &mut pg.reserve_pool_timeout,
            "postgres.reserve_pool_timeout",
            &raw.reserve_pool_timeout,
        ),
    ] {
        source.set_duration(slot, key, value)?;
    }
    Ok(())
}

/// Applies the `[postgres]` timeouts.
fn postgres_timeouts(
    pg: &mut crate::PostgresConfig,
    source: &Source<'_>,
    raw: &RawPostgres,
) -> Result<(), ConfigError> {
    source.set_duration(
        &mut pg.pool_timeout,
        "postgres.pool_timeout",
        &raw.pool_timeout,
    )?;
    // PgBouncer's name for pool_timeout.
    let key = "postgres.query_wait_timeout";
    source.set_duration(&mut pg.pool_timeout, key, &raw.query_wait_timeout)?;
    for (slot, key, value) in [
        (
            &mut pg.client_login_timeout,
            "postgres.client_login_timeout",
            &raw.client_login_timeout,
        ),
        (
            &mut pg.client_idle_timeout,
            "postgres.client_idle_timeout",
            &raw.client_idle_timeout,
        ),
        (
            &mut pg.idle_transaction_timeout,
            "postgres.idle_transaction_timeout",
            &raw.idle_transaction_timeout,
        ),
        (
            &mut pg.server_idle_timeout,
            "postgres.server_idle_timeout",
            &raw.server_idle_timeout,
        ),
        (
            &mut pg.server_lifetime,
            "postgres.server_lifetime",
            &raw.server_lifetime,
        ),
        (
            &mut pg.server_login_retry,
            "postgres.server_login_retry",
            &raw.server_login_retry,
        ),
        (
            &mut pg.server_connect_timeout,
            "postgres.server_connect_timeout",
            &raw.server_connect_timeout,
        ),
    ] {
        source.set_duration(slot, key, value)?;
    }
    Ok(())
}

/// Applies a `[mongo]` section (its presence turns the MongoDB listener on).
fn apply_mongo(
    builder: &mut Builder,
    source: &Source<'_>,
    raw: RawMongo,
) -> Result<(), ConfigError> {
    if raw.min_pool_size.is_some() {
        builder.mongo_min_pool_size_explicit = true;
    }
    let mongo = builder
        .config
        .mongo
        .get_or_insert_with(MongoConfig::default);
    source.set_listen(&mut mongo.listen, "mongo.listen", &raw.listen)?;
    let upstream = raw.upstream.get_ref().trim();
    if !(upstream.starts_with("mongodb://") || upstream.starts_with("mongodb+srv://")) {
        return Err(source.error(
            "mongo.upstream",
            raw.upstream.span().start,
            "expected a MongoDB URI (mongodb://... or mongodb+srv://...)",
        ));
    }
    mongo.upstream = upstream.to_owned();
    set(&mut mongo.max_pool_size, raw.max_pool_size);
    set(&mut mongo.min_pool_size, raw.min_pool_size);
    set(&mut mongo.max_client_conn, raw.max_client_conn);
    set(&mut mongo.compressors, raw.compressors);
    for (slot, key, value) in [
        (
            &mut mongo.pool_timeout,
            "mongo.pool_timeout",
            &raw.pool_timeout,
        ),
        (
            &mut mongo.connect_timeout,
            "mongo.connect_timeout",
            &raw.connect_timeout,
        ),
        (
            &mut mongo.client_login_timeout,
            "mongo.client_login_timeout",
            &raw.client_login_timeout,
        ),
        (
            &mut mongo.client_idle_timeout,
            "mongo.client_idle_timeout",
            &raw.client_idle_timeout,
        ),
    ] {
        source.set_duration(slot, key, value)?;
    }
    raw.tls.apply(&mut mongo.tls);
    mongo.users = crate::secrets::users(
        "mongo",
        raw.users.into_iter().map(RawUser::into_parts).collect(),
    )?;
    Ok(())
}

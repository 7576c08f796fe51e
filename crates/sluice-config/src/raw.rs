//! The file layer: the TOML schema as written, before it is merged over defaults.

use std::time::Duration;

use serde::Deserialize;
use toml::{Spanned, Value};

use crate::duration::{parse_duration, seconds_to_duration};
use crate::load::{parse_listen, Builder};
use crate::model::{
    AuthType, ClientTlsMode, DatabaseConfig, MongoConfig, PoolMode, SslMode, UserConfig,
};
use crate::upstream::Upstream;
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
    #[serde(default)]
    users: Vec<RawUser>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    enabled: Option<bool>,
    listen: Option<Spanned<String>>,
    token: Option<String>,
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
    pool_size: Option<usize>,
    min_pool_size: Option<usize>,
    pool_timeout: Option<Spanned<Value>>,
    server_reset_query: Option<String>,
    auth_type: Option<AuthType>,
    server_connect_timeout: Option<Spanned<Value>>,
    max_prepared_statements: Option<usize>,
    prepared_statement_registry_size: Option<usize>,
    max_packet_size: Option<usize>,
    query_wait_timeout: Option<Spanned<Value>>,
    client_login_timeout: Option<Spanned<Value>>,
    client_idle_timeout: Option<Spanned<Value>>,
    idle_transaction_timeout: Option<Spanned<Value>>,
    server_idle_timeout: Option<Spanned<Value>>,
    server_lifetime: Option<Spanned<Value>>,
    server_login_retry: Option<Spanned<Value>>,
    admin_users: Option<Vec<String>>,
    #[serde(default)]
    databases: Vec<RawDatabase>,
    #[serde(default)]
    users: Vec<RawUser>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    name: String,
    upstream: Spanned<String>,
    pool_size: Option<usize>,
    min_pool_size: Option<usize>,
    pool_mode: Option<PoolMode>,
    sslmode: Option<SslMode>,
    sslrootcert: Option<std::path::PathBuf>,
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
    password: String,
}

/// Where the TOML text came from, used to point error messages at a line.
struct Source<'a> {
    text: &'a str,
    origin: Option<&'a str>,
}

impl Source<'_> {
    /// Builds an error for `key` whose value starts at byte `offset`.
    fn error(&self, key: &str, offset: usize, message: impl std::fmt::Display) -> ConfigError {
        let line = self
            .text
            .get(..offset)
            .map_or(1, |before| before.matches('\n').count() + 1);
        let at = match self.origin {
            Some(origin) => format!("{origin}:{line}"),
            None => format!("line {line}"),
        };
        ConfigError::invalid(key, format!("{message} ({at})"))
    }

    fn duration(&self, key: &str, value: &Spanned<Value>) -> Result<Duration, ConfigError> {
        let result = match value.get_ref() {
            Value::String(text) => parse_duration(text).map_err(|e| e.to_string()),
            Value::Integer(secs) => u64::try_from(*secs)
                .map(Duration::from_secs)
                .map_err(|_| format!("not a duration: {secs} (must not be negative)")),
            Value::Float(secs) => {
                seconds_to_duration(*secs).map_err(|why| format!("not a duration: {secs} ({why})"))
            }
            other => Err(format!(
                "expected a duration like \"30s\" or a number of seconds, found a {}",
                other.type_str()
            )),
        };
        result.map_err(|message| self.error(key, value.span().start, message))
    }
}

/// Parses TOML text and applies every key it sets onto `builder`.
///
/// `origin` is the file path, or `None` for text given directly.
pub(crate) fn apply_toml(
    builder: &mut Builder,
    text: &str,
    origin: Option<&str>,
) -> Result<(), ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Toml {
        origin: origin.unwrap_or("config").to_owned(),
        message: e.to_string().trim_end().to_owned(),
    })?;
    let source = Source { text, origin };
    let RawConfig {
        general,
        postgres,
        admin,
        mongo,
    } = raw;
    if let Some(mongo) = mongo {
        apply_mongo(builder, &source, mongo)?;
    }
    let cfg_admin = &mut builder.config.admin;
    if let Some(enabled) = admin.enabled {
        cfg_admin.enabled = enabled;
    }
    if let Some(listen) = &admin.listen {
        cfg_admin.listen = parse_listen(listen.get_ref())
            .map_err(|m| source.error("admin.listen", listen.span().start, m))?;
    }
    if let Some(token) = admin.token.filter(|t| !t.is_empty()) {
        cfg_admin.token = Some(token);
    }

    if let Some(n) = general.worker_threads {
        builder.config.general.worker_threads = n;
    }
    if let Some(value) = &general.shutdown_timeout {
        builder.config.general.shutdown_timeout =
            source.duration("general.shutdown_timeout", value)?;
    }

    let pg = &mut builder.config.postgres;
    if let Some(listen) = &postgres.listen {
        pg.listen = parse_listen(listen.get_ref())
            .map_err(|m| source.error("postgres.listen", listen.span().start, m))?;
    }
    if let Some(mode) = postgres.pool_mode {
        pg.pool_mode = mode;
    }
    if let Some(max) = postgres.max_client_conn {
        pg.max_client_conn = max;
    }
    if let Some(size) = postgres.pool_size {
        pg.pool_size = size;
    }
    if let Some(min) = postgres.min_pool_size {
        pg.min_pool_size = min;
        builder.min_pool_size_explicit = true;
    }
    if let Some(value) = &postgres.pool_timeout {
        pg.pool_timeout = source.duration("postgres.pool_timeout", value)?;
    }
    if let Some(query) = postgres.server_reset_query {
        pg.server_reset_query = query;
    }
    if let Some(users) = postgres.admin_users {
        pg.admin_users = users;
    }
    if let Some(mode) = postgres.tls.mode {
        pg.tls.mode = mode;
    }
    if let Some(f) = postgres.tls.cert_file {
        pg.tls.cert_file = Some(f);
    }
    if let Some(f) = postgres.tls.key_file {
        pg.tls.key_file = Some(f);
    }
    if let Some(n) = postgres.max_packet_size {
        pg.max_packet_size = n;
    }
    // PgBouncer's name for pool_timeout.
    if let Some(value) = &postgres.query_wait_timeout {
        pg.pool_timeout = source.duration("postgres.query_wait_timeout", value)?;
    }
    if let Some(value) = &postgres.client_login_timeout {
        pg.client_login_timeout = source.duration("postgres.client_login_timeout", value)?;
    }
    if let Some(value) = &postgres.client_idle_timeout {
        pg.client_idle_timeout = source.duration("postgres.client_idle_timeout", value)?;
    }
    if let Some(value) = &postgres.idle_transaction_timeout {
        pg.idle_transaction_timeout =
            source.duration("postgres.idle_transaction_timeout", value)?;
    }
    if let Some(value) = &postgres.server_idle_timeout {
        pg.server_idle_timeout = source.duration("postgres.server_idle_timeout", value)?;
    }
    if let Some(value) = &postgres.server_lifetime {
        pg.server_lifetime = source.duration("postgres.server_lifetime", value)?;
    }
    if let Some(value) = &postgres.server_login_retry {
        pg.server_login_retry = source.duration("postgres.server_login_retry", value)?;
    }
    if let Some(n) = postgres.max_prepared_statements {
        pg.max_prepared_statements = n;
    }
    if let Some(n) = postgres.prepared_statement_registry_size {
        pg.prepared_statement_registry_size = n;
    }
    if let Some(auth) = postgres.auth_type {
        pg.auth_type = auth;
    }
    if let Some(value) = &postgres.server_connect_timeout {
        pg.server_connect_timeout = source.duration("postgres.server_connect_timeout", value)?;
    }

    pg.databases = postgres
        .databases
        .into_iter()
        .enumerate()
        .map(|(i, db)| {
            let upstream = Upstream::parse(db.upstream.get_ref()).map_err(|e| {
                let key = format!("postgres.databases[{i}].upstream");
                source.error(&key, db.upstream.span().start, e)
            })?;
            Ok(DatabaseConfig {
                name: db.name,
                upstream,
                pool_size: db.pool_size,
                min_pool_size: db.min_pool_size,
                pool_mode: db.pool_mode,
                sslmode: db.sslmode.unwrap_or_default(),
                sslrootcert: db.sslrootcert,
            })
        })
        .collect::<Result<_, ConfigError>>()?;
    pg.users = postgres
        .users
        .into_iter()
        .map(|user| UserConfig {
            name: user.name,
            password: user.password,
        })
        .collect();
    Ok(())
}

/// Applies a `[mongo]` section (its presence turns the MongoDB listener on).
fn apply_mongo(
    builder: &mut Builder,
    source: &Source<'_>,
    raw: RawMongo,
) -> Result<(), ConfigError> {
    let mongo = builder
        .config
        .mongo
        .get_or_insert_with(MongoConfig::default);
    if let Some(listen) = &raw.listen {
        mongo.listen = parse_listen(listen.get_ref())
            .map_err(|m| source.error("mongo.listen", listen.span().start, m))?;
    }
    let upstream = raw.upstream.get_ref().trim();
    if !(upstream.starts_with("mongodb://") || upstream.starts_with("mongodb+srv://")) {
        return Err(source.error(
            "mongo.upstream",
            raw.upstream.span().start,
            "expected a MongoDB URI (mongodb://... or mongodb+srv://...)",
        ));
    }
    mongo.upstream = upstream.to_owned();
    if let Some(n) = raw.max_pool_size {
        mongo.max_pool_size = n;
    }
    if let Some(n) = raw.min_pool_size {
        mongo.min_pool_size = n;
        builder.mongo_min_pool_size_explicit = true;
    }
    if let Some(value) = &raw.pool_timeout {
        mongo.pool_timeout = source.duration("mongo.pool_timeout", value)?;
    }
    if let Some(value) = &raw.connect_timeout {
        mongo.connect_timeout = source.duration("mongo.connect_timeout", value)?;
    }
    if let Some(n) = raw.max_client_conn {
        mongo.max_client_conn = n;
    }
    if let Some(value) = &raw.client_login_timeout {
        mongo.client_login_timeout = source.duration("mongo.client_login_timeout", value)?;
    }
    if let Some(value) = &raw.client_idle_timeout {
        mongo.client_idle_timeout = source.duration("mongo.client_idle_timeout", value)?;
    }
    mongo.users = raw
        .users
        .into_iter()
        .map(|user| UserConfig {
            name: user.name,
            password: user.password,
        })
        .collect();
    Ok(())
}

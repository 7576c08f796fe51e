//! Layering of defaults, file, environment and command-line overrides.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::duration::parse_duration;
use crate::{raw, Config, ConfigError};

/// Environment variable naming the configuration file when `--config` is not given.
pub const CONFIG_ENV: &str = "SLUICE_CONFIG";

/// Environment variables that override file settings, as (variable, dotted key).
/// Empty values are ignored.
pub const ENV_VARS: &[(&str, &str)] = &[
    ("SLUICE_POSTGRES_LISTEN", "postgres.listen"),
    ("SLUICE_POOL_MODE", "postgres.pool_mode"),
    ("SLUICE_MAX_CLIENT_CONN", "postgres.max_client_conn"),
    ("POSTGRES_POOL_MAX_SIZE", "postgres.pool_size"),
    ("POSTGRES_POOL_MIN_SIZE", "postgres.min_pool_size"),
    ("POSTGRES_POOL_TIMEOUT", "postgres.pool_timeout"),
    ("SLUICE_ADMIN_LISTEN", "admin.listen"),
    ("SLUICE_WORKER_THREADS", "general.worker_threads"),
    ("SLUICE_ADMIN_TOKEN", "admin.token"),
    ("MONGO_MAX_POOL_SIZE", "mongo.max_pool_size"),
    ("MONGO_MIN_POOL_SIZE", "mongo.min_pool_size"),
];

/// Keys accepted as command-line overrides by [`Config::load`].
pub const OVERRIDE_KEYS: &[&str] = &[
    "postgres.listen",
    "admin.listen",
    "postgres.pool_mode",
    "postgres.pool_size",
    "postgres.min_pool_size",
    "postgres.pool_timeout",
    "postgres.max_client_conn",
    "general.shutdown_timeout",
];

/// A configuration being assembled layer by layer.
pub(crate) struct Builder {
    pub(crate) config: Config,
    /// Whether any layer set `postgres.min_pool_size`; if not, the default is
    /// lowered to fit a smaller `pool_size` instead of failing validation.
    pub(crate) min_pool_size_explicit: bool,
    /// The same for `mongo.min_pool_size`.
    pub(crate) mongo_min_pool_size_explicit: bool,
}

impl Builder {
    pub(crate) fn new() -> Self {
        Self {
            config: Config::default(),
            min_pool_size_explicit: false,
            mongo_min_pool_size_explicit: false,
        }
    }

    /// Sets the dotted `key` from `raw` text; errors name `source` (an
    /// environment variable or override key). Returns `false` for keys that
    /// cannot be set this way.
    fn set(&mut self, key: &str, source: &str, raw: &str) -> Result<bool, ConfigError> {
        let invalid = |message: String| ConfigError::invalid(source, message);
        let pg = &mut self.config.postgres;
        match key {
            "postgres.listen" => pg.listen = parse_listen(raw).map_err(invalid)?,
            "admin.listen" => self.config.admin.listen = parse_listen(raw).map_err(invalid)?,
            "admin.token" => self.config.admin.token = Some(raw.to_owned()),
            "postgres.pool_mode" => pg.pool_mode = raw.parse().map_err(invalid)?,
            "postgres.max_client_conn" => pg.max_client_conn = parse_count(raw).map_err(invalid)?,
            "postgres.pool_size" => pg.pool_size = parse_count(raw).map_err(invalid)?,
            "postgres.min_pool_size" => {
                pg.min_pool_size = parse_count(raw).map_err(invalid)?;
                self.min_pool_size_explicit = true;
            }
            "postgres.pool_timeout" => {
                pg.pool_timeout = parse_duration(raw).map_err(|e| invalid(e.to_string()))?;
            }
            // The MongoDB variables size a `[mongo]` section; without one (no upstream to
            // pool) they are ignored: services often set them for their own client.
            "mongo.max_pool_size" | "mongo.min_pool_size" => {
                let n = parse_count(raw).map_err(invalid)?;
                if let Some(mongo) = self.config.mongo.as_mut() {
                    if key == "mongo.max_pool_size" {
                        mongo.max_pool_size = n;
                    } else {
                        mongo.min_pool_size = n;
                        self.mongo_min_pool_size_explicit = true;
                    }
                }
            }
            "general.worker_threads" => {
                self.config.general.worker_threads = raw
                    .trim()
                    .parse()
                    .map_err(|_| invalid(format!("not a thread count: {raw:?}")))?;
            }
            "general.shutdown_timeout" => {
                self.config.general.shutdown_timeout =
                    parse_duration(raw).map_err(|e| invalid(e.to_string()))?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Applies derived defaults and validates.
    pub(crate) fn finish(mut self) -> Result<Config, ConfigError> {
        let pg = &mut self.config.postgres;
        if !self.min_pool_size_explicit {
            pg.min_pool_size = pg.min_pool_size.min(pg.pool_size);
        }
        if let (Some(mongo), false) = (
            self.config.mongo.as_mut(),
            self.mongo_min_pool_size_explicit,
        ) {
            mongo.min_pool_size = mongo.min_pool_size.min(mongo.max_pool_size);
        }
        self.config.validate()?;
        Ok(self.config)
    }
}

/// Implementation of [`Config::load`].
pub(crate) fn load(
    file: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
    overrides: &[(&str, String)],
) -> Result<Config, ConfigError> {
    let mut builder = Builder::new();
    let path = match file {
        Some(path) => Some(path.to_path_buf()),
        None => env(CONFIG_ENV)
            .filter(|value| !value.trim().is_empty())
            .map(PathBuf::from),
    };
    if let Some(path) = path {
        let text = std::fs::read_to_string(&path).map_err(|error| ConfigError::Read {
            path: path.clone(),
            error,
        })?;
        raw::apply_toml(&mut builder, &text, Some(&path.display().to_string()))?;
    }
    for (var, key) in ENV_VARS {
        if let Some(value) = env(var).filter(|value| !value.trim().is_empty()) {
            builder.set(key, var, &value)?;
        }
    }
    for (key, value) in overrides {
        if !builder.set(key, key, value)? {
            return Err(ConfigError::UnknownOverride {
                key: (*key).to_owned(),
            });
        }
    }
    builder.finish()
}

/// Parses a listen address such as `127.0.0.1:6432` or `[::]:6432`.
pub(crate) fn parse_listen(raw: &str) -> Result<SocketAddr, String> {
    raw.trim().parse().map_err(|_| {
        format!("not a socket address: {raw:?} (expected ip:port like 127.0.0.1:6432 or [::]:6432)")
    })
}

/// Parses a non-negative integer count.
fn parse_count(raw: &str) -> Result<usize, String> {
    raw.trim()
        .parse()
        .map_err(|_| format!("not a non-negative integer: {raw:?}"))
}

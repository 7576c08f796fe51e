//! Layering of defaults, file, environment and command-line overrides.

use std::path::{Path, PathBuf};

use crate::builder::Builder;
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
        raw::apply_toml(&mut builder, &text, Some(&path.display().to_string()), env)?;
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
                expected: OVERRIDE_KEYS,
            });
        }
    }
    builder.finish()
}

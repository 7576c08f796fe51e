//! Configuration for Sluice, the PostgreSQL connection-pooling proxy.
//!
//! Settings are layered: built-in defaults < TOML file < environment
//! variables < command-line overrides, then validated. See
//! `proxy.toml.example` at the repository root for every key.

mod builder;
mod compression;
mod database;
mod duration;
mod error;
mod expand;
mod load;
mod model;
mod modes;
pub mod pgbouncer;
mod raw;
mod raw_db;
mod reload;
mod secrets;
mod source;
mod upstream;
mod userlist;
mod validate;
mod values;

#[cfg(test)]
mod reload_tests;
#[cfg(test)]
mod tests;

use std::path::Path;

pub use compression::MongoCompressor;
pub use duration::{parse_duration, InvalidDuration};
pub use error::ConfigError;
pub use load::{CONFIG_ENV, ENV_VARS, OVERRIDE_KEYS};
pub use model::{
    AdminConfig, AuthType, ClientTlsConfig, ClientTlsMode, DatabaseConfig, GeneralConfig,
    HostConfig, HostRole, MongoConfig, PoolMode, PostgresConfig, SslMode, UserConfig, UserSettings,
};
pub use reload::{diff, Apply, Key, ReloadError, ReloadPlan, KEYS, MONGO_SECTION};
pub use upstream::{Upstream, UpstreamUrlError, DEFAULT_PORT};
pub use validate::RESERVED_DATABASE_NAMES;

/// The complete proxy configuration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    /// Process-wide settings (`[general]`).
    pub general: GeneralConfig,
    /// PostgreSQL proxy settings (`[postgres]`).
    pub postgres: PostgresConfig,
    /// HTTP admin listener (`[admin]`).
    pub admin: AdminConfig,
    /// MongoDB proxy settings (`[mongo]`); `None` when the section is absent.
    pub mongo: Option<MongoConfig>,
}

impl Config {
    /// Loads with precedence built-in defaults < file < environment <
    /// command-line overrides, then validates.
    ///
    /// `file` is the explicit path (from `--config`); if `None`, the
    /// environment variable `SLUICE_CONFIG` (read via `env`) names it; if
    /// neither is set, no file is read. `env` looks up environment variables
    /// (see [`ENV_VARS`]). `overrides` are command-line flags as
    /// (key, raw value) with keys from [`OVERRIDE_KEYS`]; any other key is an
    /// error.
    pub fn load(
        file: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
        overrides: &[(&str, String)],
    ) -> Result<Config, ConfigError> {
        load::load(file, env, overrides)
    }

    /// Parses TOML text on its own (defaults < text) and validates; `${VAR}` in it is
    /// expanded from the process environment.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let mut builder = builder::Builder::new();
        raw::apply_toml(&mut builder, text, None, &|v| std::env::var(v).ok())?;
        builder.finish()
    }

    /// Checks value ranges and cross-field rules (called by
    /// [`load`](Self::load) and [`from_toml_str`](Self::from_toml_str)).
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate::validate(self)
    }

    /// Finds a database by the name clients ask for.
    pub fn database(&self, name: &str) -> Option<&DatabaseConfig> {
        self.postgres.database(name)
    }
}

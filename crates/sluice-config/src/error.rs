//! The error type for loading and validating configuration.

use std::path::PathBuf;

/// Why the configuration could not be loaded. Every message names the
/// offending file, key, environment variable or command-line override.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read config file {}: {error}", path.display())]
    Read {
        /// The file that was being read.
        path: PathBuf,
        /// The underlying I/O error.
        error: std::io::Error,
    },
    /// The configuration text is not valid TOML or does not match the schema
    /// (including unknown keys).
    #[error("{origin}: {message}")]
    Toml {
        /// Where the text came from: a file path or `"config"`.
        origin: String,
        /// toml's message, including line and column.
        message: String,
    },
    /// A value is invalid. `key` is a dotted key (`postgres.pool_size`), an
    /// environment variable name, or a command-line override key.
    #[error("{key}: {message}")]
    Invalid {
        /// The key, environment variable or override that has the bad value.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// A command-line override names a key that cannot be overridden.
    #[error("unknown override key {key:?} (expected one of: {})", expected.join(", "))]
    UnknownOverride {
        /// The key that was given.
        key: String,
        /// The keys that can be overridden.
        expected: &'static [&'static str],
    },
}

impl ConfigError {
    /// Builds an [`ConfigError::Invalid`] error.
    pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }

    /// The key, environment variable or override the error is about, if any.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Invalid { key, .. } | Self::UnknownOverride { key, .. } => Some(key),
            Self::Read { .. } | Self::Toml { .. } => None,
        }
    }
}

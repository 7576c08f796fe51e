//! The two choices that name a pool's behaviour: its mode and how clients authenticate.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

/// How long a server connection stays assigned to a client.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// A server connection is held for the whole client session.
    Session,
    /// A server connection is held only for the duration of a transaction.
    #[default]
    Transaction,
}

impl PoolMode {
    /// The spelling used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Session => "session",
            Self::Transaction => "transaction",
        }
    }
}

impl fmt::Display for PoolMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PoolMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "session" => Ok(Self::Session),
            "transaction" => Ok(Self::Transaction),
            _ => Err(format!(
                "unknown pool mode {s:?} (expected \"session\" or \"transaction\")"
            )),
        }
    }
}

/// How clients authenticate to the proxy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
pub enum AuthType {
    /// SCRAM-SHA-256 password authentication.
    #[default]
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// MD5 password authentication.
    #[serde(rename = "md5")]
    Md5,
    /// No authentication; every client is accepted.
    #[serde(rename = "trust")]
    Trust,
}

impl AuthType {
    /// The spelling used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ScramSha256 => "scram-sha-256",
            Self::Md5 => "md5",
            Self::Trust => "trust",
        }
    }
}

impl fmt::Display for AuthType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AuthType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scram-sha-256" => Ok(Self::ScramSha256),
            "md5" => Ok(Self::Md5),
            "trust" => Ok(Self::Trust),
            _ => Err(format!(
                "unknown auth type {s:?} (expected \"scram-sha-256\", \"md5\" or \"trust\")"
            )),
        }
    }
}

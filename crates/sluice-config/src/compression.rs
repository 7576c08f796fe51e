//! `[mongo] compressors`: the MongoDB wire compressors Sluice offers its upstream.

use std::fmt;

use serde::Deserialize;

/// A MongoDB wire-protocol compressor (OP_COMPRESSED), by its handshake name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MongoCompressor {
    /// Snappy: fast, moderate ratio.
    Snappy,
    /// zlib: slower, better ratio.
    Zlib,
    /// Zstandard: fast with a good ratio.
    Zstd,
}

impl MongoCompressor {
    /// The name in the file and in the MongoDB handshake.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Snappy => "snappy",
            Self::Zlib => "zlib",
            Self::Zstd => "zstd",
        }
    }
}

impl fmt::Display for MongoCompressor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

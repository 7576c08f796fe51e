//! Parsers for the values written as text (listen addresses, counts) that the file,
//! environment and override layers share. Durations are in `duration`.

use std::net::SocketAddr;

/// Parses a listen address such as `127.0.0.1:6432` or `[::]:6432`.
pub(crate) fn parse_listen(raw: &str) -> Result<SocketAddr, String> {
    raw.trim().parse().map_err(|_| {
        format!("not a socket address: {raw:?} (expected ip:port like 127.0.0.1:6432 or [::]:6432)")
    })
}

/// Parses a non-negative integer count.
pub(crate) fn parse_count(raw: &str) -> Result<usize, String> {
    raw.trim()
        .parse()
        .map_err(|_| format!("not a non-negative integer: {raw:?}"))
}

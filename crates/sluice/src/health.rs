//! `sluice health`: GET `/health` of the admin listener, exit 0 when it answers 200 (for
//! container HEALTHCHECKs and scripts) — and the small HTTP client it uses, which
//! `sluice-tools check` shares.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use sluice_config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cli::HealthArgs;

/// Runs `sluice health`.
pub(crate) async fn main(args: HealthArgs) -> ExitCode {
    let admin = match args.admin {
        Some(addr) => addr,
        None => match Config::load(args.config.as_deref(), &|k| std::env::var(k).ok(), &[]) {
            Ok(c) => c.admin.listen,
            Err(e) => {
                eprintln!("sluice health: configuration error ({e}); asking 127.0.0.1:9930");
                SocketAddr::from((Ipv4Addr::LOCALHOST, 9930))
            }
        },
    };
    let admin = loopback(admin);
    match http_get(
        admin,
        "/health",
        None,
        Duration::from_secs(args.timeout.max(1)),
    )
    .await
    {
        Ok((200, body)) => {
            println!("{}", body.trim());
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            eprintln!(
                "sluice health: http://{admin}/health answered {status}: {}",
                body.trim()
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("sluice health: http://{admin}/health: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `addr` with an unspecified IP (`0.0.0.0`, `::`) replaced by loopback: where to connect
/// to reach a listener bound there.
pub fn loopback(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port()))
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv6Addr::LOCALHOST, addr.port()))
        }
        _ => addr,
    }
}

/// A minimal HTTP/1.1 GET of `path` at `addr` (with an optional bearer token), bounded by
/// `limit`: (status, body).
pub async fn http_get(
    addr: SocketAddr,
    path: &str,
    bearer: Option<&str>,
    limit: Duration,
) -> Result<(u16, String), String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let auth = bearer
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: sluice\r\n{auth}Connection: close\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("sending the request: {e}"))?;
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .await
            .map_err(|e| format!("reading the answer: {e}"))?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| "not an HTTP answer".to_owned())?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| "not an HTTP answer".to_owned())?;
        Ok((status, body.to_owned()))
    };
    tokio::time::timeout(limit, exchange)
        .await
        .map_err(|_| format!("no answer within {limit:?}"))?
}

//! The SQL admin console: clients that connect to the virtual database `sluice` (alias
//! `pgbouncer`) as an admin user get PgBouncer's commands — `SHOW POOLS`, `SHOW STATS`,
//! `SHOW CLIENTS`, `SHOW SERVERS`, `SHOW DATABASES`, `SHOW USERS`, `SHOW LISTS`, `SHOW CONFIG`, `SHOW VERSION`,
//! `RELOAD`, `PAUSE [db]`, `RESUME [db]`, `SHUTDOWN` — with PgBouncer's column names where
//! Sluice has the same number, so scripts and pgbouncer_exporter keep working.
//!
//! [`command`] parses (sans-IO), [`tables`] builds result sets from the shared statistics,
//! and `serve` is the thin I/O loop (simple query protocol only, as in PgBouncer).

pub mod command;
mod hosts_table;
pub mod tables;

use std::sync::Arc;

use bytes::BytesMut;

use crate::client_io::{ClientIo, ClientIoError};
use crate::context::PgContext;
use crate::protocol::backend::{self, Severity};
use crate::protocol::{messages, tag};
use command::Command;

/// Longest console statement accepted.
const MAX_CONSOLE_FRAME: usize = 1 << 20;

/// Database names that reach the console instead of a pool (the config refuses them as
/// pool names).
pub use sluice_config::RESERVED_DATABASE_NAMES as CONSOLE_DATABASES;

/// How a console session ended without an I/O error.
pub(crate) enum Ended {
    /// The client sent Terminate or closed its socket.
    ClientLeft,
    /// Sluice is shutting down.
    Shutdown,
}

/// Serves console commands until the client leaves.
pub(crate) async fn serve(
    client: &mut ClientIo,
    ctx: &Arc<PgContext>,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<Ended, ClientIoError> {
    let mut out = BytesMut::new();
    backend::auth_ok(&mut out);
    backend::parameter_status(&mut out, "server_version", tables::VERSION.as_bytes());
    backend::parameter_status(&mut out, "client_encoding", b"UTF8");
    backend::parameter_status(&mut out, "server_encoding", b"UTF8");
    backend::parameter_status(&mut out, "DateStyle", b"ISO, MDY");
    backend::parameter_status(&mut out, "standard_conforming_strings", b"on");
    backend::ready_for_query(&mut out, b'I');
    client.write(&out).await?;
    loop {
        out.clear();
        let frame = tokio::select! {
            f = client.read_frame(MAX_CONSOLE_FRAME) => f?,
            _ = shutdown.cancelled() => return Ok(Ended::Shutdown),
        };
        let Some((tag, body)) = frame else {
            return Ok(Ended::ClientLeft);
        };
        match tag {
            tag::frontend::TERMINATE => return Ok(Ended::ClientLeft),
            tag::frontend::QUERY => {
                // Console commands are ASCII; other bytes only end up in an error message.
                let sql = String::from_utf8_lossy(messages::query_text(&body)?);
                // Each statement sees the latest reload (RELOAD; SHOW CONFIG in one session).
                let now = ctx.console_hooks.get().and_then(|h| h.current());
                let shutdown = run(&sql, now.as_ref().unwrap_or(ctx), &mut out).await;
                backend::ready_for_query(&mut out, b'I');
                client.write(&out).await?;
                if shutdown {
                    if let Some(h) = ctx.console_hooks.get() {
                        h.shutdown();
                    }
                }
            }
            _ => {
                backend::error_response(
                    &mut out,
                    Severity::Error,
                    "08P01",
                    "the admin console accepts simple queries only",
                );
                backend::ready_for_query(&mut out, b'I');
                client.write(&out).await?;
            }
        }
    }
}

/// Runs one console statement, appending its results to `out`. Returns true for SHUTDOWN.
async fn run(sql: &str, ctx: &Arc<PgContext>, out: &mut BytesMut) -> bool {
    let cmd = match command::parse(sql) {
        Ok(c) => c,
        Err(msg) => {
            backend::error_response(out, Severity::Error, "42601", &msg);
            return false;
        }
    };
    tracing::info!(command = ?cmd, "admin console");
    match cmd {
        Command::Empty => messages::write_empty(out, b'I'),
        Command::Show(what) => tables::show(what, ctx).encode(out),
        Command::Reload => match ctx.console_hooks.get().map(|h| h.reload()) {
            Some(Ok(plan)) => {
                backend::notice_response(out, &plan.to_string());
                messages::write_command_complete(out, "RELOAD");
            }
            Some(Err(e)) => backend::error_response(out, Severity::Error, "F0000", &e.to_string()),
            None => backend::error_response(out, Severity::Error, "0A000", "reload unavailable"),
        },
        Command::Pause(_) | Command::Resume(_) | Command::Kill(_) | Command::KillClient(_) => {
            control(cmd, ctx, out).await
        }
        Command::Shutdown => {
            messages::write_command_complete(out, "SHUTDOWN");
            return true;
        }
    }
    false
}

/// PAUSE, RESUME, KILL and KILL_CLIENT.
async fn control(cmd: Command, ctx: &PgContext, out: &mut BytesMut) {
    let db = match &cmd {
        Command::Pause(db) | Command::Resume(db) => db.clone(),
        Command::Kill(db) => Some(db.clone()),
        _ => None,
    };
    if !known(ctx, db.as_deref()) {
        let msg = format!("no such database: {}", db.unwrap_or_default());
        return backend::error_response(out, Severity::Error, "3D000", &msg);
    }
    match cmd {
        Command::Pause(db) => match pause(ctx, db.as_deref()).await {
            Ok(()) => messages::write_command_complete(out, "PAUSE"),
            Err(msg) => backend::error_response(out, Severity::Error, "55000", &msg),
        },
        Command::Resume(db) => {
            for (_, pool) in pools(ctx, db.as_deref()) {
                pool.resume();
            }
            messages::write_command_complete(out, "RESUME");
        }
        Command::Kill(db) => {
            // As PgBouncer: clients go, servers close, and the database stays paused
            // until RESUME.
            let killed = ctx.cancel.kill(|c, _| *c.database == *db);
            let paused = pause(ctx, Some(&db)).await;
            for (_, pool) in pools(ctx, Some(&db)) {
                pool.close_idle();
            }
            tracing::warn!(database = %db, clients = killed, "KILL");
            match paused {
                Ok(()) => messages::write_command_complete(out, "KILL"),
                Err(msg) => backend::error_response(out, Severity::Error, "55000", &msg),
            }
        }
        Command::KillClient(id) => match ctx.cancel.kill(|_, c| c == id) {
            0 => {
                let msg = format!("no client with id {id} (SHOW CLIENTS)");
                backend::error_response(out, Severity::Error, "42704", &msg);
            }
            _ => messages::write_command_complete(out, "KILL_CLIENT"),
        },
        _ => {}
    }
}

/// `PAUSE`: pauses the pools at once and waits for their checkouts to return, each at
/// most its `pool_timeout`. If one does not drain in time, every pool is resumed and the
/// error names the clients still holding a connection.
async fn pause(ctx: &PgContext, db: Option<&str>) -> Result<(), String> {
    let targets = pools(ctx, db);
    let results =
        futures_util::future::join_all(targets.iter().map(|(_, pool)| pool.pause())).await;
    let mut running = Vec::new();
    for ((_, pool), result) in targets.iter().zip(results) {
        if let Err(holders) = result {
            let who: Vec<String> = holders
                .iter()
                .map(|h| format!("{} ({})", h.addr, h.application_name))
                .collect();
            running.push(format!("{}: {}", pool.settings().name, who.join(", ")));
        }
    }
    if running.is_empty() {
        return Ok(());
    }
    for (_, pool) in &targets {
        pool.resume();
    }
    tracing::warn!(still_running = %running.join("; "), "PAUSE gave up; pools resumed");
    Err(format!(
        "PAUSE gave up after pool_timeout; still running: {}; the pools were resumed",
        running.join("; ")
    ))
}

fn known(ctx: &PgContext, db: Option<&str>) -> bool {
    db.is_none_or(|d| ctx.all_databases().iter().any(|(name, _)| name == d))
}

fn pools(ctx: &PgContext, db: Option<&str>) -> Vec<(String, crate::pool::PgPool)> {
    ctx.all_databases()
        .into_iter()
        .filter(|(name, _)| db.is_none_or(|d| d == name))
        .flat_map(|(name, d)| d.pools().into_iter().map(move |(_, p)| (name.clone(), p)))
        .collect()
}

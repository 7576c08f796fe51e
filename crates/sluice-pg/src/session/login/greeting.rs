//! What a client is told at login besides AuthenticationOk: the ParameterStatus values a
//! direct connection would report. A startup setting the client sent
//! (`client_encoding=euc-jp`, `DateStyle=iso`, `TimeZone=europe/rome`) is reported in
//! PostgreSQL's own form (`EUC_JP`, `ISO, MDY`, `Europe/Rome`): drivers read these values
//! (psycopg derives its time zone from `TimeZone`, pgJDBC checks `DateStyle`). The form is
//! learnt once per distinct value from a server of the pool, with `set_config(name, value,
//! true)` in a transaction that is rolled back; a value PostgreSQL refuses fails the login
//! with PostgreSQL's own error, as its startup does.

use std::sync::Arc;

use crate::pool::{ClientMeta, PgPool, PooledConn};
use crate::session::PgSessionError;
use crate::state::{set_config_call, ClientState};
use crate::upstream::{PgUpstreamError, ServerParams, UpstreamProtocolError};

/// The reported value of every parameter in `params` that the client set at startup
/// (parameter name as the server spells it, value). `held` is the session-mode client's own
/// server; otherwise a server is checked out briefly when a value is not known yet.
pub(crate) async fn reported_values(
    pool: &PgPool,
    who: &Arc<ClientMeta>,
    held: Option<&mut PooledConn>,
    state: &ClientState,
    params: &ServerParams,
) -> Result<Vec<(String, Vec<u8>)>, PgSessionError> {
    let mut known = Vec::new();
    let mut unknown: Vec<Unknown> = Vec::new();
    for (name, default) in params.iter() {
        let lower = name.to_ascii_lowercase();
        let Some(value) = state.startup.get(&lower) else {
            continue;
        };
        if value.as_slice() == default.as_bytes() {
            known.push((name.clone(), value.clone()));
            continue;
        }
        if lower == "application_name" {
            // Every client may have its own: no server round trip for it.
            known.push((name.clone(), clean_ascii(value)));
            continue;
        }
        match pool.reported_value(&lower, value) {
            Some(reported) => known.push((name.clone(), reported)),
            None => unknown.push((name.clone(), lower, value.clone())),
        }
    }
    if unknown.is_empty() {
        return Ok(known);
    }
    let row = learn(pool, who, held, &unknown).await?;
    let columns = match row {
        Ok(Some(columns)) if columns.len() == unknown.len() => columns,
        Ok(_) => {
            return Err(PgSessionError::ServerLost(PgUpstreamError::Protocol(
                crate::upstream::UpstreamProtocolError::Unexpected("empty answer to set_config"),
            )))
        }
        Err(PgUpstreamError::Server { code, message }) => {
            return Err(PgSessionError::BadStartupSetting { code, message })
        }
        Err(e) => return Err(PgSessionError::ServerLost(e)),
    };
    for ((name, lower, value), reported) in unknown.into_iter().zip(columns) {
        let reported = reported.unwrap_or_default();
        pool.remember_reported(&lower, &value, reported.clone());
        known.push((name, reported));
    }
    Ok(known)
}

/// A startup value whose reported form is not known yet: (name as the server spells it,
/// lower-case name, value).
type Unknown = (String, String, Vec<u8>);

/// Asks a server (the client's own, or one checked out briefly) how it reports `unknown`.
async fn learn(
    pool: &PgPool,
    who: &Arc<ClientMeta>,
    held: Option<&mut PooledConn>,
    unknown: &[Unknown],
) -> Result<Result<Option<Vec<Option<Vec<u8>>>>, PgUpstreamError>, PgSessionError> {
    let mut sql = b"BEGIN;SELECT ".to_vec();
    for (i, (_, lower, value)) in unknown.iter().enumerate() {
        if i > 0 {
            sql.extend_from_slice(b", ");
        }
        set_config_call(&mut sql, lower, value, true);
    }
    Ok(match held {
        Some(server) => try_values(server, &sql).await,
        None => {
            let mut server = match pool.try_checkout(who) {
                Some(server) => server,
                None => Box::pin(pool.checkout(who))
                    .await
                    .map_err(PgSessionError::PgPool)?,
            };
            let row = try_values(&mut server, &sql).await;
            // A connection that failed otherwise than with a server error is dropped.
            if matches!(row, Ok(_) | Err(PgUpstreamError::Server { .. })) {
                server.checkin();
            }
            row
        }
    })
}

/// Runs the `BEGIN; SELECT set_config(...)` query, then `ROLLBACK` in a message of its own
/// (an error in a multi-statement query skips the rest of it), so the server is idle and
/// unchanged afterwards whether or not a value was refused.
async fn try_values(
    server: &mut PooledConn,
    sql: &[u8],
) -> Result<Option<Vec<Option<Vec<u8>>>>, PgUpstreamError> {
    let row = server.query_first_row(sql).await;
    if let Err(
        e @ (PgUpstreamError::Io(_) | PgUpstreamError::Closed | PgUpstreamError::Protocol(_)),
    ) = row
    {
        return Err(e);
    }
    match server.run_simple("ROLLBACK").await {
        Ok(b'I') => row,
        Ok(_) => Err(UpstreamProtocolError::NotIdleAfterRollback.into()),
        Err(e) => Err(UpstreamProtocolError::Rollback(Box::new(e)).into()),
    }
}

/// `application_name` as PostgreSQL 15 stores it: bytes outside printable ASCII become `?`.
fn clean_ascii(value: &[u8]) -> Vec<u8> {
    value
        .iter()
        .map(|&b| if (32..127).contains(&b) { b } else { b'?' })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn application_name_is_cleaned_as_postgresql_does() {
        assert_eq!(super::clean_ascii("café\x01".as_bytes()), b"caf???");
        assert_eq!(super::clean_ascii(b"web-1"), b"web-1");
    }
}

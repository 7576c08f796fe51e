//! Client authentication, before any server connection is used: SCRAM-SHA-256 (against a
//! verifier or a plaintext password), md5, or trust when configured. An unknown user runs a
//! believable SCRAM exchange that fails exactly like a wrong password, so the client cannot
//! tell the two apart; both end in FATAL 28P01 after the exchange.

use bytes::BytesMut;
use rand::Rng;
use sluice_auth::{md5_verify, ScramKeys, ScramServer, Secret, SCRAM_SHA_256};
use sluice_config::AuthType;

use crate::client_io::ClientIo;
use crate::context::UserAuth;
use crate::protocol::{backend, frontend};
use crate::session::error::AuthProtocolError;
use crate::session::PgSessionError;

/// Authenticates `user`. `out` must be empty; on success it may hold an
/// AuthenticationSASLFinal that the caller sends with AuthenticationOk, and a SCRAM login
/// returns the client's keys (for SCRAM pass-through).
pub(crate) async fn authenticate(
    client: &mut ClientIo,
    out: &mut BytesMut,
    method: AuthType,
    user: &str,
    known: Option<&UserAuth>,
) -> Result<Option<ScramKeys>, PgSessionError> {
    let failed = || PgSessionError::AuthFailed(user.to_owned());
    let mut keys = None;
    let ok = match (method, known) {
        (AuthType::Trust, Some(_)) => true,
        (AuthType::Trust, None) => false,
        (
            _,
            Some(UserAuth {
                scram: Some(v),
                secret,
            }),
        ) if use_scram(method, secret) => {
            let server = ScramServer::new(v.clone(), ScramServer::random_nonce());
            keys = scram(client, out, server).await?;
            keys.is_some()
        }
        (_, Some(UserAuth { secret, .. })) => md5(client, out, user, secret).await?,
        (AuthType::Md5, None) => {
            // Unknown user: run the md5 exchange anyway, then fail like a wrong password.
            md5(client, out, user, &Secret::Plain(String::new())).await?;
            false
        }
        (_, None) => {
            let server = ScramServer::new_failing(user, ScramServer::random_nonce());
            scram(client, out, server).await?.is_some()
        }
    };
    if ok {
        Ok(keys)
    } else {
        Err(failed())
    }
}

/// SCRAM is used unless md5 was asked for and the secret allows md5.
fn use_scram(method: AuthType, secret: &Secret) -> bool {
    method != AuthType::Md5 || matches!(secret, Secret::Scram(_))
}

async fn read_password_frame(client: &mut ClientIo) -> Result<bytes::Bytes, PgSessionError> {
    match client.read_frame(crate::client_io::MAX_AUTH_FRAME).await? {
        Some((crate::protocol::tag::frontend::PASSWORD, body)) => Ok(body),
        Some((tag, _)) => Err(AuthProtocolError::NotPassword(char::from(tag)).into()),
        None => Err(PgSessionError::Io(std::io::ErrorKind::UnexpectedEof.into())),
    }
}

/// One SCRAM exchange; the client's keys when its proof was right, `None` when wrong.
async fn scram(
    client: &mut ClientIo,
    out: &mut BytesMut,
    mut server: ScramServer,
) -> Result<Option<ScramKeys>, PgSessionError> {
    backend::auth_sasl(out, SCRAM_SHA_256);
    client.write(out).await?;
    out.clear();
    let body = read_password_frame(client).await?;
    let initial = frontend::parse_sasl_initial(&body)?;
    if initial.mechanism != SCRAM_SHA_256 {
        return Err(AuthProtocolError::Mechanism(initial.mechanism.to_owned()).into());
    }
    let first = server
        .handle_client_first(initial.data)
        .map_err(AuthProtocolError::Scram)?;
    backend::auth_sasl_continue(out, &first);
    client.write(out).await?;
    out.clear();
    let body = read_password_frame(client).await?;
    match server.handle_client_final(&body) {
        Ok(last) => {
            backend::auth_sasl_final(out, &last);
            Ok(server.keys())
        }
        Err(sluice_auth::AuthError::InvalidPassword) => Ok(None),
        Err(e) => Err(AuthProtocolError::Scram(e).into()),
    }
}

async fn md5(
    client: &mut ClientIo,
    out: &mut BytesMut,
    user: &str,
    secret: &Secret,
) -> Result<bool, PgSessionError> {
    let salt: [u8; 4] = rand::thread_rng().gen();
    backend::auth_md5(out, salt);
    client.write(out).await?;
    out.clear();
    let body = read_password_frame(client).await?;
    let response = frontend::parse_password(&body)?;
    Ok(md5_verify(secret, user, salt, response))
}

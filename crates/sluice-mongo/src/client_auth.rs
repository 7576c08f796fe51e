//! Client authentication against Sluice: SCRAM-SHA-256 over `saslStart` / `saslContinue`,
//! with the server-side SCRAM state machine of `sluice-auth` (the exchange itself is the
//! same as PostgreSQL's; only its framing in BSON commands is MongoDB's).

use std::collections::HashMap;
use std::sync::Arc;

use bson::{doc, spec::BinarySubtype, Binary, Document, RawBsonRef, RawDocument};
use sluice_auth::{ScramServer, ScramVerifier};

use crate::wire::{error_doc, ErrorCode};

/// The only conversation id Sluice hands out (one conversation per connection).
const CONVERSATION_ID: i32 = 1;

enum State {
    Idle,
    /// server-first sent.
    First {
        server: ScramServer,
        user: String,
        skip_empty: bool,
    },
    /// server-final sent, waiting for the client's empty last step.
    Final {
        user: String,
    },
}

/// One client connection's login state.
pub struct ClientAuth {
    users: Arc<HashMap<String, ScramVerifier>>,
    required: bool,
    state: State,
    user: Option<String>,
}

impl ClientAuth {
    /// `users`: who may log in; `required`: whether commands need a login first.
    pub fn new(users: Arc<HashMap<String, ScramVerifier>>, required: bool) -> Self {
        ClientAuth {
            users,
            required,
            state: State::Idle,
            user: None,
        }
    }

    /// Whether commands may be forwarded now.
    pub fn authorized(&self) -> bool {
        !self.required || self.user.is_some()
    }

    /// Whether any user is configured (then `hello` lists `saslSupportedMechs`).
    pub fn enabled(&self) -> bool {
        !self.users.is_empty()
    }

    /// Answers `saslStart`.
    pub fn sasl_start(&mut self, cmd: &RawDocument) -> Document {
        self.state = State::Idle;
        let mechanism = match cmd.get("mechanism") {
            Ok(Some(RawBsonRef::String(m))) => m,
            _ => return error_doc(ErrorCode::BadValue, "saslStart needs a mechanism"),
        };
        if mechanism != "SCRAM-SHA-256" {
            return error_doc(
                ErrorCode::MechanismUnavailable,
                format!("Received authentication for mechanism {mechanism} which is not enabled; Sluice accepts SCRAM-SHA-256"),
            );
        }
        let Some(payload) = payload(cmd) else {
            return error_doc(ErrorCode::BadValue, "saslStart needs a payload");
        };
        let user = client_first_user(payload).unwrap_or_default();
        let nonce = ScramServer::random_nonce();
        let mut server = match self.users.get(&user) {
            Some(v) => ScramServer::new(v.clone(), nonce),
            None => ScramServer::new_failing(&user, nonce),
        };
        let skip_empty = matches!(
            cmd.get("options").ok().flatten(),
            Some(RawBsonRef::Document(o)) if matches!(o.get("skipEmptyExchange"), Ok(Some(RawBsonRef::Boolean(true))))
        );
        match server.handle_client_first(payload) {
            Ok(reply) => {
                self.state = State::First {
                    server,
                    user,
                    skip_empty,
                };
                step_reply(false, reply)
            }
            Err(_) => auth_failed(),
        }
    }

    /// Answers `saslContinue`.
    pub fn sasl_continue(&mut self, cmd: &RawDocument) -> Document {
        let payload = payload(cmd).unwrap_or_default().to_vec();
        match std::mem::replace(&mut self.state, State::Idle) {
            State::First {
                mut server,
                user,
                skip_empty,
            } => match server.handle_client_final(&payload) {
                Ok(reply) => {
                    if skip_empty {
                        self.user = Some(user);
                        step_reply(true, reply)
                    } else {
                        self.state = State::Final { user };
                        step_reply(false, reply)
                    }
                }
                Err(_) => auth_failed(),
            },
            State::Final { user } => {
                self.user = Some(user);
                step_reply(true, Vec::new())
            }
            State::Idle => error_doc(
                ErrorCode::BadValue,
                "No SASL session state found (saslContinue without saslStart)",
            ),
        }
    }
}

fn payload(cmd: &RawDocument) -> Option<&[u8]> {
    match cmd.get("payload") {
        Ok(Some(RawBsonRef::Binary(b))) => Some(b.bytes),
        Ok(Some(RawBsonRef::String(s))) => Some(s.as_bytes()),
        _ => None,
    }
}

/// The `n=` user of a client-first-message (`n,,n=user,r=nonce`), unescaped.
fn client_first_user(msg: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(msg).ok()?;
    let bare = text.splitn(3, ',').nth(2)?;
    let user = bare.split(',').find_map(|p| p.strip_prefix("n="))?;
    Some(user.replace("=2C", ",").replace("=3D", "="))
}

fn step_reply(done: bool, payload: Vec<u8>) -> Document {
    doc! {
        "conversationId": CONVERSATION_ID,
        "done": done,
        "payload": Binary { subtype: BinarySubtype::Generic, bytes: payload },
        "ok": 1.0,
    }
}

fn auth_failed() -> Document {
    error_doc(ErrorCode::AuthenticationFailed, "Authentication failed.")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::scram_client::{Mechanism, ScramClient};
    use bson::rawdoc;

    fn auth(password: &str) -> (ClientAuth, bool) {
        let verifier = ScramVerifier::from_password("secret", b"0123456789abcdef", 4096);
        let users = Arc::new(HashMap::from([("app".to_owned(), verifier)]));
        let mut server = ClientAuth::new(users, true);
        assert!(!server.authorized());
        let mut client = ScramClient::new(Mechanism::Sha256, "app", password);
        let first = client.client_first();
        let reply = server.sasl_start(&rawdoc! {
            "saslStart": 1, "mechanism": "SCRAM-SHA-256",
            "payload": Binary { subtype: BinarySubtype::Generic, bytes: first },
            "options": {"skipEmptyExchange": true},
        });
        let server_first = reply.get_binary_generic("payload").unwrap().clone();
        let Ok(final_msg) = client.handle_server_first(&server_first) else {
            return (server, false);
        };
        let reply = server.sasl_continue(&rawdoc! {
            "saslContinue": 1, "conversationId": 1,
            "payload": Binary { subtype: BinarySubtype::Generic, bytes: final_msg },
        });
        let ok = reply.get_f64("ok").unwrap() == 1.0;
        if ok {
            assert!(reply.get_bool("done").unwrap());
            client
                .handle_server_final(reply.get_binary_generic("payload").unwrap())
                .unwrap();
        } else {
            assert_eq!(reply.get_i32("code").unwrap(), 18);
        }
        (server, ok)
    }

    #[test]
    fn right_password_logs_in() {
        let (server, ok) = auth("secret");
        assert!(ok && server.authorized());
    }

    #[test]
    fn wrong_password_is_refused() {
        let (server, ok) = auth("wrong");
        assert!(!ok && !server.authorized());
    }

    #[test]
    fn user_is_read_from_client_first() {
        assert_eq!(client_first_user(b"n,,n=a=2Cb,r=x").as_deref(), Some("a,b"));
        assert_eq!(client_first_user(b"garbage"), None);
    }
}

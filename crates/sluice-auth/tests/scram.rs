#![allow(clippy::unwrap_used, missing_docs)]

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use rand::{Rng, RngCore};
use sluice_auth::{AuthError, ScramServer, ScramVerifier, Secret, SCRAM_SHA_256};

const RFC_SNONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
const RFC_CFIRST: &[u8] = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
const RFC_SFIRST: &[u8] =
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
const RFC_CFINAL: &[u8] = b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
const RFC_SFINAL: &[u8] = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

fn rfc_verifier() -> ScramVerifier {
    let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
    ScramVerifier::from_password("pencil", &salt, 4096)
}

fn rfc_server() -> ScramServer {
    ScramServer::new(rfc_verifier(), RFC_SNONCE.to_string())
}

#[test]
fn mechanism_name() {
    assert_eq!(SCRAM_SHA_256, "SCRAM-SHA-256");
}

#[test]
fn rfc7677_vector() {
    let mut s = rfc_server();
    assert_eq!(s.handle_client_first(RFC_CFIRST).unwrap(), RFC_SFIRST);
    assert_eq!(s.handle_client_final(RFC_CFINAL).unwrap(), RFC_SFINAL);
    assert!(s.is_done());
    // Further calls after completion are errors.
    assert_eq!(
        s.handle_client_final(RFC_CFINAL),
        Err(AuthError::InvalidState)
    );
    assert_eq!(
        s.handle_client_first(RFC_CFIRST),
        Err(AuthError::InvalidState)
    );
}

#[test]
fn rfc7677_verifier_round_trips() {
    let v = rfc_verifier();
    let text = v.to_string();
    assert!(text.starts_with("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$"));
    assert_eq!(ScramVerifier::parse(&text).unwrap(), v);
    assert_eq!(Secret::parse(&text).unwrap(), Secret::Scram(v));
}

#[test]
fn wrong_proof_is_invalid_password_and_sticky() {
    let mut s = rfc_server();
    s.handle_client_first(RFC_CFIRST).unwrap();
    let bad = b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=eHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    assert_eq!(s.handle_client_final(bad), Err(AuthError::InvalidPassword));
    assert!(s.handle_client_final(RFC_CFINAL).is_err());
    assert!(!s.is_done());
}

/// Runs a full exchange with postgres-protocol's client.
fn exchange(server: &mut ScramServer, password: &str) -> Result<(), String> {
    let mut client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
    let first = server
        .handle_client_first(client.message())
        .map_err(|e| format!("server first: {e}"))?;
    client
        .update(&first)
        .map_err(|e| format!("client update: {e}"))?;
    let fin = server
        .handle_client_final(client.message())
        .map_err(|e| format!("server final: {e}"))?;
    client
        .finish(&fin)
        .map_err(|e| format!("client finish: {e}"))
}

#[test]
fn round_trip_with_postgres_protocol_client() {
    let v = Secret::parse("s3cret").unwrap().scram_verifier().unwrap();
    let mut s = ScramServer::new(v.clone(), ScramServer::random_nonce());
    exchange(&mut s, "s3cret").unwrap();
    assert!(s.is_done());

    let mut s = ScramServer::new(v, ScramServer::random_nonce());
    let err = exchange(&mut s, "wrong").unwrap_err();
    assert!(err.contains("password authentication failed"), "{err}");
}

#[test]
fn round_trip_unrequested_channel_binding() {
    // "y,," gs2 header: client supports binding but thinks the server doesn't.
    let v = ScramVerifier::from_password("pw", b"0123456789abcdef", 4096);
    let mut s = ScramServer::new(v, ScramServer::random_nonce());
    let mut client = ScramSha256::new(b"pw", ChannelBinding::unrequested());
    assert!(client.message().starts_with(b"y,,"));
    let first = s.handle_client_first(client.message()).unwrap();
    client.update(&first).unwrap();
    let fin = s.handle_client_final(client.message()).unwrap();
    client.finish(&fin).unwrap();
}

#[test]
fn saslprep_matches_postgres_protocol_client() {
    // Non-ASCII password with a SASLprep-mapped character (U+00AD soft hyphen
    // maps to nothing, U+2000 to space).
    let pw = "pa\u{00AD}ss\u{2000}wörd";
    let v = Secret::Plain(pw.into()).scram_verifier().unwrap();
    let mut s = ScramServer::new(v.clone(), ScramServer::random_nonce());
    exchange(&mut s, pw).unwrap();
    let mut s = ScramServer::new(v, ScramServer::random_nonce());
    exchange(&mut s, "pass wörd").unwrap();
}

#[test]
fn postgres_protocol_verifier_parses_and_verifies() {
    let text = postgres_protocol::password::scram_sha_256(b"hunter2");
    let secret = Secret::parse(&text).unwrap();
    let Secret::Scram(v) = &secret else {
        panic!("not scram: {secret:?}")
    };
    assert_eq!(v.iterations, 4096);
    assert_eq!(v.to_string(), text);
    let mut s = ScramServer::new(
        secret.scram_verifier().unwrap(),
        ScramServer::random_nonce(),
    );
    exchange(&mut s, "hunter2").unwrap();
    let mut s = ScramServer::new(v.clone(), ScramServer::random_nonce());
    assert!(exchange(&mut s, "hunter3").is_err());
}

#[test]
fn postgresql_format_verifier_round_trips() {
    // PostgreSQL's pg_authid format for password "postgres", salt
    // "saltsaltsaltsalt", 4096 iterations (keys computed independently with
    // Python's hashlib.pbkdf2_hmac / hmac).
    let text = "SCRAM-SHA-256$4096:c2FsdHNhbHRzYWx0c2FsdA==$\
        IVvP/XI/7CgH+AJuZtX2Qde/91FRiYJj4670fS22WIE=:\
        s35xvmJ89N/i+qC5gnE2/a3VvP/DFyOXfZFoUAG51Ek=";
    let v = ScramVerifier::parse(text).unwrap();
    assert_eq!(v.iterations, 4096);
    assert_eq!(v.salt, b"saltsaltsaltsalt");
    assert_eq!(v.to_string(), text);
    assert_eq!(
        ScramVerifier::from_password("postgres", b"saltsaltsaltsalt", 4096),
        v
    );
    let mut s = ScramServer::new(v, ScramServer::random_nonce());
    exchange(&mut s, "postgres").unwrap();
}

#[test]
fn new_failing_looks_real_but_fails() {
    let mut s = ScramServer::new_failing("nobody", ScramServer::random_nonce());
    let mut client = ScramSha256::new(b"anything", ChannelBinding::unsupported());
    let first = s.handle_client_first(client.message()).unwrap();
    let text = String::from_utf8(first.clone()).unwrap();
    let parts: Vec<&str> = text.split(',').collect();
    assert_eq!(parts.len(), 3);
    assert!(parts[0].starts_with("r="));
    assert_eq!(
        STANDARD
            .decode(parts[1].strip_prefix("s=").unwrap())
            .unwrap()
            .len(),
        16
    );
    assert_eq!(parts[2], "i=4096");
    client.update(&first).unwrap();
    assert_eq!(
        s.handle_client_final(client.message()),
        Err(AuthError::InvalidPassword)
    );
    assert!(s.handle_client_final(client.message()).is_err());

    // Deterministic salt per user name; different for other names.
    let salt_of = |user: &str| {
        let mut s = ScramServer::new_failing(user, "x".into());
        let t = String::from_utf8(s.handle_client_first(b"n,,n=,r=abc").unwrap()).unwrap();
        t.split(',').nth(1).unwrap().to_string()
    };
    assert_eq!(salt_of("nobody"), salt_of("nobody"));
    assert_ne!(salt_of("nobody"), salt_of("somebody"));
}

#[test]
fn malformed_client_first() {
    let cases: &[(&[u8], Option<AuthError>)] = &[
        (b"", None),
        (b"n", None),
        (b"n,", None),
        (b"n,,", None),
        (b"n,,n=user", None),
        (b"n,,n=user,r=", None),
        (b"n,,r=abc,n=user", None),
        (b"x,,n=user,r=abc", None),
        (b"n,,n=user,r=a,bc", None),
        (b"n,,n=user,r=ab c", None),
        (b"\xff\xfe,,n=user,r=abc", None),
        (
            b"p=tls-server-end-point,,n=user,r=abc",
            Some(AuthError::UnsupportedChannelBinding),
        ),
        (
            b"n,a=admin,n=user,r=abc",
            Some(AuthError::Unsupported("authorization identity")),
        ),
        (
            b"n,,m=ext,n=user,r=abc",
            Some(AuthError::Unsupported("mandatory SCRAM extension")),
        ),
    ];
    for (msg, want) in cases {
        let mut s = rfc_server();
        let got = s.handle_client_first(msg);
        assert!(got.is_err(), "{:?} accepted", String::from_utf8_lossy(msg));
        if let Some(want) = want {
            assert_eq!(got.as_ref().unwrap_err(), want);
        }
        // Sticky.
        assert!(s.handle_client_first(RFC_CFIRST).is_err());
        assert!(s.handle_client_final(RFC_CFINAL).is_err());
    }
    // Extensions after the nonce are ignored.
    let mut s = rfc_server();
    s.handle_client_first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO,x=ext")
        .unwrap();
}

#[test]
fn malformed_client_final() {
    let n = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    let p = "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    let cases: Vec<(String, AuthError)> = vec![
        (
            String::new(),
            AuthError::Malformed("client-final-message lacks p="),
        ),
        (
            format!("c=biws,r={n}"),
            AuthError::Malformed("client-final-message lacks p="),
        ),
        (
            format!("r={n},c=biws,p={p}"),
            AuthError::Malformed("client-final-message lacks c="),
        ),
        (
            format!("c=biws,p={p}"),
            AuthError::Malformed("client-final-message lacks r="),
        ),
        (
            format!("c=biws,r={n}x,p={p}"),
            AuthError::Malformed("nonce mismatch"),
        ),
        (
            format!("c=biws,r=rOprNGfwEbeRWgbNEkqO,p={p}"),
            AuthError::Malformed("nonce mismatch"),
        ),
        (
            format!("c=!!!!,r={n},p={p}"),
            AuthError::Malformed("channel binding data is not valid base64"),
        ),
        (
            format!("c=eSws,r={n},p={p}"),
            AuthError::Malformed("channel binding data does not match the gs2 header"),
        ),
        (
            format!("c=biws,r={n},p=!!!"),
            AuthError::Malformed("client proof is not valid base64"),
        ),
        (
            format!("c=biws,r={n},p="),
            AuthError::Malformed("client proof has the wrong length"),
        ),
        (
            format!("c=biws,r={n},p=AAAA"),
            AuthError::Malformed("client proof has the wrong length"),
        ),
        (
            format!("c=biws,r={n},p={p},x=1"),
            AuthError::Malformed("client proof is not valid base64"),
        ),
        (
            format!("c=biws,r={n},,p={p}"),
            AuthError::Malformed("invalid SCRAM attribute"),
        ),
    ];
    for (msg, want) in cases {
        let mut s = rfc_server();
        s.handle_client_first(RFC_CFIRST).unwrap();
        assert_eq!(s.handle_client_final(msg.as_bytes()), Err(want), "{msg}");
        assert!(
            s.handle_client_final(RFC_CFINAL).is_err(),
            "not sticky: {msg}"
        );
    }
    // Final before first.
    let mut s = rfc_server();
    assert_eq!(
        s.handle_client_final(RFC_CFINAL),
        Err(AuthError::InvalidState)
    );
    assert!(s.handle_client_first(RFC_CFIRST).is_err());
    // Non-UTF-8.
    let mut s = rfc_server();
    s.handle_client_first(RFC_CFIRST).unwrap();
    assert!(s.handle_client_final(b"c=biws,\xff").is_err());
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = rand::thread_rng();
    let v = ScramVerifier::from_password("pw", b"0123456789abcdef", 1);
    for i in 0..5000 {
        let len = rng.gen_range(0..64);
        let mut buf = vec![0u8; len];
        rng.fill_bytes(&mut buf);
        // Mix in structured garbage too.
        if i % 3 == 0 {
            let prefix: &[u8] = [&b"n,,n=u,r="[..], b"c=biws,r=", b"y,,", b"p="][i % 4];
            buf.splice(0..0, prefix.iter().copied());
        }
        let mut s = ScramServer::new(v.clone(), "srv".into());
        let _ = s.handle_client_first(&buf);
        let _ = s.handle_client_final(&buf);

        let mut s = ScramServer::new(v.clone(), "srv".into());
        s.handle_client_first(b"n,,n=,r=cli").unwrap();
        let _ = s.handle_client_final(&buf);
        let mut fin = b"c=biws,r=clisrv".to_vec();
        fin.extend_from_slice(&buf);
        let mut s = ScramServer::new(v.clone(), "srv".into());
        s.handle_client_first(b"n,,n=,r=cli").unwrap();
        let _ = s.handle_client_final(&fin);

        let text = String::from_utf8_lossy(&buf);
        let _ = Secret::parse(&text);
        let _ = ScramVerifier::parse(&format!("SCRAM-SHA-256${text}"));
        let _ = sluice_auth::md5_verify(&Secret::Plain("pw".into()), "u", [0; 4], &buf);
    }
}

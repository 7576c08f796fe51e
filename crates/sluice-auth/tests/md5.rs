#![allow(clippy::unwrap_used, missing_docs)]

use sluice_auth::{md5_response, md5_verify, ScramVerifier, Secret};

#[test]
fn md5_response_vectors() {
    // Independently computed: "md5" + md5(md5("password" || "postgres") hex || salt).
    assert_eq!(
        md5_response("postgres", "password", [1, 2, 3, 4]),
        "md598511ceaec347a656f032c7f2a16ef17"
    );
    assert_eq!(
        md5_response("postgres", "password", [0xde, 0xad, 0xbe, 0xef]),
        "md560af60cf473f5b0207a87d042ffb46eb"
    );
}

#[test]
fn md5_verify_plain_and_hashed() {
    let salt = [0xde, 0xad, 0xbe, 0xef];
    let good = b"md560af60cf473f5b0207a87d042ffb46eb";
    let plain = Secret::parse("password").unwrap();
    let hashed = Secret::parse("md532e12f215ba27cb750c9e093ce4b5127").unwrap();
    let hashed_upper = Secret::parse("md532E12F215BA27CB750C9E093CE4B5127").unwrap();
    assert!(matches!(hashed, Secret::Md5(_)));
    assert_eq!(hashed, hashed_upper);
    for s in [&plain, &hashed] {
        assert!(md5_verify(s, "postgres", salt, good));
        // Trailing NUL of the C string is tolerated.
        assert!(md5_verify(
            s,
            "postgres",
            salt,
            b"md560af60cf473f5b0207a87d042ffb46eb\0"
        ));
        // Wrong salt, wrong password, garbage.
        assert!(!md5_verify(s, "postgres", [0, 0, 0, 0], good));
        let wrong = md5_response("postgres", "wrong", salt);
        assert!(!md5_verify(s, "postgres", salt, wrong.as_bytes()));
        assert!(!md5_verify(s, "postgres", salt, b""));
        assert!(!md5_verify(s, "postgres", salt, b"md5"));
        assert!(!md5_verify(s, "postgres", salt, &good[..34]));
        assert!(!md5_verify(s, "postgres", salt, &[0xff; 35]));
    }
    // The user name is part of the hash for plain secrets (a stored md5 hash
    // already has its user baked in).
    assert!(!md5_verify(&plain, "other", salt, good));
    let scram = Secret::Scram(ScramVerifier::from_password(
        "password",
        b"0123456789abcdef",
        4096,
    ));
    assert!(!md5_verify(&scram, "postgres", salt, good));
}

//! How Sluice reaches its MongoDB upstream: TLS asked for by the URI (`tls=true`,
//! `tlsCAFile`), verified against the CA, refused for a wrong CA; and an upstream started
//! with `--auth`, logged into with a user created on it, refused with a wrong password.

mod common;

use std::time::Duration;

use common::{ca, leaf, write_file};
use mongodb::bson::{doc, Document};
use mongodb::Client;
use sluice_tests::mongo::{MongoServer, MongoSluiceBuilder};

const T: Duration = Duration::from_secs(60);

async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(T, f)
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than {T:?}"))
}

/// Inserts one document through `client` and reads it back.
async fn round_trip(client: &Client, coll: &str) -> Result<(), mongodb::error::Error> {
    let c = client
        .database("upstream_test")
        .collection::<Document>(coll);
    let id = mongodb::bson::oid::ObjectId::new();
    c.insert_one(doc! {"_id": id, "v": 7}).await?;
    let back = c.find_one(doc! {"_id": id}).await?;
    assert_eq!(back.and_then(|d| d.get_i32("v").ok()), Some(7));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_is_verified_against_the_ca_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server_ca = ca("mongo test CA");
    let cert = leaf(&server_ca);
    let ca_path = write_file(dir.path(), "ca.pem", &server_ca.cert.pem());
    let wrong_ca = write_file(dir.path(), "wrong.pem", &ca("unrelated CA").cert.pem());
    let crt = write_file(dir.path(), "server.crt", &cert.cert.pem());
    let key = write_file(dir.path(), "server.key", &cert.key_pair.serialize_pem());
    let server = MongoServer::start(&["--tls-cert-file", &crt, "--tls-key-file", &key]);
    if !server.is_managed() {
        eprintln!("skipped: the external MongoDB's TLS set-up is unknown");
        return;
    }

    // Verified TLS: the URI's own options, parsed by the driver's parser.
    let sluice = MongoSluiceBuilder::new(&format!("{}&tls=true&tlsCAFile={ca_path}", server.uri()))
        .max_pool_size(3)
        .start();
    let client = sluice.client().await;
    within("round trip over TLS", async {
        let tasks: Vec<_> = (0..10)
            .map(|i| {
                let client = client.clone();
                tokio::spawn(async move { round_trip(&client, &format!("tls{i}")).await })
            })
            .collect();
        for t in tasks {
            t.await
                .expect("task")
                .expect("round trip through Sluice over TLS");
        }
    })
    .await;
    assert!(
        sluice.admin_get("/health").contains("\"ok\""),
        "{}",
        sluice.admin_get("/health")
    );

    // The server speaks only TLS: a Sluice told to use plaintext cannot reach it, which
    // shows the round trips above really went over TLS.
    let plain = MongoSluiceBuilder::new(server.uri())
        .pool_timeout("3s")
        .start();
    let err = within(
        "plaintext to a TLS server",
        round_trip(&plain.client().await, "plain"),
    )
    .await
    .expect_err("plaintext to a TLS-only server must fail");
    assert!(err.to_string().contains("sluice"), "{err}");

    // A certificate from another CA is refused, with the reason in the error document.
    let wrong = MongoSluiceBuilder::new(&format!("{}&tls=true&tlsCAFile={wrong_ca}", server.uri()))
        .pool_timeout("3s")
        .start();
    let err = within(
        "TLS with the wrong CA",
        round_trip(&wrong.client().await, "wrong"),
    )
    .await
    .expect_err("a certificate from an unknown CA must be refused");
    let text = err.to_string();
    assert!(
        text.contains("TLS") && text.to_lowercase().contains("certificate"),
        "{text}"
    );
    assert!(wrong.stderr().contains("certificate"), "{}", wrong.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_with_auth_logs_in_with_the_uri_credentials() {
    let storage = tempfile::tempdir().expect("storage dir");
    let storage_path = storage.path().display().to_string();
    let mut server = MongoServer::start_with_storage(&[], &storage_path);
    if !server.is_managed() {
        eprintln!("skipped: cannot restart an external MongoDB with --auth");
        return;
    }
    {
        let direct = server.direct_client().await;
        direct
            .database("admin")
            .run_command(doc! {"createUser": "sluice", "pwd": "s3cret", "roles": ["root"]})
            .await
            .expect("createUser");
    }
    server.restart_with(&["--auth"]);

    // The server now refuses unauthenticated work.
    let anonymous = Client::with_uri_str(server.uri()).await.expect("client");
    let err = within("anonymous insert", round_trip(&anonymous, "anon"))
        .await
        .expect_err("--auth must refuse an unauthenticated insert");
    assert!(err.to_string().contains("requires authentication"), "{err}");

    // Through Sluice, clients send no credentials: Sluice logs in with the URI's.
    let sluice = MongoSluiceBuilder::new(&server.uri_with_user("sluice", "s3cret"))
        .max_pool_size(3)
        .start();
    let client = sluice.client().await;
    within("authenticated round trips", async {
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let client = client.clone();
                tokio::spawn(async move { round_trip(&client, &format!("auth{i}")).await })
            })
            .collect();
        for t in tasks {
            t.await
                .expect("task")
                .expect("round trip through Sluice with upstream auth");
        }
    })
    .await;

    // A wrong password: clients get a MongoDB error naming the refused login.
    let wrong = MongoSluiceBuilder::new(&server.uri_with_user("sluice", "wrong"))
        .pool_timeout("3s")
        .start();
    let err = within(
        "wrong upstream password",
        round_trip(&wrong.client().await, "bad"),
    )
    .await
    .expect_err("a wrong upstream password must fail");
    let text = err.to_string();
    assert!(text.contains("refused login"), "{text}");
    assert!(
        !text.contains("wrong"),
        "the password must not be echoed: {text}"
    );
}

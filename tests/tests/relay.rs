//! The relay as a two-way pump: one client pipelines tens of MB of requests while the
//! server streams tens of MB of results back. A relay that awaits a write to one socket
//! while nobody reads the other wedges here: the server blocks writing results nobody
//! reads, so it stops reading requests, so the relay's write to it never finishes.
//!
//! The client is tokio-postgres, which (like libpq's pipeline mode) writes its queued
//! requests and reads responses at the same time. A client that read nothing until it had
//! written everything would wedge against PostgreSQL itself, so the test first runs the
//! same pipeline directly against the server: what PostgreSQL serves, Sluice must too.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{sluice_for, MODES};
use futures_util::future::try_join_all;
use sluice_tests::{shared_cluster, within, APP_PASSWORD, APP_USER};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;

/// Requests in the pipeline; each sends one parameter of [`VALUE_LEN`] bytes and gets it
/// back as a row, so 32 MiB go each way.
const REQUESTS: usize = 32;
const VALUE_LEN: usize = 1 << 20;

/// Hang guard: the whole pipeline takes seconds when nothing wedges.
const T: Duration = Duration::from_secs(60);

/// Sends every request of the pipeline before the first answer is awaited and checks each
/// row that comes back.
async fn pipeline(client: &Client) -> Result<(), tokio_postgres::Error> {
    let stmt = client.prepare_typed("SELECT $1", &[Type::TEXT]).await?;
    let values: Vec<String> = (0..REQUESTS)
        .map(|i| {
            char::from(b'a' + (i % 26) as u8)
                .to_string()
                .repeat(VALUE_LEN)
        })
        .collect();
    // The futures are polled together, so tokio-postgres queues all 32 Bind/Execute/Sync
    // requests at once and streams them out while the results stream in.
    let params: Vec<[&(dyn ToSql + Sync); 1]> = values.iter().map(|v| [v as _]).collect();
    let rows = try_join_all(params.iter().map(|p| client.query_one(&stmt, p))).await?;
    for (row, sent) in rows.iter().zip(&values) {
        let got: &str = row.get(0);
        assert!(got == sent.as_str(), "a row came back altered");
    }
    Ok(())
}

#[tokio::test]
async fn large_pipeline_both_ways_does_not_wedge() {
    let cluster = shared_cluster();
    let db = cluster.fresh_database("relay_pump").await;

    // Control: PostgreSQL itself serves this pipeline.
    let direct = cluster.connect(APP_USER, APP_PASSWORD, &db).await.unwrap();
    within(
        T,
        "the pipeline directly against PostgreSQL",
        pipeline(&direct),
    )
    .await
    .unwrap();

    for mode in MODES {
        let sluice = sluice_for(cluster, &db, mode).pool_size(1).start();
        let client = sluice.client(&db).await;
        let done = tokio::time::timeout(T, pipeline(&client)).await;
        match done {
            Ok(result) => result.unwrap_or_else(|e| panic!("{mode:?}: pipeline failed: {e:?}")),
            Err(_) => panic!(
                "{mode:?}: wedged: {REQUESTS} x {VALUE_LEN} bytes each way did not get \
                 through Sluice within {T:?}"
            ),
        }
        // The connection (and in transaction mode the pooled server) is still usable.
        let n: i32 = client.query_one("SELECT 41 + 1", &[]).await.unwrap().get(0);
        assert_eq!(n, 42, "{mode:?}");
    }
}

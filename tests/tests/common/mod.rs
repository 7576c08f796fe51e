//! Shared helpers of the integration tests (each test file includes this module).
#![allow(dead_code)]

use sluice_tests::{PgCluster, PoolMode, Sluice, SluiceBuilder};

/// Both pool modes, for tests that run in each.
pub const MODES: [PoolMode; 2] = [PoolMode::Session, PoolMode::Transaction];

/// A builder for the program under test with one database `db` of `cluster`.
pub fn sluice_for(cluster: &PgCluster, db: &str, mode: PoolMode) -> SluiceBuilder {
    Sluice::for_db(cluster, db, mode).binary(env!("CARGO_BIN_EXE_sluice-e2e"))
}

/// A builder for the program under test without databases.
pub fn sluice() -> SluiceBuilder {
    Sluice::builder().binary(env!("CARGO_BIN_EXE_sluice-e2e"))
}

/// Asserts that `res` is an error whose SQLSTATE is one of `codes`, returning the error.
#[track_caller]
pub fn expect_sqlstate<T: std::fmt::Debug>(
    res: Result<T, tokio_postgres::Error>,
    codes: &[&str],
) -> tokio_postgres::Error {
    match res {
        Ok(v) => panic!("expected an error with SQLSTATE {codes:?}, got Ok({v:?})"),
        Err(e) => {
            let code = sluice_tests::sqlstate(&e);
            assert!(
                code.as_deref().is_some_and(|c| codes.contains(&c)),
                "expected SQLSTATE {codes:?}, got {code:?}: {e:?}"
            );
            e
        }
    }
}

/// Polls `pg_stat_activity` until the number of client backends on `db` is `want` (up to
/// 10 s) and returns the last count seen.
pub async fn wait_backends(su: &tokio_postgres::Client, db: &str, want: i64) -> i64 {
    let mut n = -1;
    for _ in 0..200 {
        n = PgCluster::backend_count(su, db).await;
        if n == want {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    n
}

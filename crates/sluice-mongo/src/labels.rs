//! The `errorLabels` of Sluice's answer when a request's upstream round trip broke.
//!
//! The client did not lose its connection (Sluice did), so it sees an error document
//! (`HostUnreachable`, as a router answers for a lost shard) instead of a network error. The
//! labels tell the driver what a network error would have told it: retry a write, the
//! commit or the abort (Retryable Writes and Transactions specs: a commit whose outcome is
//! unknown is retried, never given `TransientTransactionError`), retry the whole
//! transaction for any other command inside one, and resume a change stream whose `getMore`
//! was lost (Change Streams spec: a network error is resumable).

use crate::request::RequestInfo;

/// The labels for `info`'s lost round trip; `in_transaction` when it belongs to a
/// transaction.
pub fn lost_round_trip(info: &RequestInfo, in_transaction: bool) -> &'static [&'static str] {
    let transient = in_transaction && !info.ends_transaction();
    match (transient, info.name == "getMore") {
        (true, false) => &["TransientTransactionError"],
        (true, true) => &["TransientTransactionError", "ResumableChangeStreamError"],
        (false, false) => &["RetryableWriteError"],
        (false, true) => &["RetryableWriteError", "ResumableChangeStreamError"],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{rawdoc, Binary, Uuid};

    fn info(name: &str, in_txn: bool) -> RequestInfo {
        let id = Binary::from_uuid(Uuid::new());
        let cmd = if in_txn {
            rawdoc! {name: 1, "lsid": {"id": id}, "txnNumber": 2_i64, "autocommit": false}
        } else {
            rawdoc! {name: 1, "lsid": {"id": id}, "txnNumber": 2_i64}
        };
        RequestInfo::parse(name, &cmd)
    }

    #[test]
    fn writes_outside_transactions_are_retryable() {
        let insert = info("insert", false);
        assert_eq!(lost_round_trip(&insert, false), ["RetryableWriteError"]);
    }

    #[test]
    fn commit_and_abort_are_retried_not_the_transaction() {
        for name in ["commitTransaction", "abortTransaction"] {
            let end = info(name, true);
            assert_eq!(
                lost_round_trip(&end, true),
                ["RetryableWriteError"],
                "{name}"
            );
        }
        let insert = info("insert", true);
        assert_eq!(
            lost_round_trip(&insert, true),
            ["TransientTransactionError"]
        );
    }

    #[test]
    fn a_lost_get_more_resumes_a_change_stream() {
        let get_more = info("getMore", false);
        assert_eq!(
            lost_round_trip(&get_more, false),
            ["RetryableWriteError", "ResumableChangeStreamError"]
        );
    }
}

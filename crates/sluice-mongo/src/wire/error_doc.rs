//! MongoDB error documents (`{ok: 0, errmsg, code, codeName}`), the way Sluice reports its
//! own failures so drivers raise their usual exceptions.

use bson::{doc, Document};

/// The server error codes Sluice answers with (from MongoDB's `error_codes.yml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 2: a malformed command.
    BadValue,
    /// 6: the upstream cannot be reached (retryable); also the refusal of a connection
    /// over `max_client_conn` (mongod has no code for it: it just closes the socket).
    HostUnreachable,
    /// 9: a message that does not parse.
    FailedToParse,
    /// 13: not authenticated / not allowed.
    Unauthorized,
    /// 18: wrong user or password.
    AuthenticationFailed,
    /// 91: Sluice is shutting down (the answer to an awaitable hello, as mongos gives in
    /// quiesce mode).
    ShutdownInProgress,
    /// 59: a command Sluice does not know (never used for forwarded commands).
    CommandNotFound,
    /// 133: no replica-set member satisfies the request's `$readPreference`.
    FailedToSatisfyReadPreference,
    /// 202: no upstream connection within `pool_timeout` (as mongos reports it).
    NetworkInterfaceExceededTimeLimit,
    /// 215: `maxStalenessSeconds` under 90 s (or under the heartbeat plus 10 s).
    MaxStalenessOutOfRange,
    /// 334: authentication mechanism not supported.
    MechanismUnavailable,
    /// 10334: a message over `maxMessageSizeBytes`.
    BsonObjectTooLarge,
}

impl ErrorCode {
    /// The numeric code.
    pub fn code(self) -> i32 {
        match self {
            Self::BadValue => 2,
            Self::HostUnreachable => 6,
            Self::FailedToParse => 9,
            Self::Unauthorized => 13,
            Self::AuthenticationFailed => 18,
            Self::CommandNotFound => 59,
            Self::ShutdownInProgress => 91,
            Self::FailedToSatisfyReadPreference => 133,
            Self::NetworkInterfaceExceededTimeLimit => 202,
            Self::MaxStalenessOutOfRange => 215,
            Self::MechanismUnavailable => 334,
            Self::BsonObjectTooLarge => 10334,
        }
    }

    /// The `codeName`.
    pub fn name(self) -> &'static str {
        match self {
            Self::BadValue => "BadValue",
            Self::FailedToSatisfyReadPreference => "FailedToSatisfyReadPreference",
            Self::HostUnreachable => "HostUnreachable",
            Self::FailedToParse => "FailedToParse",
            Self::Unauthorized => "Unauthorized",
            Self::AuthenticationFailed => "AuthenticationFailed",
            Self::CommandNotFound => "CommandNotFound",
            Self::ShutdownInProgress => "ShutdownInProgress",
            Self::NetworkInterfaceExceededTimeLimit => "NetworkInterfaceExceededTimeLimit",
            Self::MaxStalenessOutOfRange => "MaxStalenessOutOfRange",
            Self::MechanismUnavailable => "MechanismUnavailable",
            Self::BsonObjectTooLarge => "BSONObjectTooLarge",
        }
    }
}

/// `{ok: 0.0, errmsg, code, codeName}`.
pub fn error_doc(code: ErrorCode, errmsg: impl Into<String>) -> Document {
    doc! {
        "ok": 0.0,
        "errmsg": errmsg.into(),
        "code": code.code(),
        "codeName": code.name(),
    }
}

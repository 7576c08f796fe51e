//! Message type bytes (§55.7), named once. Sluice dispatches on these; the layouts behind
//! them live in [`super::messages`], [`super::backend`] and [`super::frontend`].

/// Frontend (client → server) tags.
pub mod frontend {
    /// Simple Query.
    pub const QUERY: u8 = b'Q';
    /// Parse.
    pub const PARSE: u8 = b'P';
    /// Bind.
    pub const BIND: u8 = b'B';
    /// Describe.
    pub const DESCRIBE: u8 = b'D';
    /// Close.
    pub const CLOSE: u8 = b'C';
    /// Execute.
    pub const EXECUTE: u8 = b'E';
    /// Sync.
    pub const SYNC: u8 = b'S';
    /// FunctionCall.
    pub const FUNCTION_CALL: u8 = b'F';
    /// CopyDone.
    pub const COPY_DONE: u8 = b'c';
    /// CopyFail.
    pub const COPY_FAIL: u8 = b'f';
    /// Terminate.
    pub const TERMINATE: u8 = b'X';
    /// PasswordMessage, SASLInitialResponse and SASLResponse.
    pub const PASSWORD: u8 = b'p';

    /// Whether a message of this type ends a request: the server answers ReadyForQuery
    /// after it (Sync, Query, FunctionCall).
    pub fn ends_request(tag: u8) -> bool {
        matches!(tag, SYNC | QUERY | FUNCTION_CALL)
    }
}

/// Backend (server → client) tags.
pub mod backend {
    /// ParseComplete.
    pub const PARSE_COMPLETE: u8 = b'1';
    /// BindComplete.
    pub const BIND_COMPLETE: u8 = b'2';
    /// CloseComplete.
    pub const CLOSE_COMPLETE: u8 = b'3';
    /// PortalSuspended.
    pub const PORTAL_SUSPENDED: u8 = b's';
    /// RowDescription.
    pub const ROW_DESCRIPTION: u8 = b'T';
    /// NoData.
    pub const NO_DATA: u8 = b'n';
    /// DataRow.
    pub const DATA_ROW: u8 = b'D';
    /// CommandComplete.
    pub const COMMAND_COMPLETE: u8 = b'C';
    /// EmptyQueryResponse.
    pub const EMPTY_QUERY: u8 = b'I';
    /// ErrorResponse.
    pub const ERROR_RESPONSE: u8 = b'E';
    /// ParameterStatus.
    pub const PARAMETER_STATUS: u8 = b'S';
    /// ReadyForQuery.
    pub const READY_FOR_QUERY: u8 = b'Z';
}

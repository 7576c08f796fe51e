//! Sluice's MongoDB side: clients speak OP_MSG to Sluice, which answers `hello` itself (as
//! a mongos-like router), authenticates clients (SCRAM-SHA-256, when `[[mongo.users]]` are
//! configured) and forwards every other command's bytes — unchanged but for `requestID` /
//! `responseTo` — over a bounded pool of upstream connections it opened and logged in
//! itself.
//!
//! * [`wire`] — the sans-IO codec (header, OP_MSG, legacy OP_QUERY/OP_REPLY,
//!   OP_COMPRESSED with snappy/zlib/zstd, error documents).
//! * [`scram_client`] — SCRAM-SHA-1/256 towards the upstream; [`client_auth`] — SCRAM-SHA-256
//!   towards clients.
//! * [`upstream`] / [`pool`] — connections and the bounded FIFO pool.
//! * [`hello`] (with the upstream's newest [`cluster_time`]), [`request`], [`pins`],
//!   [`session`], [`listener`] — the data path;
//!   [`tls`] — TLS towards clients, told from plaintext by the first bytes;
//!   [`guards`] — the client cap, login and idle timeouts and pre-auth message cap.
//! * [`topology`] (sans-IO) / [`replicas`] — replica sets by the SDAM rules: the primary
//!   by `electionId`/`setVersion`, members from the primary's lists (a removed member's
//!   pool closed), and `$readPreference` routing with tags and `maxStalenessSeconds`.
//!
//! Routing: a request holds an upstream connection for its round trip only. Cursors are
//! server-wide in MongoDB (any connection of the same user may continue them), so a
//! `getMore`/`killCursors` goes to the one upstream server over any pooled connection; a
//! long-polling `getMore` (with `maxTimeMS`: change streams, tailable awaitData cursors)
//! first takes one of `max(1, max_pool_size / 2)` long-poll permits, so they can never
//! hold the whole pool. Transactions are pinned by session (see [`pins`]).
#![forbid(unsafe_code)]

pub mod client_auth;
pub mod cluster_time;
pub mod context;
pub mod guards;
pub mod hello;
pub mod labels;
pub mod listener;
pub mod pins;
pub mod pool;
pub mod replicas;
pub mod request;
pub mod scram_client;
pub mod session;
pub mod tls;
pub mod topology;
pub mod upstream;
pub mod wire;

pub use context::MongoContext;
pub use listener::{MongoListener, StartError};

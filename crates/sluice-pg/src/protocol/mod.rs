//! Sans-IO PostgreSQL protocol v3 code: frame boundaries, the untagged startup packet, the
//! few frontend messages Sluice reads, and writers for the backend messages Sluice sends
//! itself. Nothing here knows about sockets or tokio; the session tasks do the I/O.
//!
//! Reference: PostgreSQL documentation, chapter 55 "Frontend/Backend Protocol".

pub mod backend;
pub mod frame;
pub mod frontend;
pub mod messages;
pub mod startup;
pub mod tag;

pub use frame::{frame_len, Frame, Frames, ProtocolError};

// Every byte layout of the PostgreSQL protocol Sluice reads or writes is in this module.

//! The pool core both front ends use: a bounded set of upstream connections per pool, handed
//! out most-recently-used first, with a FIFO queue when all are busy.
//!
//! The shape:
//! - [`Connector`] is what a front end supplies: how to open one connection and whether an
//!   idle one is still usable. The core knows nothing of PostgreSQL or MongoDB.
//! - [`Pool`] keeps all bookkeeping (slots, idle connections, waiters, checkouts, PAUSE,
//!   health) in one state under one `parking_lot` mutex that is never held across an
//!   `.await`. Every count a caller or the statistics see is derived from that state
//!   ([`Pool::occupancy`]), so numbers cannot drift from what the pool holds.
//! - Every change a waiting task makes to the state is owned by an RAII guard (a queue
//!   place, a reserved slot, a PAUSE hold): dropping the checkout future at any `.await`
//!   (client gone, shutdown, timeout) undoes it at once and hands on anything it was given.
//! - A [`Budget`] caps the connections of several pools together (per database, per
//!   user); each connection holds its [`Permit`].
//! - [`Pooled`] is a checked-out connection: [`Pooled::checkin`] returns it, dropping it
//!   closes it and frees its slot.

mod budget;
mod connector;
mod guards;
mod pool;
mod state;

#[cfg(test)]
mod tests;

pub use budget::{Budget, Permit};
pub use connector::Connector;
pub use pool::{CheckoutError, ConnView, Limits, Occupancy, Pool, Pooled};

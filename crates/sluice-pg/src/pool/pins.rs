//! Pinning's bookkeeping in a pool: who keeps a server across transactions for session
//! state, why and since when (transaction mode; the decision is the relay's, see
//! `session/relay/pin.rs`). A [`PinSlot`] is one pin; dropping it unpins.

use std::sync::Arc;

use super::{ClientMeta, PgPool};

/// Who pins a server, why and since when.
pub(super) struct PinRecord {
    pub(super) who: Arc<ClientMeta>,
    pub(super) reason: String,
    pub(super) since: std::time::Instant,
}

/// One pinned server's place in its pool's count; dropping it unpins.
pub struct PinSlot {
    pool: PgPool,
    id: u64,
}

impl PinSlot {
    /// Updates what keeps the server pinned.
    pub fn set_reason(&self, reason: String) {
        if let Some(r) = self.pool.inner.pins.lock().1.get_mut(&self.id) {
            r.reason = reason;
        }
    }
}

impl Drop for PinSlot {
    fn drop(&mut self) {
        self.pool.inner.pins.lock().1.remove(&self.id);
    }
}

impl std::fmt::Debug for PinSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinSlot").field("id", &self.id).finish()
    }
}

impl PgPool {
    /// Pins a server for `who` (transaction mode) unless `max` are pinned already; the pin
    /// lasts as long as the returned slot.
    pub fn try_pin(&self, who: &Arc<ClientMeta>, reason: String, max: usize) -> Option<PinSlot> {
        let mut pins = self.inner.pins.lock();
        if pins.1.len() >= max {
            return None;
        }
        pins.0 += 1;
        let id = pins.0;
        let record = PinRecord {
            who: who.clone(),
            reason,
            since: std::time::Instant::now(),
        };
        pins.1.insert(id, record);
        Some(PinSlot {
            pool: self.clone(),
            id,
        })
    }

    /// Servers pinned right now.
    pub fn pinned(&self) -> usize {
        self.inner.pins.lock().1.len()
    }

    /// The clients pinning a server, oldest first, for the statistics.
    pub(super) fn pinned_clients(&self) -> Vec<sluice_stats::PinnedInfo> {
        let pins = self.inner.pins.lock();
        pins.1
            .values()
            .map(|p| sluice_stats::PinnedInfo {
                client_addr: p.who.addr.to_string(),
                application_name: p.who.application_name.to_string(),
                reason: p.reason.clone(),
                age_seconds: p.since.elapsed().as_secs_f64(),
            })
            .collect()
    }
}

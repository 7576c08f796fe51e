//! Which writable member is the primary, by the SDAM spec's `updateRSFromPrimary` rules:
//! the topology remembers the newest `(electionId, setVersion)` any primary reported; a
//! member that says it is primary with an older pair is stale (left over from before an
//! election it has not heard of yet) and counts as Unknown; of two members that both say
//! they are primary, the newer pair wins and the other counts as Unknown.
//!
//! From wire version 17 (MongoDB 6.0) the pair compares `electionId` first, and an absent
//! value is older than any present one; before it, `setVersion` comes first and a member
//! missing either value is never stale (the spec's two branches). When two claimants carry
//! the same pair (possible only with test servers), the current primary stays, else the
//! first in host order wins, so the choice does not flap between heartbeats.

use std::cmp::Ordering;

use bson::oid::ObjectId;

use super::member::Member;

/// Wire version of MongoDB 6.0, from which `electionId` is compared first.
const ELECTION_ID_FIRST_WIRE: i64 = 17;

/// The newest election seen (the spec's `maxElectionId` and `maxSetVersion`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Election {
    max_election_id: Option<ObjectId>,
    max_set_version: Option<i64>,
}

/// Whether `a`'s election is newer (`Greater`) than `b`'s.
fn newer(a: &Member, b: &Member) -> Ordering {
    if a.max_wire >= ELECTION_ID_FIRST_WIRE && b.max_wire >= ELECTION_ID_FIRST_WIRE {
        (a.election_id, a.set_version).cmp(&(b.election_id, b.set_version))
    } else {
        (a.set_version, a.election_id).cmp(&(b.set_version, b.election_id))
    }
}

impl Election {
    /// Whether `m`'s claim to be primary is older than the newest seen.
    pub fn is_stale(&self, m: &Member) -> bool {
        if m.max_wire >= ELECTION_ID_FIRST_WIRE {
            return (m.election_id, m.set_version) < (self.max_election_id, self.max_set_version);
        }
        match (
            m.set_version,
            m.election_id,
            self.max_set_version,
            self.max_election_id,
        ) {
            (Some(sv), Some(id), Some(max_sv), Some(max_id)) => {
                max_sv > sv || (max_sv == sv && max_id > id)
            }
            _ => false,
        }
    }

    /// Remembers the election of the member just accepted as primary.
    fn record(&mut self, m: &Member) {
        if m.max_wire >= ELECTION_ID_FIRST_WIRE {
            self.max_election_id = m.election_id;
            self.max_set_version = m.set_version;
            return;
        }
        if m.set_version.is_some() && m.election_id.is_some() {
            self.max_election_id = m.election_id;
        }
        if let Some(sv) = m.set_version {
            if self.max_set_version.is_none_or(|max| sv > max) {
                self.max_set_version = Some(sv);
            }
        }
    }

    /// Picks the primary among the members that say they are writable (given in host
    /// order), preferring `current` on a tie, and records its election. `None` when every
    /// claim is stale.
    pub fn decide(&mut self, claimants: &[&Member], current: Option<&str>) -> Option<String> {
        let mut ranked: Vec<&Member> = claimants.to_vec();
        // Stable: among equals the current primary first, then host order.
        ranked.sort_by_key(|m| Some(m.addr.as_str()) != current);
        ranked.sort_by(|a, b| newer(b, a));
        let winner = ranked.into_iter().find(|m| {
            let stale = self.is_stale(m);
            if stale {
                tracing::debug!(
                    member = %m.addr,
                    election_id = ?m.election_id,
                    set_version = ?m.set_version,
                    "stale primary ignored: an older election than the newest seen"
                );
            }
            !stale
        })?;
        self.record(winner);
        Some(winner.addr.clone())
    }
}

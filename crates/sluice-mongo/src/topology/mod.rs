//! The replica set as Sluice sees it, sans IO: a pure function of heartbeat rounds (each
//! member's `hello` reply, its round-trip time and when it arrived) to the topology —
//! which member is the primary, which hosts are members, which were removed — and of a
//! request's `$readPreference` to the member that serves it. The heartbeat task in
//! [`crate::replicas`] feeds it and acts on its answers.
//!
//! It follows the SDAM spec's replica-set rules, one round at a time:
//! - server types from each reply (`member.rs`): hidden members, arbiters, ghosts and
//!   members of another set (`setName`) are never selected;
//! - the primary by `electionId` and `setVersion` (`election.rs`): a stale primary and the
//!   loser of two claimants count as Unknown;
//! - membership from the primary's `hosts`/`passives`/`arbiters`: a host it no longer
//!   lists is removed (and reported, so its pool is closed); without a primary, hosts that
//!   secondaries list are added, and a member whose `me` names it otherwise is removed.
//!   The seeds of the URI are checked until a primary lists the members, and again after
//!   a round in which no host answered (a set that moved entirely is found again from the
//!   configuration).
//!
//! Selection (`select.rs`) follows the server-selection spec: mode, `maxStalenessSeconds`,
//! tag sets in order, then the 15 ms latency window; ties are spread round-robin.

use std::time::Duration;

mod election;
mod member;
mod select;
#[cfg(test)]
mod tests;

pub use member::{Member, Reply, Role};
pub use select::{Route, LATENCY_WINDOW};

use election::Election;

/// What one heartbeat round changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use]
pub struct Outcome {
    /// The primary is another member (or none) than before the round.
    pub primary_changed: bool,
    /// Hosts that are no longer members: their pools are to be closed.
    pub removed: Vec<String>,
    /// Members that say they are writable but are not the primary (a stale election, or
    /// the loser of two claimants): no write may reach them.
    pub deposed: Vec<String>,
}

/// The replica set's last known state.
#[derive(Debug, Clone, Default)]
pub struct TopologyState {
    /// The URI's hosts, checked again when nothing else answers.
    seeds: Vec<String>,
    /// Hosts checked each round, in order (seeds first, then discovered members).
    known: Vec<String>,
    /// `replicaSet` from the URI, or the first `setName` a member reported.
    set_name: Option<String>,
    /// How often members are checked: the staleness formula adds it.
    heartbeat: Duration,
    election: Election,
    members: Vec<Member>,
    primary: Option<String>,
}

fn push_new(list: &mut Vec<String>, hosts: impl IntoIterator<Item = String>) {
    for h in hosts {
        if !list.contains(&h) {
            list.push(h);
        }
    }
}

impl TopologyState {
    /// Nothing known yet but the seed list, the set name the URI asked for (if any) and
    /// the heartbeat interval.
    pub fn new(seeds: Vec<String>, set_name: Option<String>, heartbeat: Duration) -> Self {
        TopologyState {
            known: seeds.clone(),
            seeds,
            set_name,
            heartbeat,
            ..TopologyState::default()
        }
    }

    /// Every host to check in the next round.
    pub fn hosts(&self) -> Vec<String> {
        self.known.clone()
    }

    /// The current primary's address.
    pub fn primary(&self) -> Option<&str> {
        self.primary.as_deref()
    }

    /// What the last round said of `addr`, if it answered.
    pub fn member(&self, addr: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.addr == addr)
    }

    /// Applies one heartbeat round: each checked host with its reply, or `None` when it
    /// did not answer. Replies from hosts that are not (or no longer) checked are ignored.
    pub fn update(&mut self, results: Vec<(String, Option<Reply>)>) -> Outcome {
        let mut members: Vec<Member> = self
            .known
            .iter()
            .filter_map(|host| {
                let (_, reply) = results.iter().find(|(a, _)| a == host)?;
                reply.as_ref().map(|r| Member::from_hello(host, r))
            })
            .collect();
        if members.is_empty() {
            // Nobody answered: look for the set from the configuration again.
            let mut again = self.seeds.clone();
            push_new(&mut again, self.known.drain(..));
            self.known = again;
        }
        let foreign = self.check_set_names(&mut members);
        let primary = self.elect(&mut members);
        let mut next = self.known.clone();
        next.retain(|h| !foreign.contains(h));
        match primary
            .as_deref()
            .and_then(|p| members.iter().find(|m| m.addr == p))
        {
            Some(p) if !p.lists.is_empty() => {
                // The primary's lists are the set; the primary itself always stays (it
                // may know itself by another name than the one Sluice reaches).
                let mut set = vec![p.addr.clone()];
                push_new(&mut set, p.lists.iter().cloned());
                set.retain(|h| !foreign.contains(h));
                next.retain(|h| set.contains(h));
                push_new(&mut next, set);
            }
            Some(_) => {}
            None => {
                for m in members.iter().filter(|m| m.role == Role::Secondary) {
                    push_new(&mut next, m.lists.iter().cloned());
                }
                // A member reached by another name than its own `me` (a seed alias) is
                // not monitored under that name; the names it lists are (SDAM's
                // updateRSWithoutPrimary). With a primary, its lists decide alone.
                let aliases: Vec<&str> = members
                    .iter()
                    .filter(|m| m.is_alias())
                    .map(|m| m.addr.as_str())
                    .collect();
                next.retain(|h| !aliases.contains(&h.as_str()));
            }
        }
        let removed: Vec<String> = self
            .known
            .iter()
            .filter(|h| !next.contains(h))
            .cloned()
            .collect();
        members.retain(|m| !removed.contains(&m.addr));
        let deposed = members
            .iter()
            .filter(|m| m.claims_primary && m.role != Role::Primary)
            .map(|m| m.addr.clone())
            .collect();
        let outcome = Outcome {
            primary_changed: primary != self.primary,
            removed,
            deposed,
        };
        self.known = next;
        self.members = members;
        self.primary = primary;
        outcome
    }

    /// Takes the set name from the first member that reports one when the URI named
    /// none; a member of another set is Unknown. Returns the hosts to remove.
    fn check_set_names(&mut self, members: &mut [Member]) -> Vec<String> {
        if self.set_name.is_none() {
            self.set_name = members.iter().find_map(|m| m.set_name.clone());
        }
        let mut foreign = Vec::new();
        for m in members.iter_mut() {
            if m.set_name.is_some() && m.set_name != self.set_name {
                tracing::warn!(
                    member = %m.addr,
                    set = ?m.set_name,
                    expected = ?self.set_name,
                    "member of another replica set removed"
                );
                m.role = Role::Unknown;
                m.claims_primary = false;
                foreign.push(m.addr.clone());
            }
        }
        foreign
    }

    /// Decides the primary among the members that say they are writable; every other
    /// claimant becomes Unknown.
    fn elect(&mut self, members: &mut [Member]) -> Option<String> {
        let claimants: Vec<&Member> = members.iter().filter(|m| m.claims_primary).collect();
        let primary = self.election.decide(&claimants, self.primary.as_deref());
        for m in members.iter_mut().filter(|m| m.claims_primary) {
            m.role = if Some(&m.addr) == primary.as_ref() {
                Role::Primary
            } else {
                Role::Unknown
            };
        }
        primary
    }
}

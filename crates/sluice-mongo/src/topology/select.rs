//! Server selection for a replica set, by the server-selection spec: the mode picks the
//! candidates (the primary, secondaries, or both), `maxStalenessSeconds` drops secondaries
//! too far behind, the first tag set that matches anyone narrows them, and members within
//! 15 ms of the fastest share the work round-robin.
//!
//! Staleness, as the spec estimates it from heartbeats: with a primary P, a secondary S is
//! `(S.lastUpdateTime - S.lastWriteDate) - (P.lastUpdateTime - P.lastWriteDate) +
//! heartbeatFrequencyMS` behind; without one, `SMax.lastWriteDate - S.lastWriteDate +
//! heartbeatFrequencyMS`, SMax being the secondary with the newest write. Update times are
//! Sluice's clock, write dates the members', so only differences of one clock are taken.

use std::time::Duration;

use super::member::{Member, Role};
use super::TopologyState;
use crate::request::{ReadMode, ReadPref, ReadPrefError, IDLE_WRITE_PERIOD};

/// The latency window of the server-selection spec: members within this much of the
/// fastest eligible one are equally good.
pub const LATENCY_WINDOW: Duration = Duration::from_millis(15);

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The primary pool.
    Primary,
    /// The pool of this non-primary member.
    Member(String),
    /// No member satisfies the read preference.
    Unsatisfiable,
    /// The read preference cannot be applied to this set (a `maxStalenessSeconds` under
    /// the heartbeat interval plus the idle-write period).
    Invalid(ReadPrefError),
}

/// Milliseconds as a signed number, for differences that may be negative.
fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl TopologyState {
    /// Picks the member for a read preference; `turn` spreads ties round-robin.
    pub fn select(&self, pref: &ReadPref, turn: usize) -> Route {
        if let Some(max) = pref.max_staleness {
            let min = self.heartbeat + IDLE_WRITE_PERIOD;
            if max < min {
                return Route::Invalid(ReadPrefError::StalenessTooSmall {
                    max: ms(max) / 1000,
                    min: min.as_secs(),
                });
            }
        }
        let secondary = || self.pick(pref, turn, |m| m.role == Role::Secondary);
        match pref.mode {
            // Without a known primary the primary pool still looks for one among the seeds.
            ReadMode::Primary => Route::Primary,
            ReadMode::Secondary => secondary().unwrap_or(Route::Unsatisfiable),
            ReadMode::SecondaryPreferred => secondary().unwrap_or(Route::Primary),
            ReadMode::PrimaryPreferred => match self.primary {
                Some(_) => Route::Primary,
                None => secondary().unwrap_or(Route::Unsatisfiable),
            },
            ReadMode::Nearest => self
                .pick(pref, turn, Member::readable)
                .unwrap_or(Route::Unsatisfiable),
        }
    }

    /// The estimated staleness of secondary `s` (`None`: it reported no write date).
    pub fn staleness(&self, s: &Member) -> Option<Duration> {
        let s_write = s.last_write?;
        let heartbeat = ms(self.heartbeat);
        let primary = self
            .primary()
            .and_then(|p| self.member(p))
            .and_then(|p| Some((p, p.last_write?)));
        let behind = match primary {
            Some((p, p_write)) => {
                let updated = if s.updated >= p.updated {
                    ms(s.updated - p.updated)
                } else {
                    -ms(p.updated - s.updated)
                };
                updated - (s_write - p_write) + heartbeat
            }
            None => {
                let newest = self
                    .members
                    .iter()
                    .filter(|m| m.role == Role::Secondary)
                    .filter_map(|m| m.last_write)
                    .max()?;
                newest - s_write + heartbeat
            }
        };
        Some(Duration::from_millis(behind.max(0).unsigned_abs()))
    }

    /// Whether `m` passes `maxStalenessSeconds`: the primary always does; a secondary
    /// that reports no write date cannot be shown fresh, so it does not.
    fn fresh(&self, m: &Member, max: Option<Duration>) -> bool {
        match max {
            None => true,
            Some(_) if m.role == Role::Primary => true,
            Some(max) => self.staleness(m).is_some_and(|s| s <= max),
        }
    }

    fn pick(&self, pref: &ReadPref, turn: usize, role: impl Fn(&Member) -> bool) -> Option<Route> {
        let candidates: Vec<&Member> = self
            .members
            .iter()
            .filter(|m| role(m) && self.fresh(m, pref.max_staleness))
            .collect();
        let eligible: Vec<&Member> = if pref.tag_sets.is_empty() {
            candidates
        } else {
            pref.tag_sets.iter().find_map(|set| {
                let hit: Vec<&Member> = candidates
                    .iter()
                    .copied()
                    .filter(|m| m.matches(set))
                    .collect();
                (!hit.is_empty()).then_some(hit)
            })?
        };
        let fastest = eligible.iter().map(|m| m.rtt).min()?;
        let window: Vec<&Member> = eligible
            .into_iter()
            .filter(|m| m.rtt <= fastest + LATENCY_WINDOW)
            .collect();
        let chosen = window.get(turn % window.len().max(1))?;
        Some(if Some(chosen.addr.as_str()) == self.primary() {
            Route::Primary
        } else {
            Route::Member(chosen.addr.clone())
        })
    }
}

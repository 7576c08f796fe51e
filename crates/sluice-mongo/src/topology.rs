//! The replica set as Sluice sees it, sans IO: what each member said in its last `hello`
//! (role, round-trip time, tags), which one is the primary, and which member a request's
//! `$readPreference` selects. The heartbeat task in [`crate::replicas`] feeds it.
//!
//! Choosing the primary: when the current primary still says it is writable it stays (no
//! flapping); otherwise the first writable member in host order (seeds, then members the
//! primary listed) becomes the primary. Selection follows the server-selection spec's rules
//! for a replica set: mode, then tag sets in order (an empty set matches any member), then
//! the 15 ms latency window; ties are spread round-robin.

use std::time::Duration;

use bson::{Bson, Document};

use crate::request::{ReadMode, ReadPref};

/// The latency window of the server-selection spec: members within this much of the
/// fastest eligible one are equally good.
pub const LATENCY_WINDOW: Duration = Duration::from_millis(15);

/// A member's role, from its `hello`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `isWritablePrimary` (or legacy `ismaster`).
    Primary,
    /// `secondary: true`.
    Secondary,
    /// Anything else (arbiter, recovering, starting up): never selected.
    Other,
}

/// One reachable member.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// `host:port` as Sluice reaches it.
    pub addr: String,
    /// Its role.
    pub role: Role,
    /// The heartbeat's round-trip time.
    pub rtt: Duration,
    /// Its replica-set tags (string values only).
    pub tags: Vec<(String, String)>,
}

impl Member {
    /// Reads a member from its `hello` reply.
    pub fn from_hello(addr: &str, reply: &Document, rtt: Duration) -> Member {
        let flag = |k: &str| reply.get_bool(k).unwrap_or(false);
        let role = if flag("isWritablePrimary") || flag("ismaster") {
            Role::Primary
        } else if flag("secondary") {
            Role::Secondary
        } else {
            Role::Other
        };
        let tags = reply
            .get_document("tags")
            .map(|t| {
                t.iter()
                    .filter_map(|(k, v)| match v {
                        Bson::String(s) => Some((k.clone(), s.clone())),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Member {
            addr: addr.to_owned(),
            role,
            rtt,
            tags,
        }
    }

    fn matches(&self, tag_set: &[(String, String)]) -> bool {
        tag_set.iter().all(|t| self.tags.contains(t))
    }
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The primary pool.
    Primary,
    /// The pool of this non-primary member.
    Member(String),
    /// No member satisfies the read preference.
    Unsatisfiable,
}

/// The replica set's last known state.
#[derive(Debug, Clone, Default)]
pub struct TopologyState {
    seeds: Vec<String>,
    discovered: Vec<String>,
    members: Vec<Member>,
    primary: Option<String>,
}

impl TopologyState {
    /// Nothing known yet but the seed list.
    pub fn new(seeds: Vec<String>) -> TopologyState {
        TopologyState {
            seeds,
            ..TopologyState::default()
        }
    }

    /// Every host to check: the seeds, then members the primary listed.
    pub fn hosts(&self) -> Vec<String> {
        let mut all = self.seeds.clone();
        for h in &self.discovered {
            if !all.contains(h) {
                all.push(h.clone());
            }
        }
        all
    }

    /// The current primary's address.
    pub fn primary(&self) -> Option<&str> {
        self.primary.as_deref()
    }

    /// Applies one heartbeat round (each checked host with its `hello` reply and RTT, or
    /// nothing when it did not answer). Returns true when the primary changed.
    pub fn update(&mut self, results: Vec<(String, Option<(Document, Duration)>)>) -> bool {
        let order = self.hosts();
        let mut members: Vec<Member> = results
            .iter()
            .filter_map(|(addr, r)| r.as_ref().map(|(d, rtt)| Member::from_hello(addr, d, *rtt)))
            .collect();
        members.sort_by_key(|m| {
            order
                .iter()
                .position(|h| *h == m.addr)
                .unwrap_or(usize::MAX)
        });
        let is_primary = |addr: &str| {
            members
                .iter()
                .any(|m| m.addr == addr && m.role == Role::Primary)
        };
        let primary = match &self.primary {
            Some(p) if is_primary(p) => Some(p.clone()),
            _ => members
                .iter()
                .find(|m| m.role == Role::Primary)
                .map(|m| m.addr.clone()),
        };
        if let Some(p) = &primary {
            if let Some((_, Some((reply, _)))) = results.iter().find(|(a, _)| a == p) {
                self.discovered = ["hosts", "passives"]
                    .iter()
                    .filter_map(|k| reply.get_array(k).ok())
                    .flatten()
                    .filter_map(|h| h.as_str().map(str::to_owned))
                    .collect();
            }
        }
        let changed = primary != self.primary;
        self.members = members;
        self.primary = primary;
        changed
    }

    /// Picks the member for a read preference; `turn` spreads ties round-robin.
    pub fn select(&self, pref: &ReadPref, turn: usize) -> Route {
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
                .pick(pref, turn, |m| {
                    matches!(m.role, Role::Primary | Role::Secondary)
                })
                .unwrap_or(Route::Unsatisfiable),
        }
    }

    fn pick(&self, pref: &ReadPref, turn: usize, role: impl Fn(&Member) -> bool) -> Option<Route> {
        let candidates: Vec<&Member> = self.members.iter().filter(|m| role(m)).collect();
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use bson::doc;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn primary(hosts: &[&str]) -> Document {
        doc! {"isWritablePrimary": true, "setName": "rs", "hosts": hosts.to_vec()}
    }

    fn secondary(tags: Document) -> Document {
        doc! {"isWritablePrimary": false, "secondary": true, "setName": "rs", "tags": tags}
    }

    fn pref(mode: ReadMode, tag_sets: Vec<Vec<(&str, &str)>>) -> ReadPref {
        ReadPref {
            mode,
            tag_sets: tag_sets
                .into_iter()
                .map(|s| s.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
                .collect(),
        }
    }

    #[test]
    fn primary_is_sticky_and_fails_over_in_host_order() {
        let mut t = TopologyState::new(vec!["a:1".into(), "b:1".into(), "c:1".into()]);
        assert!(t.update(vec![
            (
                "a:1".into(),
                Some((primary(&["a:1", "b:1", "c:1", "d:1"]), ms(1)))
            ),
            ("b:1".into(), Some((secondary(doc! {}), ms(1)))),
            ("c:1".into(), None),
        ]));
        assert_eq!(t.primary(), Some("a:1"));
        assert_eq!(t.hosts(), ["a:1", "b:1", "c:1", "d:1"]);
        // a goes away; b and d both claim to be writable: b comes first in host order.
        assert!(t.update(vec![
            ("a:1".into(), None),
            ("b:1".into(), Some((primary(&["b:1"]), ms(1)))),
            ("c:1".into(), None),
            ("d:1".into(), Some((primary(&["d:1"]), ms(1)))),
        ]));
        assert_eq!(t.primary(), Some("b:1"));
        // a returns as a writable member too: b stays (no flapping).
        assert!(!t.update(vec![
            ("a:1".into(), Some((primary(&["a:1"]), ms(1)))),
            ("b:1".into(), Some((primary(&["b:1"]), ms(1)))),
        ]));
        assert_eq!(t.primary(), Some("b:1"));
        // Nobody answers: no primary.
        assert!(t.update(vec![("a:1".into(), None), ("b:1".into(), None)]));
        assert_eq!(t.primary(), None);
    }

    #[test]
    fn read_preference_modes_tags_and_latency_window() {
        let mut t = TopologyState::new(vec!["p:1".into(), "s1:1".into(), "s2:1".into()]);
        t.update(vec![
            ("p:1".into(), Some((primary(&[]), ms(1)))),
            ("s1:1".into(), Some((secondary(doc! {"dc": "east"}), ms(2)))),
            (
                "s2:1".into(),
                Some((secondary(doc! {"dc": "west"}), ms(40))),
            ),
        ]);
        let s1 = Route::Member("s1:1".into());
        let s2 = Route::Member("s2:1".into());
        // s2 is outside the latency window of s1.
        assert_eq!(t.select(&pref(ReadMode::Secondary, vec![]), 0), s1);
        assert_eq!(t.select(&pref(ReadMode::Secondary, vec![]), 1), s1);
        // Tag sets in order; the first that matches anyone wins.
        let west_then_any = pref(ReadMode::Secondary, vec![vec![("dc", "west")], vec![]]);
        assert_eq!(t.select(&west_then_any, 0), s2);
        let north = pref(ReadMode::Secondary, vec![vec![("dc", "north")]]);
        assert_eq!(t.select(&north, 0), Route::Unsatisfiable);
        let north_preferred = pref(ReadMode::SecondaryPreferred, vec![vec![("dc", "north")]]);
        assert_eq!(t.select(&north_preferred, 0), Route::Primary);
        assert_eq!(
            t.select(&pref(ReadMode::PrimaryPreferred, vec![]), 0),
            Route::Primary
        );
        // Nearest: the primary (1 ms) and s1 (2 ms) share the window, round-robin.
        let nearest = pref(ReadMode::Nearest, vec![]);
        let picks: Vec<Route> = (0..2).map(|i| t.select(&nearest, i)).collect();
        assert!(
            picks.contains(&Route::Primary) && picks.contains(&s1),
            "{picks:?}"
        );

        // Without a primary: primaryPreferred falls back to a secondary.
        t.update(vec![
            ("p:1".into(), None),
            ("s1:1".into(), Some((secondary(doc! {}), ms(2)))),
        ]);
        assert_eq!(t.select(&pref(ReadMode::PrimaryPreferred, vec![]), 0), s1);
        assert_eq!(t.select(&pref(ReadMode::SecondaryPreferred, vec![]), 0), s1);
    }
}

//! The topology state machine driven by fake `hello` replies: elections by `electionId`
//! and `setVersion`, membership and removal, hidden members and arbiters, selection by
//! mode, tags and latency, and `maxStalenessSeconds` with paused time.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bson::oid::ObjectId;
use bson::{doc, DateTime, Document};
use tokio::time::Instant;

use super::*;
use crate::request::{ReadMode, ReadPref, ReadPrefError};

const HEARTBEAT: Duration = Duration::from_secs(10);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn oid(n: u8) -> ObjectId {
    let mut bytes = [0u8; 12];
    bytes[0] = 0x7f;
    bytes[11] = n;
    ObjectId::from_bytes(bytes)
}

fn primary(hosts: &[&str]) -> Document {
    doc! {
        "isWritablePrimary": true, "setName": "rs", "hosts": hosts.to_vec(), "ok": 1.0,
        "maxWireVersion": 27,
    }
}

fn elected(hosts: &[&str], election: u8, set_version: i32) -> Document {
    let mut d = primary(hosts);
    d.insert("electionId", oid(election));
    d.insert("setVersion", set_version);
    d
}

fn secondary(tags: Document) -> Document {
    doc! {
        "isWritablePrimary": false, "secondary": true, "setName": "rs", "tags": tags,
        "ok": 1.0,
    }
}

fn answer(doc: Document, rtt: Duration) -> Option<Reply> {
    Some(Reply {
        doc,
        rtt,
        at: Instant::now(),
    })
}

fn round(t: &mut TopologyState, replies: Vec<(&str, Option<Document>)>) -> Outcome {
    t.update(
        replies
            .into_iter()
            .map(|(a, d)| (a.to_owned(), d.and_then(|d| answer(d, ms(1)))))
            .collect(),
    )
}

fn state(seeds: &[&str]) -> TopologyState {
    let seeds = seeds.iter().map(|s| (*s).to_owned()).collect();
    TopologyState::new(seeds, None, HEARTBEAT)
}

fn pref(mode: ReadMode, tag_sets: Vec<Vec<(&str, &str)>>) -> ReadPref {
    ReadPref {
        mode,
        tag_sets: tag_sets
            .into_iter()
            .map(|s| s.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
            .collect(),
        max_staleness: None,
    }
}

fn stale_ok(mode: ReadMode, secs: u64) -> ReadPref {
    ReadPref {
        max_staleness: Some(Duration::from_secs(secs)),
        ..pref(mode, vec![])
    }
}

#[test]
fn primary_is_sticky_and_fails_over_in_host_order() {
    let mut t = state(&["a:1", "b:1", "c:1"]);
    let all = ["a:1", "b:1", "c:1", "d:1"];
    let out = round(
        &mut t,
        vec![
            ("a:1", Some(primary(&all))),
            ("b:1", Some(secondary(doc! {}))),
            ("c:1", None),
        ],
    );
    assert!(out.primary_changed && out.removed.is_empty());
    assert_eq!(t.primary(), Some("a:1"));
    assert_eq!(t.hosts(), all);
    // a goes away; b and d both claim to be writable with no election facts (equal):
    // b comes first in host order.
    let out = round(
        &mut t,
        vec![
            ("a:1", None),
            ("b:1", Some(primary(&all))),
            ("c:1", None),
            ("d:1", Some(primary(&all))),
        ],
    );
    assert!(out.primary_changed);
    assert_eq!(t.primary(), Some("b:1"));
    assert_eq!(t.member("d:1").unwrap().role, Role::Unknown);
    // a returns as a writable member too: b stays (no flapping).
    let out = round(
        &mut t,
        vec![("a:1", Some(primary(&all))), ("b:1", Some(primary(&all)))],
    );
    assert!(!out.primary_changed);
    assert_eq!(t.primary(), Some("b:1"));
    // Nobody answers: no primary, and the seeds are checked again.
    assert!(round(&mut t, vec![("a:1", None), ("b:1", None)]).primary_changed);
    assert_eq!(t.primary(), None);
    assert_eq!(t.hosts(), all);
}

#[test]
fn the_newer_election_wins_not_host_order() {
    let all = ["a:1", "b:1", "c:1"];
    let mut t = state(&all);
    // a and b both say they are primary: b was elected later (higher electionId).
    let out = round(
        &mut t,
        vec![
            ("a:1", Some(elected(&all, 1, 1))),
            ("b:1", Some(elected(&all, 2, 1))),
            ("c:1", Some(secondary(doc! {}))),
        ],
    );
    assert_eq!(t.primary(), Some("b:1"));
    assert_eq!(t.member("a:1").unwrap().role, Role::Unknown);
    assert_eq!(out.deposed, ["a:1"]);
    // b goes quiet; a still claims with its old election: stale, so no primary, and a
    // is never chosen for reads either.
    let out = round(
        &mut t,
        vec![
            ("a:1", Some(elected(&all, 1, 1))),
            ("b:1", None),
            ("c:1", Some(secondary(doc! {}))),
        ],
    );
    assert!(out.primary_changed);
    assert_eq!(t.primary(), None);
    assert_eq!(out.deposed, ["a:1"], "no write may reach a stale primary");
    let nearest = pref(ReadMode::Nearest, vec![]);
    assert_eq!(t.select(&nearest, 0), Route::Member("c:1".into()));
    assert_eq!(t.select(&nearest, 1), Route::Member("c:1".into()));
    // Same electionId, newer setVersion (a reconfig): accepted.
    let _ = round(
        &mut t,
        vec![("a:1", Some(elected(&all, 2, 2))), ("b:1", None)],
    );
    assert_eq!(t.primary(), Some("a:1"));
    // b returns with the old setVersion of the same election: stale now.
    let _ = round(
        &mut t,
        vec![
            ("a:1", Some(elected(&all, 2, 2))),
            ("b:1", Some(elected(&all, 2, 1))),
        ],
    );
    assert_eq!(t.primary(), Some("a:1"));
    // A new election makes b primary, whatever its setVersion (electionId first).
    let _ = round(
        &mut t,
        vec![
            ("a:1", Some(elected(&all, 2, 2))),
            ("b:1", Some(elected(&all, 3, 1))),
        ],
    );
    assert_eq!(t.primary(), Some("b:1"));
}

#[test]
fn before_wire_17_set_version_comes_first() {
    let all = ["a:1", "b:1"];
    let old = |election, version| {
        let mut d = elected(&all, election, version);
        d.insert("maxWireVersion", 13);
        d
    };
    let mut t = state(&all);
    let _ = round(
        &mut t,
        vec![("a:1", Some(old(5, 2))), ("b:1", Some(old(9, 1)))],
    );
    assert_eq!(t.primary(), Some("a:1"));
    // A member without election facts is never stale before wire 17.
    let mut bare = primary(&all);
    bare.insert("maxWireVersion", 13);
    let _ = round(&mut t, vec![("a:1", None), ("b:1", Some(bare))]);
    assert_eq!(t.primary(), Some("b:1"));
}

#[test]
fn hidden_members_and_arbiters_are_never_chosen() {
    let all = ["p:1", "h:1", "arb:1"];
    let mut t = state(&all);
    let mut hidden = secondary(doc! {"dc": "east"});
    hidden.insert("hidden", true);
    let arbiter = doc! {"arbiterOnly": true, "setName": "rs", "ok": 1.0};
    let mut p = primary(&["p:1"]);
    p.insert("arbiters", vec!["arb:1"]);
    let _ = round(
        &mut t,
        vec![
            ("p:1", Some(p)),
            ("h:1", Some(hidden)),
            ("arb:1", Some(arbiter)),
        ],
    );
    assert_eq!(t.member("arb:1").unwrap().role, Role::Arbiter);
    // The primary does not list the hidden member: it is removed.
    assert_eq!(t.hosts(), ["p:1", "arb:1"]);
    for i in 0..4 {
        let secondary = pref(ReadMode::Secondary, vec![]);
        assert_eq!(t.select(&secondary, i), Route::Unsatisfiable);
        assert_eq!(
            t.select(&pref(ReadMode::Nearest, vec![]), i),
            Route::Primary
        );
        let east = pref(ReadMode::SecondaryPreferred, vec![vec![("dc", "east")]]);
        assert_eq!(t.select(&east, i), Route::Primary);
    }
}

#[test]
fn removed_and_foreign_members_are_reported() {
    let mut t = state(&["a:1", "x:1"]);
    let out = round(
        &mut t,
        vec![
            ("a:1", Some(primary(&["a:1", "b:1", "c:1"]))),
            ("x:1", Some(secondary(doc! {}))),
        ],
    );
    // x is a seed the primary does not list.
    assert_eq!(out.removed, ["x:1"]);
    assert_eq!(t.hosts(), ["a:1", "b:1", "c:1"]);
    let out = round(
        &mut t,
        vec![
            ("a:1", Some(primary(&["a:1", "b:1"]))),
            ("b:1", Some(secondary(doc! {}))),
            ("c:1", Some(secondary(doc! {}))),
        ],
    );
    assert_eq!(out.removed, ["c:1"]);
    assert!(t.member("c:1").is_none());
    // A reply from a host no longer checked is ignored.
    let _ = round(
        &mut t,
        vec![
            ("a:1", Some(primary(&["a:1", "b:1"]))),
            ("c:1", Some(secondary(doc! {}))),
        ],
    );
    assert!(t.member("c:1").is_none());
    // A member of another set is removed too.
    let mut other = secondary(doc! {});
    other.insert("setName", "elsewhere");
    let out = round(
        &mut t,
        vec![
            ("a:1", Some(primary(&["a:1", "b:1"]))),
            ("b:1", Some(other)),
        ],
    );
    assert_eq!(out.removed, ["b:1"]);
    assert_eq!(t.hosts(), ["a:1"]);
}

#[test]
fn without_a_primary_secondaries_announce_members() {
    let mut t = state(&["s:1"]);
    let mut s = secondary(doc! {});
    s.insert("hosts", vec!["p:1", "s:1", "t:1"]);
    let out = round(&mut t, vec![("s:1", Some(s))]);
    assert!(out.removed.is_empty() && !out.primary_changed);
    assert_eq!(t.hosts(), ["s:1", "p:1", "t:1"]);
}

#[test]
fn a_secondary_known_by_another_name_is_replaced_by_the_names_it_lists() {
    // SDAM's "secondary with mismatched me": the seed alias goes, the set it lists stays.
    let mut t = state(&["alias:1"]);
    let mut s = secondary(doc! {});
    s.insert("me", "s:1");
    s.insert("hosts", vec!["p:1", "s:1"]);
    let out = round(&mut t, vec![("alias:1", Some(s.clone()))]);
    assert_eq!(out.removed, ["alias:1"]);
    assert_eq!(t.hosts(), ["p:1", "s:1"]);
    assert!(t.member("alias:1").is_none());
    // Under its own name (case aside) it stays.
    s.insert("me", "S:1");
    let out = round(&mut t, vec![("p:1", None), ("s:1", Some(s))]);
    assert!(out.removed.is_empty(), "{out:?}");
    assert_eq!(t.hosts(), ["p:1", "s:1"]);
    assert!(t.member("s:1").is_some());
}

#[test]
fn read_preference_modes_tags_and_latency_window() {
    let mut t = state(&["p:1", "s1:1", "s2:1"]);
    let _ = t.update(vec![
        ("p:1".into(), answer(primary(&[]), ms(1))),
        ("s1:1".into(), answer(secondary(doc! {"dc": "east"}), ms(2))),
        (
            "s2:1".into(),
            answer(secondary(doc! {"dc": "west"}), ms(40)),
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
    let _ = t.update(vec![
        ("p:1".into(), None),
        ("s1:1".into(), answer(secondary(doc! {}), ms(2))),
    ]);
    assert_eq!(t.select(&pref(ReadMode::PrimaryPreferred, vec![]), 0), s1);
    assert_eq!(t.select(&pref(ReadMode::SecondaryPreferred, vec![]), 0), s1);
}

/// A reply whose last write is `behind` before `wall` (the member's clock).
fn wrote(mut reply: Document, wall: i64, behind: Duration) -> Document {
    let at = wall - i64::try_from(behind.as_millis()).unwrap();
    reply.insert(
        "lastWrite",
        doc! {"lastWriteDate": DateTime::from_millis(at)},
    );
    reply
}

#[tokio::test(start_paused = true)]
async fn max_staleness_drops_secondaries_that_lag() {
    let all = ["p:1", "s1:1", "s2:1"];
    let mut t = state(&all);
    let wall = 1_800_000_000_000_i64;
    let zero = Duration::ZERO;
    let _ = round(
        &mut t,
        vec![
            ("p:1", Some(wrote(primary(&all), wall, zero))),
            ("s1:1", Some(wrote(secondary(doc! {}), wall, zero))),
            (
                "s2:1",
                Some(wrote(secondary(doc! {}), wall, Duration::from_secs(200))),
            ),
        ],
    );
    let s1 = Route::Member("s1:1".into());
    let lag = |t: &TopologyState, a: &str| t.staleness(t.member(a).unwrap()).unwrap();
    // s2 is 200 s behind, plus one heartbeat of uncertainty.
    assert_eq!(lag(&t, "s2:1"), Duration::from_secs(210));
    assert_eq!(lag(&t, "s1:1"), HEARTBEAT);
    for turn in 0..4 {
        assert_eq!(t.select(&stale_ok(ReadMode::Secondary, 120), turn), s1);
    }
    let lenient = stale_ok(ReadMode::Secondary, 300);
    let picks: Vec<Route> = (0..2).map(|i| t.select(&lenient, i)).collect();
    assert!(picks.contains(&Route::Member("s2:1".into())), "{picks:?}");

    // 100 s later the primary has written, s1 has not caught up (110 s behind) and s2
    // stopped answering.
    tokio::time::advance(Duration::from_secs(100)).await;
    let later = wall + 100_000;
    let _ = round(
        &mut t,
        vec![
            ("p:1", Some(wrote(primary(&all), later, zero))),
            ("s1:1", Some(wrote(secondary(doc! {}), wall, zero))),
            ("s2:1", None),
        ],
    );
    assert_eq!(lag(&t, "s1:1"), Duration::from_secs(110));
    assert_eq!(t.select(&stale_ok(ReadMode::Secondary, 120), 0), s1);
    let strict = |mode| stale_ok(mode, 90);
    assert_eq!(
        t.select(&strict(ReadMode::Secondary), 0),
        Route::Unsatisfiable
    );
    assert_eq!(
        t.select(&strict(ReadMode::SecondaryPreferred), 0),
        Route::Primary
    );
    assert_eq!(t.select(&strict(ReadMode::Nearest), 0), Route::Primary);
    assert_eq!(
        t.select(&strict(ReadMode::PrimaryPreferred), 0),
        Route::Primary
    );
}

#[tokio::test(start_paused = true)]
async fn max_staleness_without_a_primary_compares_secondaries() {
    let mut t = state(&["s1:1", "s2:1", "s3:1"]);
    let wall = 1_800_000_000_000_i64;
    let _ = round(
        &mut t,
        vec![
            (
                "s1:1",
                Some(wrote(secondary(doc! {}), wall, Duration::ZERO)),
            ),
            (
                "s2:1",
                Some(wrote(secondary(doc! {}), wall, Duration::from_secs(95))),
            ),
            // No lastWrite: cannot be shown fresh.
            ("s3:1", Some(secondary(doc! {}))),
        ],
    );
    let lag = |a: &str| t.staleness(t.member(a).unwrap());
    assert_eq!(lag("s2:1"), Some(Duration::from_secs(105)));
    assert_eq!(lag("s3:1"), None);
    for turn in 0..3 {
        let route = t.select(&stale_ok(ReadMode::Secondary, 100), turn);
        assert_eq!(route, Route::Member("s1:1".into()));
        let route = t.select(&stale_ok(ReadMode::PrimaryPreferred, 100), turn);
        assert_eq!(route, Route::Member("s1:1".into()));
    }
}

#[test]
fn max_staleness_below_heartbeat_plus_idle_write_is_refused() {
    let mut t = TopologyState::new(vec!["p:1".into()], None, Duration::from_secs(100));
    let _ = round(&mut t, vec![("p:1", Some(primary(&["p:1"])))]);
    assert_eq!(
        t.select(&stale_ok(ReadMode::Secondary, 100), 0),
        Route::Invalid(ReadPrefError::StalenessTooSmall { max: 100, min: 110 })
    );
    assert_eq!(
        t.select(&stale_ok(ReadMode::SecondaryPreferred, 110), 0),
        Route::Primary
    );
}

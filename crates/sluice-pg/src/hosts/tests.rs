#![allow(clippy::unwrap_used)]

use super::*;

fn view(role: Role, usable: bool, busy: u64) -> HostView {
    HostView { role, usable, busy }
}

#[test]
fn the_primary_takes_writes_and_the_least_busy_replica_reads() {
    let hosts = [
        view(Role::Primary, true, 0),
        view(Role::Replica, true, 3),
        view(Role::Replica, true, 1),
    ];
    assert_eq!(choose(&hosts, Target::Primary), Some(0));
    assert_eq!(choose(&hosts, Target::Replica), Some(2));
    assert_eq!(choose(&hosts, Target::PreferReplica), Some(2));
    assert_eq!(choose(&hosts, Target::Any), Some(0));
}

#[test]
fn banned_hosts_are_left_out_and_reads_fall_back_to_the_primary() {
    let hosts = [view(Role::Replica, false, 0), view(Role::Primary, true, 5)];
    assert_eq!(choose(&hosts, Target::Replica), None);
    assert_eq!(choose(&hosts, Target::PreferReplica), Some(1));
    // No primary known yet: the first unchecked host; a banned primary is no primary.
    let unknown = [view(Role::Replica, true, 0), view(Role::Unknown, true, 0)];
    assert_eq!(choose(&unknown, Target::Primary), Some(1));
    let down = [view(Role::Primary, false, 0), view(Role::Replica, true, 0)];
    assert_eq!(choose(&down, Target::Primary), None);
}

fn set(roles: &[HostRole], pg: &PostgresConfig) -> HostSet {
    let mut db = sluice_config::Config::from_toml_str(
        "[[postgres.databases]]\nname = \"d\"\nupstream = \"postgres://u:p@a,b/d\"\n",
    )
    .unwrap()
    .postgres
    .databases
    .remove(0);
    for (h, r) in db.hosts.iter_mut().zip(roles) {
        h.role = *r;
    }
    HostSet::new(&db, pg)
}

#[test]
fn checks_set_auto_roles_and_bans_follow_failures_and_lag() {
    let pg = PostgresConfig {
        max_replica_lag: Duration::from_secs(10),
        ..PostgresConfig::default()
    };
    let hosts = set(&[HostRole::Auto, HostRole::Auto], &pg);
    assert_eq!(hosts.role(0), Role::Unknown);
    let ok = |in_recovery, lag| CheckResult {
        in_recovery,
        lag: Duration::from_secs(lag),
    };
    assert_eq!(hosts.record(0, ok(false, 0)), None);
    assert_eq!(hosts.record(1, ok(true, 1)), None);
    assert_eq!(
        (hosts.role(0), hosts.role(1)),
        (Role::Primary, Role::Replica)
    );
    assert_eq!(hosts.choose(Target::PreferReplica, &[0, 0]), Some(1));
    // Lag past max_replica_lag is a reason to ban; a banned replica takes no reads.
    let why = hosts.record(1, ok(true, 30)).unwrap();
    hosts.ban(1, &why, &[]);
    assert_eq!(hosts.choose(Target::PreferReplica, &[0, 0]), Some(0));
    assert!(hosts.report()[1].banned_for > 0.0);
    // A promotion: the replica reports itself primary.
    hosts.record(0, ok(true, 0));
    assert_eq!(hosts.role(0), Role::Replica);
    // A configured role is kept whatever the check says.
    let fixed = set(&[HostRole::Primary, HostRole::Replica], &pg);
    fixed.record(0, ok(true, 0));
    assert_eq!(fixed.role(0), Role::Primary);
}

#[test]
fn session_attrs_map_to_targets() {
    assert_eq!(
        Target::from_session_attrs("read-write"),
        Some(Target::Primary)
    );
    assert_eq!(
        Target::from_session_attrs("Read-Only"),
        Some(Target::Replica)
    );
    assert_eq!(
        Target::from_session_attrs("prefer-standby"),
        Some(Target::PreferReplica)
    );
    assert_eq!(Target::from_session_attrs("any"), Some(Target::Any));
    assert_eq!(Target::from_session_attrs("sideways"), None);
}

//! Tests for the `member` and `role` labels of MongoDB pools.

use super::*;

#[test]
fn mongo_member_pools_carry_member_and_role() {
    let (registry, _) = registry();
    let counters = PoolCounters::new();
    counters.inc_error(ErrorKind::Connect);
    counters.record_checkout_wait(Duration::from_millis(3));
    let member = PoolSnapshot {
        name: "mongo@b:27017".into(),
        database: "mongo".into(),
        max: 5,
        size: 3,
        idle: 1,
        active: 1,
        waiting: 4,
        member: Some(crate::MemberInfo {
            address: "b:27017".into(),
            role: "secondary".into(),
        }),
        ..Default::default()
    }
    .with_counters(counters.snapshot());
    registry.register_mongo(Arc::new(Fixed(member)));
    let (text, s) = scrape(registry);
    let at = [("member", "b:27017"), ("role", "secondary")];
    let of = |metric: &str, extra: &[(&str, &str)]| {
        let labels: Vec<_> = at.iter().chain(extra).copied().collect();
        scalar(&s, metric, "mongo@b:27017", &labels)
    };
    assert_eq!(of("sluice_pool_open_connections", &[]), 3.0);
    assert_eq!(of("sluice_pool_connections", &[("state", "idle")]), 1.0);
    assert_eq!(of("sluice_pool_waiting_clients", &[]), 4.0);
    assert_eq!(of("sluice_pool_wait_seconds_count", &[]), 1.0);
    assert_eq!(of("sluice_pool_errors_total", &[("kind", "connect")]), 1.0);
    // PostgreSQL series keep their label set.
    assert!(text
        .contains("sluice_pool_open_connections{database=\"db1\",user=\"app\",pool=\"main\"} 4\n"));
    assert!(!text.contains("pool=\"main\",member="), "{text}");
}

/// A pool whose snapshot never changes.
struct Fixed(PoolSnapshot);

impl PoolSource for Fixed {
    fn snapshot(&self) -> PoolSnapshot {
        self.0.clone()
    }
}

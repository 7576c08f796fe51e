//! Measures one scrape of 200 pools (printed, never asserted): run with
//! `cargo test -p sluice-stats --test scrape_cost -- --ignored --nocapture`.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_stats::{ErrorKind, Exposition, PoolCounters, PoolSnapshot, PoolSource, Registry};

struct Pool {
    name: String,
    counters: PoolCounters,
}

impl PoolSource for Pool {
    fn snapshot(&self) -> PoolSnapshot {
        PoolSnapshot {
            name: self.name.clone(),
            database: format!("db_{}", self.name),
            user: "app".into(),
            mode: "transaction".into(),
            max: 20,
            size: 7,
            idle: 3,
            active: 4,
            waiting: 1,
            longest_wait_seconds: 0.5,
            ..Default::default()
        }
        .with_counters(self.counters.snapshot())
    }
}

#[test]
#[ignore = "measurement: prints the time of one scrape"]
fn scrape_200_pools() {
    let registry = Registry::new();
    for i in 0..200 {
        let pool = Pool {
            // One name needing every label escape.
            name: if i == 0 {
                "we\"ird\\na\nme".into()
            } else {
                format!("pool{i}")
            },
            counters: PoolCounters::new(),
        };
        for ms in [0, 1, 3, 30, 700] {
            pool.counters
                .record_checkout_wait(Duration::from_millis(ms * i));
        }
        pool.counters.inc_error(ErrorKind::Timeout);
        registry.register(Arc::new(pool));
    }
    let registry = Arc::new(registry);
    let exposition = Exposition::new(registry).unwrap();
    let scrape = || exposition.render().unwrap();
    let text = scrape();
    let runs = 50u32;
    let started = Instant::now();
    for _ in 0..runs {
        std::hint::black_box(scrape());
    }
    let each = started.elapsed() / runs;
    println!(
        "one scrape of 200 pools: {each:?} ({} bytes, mean of {runs})",
        text.len()
    );
    if let Some(path) = std::env::var_os("SCRAPE_DUMP") {
        std::fs::write(path, &text).unwrap();
    }
}

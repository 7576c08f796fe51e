//! The pool core driven by a fake connector on paused time: hand-off order, timeouts,
//! cancellation, resizing, PAUSE, shutdown and the numbers the statistics read.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::{CheckoutError, Connector, Limits, Pool, Pooled};

/// A connection of the fake: its number and whether the "server" still has it open.
struct FakeConn {
    n: usize,
    alive: Arc<AtomicBool>,
}

#[derive(Default)]
struct Fake {
    opened: AtomicUsize,
    /// Each connect takes this long.
    delay: Mutex<Duration>,
    /// `Some(transient)`: connects fail.
    fail: Mutex<Option<bool>>,
    conns: Mutex<Vec<Arc<AtomicBool>>>,
}

impl Connector for Arc<Fake> {
    type Conn = FakeConn;
    type Error = String;
    type Holder = String;

    async fn connect(&self, limit: Duration) -> Result<FakeConn, String> {
        let delay = *self.delay.lock();
        if delay > limit {
            tokio::time::sleep(limit).await;
            return Err("connect timed out".into());
        }
        tokio::time::sleep(delay).await;
        if let Some(transient) = *self.fail.lock() {
            return Err(if transient {
                "refused (transient)"
            } else {
                "bad password"
            }
            .into());
        }
        let n = self.opened.fetch_add(1, Ordering::SeqCst) + 1;
        let alive = Arc::new(AtomicBool::new(true));
        self.conns.lock().push(alive.clone());
        Ok(FakeConn { n, alive })
    }

    fn is_transient(&self, error: &String) -> bool {
        error.contains("transient") || error.contains("timed out")
    }

    fn is_reusable(&self, conn: &FakeConn) -> bool {
        conn.alive.load(Ordering::SeqCst)
    }

    fn ident(&self, conn: &FakeConn) -> i64 {
        conn.n as i64
    }
}

fn pool(max: usize, timeout_ms: u64) -> (Pool<Arc<Fake>>, Arc<Fake>) {
    let fake = Arc::new(Fake::default());
    let limits = Limits {
        max_size: max,
        timeout: Duration::from_millis(timeout_ms),
        ..Limits::default()
    };
    (Pool::new("test", fake.clone(), limits), fake)
}

fn who(name: &str) -> Arc<String> {
    Arc::new(name.to_owned())
}

/// Lets spawned tasks run until they block.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

async fn take(pool: &Pool<Arc<Fake>>) -> Pooled<Arc<Fake>> {
    match pool.checkout(&who("t")).await {
        Ok(c) => c,
        Err(e) => panic!("checkout failed: {e}"),
    }
}

#[tokio::test(start_paused = true)]
async fn idle_connection_is_reused_most_recent_first() {
    let (pool, fake) = pool(3, 1000);
    let a = take(&pool).await;
    let b = take(&pool).await;
    let (na, nb) = (a.n, b.n);
    a.checkin();
    b.checkin();
    let c = pool.try_checkout(&who("t")).expect("idle connection ready");
    assert_eq!(c.n, nb, "the most recently returned goes first");
    assert_ne!(na, nb);
    assert_eq!(fake.opened.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn returned_connection_goes_to_the_longest_waiter() {
    let (pool, _) = pool(1, 10_000);
    let held = take(&pool).await;
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for name in ["first", "second", "third"] {
        let (pool, order) = (pool.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let c = pool.checkout(&who(name)).await.map_err(|e| e.to_string())?;
            order.lock().push(name);
            tokio::time::sleep(Duration::from_millis(10)).await;
            c.checkin();
            Ok::<_, String>(())
        }));
        settle().await;
    }
    assert_eq!(pool.occupancy().waiting, 3);
    held.checkin();
    for t in tasks {
        t.await.expect("task").expect("checkout");
    }
    assert_eq!(*order.lock(), ["first", "second", "third"]);
    assert_eq!(pool.occupancy().size, 1, "one connection served all");
}

#[tokio::test(start_paused = true)]
async fn timed_out_waiters_leave_the_queue_at_once() {
    let (pool, _) = pool(1, 1000);
    let held = take(&pool).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            pool.checkout(&who("w")).await.map(|_| ())
        }));
    }
    settle().await;
    let during = pool.occupancy();
    assert_eq!(during.waiting, 8);
    tokio::time::advance(Duration::from_millis(1100)).await;
    for t in tasks {
        assert!(matches!(
            t.await.expect("task"),
            Err(CheckoutError::Timeout { .. })
        ));
    }
    tokio::time::advance(Duration::from_secs(3)).await;
    let after = pool.occupancy();
    assert_eq!(after.waiting, 0, "nobody waits any more");
    assert_eq!(after.longest_wait, Duration::ZERO);
    assert_eq!(after.active, 1);
    assert_eq!(
        pool.counters()
            .snapshot()
            .errors
            .get(sluice_stats::ErrorKind::Timeout),
        8
    );
    drop(held);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_waiter_frees_its_place_at_once() {
    let (pool, _) = pool(1, 10_000);
    let held = take(&pool).await;
    let p = pool.clone();
    let waiter = tokio::spawn(async move { p.checkout(&who("w")).await.map(|_| ()) });
    settle().await;
    assert_eq!(pool.occupancy().waiting, 1);
    waiter.abort();
    settle().await;
    assert_eq!(pool.occupancy().waiting, 0);
    held.checkin();
    assert_eq!(
        pool.occupancy().idle,
        1,
        "the connection went idle, not to the gone waiter"
    );
}

#[tokio::test(start_paused = true)]
async fn a_grant_to_a_waiter_that_left_goes_to_the_next() {
    let (pool, _) = pool(1, 10_000);
    let held = take(&pool).await;
    let p = pool.clone();
    let first = tokio::spawn(async move { p.checkout(&who("first")).await.map(|_| ()) });
    settle().await;
    let p = pool.clone();
    let second = tokio::spawn(async move {
        let c = p
            .checkout(&who("second"))
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(c.n)
    });
    settle().await;
    // The connection is sent to `first`, which is cancelled before it runs again.
    held.checkin();
    first.abort();
    let n = tokio::time::timeout(Duration::from_secs(1), second)
        .await
        .expect("second got the connection")
        .expect("task")
        .expect("checkout");
    assert_eq!(n, 1);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_connect_frees_its_slot() {
    let (pool, fake) = pool(1, 10_000);
    *fake.delay.lock() = Duration::from_secs(3);
    let p = pool.clone();
    let c = tokio::spawn(async move { p.checkout(&who("w")).await.map(|_| ()) });
    settle().await;
    assert_eq!(
        pool.occupancy().size,
        1,
        "the slot is taken while connecting"
    );
    c.abort();
    settle().await;
    assert_eq!(pool.occupancy().size, 0);
}

#[tokio::test(start_paused = true)]
async fn a_refused_login_frees_the_slot_and_is_not_retried_for_a_while() {
    let (pool, fake) = pool(2, 10_000);
    pool.set_limits(Limits {
        login_retry: Duration::from_secs(5),
        ..pool.limits()
    });
    *fake.fail.lock() = Some(false);
    assert!(matches!(
        pool.checkout(&who("w")).await,
        Err(CheckoutError::Connect(_))
    ));
    assert_eq!(pool.occupancy().size, 0);
    assert!(pool.health().is_err());
    *fake.fail.lock() = None;
    // Still blocked: the cached refusal, without an attempt.
    assert!(matches!(
        pool.checkout(&who("w")).await,
        Err(CheckoutError::Connect(_))
    ));
    assert_eq!(fake.opened.load(Ordering::SeqCst), 0);
    tokio::time::advance(Duration::from_secs(6)).await;
    let c = take(&pool).await;
    assert!(pool.health().is_ok());
    c.checkin();
}

#[tokio::test(start_paused = true)]
async fn transient_failures_are_retried_within_the_timeout_when_asked() {
    let (pool, fake) = pool(1, 5_000);
    pool.set_limits(Limits {
        retry_transient: true,
        ..pool.limits()
    });
    *fake.fail.lock() = Some(true);
    let p = pool.clone();
    let c = tokio::spawn(async move { p.checkout(&who("w")).await.map(|c| c.n) });
    tokio::time::sleep(Duration::from_millis(500)).await;
    *fake.fail.lock() = None;
    let n = c
        .await
        .expect("task")
        .expect("retried until the upstream came back");
    assert_eq!(n, 1);
}

#[tokio::test(start_paused = true)]
async fn growing_the_pool_serves_waiters_at_once() {
    let (pool, _) = pool(1, 10_000);
    let _held = take(&pool).await;
    let p = pool.clone();
    let waiter = tokio::spawn(async move { p.checkout(&who("w")).await.map(|c| c.n) });
    settle().await;
    pool.set_limits(Limits {
        max_size: 2,
        ..pool.limits()
    });
    let n = tokio::time::timeout(Duration::from_secs(1), waiter)
        .await
        .expect("served")
        .expect("task")
        .expect("checkout");
    assert_eq!(n, 2);
}

#[tokio::test(start_paused = true)]
async fn shrinking_the_pool_closes_the_surplus_as_it_returns() {
    let (pool, _) = pool(3, 10_000);
    let a = take(&pool).await;
    let b = take(&pool).await;
    let c = take(&pool).await;
    c.checkin();
    pool.set_limits(Limits {
        max_size: 1,
        ..pool.limits()
    });
    assert_eq!(pool.occupancy().size, 2, "the idle surplus closed at once");
    a.checkin();
    assert_eq!(
        pool.occupancy().size,
        1,
        "a returned surplus connection closes"
    );
    b.checkin();
    let occ = pool.occupancy();
    assert_eq!((occ.size, occ.idle, occ.max), (1, 1, 1));
}

#[tokio::test(start_paused = true)]
async fn pause_waits_for_checkouts_and_holds_new_ones() {
    let (pool, _) = pool(2, 10_000);
    let held = take(&pool).await;
    let p = pool.clone();
    let pause = tokio::spawn(async move { p.pause(Duration::from_secs(5)).await.is_ok() });
    settle().await;
    assert!(pool.is_paused());
    let p = pool.clone();
    let newcomer = tokio::spawn(async move { p.checkout(&who("new")).await.map(|_| ()) });
    settle().await;
    assert_eq!(pool.occupancy().waiting, 1, "held by PAUSE");
    held.checkin();
    assert!(
        pause.await.expect("task"),
        "PAUSE completed once the checkout returned"
    );
    assert!(!newcomer.is_finished());
    pool.resume();
    newcomer
        .await
        .expect("task")
        .expect("checkout after RESUME");
}

#[tokio::test(start_paused = true)]
async fn pause_gives_up_after_its_bound_naming_who_still_runs() {
    let (pool, _) = pool(2, 10_000);
    let _held = pool
        .checkout(&who("reporting-job"))
        .await
        .expect("checkout");
    let running = pool
        .pause(Duration::from_secs(2))
        .await
        .expect_err("bound ran out");
    assert_eq!(
        running.iter().map(|h| h.as_str()).collect::<Vec<_>>(),
        ["reporting-job"]
    );
    assert!(!pool.is_paused(), "a failed PAUSE is undone");
}

#[tokio::test(start_paused = true)]
async fn a_held_client_that_leaves_is_no_longer_counted() {
    let (pool, _) = pool(2, 10_000);
    let p = pool.clone();
    let _pause = tokio::spawn(async move { p.pause(Duration::from_secs(60)).await.is_ok() });
    settle().await;
    let p = pool.clone();
    let held = tokio::spawn(async move { p.checkout(&who("w")).await.map(|_| ()) });
    settle().await;
    assert_eq!(pool.occupancy().waiting, 1);
    held.abort();
    settle().await;
    assert_eq!(pool.occupancy().waiting, 0);
}

#[tokio::test(start_paused = true)]
async fn close_fails_waiters_at_once() {
    let (pool, _) = pool(1, 60_000);
    let held = take(&pool).await;
    let p = pool.clone();
    let waiter = tokio::spawn(async move { p.checkout(&who("w")).await.map(|_| ()) });
    settle().await;
    pool.close();
    let r = tokio::time::timeout(Duration::from_millis(10), waiter)
        .await
        .expect("woken at once")
        .expect("task");
    assert!(matches!(r, Err(CheckoutError::Closed)));
    held.checkin();
    assert_eq!(
        pool.occupancy().size,
        0,
        "a connection returned to a closed pool closes"
    );
}

#[tokio::test(start_paused = true)]
async fn dead_idle_connections_are_replaced() {
    let (pool, fake) = pool(1, 10_000);
    take(&pool).await.checkin();
    fake.conns.lock()[0].store(false, Ordering::SeqCst);
    assert!(
        pool.try_checkout(&who("t")).is_none(),
        "the fast path does not hand out a dead one"
    );
    let c = take(&pool).await;
    assert_eq!(c.n, 2);
    assert_eq!(pool.occupancy().size, 1);
}

#[tokio::test(start_paused = true)]
async fn maintenance_keeps_min_size_and_retires_long_idle_connections() {
    let (pool, fake) = pool(4, 10_000);
    pool.set_limits(Limits {
        min_size: 1,
        idle_timeout: Some(Duration::from_secs(10)),
        ..pool.limits()
    });
    pool.maintain().await;
    assert_eq!((pool.occupancy().size, pool.occupancy().idle), (1, 1));
    let a = take(&pool).await;
    let b = take(&pool).await;
    a.checkin();
    b.checkin();
    assert_eq!(pool.occupancy().idle, 2);
    tokio::time::advance(Duration::from_secs(11)).await;
    pool.maintain().await;
    assert_eq!(pool.occupancy().size, 1, "down to min_size, not below");
    fake.conns
        .lock()
        .iter()
        .for_each(|c| c.store(false, Ordering::SeqCst));
    pool.maintain().await;
    pool.maintain().await;
    assert_eq!(pool.occupancy().size, 1, "the dead one was replaced");
}

#[tokio::test(start_paused = true)]
async fn lifetime_closes_connections_on_return() {
    let (pool, _) = pool(1, 10_000);
    pool.set_limits(Limits {
        lifetime: Some(Duration::from_secs(10)),
        ..pool.limits()
    });
    let c = take(&pool).await;
    tokio::time::advance(Duration::from_secs(11)).await;
    c.checkin();
    assert_eq!(pool.occupancy().size, 0);
}

#[tokio::test(start_paused = true)]
async fn saturation_numbers_describe_who_waits_and_who_holds() {
    let (pool, _) = pool(2, 60_000);
    let _a = pool.checkout(&who("a")).await.expect("a");
    tokio::time::advance(Duration::from_secs(1)).await;
    let _b = pool.checkout(&who("b")).await.expect("b");
    let mut waiters = Vec::new();
    for _ in 0..3 {
        let p = pool.clone();
        waiters.push(tokio::spawn(async move {
            p.checkout(&who("w")).await.map(|_| ())
        }));
        settle().await;
    }
    tokio::time::advance(Duration::from_secs(2)).await;
    let occ = pool.occupancy();
    assert_eq!(
        (occ.max, occ.size, occ.idle, occ.active, occ.waiting),
        (2, 2, 0, 2, 3)
    );
    assert!(occ.longest_wait >= Duration::from_secs(2));
    let (age, holder) = occ.oldest.expect("a holds the oldest");
    assert_eq!(holder.as_str(), "a");
    assert!(age >= Duration::from_secs(3));
    assert_eq!(pool.conns().len(), 2);
}

/// Two pools of one budget: `max` each, sharing `budget` connections.
fn budget_pools(
    max: usize,
    budget: usize,
) -> (Pool<Arc<Fake>>, Pool<Arc<Fake>>, Arc<crate::Budget>) {
    let budget = crate::Budget::new("db", budget);
    let limits = Limits {
        max_size: max,
        timeout: Duration::from_millis(1000),
        ..Limits::default()
    };
    let make = |name: &str| {
        let fake = Arc::new(Fake::default());
        Pool::with_budgets(name, fake, limits.clone(), vec![budget.clone()])
    };
    (make("a"), make("b"), budget)
}

#[tokio::test(start_paused = true)]
async fn a_budget_caps_its_pools_together_and_a_closed_connection_frees_a_permit() {
    let (a, b, budget) = budget_pools(5, 2);
    let (a1, a2) = (take(&a).await, take(&a).await);
    assert_eq!(budget.used(), 2);
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move { b.checkout(&who("w")).await })
    };
    settle().await;
    assert_eq!(
        b.occupancy().waiting,
        1,
        "a client waiting for the budget is waiting"
    );
    a1.discard();
    let b1 = waiter
        .await
        .expect("task")
        .expect("checkout after a permit freed");
    assert_eq!(b1.n, 1);
    assert_eq!(budget.used(), 2);
    assert_eq!(b.occupancy().waiting, 0);
    // Nothing frees: the wait ends at the pool timeout.
    let start = tokio::time::Instant::now();
    let e = a
        .checkout(&who("late"))
        .await
        .err()
        .expect("no room in the budget");
    assert!(matches!(e, CheckoutError::Timeout { .. }), "{e}");
    assert!(start.elapsed() >= Duration::from_millis(1000));
    drop((a2, b1));
    assert_eq!(budget.used(), 0, "every permit is given back");
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_of_another_pool_is_closed_to_make_room() {
    let (a, b, budget) = budget_pools(5, 1);
    take(&a).await.checkin();
    assert_eq!(a.occupancy().idle, 1);
    let c = take(&b).await;
    assert_eq!(a.occupancy().size, 0, "a's idle connection made room");
    assert_eq!(budget.used(), 1);
    drop(c);
}

#[tokio::test(start_paused = true)]
async fn a_connection_returned_to_its_own_pool_ends_a_budget_wait() {
    let (a, _b, budget) = budget_pools(5, 1);
    let held = take(&a).await;
    let waiter = {
        let a = a.clone();
        tokio::spawn(async move { a.checkout(&who("w")).await })
    };
    settle().await;
    held.checkin();
    let c = waiter
        .await
        .expect("task")
        .expect("the returned connection");
    assert_eq!(c.n, 1, "reused, not a new connection");
    assert_eq!(a.occupancy().size, 1);
    assert_eq!(budget.used(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_connection_going_idle_in_one_pool_wakes_a_budget_wait_in_another() {
    let (a, b, budget) = budget_pools(5, 1);
    let held = take(&a).await;
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move { b.checkout(&who("w")).await })
    };
    settle().await;
    held.checkin();
    let c = waiter
        .await
        .expect("task")
        .expect("room made by closing a's idle one");
    assert_eq!(a.occupancy().size, 0);
    assert_eq!(b.occupancy().size, 1);
    assert_eq!(budget.used(), 1);
    drop(c);
}

#[tokio::test(start_paused = true)]
async fn a_client_that_waited_reserve_timeout_opens_a_reserve_connection() {
    let fake = Arc::new(Fake::default());
    let limits = Limits {
        max_size: 1,
        timeout: Duration::from_millis(1000),
        reserve_size: 1,
        reserve_timeout: Duration::from_millis(100),
        ..Limits::default()
    };
    let pool = Pool::new("reserve", fake.clone(), limits);
    let held = take(&pool).await;
    let start = tokio::time::Instant::now();
    let reserve = take(&pool).await;
    assert!(
        start.elapsed() >= Duration::from_millis(100),
        "the reserve opened early"
    );
    assert_eq!((reserve.n, pool.occupancy().size), (2, 2));
    // The reserve is spent: the next client waits, and gets a returned connection.
    let waiter = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.checkout(&who("w")).await })
    };
    settle().await;
    assert_eq!(pool.occupancy().waiting, 1);
    reserve.checkin();
    let third = waiter
        .await
        .expect("task")
        .expect("handed the reserve connection");
    assert_eq!(third.n, 2);
    // With nobody waiting, a connection above max_size closes as it comes back.
    third.checkin();
    assert_eq!(pool.occupancy().size, 1);
    held.checkin();
    assert_eq!(pool.occupancy().idle, 1);
}

//! RAII guards for every change a waiting checkout makes to the pool's state. A checkout
//! future may be dropped at any `.await` (its client left, shutdown began, the timeout
//! fired); each guard undoes its change on drop, so nothing is counted that no longer waits
//! and nothing a waiter was given is lost.

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::connector::Connector;
use crate::pool::Inner;
use crate::state::Grant;

/// A place in the queue. On drop it leaves the queue; a grant that arrived after the waiter
/// stopped listening goes to the next waiter (or back to the pool).
pub(crate) struct QueuePlace<'a, K: Connector> {
    pub pool: &'a Inner<K>,
    pub id: u64,
    /// `None` once the grant was taken.
    pub rx: Option<oneshot::Receiver<Grant<K::Conn>>>,
}

impl<K: Connector> QueuePlace<'_, K> {
    /// Waits for the grant; `None`: the pool closed.
    pub async fn granted(&mut self) -> Option<Grant<K::Conn>> {
        let rx = self.rx.as_mut()?;
        let grant = rx.await.ok();
        self.rx = None;
        grant
    }
}

impl<K: Connector> Drop for QueuePlace<'_, K> {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        let to_close = {
            let mut st = self.pool.state.lock();
            if st.dequeue(self.id) {
                return;
            }
            // Already picked: the grant is in the channel (or on its way under this lock,
            // which we hold, so it is there now).
            rx.close();
            match rx.try_recv() {
                Ok(Grant::Conn(entry)) => st.checkin(entry, Instant::now()),
                Ok(Grant::Slot) => {
                    st.free_slot();
                    None
                }
                Err(_) => None,
            }
        };
        drop(to_close);
        // The connection is idle now: a checkout of another pool of its budgets may close it.
        self.pool.budgets.iter().for_each(|b| b.wake());
    }
}

/// A slot counted in `total` for a connection being opened. On drop (the connect failed
/// or was abandoned) the slot is freed, and a waiter may open a connection in it.
pub(crate) struct Slot<'a, K: Connector> {
    pub pool: &'a Inner<K>,
    pub armed: bool,
}

impl<'a, K: Connector> Slot<'a, K> {
    /// A slot the caller already counted in `total`.
    pub fn taken(pool: &'a Inner<K>) -> Self {
        Slot { pool, armed: true }
    }

    /// The connection is open and counted by its entry now.
    pub fn fill(mut self) {
        self.armed = false;
    }
}

impl<K: Connector> Drop for Slot<'_, K> {
    fn drop(&mut self) {
        if self.armed {
            self.pool.state.lock().free_slot();
        }
    }
}

/// A client held by PAUSE: counted as waiting while it exists.
pub(crate) struct Hold<'a, K: Connector> {
    pub pool: &'a Inner<K>,
    pub id: Option<u64>,
}

impl<K: Connector> Drop for Hold<'_, K> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.pool.state.lock().held.remove(&id);
        }
    }
}

/// A checkout counted as waiting while it waits for a budget's permit (it holds a slot, so
/// it is not in the queue).
pub(crate) struct BudgetWait<'a, K: Connector> {
    pool: &'a Inner<K>,
}

impl<'a, K: Connector> BudgetWait<'a, K> {
    pub fn new(pool: &'a Inner<K>) -> Self {
        pool.state.lock().budget_waiting += 1;
        for b in &pool.budgets {
            b.waiting.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        BudgetWait { pool }
    }
}

impl<K: Connector> Drop for BudgetWait<'_, K> {
    fn drop(&mut self) {
        self.pool.state.lock().budget_waiting -= 1;
        for b in &self.pool.budgets {
            b.waiting.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

//! Batched wake-ups. Fan-out runs on whichever thread received the event (the Redis reader, or
//! a publisher), while each connection's task lives on one actix worker thread. Waking 10,000
//! tasks from a foreign thread costs 10,000 contended pushes into the workers' remote run
//! queues; instead, fan-out collects the wakers per owning worker and hands each worker the
//! whole batch with one notification, and a small task on that worker wakes them locally.
//!
//! Only wake-ups are deferred: the items themselves are already in the connections' queues (under
//! the channel's lock), so ordering and exactness do not depend on this module.

use std::cell::RefCell;
use std::sync::Arc;
use std::task::Waker;

use parking_lot::Mutex;
use tokio::sync::Notify;

/// Connections woken before the flusher lets other ready tasks run.
const WAKE_CHUNK: usize = 128;

/// The wake-up mailbox of one worker thread.
pub struct WorkerWaker {
    pending: Mutex<Vec<Waker>>,
    notify: Notify,
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<WorkerWaker>>> = const { RefCell::new(None) };
}

impl WorkerWaker {
    /// Makes the calling thread a worker with its own mailbox and starts the task that empties
    /// it. Must run inside the worker's runtime and `LocalSet` (actix calls the app factory
    /// there); a second call on the same thread is a no-op.
    pub fn install() {
        if Self::current().is_some() {
            return;
        }
        let waker = Arc::new(Self {
            pending: Mutex::new(Vec::new()),
            notify: Notify::new(),
        });
        CURRENT.with(|c| *c.borrow_mut() = Some(waker.clone()));
        // The task lives exactly as long as the worker's runtime, like the mailbox.
        tokio::task::spawn_local(async move {
            let mut batch = Vec::new();
            loop {
                let notified = waker.notify.notified();
                std::mem::swap(&mut batch, &mut *waker.pending.lock());
                if batch.is_empty() {
                    notified.await;
                    continue;
                }
                // In chunks, yielding in between: everything else that became ready meanwhile
                // (a publish request, a new subscriber, a WebSocket command) then waits for one
                // chunk of deliveries, not for all of this worker's connections.
                while !batch.is_empty() {
                    let take = batch.len().min(WAKE_CHUNK);
                    for w in batch.drain(..take) {
                        w.wake();
                    }
                    tokio::task::yield_now().await;
                }
            }
        });
    }

    /// The calling thread's mailbox, if it is a worker.
    pub fn current() -> Option<Arc<Self>> {
        CURRENT.with(|c| c.borrow().clone())
    }
}

/// Wakers collected during one fan-out, grouped by owning worker; delivered by [`Self::flush`]
/// after the channel lock is released.
#[derive(Default)]
pub struct WakeBatch {
    per_worker: Vec<(Arc<WorkerWaker>, Vec<Waker>)>,
}

impl std::fmt::Debug for WakeBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WakeBatch")
            .field("workers", &self.per_worker.len())
            .finish()
    }
}

impl WakeBatch {
    /// Defers `waker` to its owner, or wakes it at once when it has none (tasks outside actix
    /// workers, e.g. in tests).
    pub fn add(&mut self, owner: Option<&Arc<WorkerWaker>>, waker: Waker) {
        let Some(owner) = owner else {
            waker.wake();
            return;
        };
        match self
            .per_worker
            .iter_mut()
            .find(|(w, _)| Arc::ptr_eq(w, owner))
        {
            Some((_, wakers)) => wakers.push(waker),
            None => self.per_worker.push((owner.clone(), vec![waker])),
        }
    }

    /// Hands every worker its wakers with one notification each.
    pub fn flush(&mut self) {
        for (worker, wakers) in self.per_worker.drain(..) {
            worker.pending.lock().extend(wakers);
            worker.notify.notify_one();
        }
    }
}

impl Drop for WakeBatch {
    fn drop(&mut self) {
        // Never lose a wake-up, even if a caller forgot to flush.
        self.flush();
    }
}

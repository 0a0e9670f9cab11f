//! Per-worker delivery. Each actix worker thread runs one small task that delivers the delivery
//! groups scheduled on it (see `group`) into its own connections' queues, then wakes those
//! connections locally, in chunks, so other ready work (a publish request, a new subscriber, a
//! WebSocket command) never waits for a whole fan-out.

use std::cell::RefCell;
use std::sync::Arc;
use std::task::Waker;

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::group::Group;

/// Connections woken before the delivery task lets other ready tasks run.
const WAKE_CHUNK: usize = 128;

/// One worker thread's delivery mailbox.
pub struct Worker {
    jobs: Mutex<Vec<Arc<Group>>>,
    notify: Notify,
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<Worker>>> = const { RefCell::new(None) };
}

impl Worker {
    /// Makes the calling thread a worker and starts its delivery task. Must run inside the
    /// worker's runtime and `LocalSet` (actix calls the app factory there); a second call on the
    /// same thread is a no-op.
    pub fn install() {
        if Self::current().is_some() {
            return;
        }
        let worker = Arc::new(Self {
            jobs: Mutex::new(Vec::new()),
            notify: Notify::new(),
        });
        CURRENT.with(|c| *c.borrow_mut() = Some(worker.clone()));
        crate::rt::mark_worker_thread();
        // The task lives exactly as long as the worker's runtime, like the mailbox.
        tokio::task::spawn_local(async move {
            let mut jobs = Vec::new();
            let mut wakers: Vec<Waker> = Vec::new();
            loop {
                let notified = worker.notify.notified();
                std::mem::swap(&mut jobs, &mut *worker.jobs.lock());
                if jobs.is_empty() {
                    notified.await;
                    continue;
                }
                for group in jobs.drain(..) {
                    group.deliver(&mut wakers);
                }
                while !wakers.is_empty() {
                    let take = wakers.len().min(WAKE_CHUNK);
                    for w in wakers.drain(..take) {
                        w.wake();
                    }
                    tokio::task::yield_now().await;
                }
            }
        });
    }

    /// The calling thread's worker, if it is one.
    pub fn current() -> Option<Arc<Self>> {
        CURRENT.with(|c| c.borrow().clone())
    }

    /// A worker whose delivery loop does not run: tests decide when it delivers.
    #[cfg(test)]
    pub fn detached() -> Arc<Self> {
        Arc::new(Self {
            jobs: Mutex::new(Vec::new()),
            notify: Notify::new(),
        })
    }

    /// Runs the scheduled deliveries now, on the calling thread (tests).
    #[cfg(test)]
    pub fn deliver_now(&self) {
        let mut wakers = Vec::new();
        for group in std::mem::take(&mut *self.jobs.lock()) {
            group.deliver(&mut wakers);
        }
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Asks this worker to deliver `group`'s pending events.
    pub fn schedule(&self, group: Arc<Group>) {
        self.jobs.lock().push(group);
        self.notify.notify_one();
    }
}

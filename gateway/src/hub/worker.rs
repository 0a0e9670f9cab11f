//! Per-worker delivery. Each actix worker thread runs one small task that delivers the delivery
//! groups scheduled on it (see `group`): straight to idle connections' sockets (`direct`), or
//! into their queues, then wakes those connections locally, in chunks, so other ready work (a
//! publish request, a new subscriber, a WebSocket command) never waits for a whole fan-out.
//!
//! Rounds are paced (`server.delivery_pace`): after a round that took T, the next starts no
//! sooner than pace × T after it. A round costs about one system call per connection whatever
//! it carries, so under load each write then carries more events: fewer calls per delivery, and
//! CPU left for everything else. An event never waits longer than the pause, which is a
//! fraction of the time writing one event to everyone takes anyway; at low rates rounds are
//! short and events seldom meet a pause at all.

use std::cell::RefCell;
use std::sync::Arc;
use std::task::Waker;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

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
    pub fn install(pace: f64) {
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
            let mut not_before: Option<Instant> = None;
            loop {
                let notified = worker.notify.notified();
                if let Some(at) = not_before.take() {
                    tokio::time::sleep_until(at).await;
                }
                std::mem::swap(&mut jobs, &mut *worker.jobs.lock());
                if jobs.is_empty() {
                    notified.await;
                    continue;
                }
                let started = Instant::now();
                for group in jobs.drain(..) {
                    group.deliver(&mut wakers);
                }
                if pace > 0.0 {
                    let ended = Instant::now();
                    not_before = Some(ended + (ended - started).mul_f64(pace));
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

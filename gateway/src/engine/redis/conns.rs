//! Command connections. Multiplexed connections pipeline concurrent requests, so a handful
//! serve the whole instance; what matters is *where* each one's driver task runs.
//!
//! - On an actix worker thread, commands use that thread's own connection, opened there, so its
//!   driver runs on the same thread as the request: a publish or a history read never hops to
//!   another thread and back (two cross-thread wake-ups, each an `eventfd` write and a context
//!   switch).
//! - Anywhere else (the pub/sub task, tests, the CLI) commands share a few pooled connections,
//!   round-robin.
//!
//! Whatever broke the pub/sub connection (a Redis restart, a failover) broke these too, so
//! [`Connections::forget`] drops them all; each is reopened by its next command.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use redis::aio::MultiplexedConnection;

use super::EngineError;

/// Identifies one engine's connections among several engines in one process (tests run many).
static NEXT_ENGINE: AtomicU64 = AtomicU64::new(0);

/// A thread's connection for one engine: its generation and the connection. Behind an async
/// lock so that a burst of commands on a cold thread opens one connection, not one each.
type LocalSlot = Arc<tokio::sync::Mutex<Option<(u64, MultiplexedConnection)>>>;

thread_local! {
    /// This thread's connections, one slot per engine id.
    static LOCAL: RefCell<Vec<(u64, LocalSlot)>> = const { RefCell::new(Vec::new()) };
}

/// Where a command's connection came from, so a broken one can be dropped.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Slot {
    /// This worker thread's own connection.
    Local,
    /// One of the shared connections.
    Shared(usize),
}

/// The engine's command connections; clones share them.
#[derive(Clone)]
pub(crate) struct Connections {
    id: u64,
    /// Bumped by `forget`: thread-local connections of an older generation are stale.
    generation: Arc<AtomicU64>,
    shared: Arc<[parking_lot::Mutex<Option<MultiplexedConnection>>]>,
    next: Arc<AtomicUsize>,
    client: redis::Client,
    pool: deadpool_redis::Pool,
}

impl Connections {
    /// `shared` connections for non-worker threads, taken from `pool` when first needed;
    /// worker threads open theirs with `client`.
    pub(crate) fn new(client: redis::Client, pool: deadpool_redis::Pool, shared: usize) -> Self {
        Self {
            id: NEXT_ENGINE.fetch_add(1, Ordering::Relaxed),
            generation: Arc::new(AtomicU64::new(0)),
            shared: (0..shared.max(1))
                .map(|_| parking_lot::Mutex::new(None))
                .collect(),
            next: Arc::new(AtomicUsize::new(0)),
            client,
            pool,
        }
    }

    /// Forgets every cached connection; the next commands open fresh ones.
    pub(crate) fn forget(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        for slot in self.shared.iter() {
            slot.lock().take();
        }
    }

    /// Drops the connection a failed command used, so the next one gets a healthy one.
    pub(crate) fn drop_broken(&self, slot: Slot) {
        match slot {
            Slot::Local => {
                if let Ok(mut slot) = self.local_slot().try_lock() {
                    slot.take();
                }
            }
            Slot::Shared(i) => {
                if let Some(s) = self.shared.get(i) {
                    s.lock().take();
                }
            }
        }
    }

    /// A connection for one command (see the module doc for which).
    pub(crate) async fn get(&self) -> Result<(Slot, MultiplexedConnection), EngineError> {
        if crate::rt::on_worker_thread() {
            return self.local().await.map(|c| (Slot::Local, c));
        }
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.shared.len();
        if let Some(conn) = self.shared[index].lock().clone() {
            return Ok((Slot::Shared(index), conn));
        }
        // The pool creates, checks and replaces connections; checking one out per command would
        // cost its recycle check (UNWATCH + PING, a round trip) every time, hence the cache.
        let pooled = self
            .pool
            .get()
            .await
            .map_err(|e| EngineError::Unavailable(e.to_string()))?;
        let conn: MultiplexedConnection = (*pooled).clone();
        *self.shared[index].lock() = Some(conn.clone());
        Ok((Slot::Shared(index), conn))
    }

    /// This thread's slot for this engine.
    fn local_slot(&self) -> LocalSlot {
        LOCAL.with(|l| {
            let mut l = l.borrow_mut();
            if let Some((_, slot)) = l.iter().find(|(id, _)| *id == self.id) {
                return slot.clone();
            }
            let slot = LocalSlot::default();
            l.push((self.id, slot.clone()));
            slot
        })
    }

    /// This worker thread's connection, opened on this thread when missing or stale.
    async fn local(&self) -> Result<MultiplexedConnection, EngineError> {
        let generation = self.generation.load(Ordering::Acquire);
        let slot = self.local_slot();
        let mut guard = slot.lock().await;
        if let Some((g, conn)) = guard.as_ref()
            && *g == generation
        {
            return Ok(conn.clone());
        }
        guard.take();
        let conn = self
            .client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| EngineError::Unavailable(e.to_string()))?;
        *guard = Some((generation, conn.clone()));
        Ok(conn)
    }
}

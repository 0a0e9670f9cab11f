//! Command connections. Multiplexed connections pipeline concurrent requests, so a handful
//! serve the whole instance; what matters is *where* each one's driver task runs.
//!
//! - On an actix worker thread, commands use that thread's own connection, opened there, so its
//!   driver runs on the same thread as the request: a publish or a history read never hops to
//!   another thread and back (two cross-thread wake-ups, each an `eventfd` write and a context
//!   switch).
//! - Anywhere else (the pub/sub task, tests, the CLI) commands share a few connections,
//!   round-robin.
//!
//! Every connection is opened through the [`Dialer`], so with Sentinel each (re)open finds the
//! current primary. Whatever broke the pub/sub connection (a Redis restart, a failover) broke
//! these too, and a `READONLY` reply means they all point at a demoted node, so
//! [`Connections::forget`] drops them all; each is reopened by its next command.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::EngineError;
use super::conn::Conn;
use super::dial::Dialer;

/// Identifies one engine's connections among several engines in one process (tests run many).
static NEXT_ENGINE: AtomicU64 = AtomicU64::new(0);

/// One cached connection and the generation it was opened in. Behind an async lock so that a
/// burst of commands on a cold slot opens one connection, not one each.
type Cell = Arc<tokio::sync::Mutex<Option<(u64, Conn)>>>;

thread_local! {
    /// This thread's connections, one cell per engine id.
    static LOCAL: RefCell<Vec<(u64, Cell)>> = const { RefCell::new(Vec::new()) };
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
    /// Bumped by `forget`: connections of an older generation are stale.
    generation: Arc<AtomicU64>,
    shared: Arc<[Cell]>,
    next: Arc<AtomicUsize>,
    dialer: Dialer,
}

impl Connections {
    /// `shared` connections for non-worker threads; every connection is opened with `dialer`
    /// when first needed.
    pub(crate) fn new(dialer: Dialer, shared: usize) -> Self {
        Self {
            id: NEXT_ENGINE.fetch_add(1, Ordering::Relaxed),
            generation: Arc::new(AtomicU64::new(0)),
            shared: (0..shared.max(1)).map(|_| Cell::default()).collect(),
            next: Arc::new(AtomicUsize::new(0)),
            dialer,
        }
    }

    /// Forgets every cached connection; the next commands open fresh ones.
    pub(crate) fn forget(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Drops the connection a failed command used, so the next one gets a healthy one.
    pub(crate) fn drop_broken(&self, slot: Slot) {
        let cell = match slot {
            Slot::Local => self.local_cell(),
            Slot::Shared(i) => match self.shared.get(i) {
                Some(cell) => cell.clone(),
                None => return,
            },
        };
        // Busy means another command is reopening it right now.
        if let Ok(mut cell) = cell.try_lock() {
            cell.take();
        }
    }

    /// A connection for one command (see the module doc for which).
    pub(crate) async fn get(&self) -> Result<(Slot, Conn), EngineError> {
        let (slot, cell) = if crate::rt::on_worker_thread() {
            (Slot::Local, self.local_cell())
        } else {
            let index = self.next.fetch_add(1, Ordering::Relaxed) % self.shared.len();
            (Slot::Shared(index), self.shared[index].clone())
        };
        self.open(&cell).await.map(|conn| (slot, conn))
    }

    /// This thread's cell for this engine.
    fn local_cell(&self) -> Cell {
        LOCAL.with(|l| {
            let mut l = l.borrow_mut();
            if let Some((_, cell)) = l.iter().find(|(id, _)| *id == self.id) {
                return cell.clone();
            }
            let cell = Cell::default();
            l.push((self.id, cell.clone()));
            cell
        })
    }

    /// The connection in `cell`, (re)opened on this thread when missing or stale.
    async fn open(&self, cell: &Cell) -> Result<Conn, EngineError> {
        let generation = self.generation.load(Ordering::Acquire);
        let mut guard = cell.lock().await;
        if let Some((g, conn)) = guard.as_ref()
            && *g == generation
        {
            return Ok(conn.clone());
        }
        guard.take();
        let conn = self
            .dialer
            .command_connection()
            .await
            .map_err(|e| EngineError::Unavailable(e.to_string()))?;
        *guard = Some((generation, conn.clone()));
        Ok(conn)
    }
}

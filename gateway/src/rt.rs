//! Facts about the calling thread that layers at every depth need: whether it is one of the
//! server's worker threads (each runs its own single-threaded runtime). Kept here, below both
//! the hub and the engine, so neither has to import the other to ask.

use std::cell::Cell;

thread_local! {
    static WORKER: Cell<bool> = const { Cell::new(false) };
}

/// Marks the calling thread as a server worker (called once per worker at start-up).
pub fn mark_worker_thread() {
    WORKER.with(|w| w.set(true));
}

/// Whether the calling thread is a server worker: work started here stays on this thread.
pub fn on_worker_thread() -> bool {
    WORKER.with(Cell::get)
}

//! Shared application state handed to every handler, and the per-instance connection limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::auth::Authenticator;
use crate::config::Settings;
use crate::hub::Hub;
use crate::metrics::Metrics;

/// What handlers need; cloned into each actix worker.
#[derive(Clone)]
pub struct AppState {
    /// Local fan-out and the engine behind it.
    pub hub: Hub,
    /// The validated settings.
    pub settings: Arc<Settings>,
    /// This instance's metrics.
    pub metrics: Metrics,
    /// Streaming connections admitted so far.
    pub limiter: Arc<ConnectionLimiter>,
    /// Token verification for subscribers.
    pub auth: Arc<Authenticator>,
}

/// Counts streaming connections so the instance can answer 503 instead of degrading for all.
pub struct ConnectionLimiter {
    open: AtomicUsize,
    max: usize,
}

impl ConnectionLimiter {
    /// Admits at most `max` connections at once.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            max,
        })
    }

    /// A slot for one more connection, released when the guard drops; `None` at the limit.
    pub fn try_acquire(
        self: &Arc<Self>,
        metrics: &Metrics,
        transport: &'static str,
    ) -> Option<ConnectionGuard> {
        let admitted = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok();
        if !admitted {
            return None;
        }
        metrics.connections.with_label_values(&[transport]).inc();
        metrics
            .connections_total
            .with_label_values(&[transport])
            .inc();
        Some(ConnectionGuard {
            limiter: self.clone(),
            metrics: metrics.clone(),
            transport,
        })
    }
}

/// One admitted connection.
pub struct ConnectionGuard {
    limiter: Arc<ConnectionLimiter>,
    metrics: Metrics,
    transport: &'static str,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.limiter.open.fetch_sub(1, Ordering::AcqRel);
        self.metrics
            .connections
            .with_label_values(&[self.transport])
            .dec();
    }
}

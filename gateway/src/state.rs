//! Shared application state handed to every handler, and the per-instance connection limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use shared::ErrorCode;

use crate::auth::Authenticator;
use crate::auth_hook::AuthHook;
use crate::client_ip::TrustedProxies;
use crate::config::Settings;
use crate::error::ApiError;
use crate::hub::Hub;
use crate::ip_limits::{IpLimits, IpSlot};
use crate::metrics::Metrics;
use crate::publish::Publishers;

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
    /// The publish API keys and their rates.
    pub publishers: Arc<Publishers>,
    /// The backend authorization hook, when configured.
    pub hook: Option<Arc<AuthHook>>,
    /// Whose word about a client's address is taken.
    pub trusted: Arc<TrustedProxies>,
    /// Streams per client address.
    pub ip_limits: Arc<IpLimits>,
    /// Open feeds of the status page (`/admin/feed`), bounded by `admin.max_feeds`.
    pub admin_feeds: Arc<crate::admin::Feeds>,
}

/// The streaming transports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Server-Sent Events.
    Sse,
    /// WebSocket.
    Ws,
    /// Long poll (`GET /poll`): holds a slot while it waits.
    Poll,
}

impl Transport {
    /// The metric label.
    pub const fn label(self) -> &'static str {
        match self {
            Self::Sse => "sse",
            Self::Ws => "ws",
            Self::Poll => "poll",
        }
    }
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

    /// A slot for one more connection, released when the guard drops; at the limit, the 503
    /// the client gets (counted as a rejection).
    pub fn admit(
        self: &Arc<Self>,
        metrics: &Metrics,
        transport: Transport,
    ) -> Result<ConnectionGuard, ApiError> {
        let transport = transport.label();
        let admitted = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok();
        if !admitted {
            metrics
                .rejected
                .with_label_values(&[ErrorCode::ConnectionLimit])
                .inc();
            return Err(ApiError::unavailable(
                ErrorCode::ConnectionLimit,
                "this instance is at its connection limit",
                1,
            ));
        }
        metrics.connections.with_label_values(&[transport]).inc();
        metrics
            .connections_total
            .with_label_values(&[transport])
            .inc();
        Ok(ConnectionGuard {
            limiter: self.clone(),
            metrics: metrics.clone(),
            transport,
            _ip: None,
        })
    }
}

/// One admitted connection.
pub struct ConnectionGuard {
    limiter: Arc<ConnectionLimiter>,
    metrics: Metrics,
    transport: &'static str,
    /// The client address's slot, when per-address limits are on.
    _ip: Option<IpSlot>,
}

impl ConnectionGuard {
    /// The guard holding the client address's slot too, so both are released together.
    pub fn with_ip(mut self, slot: Option<IpSlot>) -> Self {
        self._ip = slot;
        self
    }
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

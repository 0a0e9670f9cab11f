//! Prometheus metrics. One registry per gateway instance, created by `run` and passed down, so
//! several gateways can live in one test process without sharing counters. Every labelled
//! counter with a bounded label set starts with all its series at zero ([`labels`]).

mod instance;
pub mod labels;
mod presence;

use std::sync::Arc;

use shared::{Disconnect, ErrorCode};

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use labels::{EngineErrorKind, PublishApi, ResumeOutcome, ResyncReason, SeenBy, Transport};

pub use instance::{COMMIT, VERSION};
pub use presence::PresenceMetrics;

/// All metrics of one instance; cheap to clone.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

/// The individual metrics; fields are public so call sites stay one line.
pub struct Inner {
    registry: Registry,
    /// Open client connections by transport.
    pub connections: IntGaugeVec,
    /// Connections accepted since start by transport.
    pub connections_total: IntCounterVec,
    /// Channel subscriptions held by connections on this instance.
    pub subscriptions: IntGauge,
    /// Channels this instance watches in the engine.
    pub channels: IntGauge,
    /// Events published through this instance, by API.
    pub published: IntCounterVec,
    /// Live events received from the engine.
    pub received: IntCounter,
    /// Events written to clients, by transport.
    pub delivered: IntCounterVec,
    /// Publish (history store clock) to write (this instance's clock), seconds.
    pub delivery_latency: Histogram,
    /// Resume attempts by outcome.
    pub resumes: IntCounterVec,
    /// Gap notices sent to clients.
    pub gaps: IntCounter,
    /// Clients disconnected because their queue overflowed.
    pub slow_consumers: IntCounter,
    /// Publishers' connections moved to the publish thread (`front::publish_thread`).
    pub publish_thread_connections: IntCounter,
    /// Connections closed by the gateway, by reason.
    pub disconnects: IntCounterVec,
    /// History reads sent to the engine.
    pub history_reads: IntCounter,
    /// History reads served by joining an identical read already in flight.
    pub history_reads_shared: IntCounter,
    /// Channel re-synchronisations from history, by reason.
    pub resyncs: IntCounterVec,
    /// Positions seen beyond the store's head, by who saw them (`instance`: Redis lost writes
    /// this instance delivered; `client`: a resume from such a position, or a forged cursor).
    pub lost_history: IntCounterVec,
    /// Engine failures by kind.
    pub engine_errors: IntCounterVec,
    /// Pub/sub reconnects.
    pub engine_reconnects: IntCounter,
    /// 1 while the engine's live path is connected.
    pub engine_up: IntGauge,
    /// Rejected requests by reason.
    pub rejected: IntCounterVec,
    /// WebSocket frames by direction.
    pub ws_frames: IntCounterVec,
    /// WebSocket closes by code (`client` when the client went away first).
    pub ws_closes: IntCounterVec,
    /// Presence entries, writes and join/leave events.
    pub presence: PresenceMetrics,
    /// Pre-resolved series for per-write paths (a labelled lookup hashes and locks).
    pub hot: Hot,
}

/// Series touched on every write, resolved once.
pub struct Hot {
    /// `gateway_messages_delivered_total{transport="sse"}`.
    pub delivered_sse: IntCounter,
    /// `gateway_messages_delivered_total{transport="ws"}`.
    pub delivered_ws: IntCounter,
    /// `gateway_ws_frames_total{direction="in"}`.
    pub ws_frames_in: IntCounter,
    /// `gateway_ws_frames_total{direction="out"}`.
    pub ws_frames_out: IntCounter,
}

impl Metrics {
    /// Samples the delivery latency of a batch written now whose oldest live event was
    /// published at `published_ms` (Unix ms); every transport and fan-out's own writes use it.
    pub fn observe_delivery(&self, published_ms: u64) {
        let now = crate::engine::memory::unix_millis();
        self.delivery_latency
            .observe(now.saturating_sub(published_ms) as f64 / 1000.0);
    }
}

impl std::ops::Deref for Metrics {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    register(r, c)
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    register(r, c)
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    register(r, g)
}

fn register<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    // Names are unique literals in this file; a clash is a programming error caught by the
    // first test that builds a `Metrics`.
    r.register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("registering metric: {e}"));
    c
}

impl Metrics {
    /// A fresh registry with every metric registered (and label sets pre-created so dashboards
    /// see zeros instead of missing series).
    pub fn new() -> Self {
        let r = Registry::new();
        let connections = IntGaugeVec::new(
            Opts::new(
                "gateway_connections",
                "Open client connections by transport.",
            ),
            &["transport"],
        )
        .unwrap_or_else(|e| panic!("metric: {e}"));
        let connections = register(&r, connections);
        let latency = Histogram::with_opts(
            HistogramOpts::new(
                "gateway_delivery_latency_seconds",
                "Time from publish (history store clock) to the write to a client (this instance's clock).",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )
        .unwrap_or_else(|e| panic!("metric: {e}"));
        let delivered = counter_vec(
            &r,
            "gateway_messages_delivered_total",
            "Events written to clients by transport.",
            &["transport"],
        );
        let ws_frames = counter_vec(
            &r,
            "gateway_ws_frames_total",
            "WebSocket frames by direction.",
            &["direction"],
        );
        let hot = Hot {
            delivered_sse: delivered.with_label_values(&["sse"]),
            delivered_ws: delivered.with_label_values(&["ws"]),
            ws_frames_in: ws_frames.with_label_values(&["in"]),
            ws_frames_out: ws_frames.with_label_values(&["out"]),
        };
        let inner = Inner {
            hot,
            presence: PresenceMetrics::new(&r),
            connections,
            connections_total: counter_vec(
                &r,
                "gateway_connections_accepted_total",
                "Client connections accepted by transport.",
                &["transport"],
            ),
            subscriptions: gauge(
                &r,
                "gateway_subscriptions",
                "Channel subscriptions held by connections on this instance.",
            ),
            channels: gauge(
                &r,
                "gateway_channels",
                "Channels this instance watches in the engine.",
            ),
            published: counter_vec(
                &r,
                "gateway_messages_published_total",
                "Events published through this instance by API.",
                &["api"],
            ),
            received: counter(
                &r,
                "gateway_messages_received_total",
                "Live events received from the engine.",
            ),
            delivered,
            delivery_latency: register(&r, latency),
            resumes: counter_vec(
                &r,
                "gateway_resumes_total",
                "Resume attempts by outcome.",
                &["outcome"],
            ),
            gaps: counter(&r, "gateway_gaps_total", "Gap notices sent to clients."),
            slow_consumers: counter(
                &r,
                "gateway_slow_consumer_disconnects_total",
                "Clients disconnected because their queue overflowed.",
            ),
            publish_thread_connections: counter(
                &r,
                "gateway_publish_thread_connections_total",
                "Connections whose first request was POST /publish, moved to the publish thread.",
            ),
            disconnects: counter_vec(
                &r,
                "gateway_disconnects_total",
                "Connections closed by the gateway by reason.",
                &["reason"],
            ),
            history_reads: counter(
                &r,
                "gateway_history_reads_total",
                "History reads sent to the engine.",
            ),
            history_reads_shared: counter(
                &r,
                "gateway_history_reads_shared_total",
                "History reads served by an identical read already in flight.",
            ),
            resyncs: counter_vec(
                &r,
                "gateway_channel_resyncs_total",
                "Channel re-synchronisations from history by reason.",
                &["reason"],
            ),
            lost_history: counter_vec(
                &r,
                "gateway_history_lost_total",
                "Positions seen beyond the history store's head (lost writes or forged cursors).",
                &["seen_by"],
            ),
            engine_errors: counter_vec(
                &r,
                "gateway_engine_errors_total",
                "Engine failures by kind.",
                &["kind"],
            ),
            engine_reconnects: counter(
                &r,
                "gateway_engine_reconnects_total",
                "Pub/sub reconnects.",
            ),
            engine_up: gauge(
                &r,
                "gateway_engine_up",
                "1 while the engine's live path is connected.",
            ),
            rejected: counter_vec(
                &r,
                "gateway_requests_rejected_total",
                "Rejected requests by reason.",
                &["reason"],
            ),
            ws_frames,
            ws_closes: counter_vec(
                &r,
                "gateway_ws_closes_total",
                "WebSocket closes by code; client: the client went away first.",
                &["code"],
            ),
            registry: r,
        };
        inner.precreate();
        instance::register_build_info(&inner.registry);
        instance::register_process(&inner.registry);
        Self(Arc::new(inner))
    }

    /// Increments `gateway_engine_errors_total{kind}`.
    pub fn engine_error(&self, kind: EngineErrorKind) {
        self.engine_errors.with_label_values(&[kind.as_str()]).inc();
    }

    /// Increments `gateway_resumes_total{outcome}`.
    pub fn resume(&self, outcome: ResumeOutcome) {
        self.resumes.with_label_values(&[outcome.as_str()]).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec only fails for invalid metric families, which `new` rules out.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Inner {
    /// Creates every series of every bounded label set at zero.
    fn precreate(&self) {
        for t in Transport::ALL {
            self.connections.with_label_values(&[t.as_str()]);
            self.connections_total.with_label_values(&[t.as_str()]);
            self.delivered.with_label_values(&[t.as_str()]);
        }
        for a in PublishApi::ALL {
            self.published.with_label_values(&[a.as_str()]);
        }
        for o in ResumeOutcome::ALL {
            self.resumes.with_label_values(&[o.as_str()]);
        }
        for r in ResyncReason::ALL {
            self.resyncs.with_label_values(&[r.as_str()]);
        }
        for s in SeenBy::ALL {
            self.lost_history.with_label_values(&[s.as_str()]);
        }
        for k in EngineErrorKind::ALL {
            self.engine_errors.with_label_values(&[k.as_str()]);
        }
        for c in ErrorCode::ALL {
            self.rejected.with_label_values(&[c.as_str()]);
        }
        for d in Disconnect::ALL {
            self.disconnects.with_label_values(&[d.label()]);
            self.ws_closes.with_label_values(&[&d.code().to_string()]);
        }
        self.ws_closes.with_label_values(&[WS_CLOSE_BY_CLIENT]);
        for d in ["in", "out"] {
            self.ws_frames.with_label_values(&[d]);
        }
    }
}

/// The `code` of `gateway_ws_closes_total` when the client closed (or vanished) first.
pub const WS_CLOSE_BY_CLIENT: &str = "client";

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests;

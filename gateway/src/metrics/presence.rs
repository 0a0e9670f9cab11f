//! Presence metrics: how many entries this instance holds, its writes to the engine and their
//! failures, the join and leave events it published, and the entries of dead instances it
//! expired. Every series exists at zero from the start; labelled ones are resolved here once.

use prometheus::{IntCounter, IntGauge, Registry};

use super::{counter, counter_vec, gauge};

/// The presence series of one instance.
pub struct PresenceMetrics {
    /// `gateway_presence_entries`: entries this instance's connections hold (one per
    /// connection and tracked channel).
    pub entries: IntGauge,
    /// `gateway_presence_writes_total{outcome="ok"}`: presence calls the engine ran.
    pub writes_ok: IntCounter,
    /// `gateway_presence_writes_total{outcome="failed"}`: presence calls that failed (the
    /// next refresh repairs the entries).
    pub writes_failed: IntCounter,
    /// `gateway_presence_events_total{kind="join"}`: `presence.join` events published.
    pub joins: IntCounter,
    /// `gateway_presence_events_total{kind="leave"}`: `presence.leave` events published.
    pub leaves: IntCounter,
    /// `gateway_presence_events_failed_total`: join or leave events that could not be
    /// published (in-memory engine; with Redis they fail with their write).
    pub events_failed: IntCounter,
    /// `gateway_presence_expired_total`: entries past their deadline (of instances that died
    /// without cleaning up) this instance removed.
    pub expired: IntCounter,
}

impl PresenceMetrics {
    /// Registers every presence series in `r`, at zero.
    pub(super) fn new(r: &Registry) -> Self {
        let writes = counter_vec(
            r,
            "gateway_presence_writes_total",
            "Presence calls to the engine (one per channel with changes or refreshed) by outcome.",
            &["outcome"],
        );
        let events = counter_vec(
            r,
            "gateway_presence_events_total",
            "presence.join and presence.leave events published by kind.",
            &["kind"],
        );
        Self {
            entries: gauge(
                r,
                "gateway_presence_entries",
                "Presence entries held by this instance's connections.",
            ),
            writes_ok: writes.with_label_values(&["ok"]),
            writes_failed: writes.with_label_values(&["failed"]),
            joins: events.with_label_values(&["join"]),
            leaves: events.with_label_values(&["leave"]),
            events_failed: counter(
                r,
                "gateway_presence_events_failed_total",
                "Presence join or leave events that could not be published.",
            ),
            expired: counter(
                r,
                "gateway_presence_expired_total",
                "Presence entries of instances that stopped refreshing them, removed by this instance.",
            ),
        }
    }
}

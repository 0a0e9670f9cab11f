//! One feed's view of the instance, taken once a second: current gauges, rates and latency
//! percentiles over the last interval (differences from the previous sample, so each feed keeps
//! its own previous sample), the engine's topology and health, and the busiest channels.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus::core::Metric;
use serde::Serialize;
use shared::{ChannelName, Position};

use super::topology::{self, Health, Topology};
use crate::hub::ChannelLoad;
use crate::metrics::Metrics;
use crate::state::AppState;

/// Longest wait for the engine's ping in one sample.
const PING_TIMEOUT: Duration = Duration::from_millis(800);

/// What the page receives every second.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// When it was taken, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Open streaming connections by transport.
    pub connections: Connections,
    /// Channel subscriptions held by this instance's connections.
    pub subscriptions: i64,
    /// Channels this instance watches.
    pub channels: i64,
    /// Events published through this instance per second (`None` on the first sample).
    pub publish_rate: Option<f64>,
    /// Live events received from the engine per second.
    pub receive_rate: Option<f64>,
    /// Events written to clients per second.
    pub delivery_rate: Option<f64>,
    /// Delivery latency over the last interval, milliseconds (`None` without deliveries).
    pub latency_ms: Latency,
    /// How the store is reached.
    pub topology: Topology,
    /// How the store is doing.
    pub health: Health,
    /// The channels with the most connections here, busiest first.
    pub busiest: Vec<Busy>,
}

/// Open connections by transport.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Connections {
    /// Server-Sent Events streams.
    pub sse: i64,
    /// WebSockets.
    pub ws: i64,
}

/// Delivery latency percentiles.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
}

/// One row of the busiest-channels table.
#[derive(Debug, Clone, Serialize)]
pub struct Busy {
    /// The channel.
    pub channel: String,
    /// Connections attached here.
    pub subscribers: usize,
    /// Events per second over the last interval (`None` when not listed last time).
    pub events_per_second: Option<f64>,
}

/// Counters as they were at the previous sample.
struct Previous {
    at: Instant,
    published: u64,
    received: u64,
    delivered: u64,
    /// Cumulative delivery-latency bucket counts, then the total count.
    latency: Vec<u64>,
    heads: HashMap<ChannelName, Position>,
}

/// Takes one feed's snapshots; remembers the previous one for rates.
pub struct Sampler {
    top: usize,
    topology: Topology,
    previous: Option<Previous>,
}

impl Sampler {
    /// A sampler listing `top` busiest channels.
    pub fn new(state: &AppState, top: usize) -> Self {
        Self {
            top,
            topology: Topology::of(&state.settings),
            previous: None,
        }
    }

    /// The next snapshot (one channel scan and one engine ping).
    pub async fn sample(&mut self, state: &AppState) -> Snapshot {
        let health = topology::health(&state.hub, PING_TIMEOUT).await;
        let metrics = &state.metrics;
        let now = Instant::now();
        let published = total_published(metrics);
        let received = metrics.received.get();
        let delivered = metrics.hot.delivered_sse.get() + metrics.hot.delivered_ws.get();
        let (bounds, latency) = latency_counts(metrics);
        let busiest = state.hub.busiest(self.top);
        let previous = self.previous.as_ref();
        let seconds = previous.map(|p| now.duration_since(p.at).as_secs_f64().max(1e-3));
        let rate = |current: u64, before: fn(&Previous) -> u64| {
            previous
                .zip(seconds)
                .map(|(p, s)| current.saturating_sub(before(p)) as f64 / s)
        };
        let window: Option<Vec<u64>> = previous.map(|p| {
            latency
                .iter()
                .zip(p.latency.iter().chain(std::iter::repeat(&0)))
                .map(|(now, before)| now.saturating_sub(*before))
                .collect()
        });
        let quantile = |q| window.as_deref().and_then(|w| quantile(&bounds, w, q));
        let snapshot = Snapshot {
            at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            connections: Connections {
                sse: metrics.connections.with_label_values(&["sse"]).get(),
                ws: metrics.connections.with_label_values(&["ws"]).get(),
            },
            subscriptions: metrics.subscriptions.get(),
            channels: metrics.channels.get(),
            publish_rate: rate(published, |p| p.published),
            receive_rate: rate(received, |p| p.received),
            delivery_rate: rate(delivered, |p| p.delivered),
            latency_ms: Latency {
                p50: quantile(0.5).map(|s| s * 1000.0),
                p99: quantile(0.99).map(|s| s * 1000.0),
            },
            topology: self.topology.clone(),
            health,
            busiest: busiest
                .iter()
                .map(|load| Busy {
                    channel: load.channel.to_string(),
                    subscribers: load.subscribers,
                    events_per_second: events_per_second(load, previous, seconds),
                })
                .collect(),
        };
        self.previous = Some(Previous {
            at: now,
            published,
            received,
            delivered,
            latency,
            heads: busiest
                .into_iter()
                .filter_map(|load| Some((load.channel, load.head?)))
                .collect(),
        });
        snapshot
    }
}

fn events_per_second(
    load: &ChannelLoad,
    previous: Option<&Previous>,
    seconds: Option<f64>,
) -> Option<f64> {
    let before = previous?.heads.get(&load.channel)?;
    let now = load.head?;
    // A new epoch restarts the offsets: no rate across it.
    (now.epoch == before.epoch)
        .then(|| now.offset.saturating_sub(before.offset) as f64 / seconds.unwrap_or(1.0))
}

/// Publishes through this instance by any API, summed over the counter's labels.
fn total_published(metrics: &Metrics) -> u64 {
    use prometheus::core::Collector;
    metrics
        .published
        .collect()
        .iter()
        .flat_map(|family| family.get_metric())
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

/// The delivery-latency histogram's upper bounds (seconds) and its cumulative counts per bound,
/// followed by the total count (the `+Inf` bucket).
fn latency_counts(metrics: &Metrics) -> (Vec<f64>, Vec<u64>) {
    let m = metrics.delivery_latency.metric();
    let h = m.get_histogram();
    let buckets = h.get_bucket();
    let bounds = buckets.iter().map(|b| b.upper_bound()).collect();
    let mut counts: Vec<u64> = buckets.iter().map(|b| b.cumulative_count()).collect();
    counts.push(h.get_sample_count());
    (bounds, counts)
}

/// The `q` quantile (seconds) of a window of cumulative bucket counts (`counts` has one entry
/// per bound plus the total), interpolated linearly inside its bucket like Prometheus'
/// `histogram_quantile`; `None` for an empty window. Beyond the last bound it is that bound.
pub fn quantile(bounds: &[f64], counts: &[u64], q: f64) -> Option<f64> {
    let total = *counts.last()?;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    let mut lower = 0.0;
    for (bound, &count) in bounds.iter().zip(counts) {
        if count as f64 >= rank {
            let inside = count.saturating_sub(below);
            let fraction = if inside == 0 {
                1.0
            } else {
                (rank - below as f64) / inside as f64
            };
            return Some(lower + (bound - lower) * fraction);
        }
        below = count;
        lower = *bound;
    }
    bounds.last().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_inside_their_bucket() {
        let bounds = [0.001, 0.01, 0.1];
        // 10 under 1 ms, 10 more under 10 ms, none slower; total 20.
        let counts = [10, 20, 20, 20];
        let p50 = quantile(&bounds, &counts, 0.5).unwrap();
        assert!((p50 - 0.001).abs() < 1e-9, "{p50}");
        let p75 = quantile(&bounds, &counts, 0.75).unwrap();
        assert!((p75 - 0.0055).abs() < 1e-9, "{p75}");
        assert_eq!(quantile(&bounds, &[0, 0, 0, 0], 0.5), None);
        // Everything beyond the last bound: the last bound.
        assert_eq!(quantile(&bounds, &[0, 0, 0, 5], 0.99), Some(0.1));
    }
}

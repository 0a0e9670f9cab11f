//! Shared counters and latency histograms. Subscribers account locally and flush small batches
//! (one per socket read) into one of a few sharded histograms, so no lock is taken per event
//! and connections on different threads rarely meet on the same lock.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use hdrhistogram::Histogram;

/// Largest latency recorded, microseconds (runs are capped at 10 minutes).
pub const MAX_LATENCY_US: u64 = 600_000_000;
const SHARDS: usize = 8;
const BATCH: usize = 64;

/// A new latency histogram (µs, 3 significant digits).
pub fn new_histogram() -> Histogram<u64> {
    match Histogram::new_with_bounds(1, MAX_LATENCY_US, 3) {
        Ok(h) => h,
        // Constant, valid bounds: hdrhistogram only refuses low < 1, high < 2 low, sigfig > 5.
        Err(e) => unreachable!("histogram bounds: {e}"),
    }
}

/// Lock a mutex, ignoring poisoning (a panicking task must not take the report down).
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Event counters; all subscribers' counters add up to the run's totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Events carrying our payload, whatever their outcome.
    pub deliveries: u64,
    /// Events that arrived in order.
    pub in_order: u64,
    /// Events skipped (counted when a later one arrived).
    pub lost: u64,
    /// Events seen twice.
    pub duplicated: u64,
    /// Skipped events arriving late.
    pub reordered: u64,
    /// Gateway ids not advancing by exactly one.
    pub id_jumps: u64,
    /// Gap notices (SSE `event: gap`, WS `gap`).
    pub gaps: u64,
    /// Data events without a readable `seq`/`ts`, unreadable WebSocket messages, and compressed
    /// data that could not be inflated.
    pub malformed: u64,
    /// Named events the load generator does not know.
    pub other_events: u64,
    /// WebSocket `error` messages.
    pub ws_errors: u64,
    /// Socket reads (SSE) or message bursts (WebSocket) that carried them.
    pub reads: u64,
}

impl Counters {
    /// Adds another set of counters.
    pub fn add(&mut self, o: &Self) {
        self.deliveries = self.deliveries.saturating_add(o.deliveries);
        self.in_order = self.in_order.saturating_add(o.in_order);
        self.lost = self.lost.saturating_add(o.lost);
        self.duplicated = self.duplicated.saturating_add(o.duplicated);
        self.reordered = self.reordered.saturating_add(o.reordered);
        self.id_jumps = self.id_jumps.saturating_add(o.id_jumps);
        self.gaps = self.gaps.saturating_add(o.gaps);
        self.malformed = self.malformed.saturating_add(o.malformed);
        self.other_events = self.other_events.saturating_add(o.other_events);
        self.ws_errors = self.ws_errors.saturating_add(o.ws_errors);
        self.reads = self.reads.saturating_add(o.reads);
    }

    /// Counters since an earlier snapshot.
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            deliveries: self.deliveries.saturating_sub(earlier.deliveries),
            in_order: self.in_order.saturating_sub(earlier.in_order),
            lost: self.lost.saturating_sub(earlier.lost),
            duplicated: self.duplicated.saturating_sub(earlier.duplicated),
            reordered: self.reordered.saturating_sub(earlier.reordered),
            id_jumps: self.id_jumps.saturating_sub(earlier.id_jumps),
            gaps: self.gaps.saturating_sub(earlier.gaps),
            malformed: self.malformed.saturating_sub(earlier.malformed),
            other_events: self.other_events.saturating_sub(earlier.other_events),
            ws_errors: self.ws_errors.saturating_sub(earlier.ws_errors),
            reads: self.reads.saturating_sub(earlier.reads),
        }
    }
}

/// A subscriber's not yet flushed latencies and counters.
#[derive(Debug)]
pub struct Batch {
    latencies: [u32; BATCH],
    n: usize,
    /// Counters since the last flush.
    pub c: Counters,
}

impl Default for Batch {
    fn default() -> Self {
        Self {
            latencies: [0; BATCH],
            n: 0,
            c: Counters::default(),
        }
    }
}

impl Batch {
    /// Adds a latency; returns true when the batch is full and must be flushed.
    #[inline]
    pub fn latency(&mut self, us: u64) -> bool {
        self.latencies[self.n] = us.min(u64::from(u32::MAX)) as u32;
        self.n += 1;
        self.n == BATCH
    }

    fn is_empty(&self) -> bool {
        self.n == 0 && self.c == Counters::default()
    }
}

struct Shard {
    latency: Histogram<u64>,
    c: Counters,
}

/// Everything the subscribers report, plus connection state counters.
pub struct Stats {
    shards: Box<[Mutex<Shard>]>,
    /// Subscribers that were established at least once.
    pub established: AtomicU64,
    /// Subscribers that never got established.
    pub failed: AtomicU64,
    /// Subscribers connected right now.
    pub live: AtomicI64,
    /// TCP connections the subscribers opened (HTTP/2 streams share them), reconnects included.
    pub tcp_connections: AtomicU64,
    /// Connections that ended without being asked to.
    pub disconnects: AtomicU64,
    /// Successful re-establishments after a disconnect.
    pub reconnects: AtomicU64,
    /// Failed reconnection attempts.
    pub reconnect_failures: AtomicU64,
    /// Establishments after a storm's reconnect.
    pub resumed: AtomicU64,
    /// WebSocket messages that came compressed (`permessage-deflate`) and were inflated.
    pub inflated_messages: AtomicU64,
    /// WebSocket upgrades whose `permessage-deflate` answer kept the server's context.
    pub ws_context_answers: AtomicU64,
    /// WebSocket upgrades answered with `server_no_context_takeover`.
    pub ws_no_context_answers: AtomicU64,
    /// Subscribers that had every event after a storm's reconnect.
    pub storm_complete: AtomicU64,
    /// Why connections failed (`status_503`, `connect`, `timeout`, ...).
    pub failures: Mutex<BTreeMap<String, u64>>,
    /// Time from a storm's reconnect to a subscriber having every missed event, µs.
    pub storm_latency: Mutex<Histogram<u64>>,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    /// Empty statistics.
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        latency: new_histogram(),
                        c: Counters::default(),
                    })
                })
                .collect(),
            established: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            live: AtomicI64::new(0),
            tcp_connections: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            reconnect_failures: AtomicU64::new(0),
            resumed: AtomicU64::new(0),
            inflated_messages: AtomicU64::new(0),
            ws_context_answers: AtomicU64::new(0),
            ws_no_context_answers: AtomicU64::new(0),
            storm_complete: AtomicU64::new(0),
            failures: Mutex::new(BTreeMap::new()),
            storm_latency: Mutex::new(new_histogram()),
        }
    }

    /// Moves a subscriber's batch into its shard.
    pub fn flush(&self, shard: usize, batch: &mut Batch) {
        if batch.is_empty() {
            return;
        }
        let mut s = lock(&self.shards[shard % SHARDS]);
        for &v in &batch.latencies[..batch.n] {
            s.latency.saturating_record(u64::from(v).max(1));
        }
        s.c.add(&batch.c);
        drop(s);
        batch.n = 0;
        batch.c = Counters::default();
    }

    /// The totals so far.
    pub fn counters(&self) -> Counters {
        let mut c = Counters::default();
        for s in self.shards.iter() {
            c.add(&lock(s).c);
        }
        c
    }

    /// The latency histogram so far; with `reset`, the shards start over.
    pub fn latency(&self, reset: bool) -> Histogram<u64> {
        let mut h = new_histogram();
        for s in self.shards.iter() {
            let mut s = lock(s);
            // Same bounds: adding cannot fail.
            let _ = h.add(&s.latency);
            if reset {
                s.latency.reset();
            }
        }
        h
    }

    /// Counts a failure reason.
    pub fn fail(&self, reason: &str) {
        *lock(&self.failures).entry(reason.to_owned()).or_default() += 1;
    }

    /// Reads a gauge or counter.
    pub fn get(a: &AtomicU64) -> u64 {
        a.load(Ordering::Relaxed)
    }

    /// Bumps a counter.
    pub fn bump(a: &AtomicU64) {
        a.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_land_in_totals() {
        let stats = Stats::new();
        let mut b = Batch::default();
        for i in 0..BATCH as u64 - 1 {
            assert!(!b.latency(1000 + i));
        }
        assert!(b.latency(5));
        b.c.deliveries = 64;
        stats.flush(3, &mut b);
        let mut b2 = Batch::default();
        b2.latency(0);
        b2.c.deliveries = 1;
        b2.c.lost = 2;
        stats.flush(11, &mut b2);
        let c = stats.counters();
        assert_eq!((c.deliveries, c.lost), (65, 2));
        let h = stats.latency(true);
        assert_eq!(h.len(), 65);
        assert_eq!(h.min(), 1, "zero latencies count as 1 µs");
        assert_eq!(stats.latency(false).len(), 0);
        assert_eq!(stats.counters().deliveries, 65, "reset keeps counters");
    }
}

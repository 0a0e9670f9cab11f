//! The in-memory engine: one instance, no Redis, same contract as the Redis engine.
//!
//! Used when no Redis URL is configured so `cargo run` works on a bare machine. History is a
//! capped deque per channel that expires `ttl` after the last publish, exactly like the Redis
//! keys. Live delivery calls the listener while the engine lock is held, which keeps offsets in
//! order; the lock order is always engine → hub, and the hub never calls the engine while
//! holding its own locks.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use shared::{ChannelName, Epoch, Event, Position};
use tokio::sync::watch;

use super::{EngineError, HistoryPage, Listener, PublishRequest};

/// Handle to the in-memory store; clones share it.
#[derive(Clone)]
pub struct MemoryEngine {
    inner: Arc<Inner>,
}

struct Inner {
    channels: Mutex<HashMap<ChannelName, Log>>,
    listener: OnceLock<Arc<dyn Listener>>,
    history_size: usize,
    ttl: Duration,
    stop: watch::Sender<bool>,
}

struct Log {
    epoch: Epoch,
    top: u64,
    events: VecDeque<Event>,
    expires_at: Instant,
}

impl Log {
    fn fresh(previous: Option<Epoch>, ttl: Duration) -> Self {
        // A new epoch must differ from the one it replaces, or resumers would not notice.
        let mut epoch = Epoch(u64::from(fastrand::u32(1..)));
        while Some(epoch) == previous {
            epoch = Epoch(u64::from(fastrand::u32(1..)));
        }
        Self {
            epoch,
            top: 0,
            events: VecDeque::new(),
            expires_at: Instant::now() + ttl,
        }
    }
}

impl MemoryEngine {
    /// A store keeping `history_size` events per channel for `ttl` after the last publish.
    pub fn new(history_size: usize, ttl: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                channels: Mutex::new(HashMap::new()),
                listener: OnceLock::new(),
                history_size,
                ttl,
                stop: watch::channel(false).0,
            }),
        }
    }

    /// Registers the listener and starts the expiry sweeper.
    pub fn start(&self, listener: Arc<dyn Listener>) {
        let _ = self.inner.listener.set(listener.clone());
        listener.on_live_path(true);
        let inner = Arc::downgrade(&self.inner);
        let mut stop = self.inner.stop.subscribe();
        let period = self
            .inner
            .ttl
            .clamp(Duration::from_millis(100), Duration::from_secs(30));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(period) => {}
                    _ = stop.changed() => return,
                }
                let Some(inner) = inner.upgrade() else { return };
                let now = Instant::now();
                inner.channels.lock().retain(|_, log| log.expires_at > now);
            }
        });
    }

    /// Stops the sweeper.
    pub fn stop(&self) {
        let _ = self.inner.stop.send(true);
    }

    /// Appends an event and hands it to the listener; see the engine contract.
    pub fn publish(&self, req: PublishRequest) -> Result<Position, EngineError> {
        let mut channels = self.inner.channels.lock();
        Ok(self.append(&mut channels, req, Instant::now()))
    }

    /// Appends a batch under one lock, so no other publish interleaves with it: the
    /// all-at-once of one `gw_publish_many` call on Redis. Positions in request order.
    pub fn publish_many(&self, requests: &[PublishRequest]) -> Vec<Position> {
        let now = Instant::now();
        let mut channels = self.inner.channels.lock();
        requests
            .iter()
            .map(|req| self.append(&mut channels, req.clone(), now))
            .collect()
    }

    fn append(
        &self,
        channels: &mut HashMap<ChannelName, Log>,
        req: PublishRequest,
        now: Instant,
    ) -> Position {
        let log = live_log(channels, &req.channel, now, self.inner.ttl);
        log.top += 1;
        let event = Event {
            channel: req.channel,
            position: Position::new(log.epoch, log.top),
            name: req.name,
            kind: req.kind,
            data: req.data,
            published_ms: unix_millis(),
        };
        log.events.push_back(event.clone());
        while log.events.len() > self.inner.history_size {
            log.events.pop_front();
        }
        log.expires_at = now + self.inner.ttl;
        let position = event.position;
        if let Some(listener) = self.inner.listener.get() {
            listener.on_event(event);
        }
        position
    }

    /// Reads events after `after`; creates an empty epoch for unknown channels.
    pub fn read(&self, channel: &ChannelName, after: u64, limit: usize) -> HistoryPage {
        let mut channels = self.inner.channels.lock();
        let log = live_log(&mut channels, channel, Instant::now(), self.inner.ttl);
        // Offsets in the deque are contiguous, so the start index is arithmetic.
        let first = log
            .events
            .front()
            .map_or(log.top + 1, |e| e.position.offset);
        let skip =
            usize::try_from(after.saturating_add(1).saturating_sub(first)).unwrap_or(usize::MAX);
        HistoryPage {
            epoch: log.epoch,
            top: log.top,
            events: log.events.iter().skip(skip).take(limit).cloned().collect(),
            lineage: shared::Lineage::default(),
        }
    }

    /// Current heads; `None` for channels without live history.
    pub fn heads(&self, channels: &[ChannelName]) -> Vec<Option<Position>> {
        let map = self.inner.channels.lock();
        let now = Instant::now();
        channels
            .iter()
            .map(|c| {
                map.get(c)
                    .filter(|log| log.expires_at > now)
                    .map(|log| Position::new(log.epoch, log.top))
            })
            .collect()
    }
}

/// The channel's log, replaced by a fresh epoch when missing or expired.
fn live_log<'a>(
    channels: &'a mut HashMap<ChannelName, Log>,
    channel: &ChannelName,
    now: Instant,
    ttl: Duration,
) -> &'a mut Log {
    let log = channels
        .entry(channel.clone())
        .or_insert_with(|| Log::fresh(None, ttl));
    if log.expires_at <= now {
        *log = Log::fresh(Some(log.epoch), ttl);
    }
    log
}

/// Wall-clock milliseconds, the unit of `Event::published_ms`.
pub(crate) fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

//! `GET /admin/feed`: a Server-Sent Events stream of one JSON [`Snapshot`] a second, for as long
//! as the page is open. Feeds are counted: past `admin.max_feeds` a new one is refused, so the
//! once-a-second channel scan cannot be multiplied into real load.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, stream};
use shared::ErrorCode;

use super::snapshot::{Sampler, Snapshot};
use crate::error::ApiError;
use crate::state::AppState;

/// How often a feed sends a snapshot.
pub const PERIOD: Duration = Duration::from_secs(1);

/// The open feeds of one instance.
pub struct Feeds {
    open: AtomicUsize,
    max: usize,
}

/// One open feed; its slot is given back when the stream is dropped (the client went away).
pub struct FeedSlot(Arc<Feeds>);

impl Drop for FeedSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Feeds {
    /// At most `max` feeds at once.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            max,
        })
    }

    /// A slot for one more feed, or 503 when `max` are open.
    pub fn admit(self: &Arc<Self>) -> Result<FeedSlot, ApiError> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .map(|_| FeedSlot(self.clone()))
            .map_err(|_| {
                ApiError::unavailable(
                    ErrorCode::TooManyConnections,
                    format!("{} admin feeds are open already", self.max),
                    5,
                )
            })
    }
}

/// One SSE `data:` frame for a snapshot (compact JSON has no newlines).
pub fn frame(snapshot: &Snapshot) -> Bytes {
    let json = serde_json::to_string(snapshot).unwrap_or_else(|_| "{}".to_owned());
    Bytes::from(format!("data: {json}\n\n"))
}

struct Feed {
    state: AppState,
    sampler: Sampler,
    ticks: tokio::time::Interval,
    shutdown: tokio::sync::watch::Receiver<bool>,
    _slot: FeedSlot,
}

/// The stream of frames: a snapshot now, then one per [`PERIOD`], until the client goes away
/// or the instance shuts down.
pub fn stream(state: &AppState, slot: FeedSlot) -> impl Stream<Item = Bytes> + use<> {
    let mut ticks = tokio::time::interval(PERIOD);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let feed = Feed {
        sampler: Sampler::new(state, state.settings.admin.top_channels),
        state: state.clone(),
        ticks,
        shutdown: state.hub.shutdown_signal(),
        _slot: slot,
    };
    stream::unfold(feed, |mut feed| async move {
        if *feed.shutdown.borrow() {
            return None;
        }
        tokio::select! {
            _ = feed.ticks.tick() => {}
            _ = feed.shutdown.changed() => return None,
        }
        let snapshot = feed.sampler.sample(&feed.state).await;
        Some((frame(&snapshot), feed))
    })
}

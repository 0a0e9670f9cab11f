//! History reads as the hub uses them: pages of shared [`Message`]s, and concurrent identical
//! reads (same channel, same starting offset) coalesced into one engine call. In a reconnect
//! storm thousands of clients of one channel resume from the same few positions; they share a
//! handful of reads, and the frames of every event are encoded once.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use parking_lot::Mutex;
use shared::{ChannelName, Continuity, Epoch, Lineage, Position};

use super::message::Message;
use crate::engine::{Engine, EngineError};
use crate::metrics::Metrics;

/// A history page whose events are ready to fan out.
#[derive(Debug)]
pub struct Page {
    /// The channel's current epoch.
    pub epoch: Epoch,
    /// Offset of the newest event of the epoch.
    pub top: u64,
    /// Events after the requested offset, oldest first.
    pub messages: Vec<Arc<Message>>,
    /// Earlier epochs whose offsets the current one inherited.
    pub lineage: Lineage,
}

impl Page {
    /// The channel's head when the page was read.
    pub fn head(&self) -> Position {
        Position::new(self.epoch, self.top)
    }

    /// How `pos` relates to this page's history (see `shared::lineage`).
    pub fn continuity(&self, pos: Position) -> Continuity {
        self.lineage.continuity(self.head(), pos)
    }

    /// First offset the page can deliver; anything before it (after the requested offset) is
    /// gone.
    pub fn first_available(&self) -> u64 {
        self.messages
            .first()
            .map_or(self.top.saturating_add(1), |m| m.position().offset)
    }
}

type Read = Shared<BoxFuture<'static, Result<Arc<Page>, EngineError>>>;

/// Coalescing front of [`Engine::read`].
pub struct HistoryReader {
    engine: Engine,
    page_size: usize,
    inflight: Arc<Mutex<HashMap<(ChannelName, u64), Read>>>,
    metrics: Metrics,
}

impl HistoryReader {
    /// Reads pages of `page_size` events through `engine`.
    pub fn new(engine: Engine, page_size: usize, metrics: Metrics) -> Self {
        Self {
            engine,
            page_size,
            inflight: Arc::default(),
            metrics,
        }
    }

    /// One page after `after`, shared with any identical read already in flight.
    pub async fn read(&self, channel: &ChannelName, after: u64) -> Result<Arc<Page>, EngineError> {
        let key = (channel.clone(), after);
        let read = {
            let mut inflight = self.inflight.lock();
            if let Some(read) = inflight.get(&key) {
                self.metrics.history_reads_shared.inc();
                read.clone()
            } else {
                let read = self.start(key.clone());
                inflight.insert(key, read.clone());
                read
            }
        };
        read.await
    }

    /// One page without coalescing, for the hub's own sync loop.
    pub async fn read_direct(
        &self,
        channel: &ChannelName,
        after: u64,
        limit: usize,
    ) -> Result<Page, EngineError> {
        let page = self.engine.read(channel, after, limit).await?;
        Ok(to_page(page))
    }

    fn start(&self, key: (ChannelName, u64)) -> Read {
        let engine = self.engine.clone();
        let inflight = Arc::downgrade(&self.inflight);
        let limit = self.page_size;
        async move {
            let result = engine
                .read(&key.0, key.1, limit)
                .await
                .map(|p| Arc::new(to_page(p)));
            // Whoever completes the read retires it, so later readers see fresh history.
            if let Some(inflight) = inflight.upgrade() {
                inflight.lock().remove(&key);
            }
            result
        }
        .boxed()
        .shared()
    }
}

fn to_page(page: crate::engine::HistoryPage) -> Page {
    Page {
        epoch: page.epoch,
        top: page.top,
        messages: page
            .events
            .into_iter()
            .map(|e| Arc::new(Message::new(e)))
            .collect(),
        lineage: page.lineage,
    }
}

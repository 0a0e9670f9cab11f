//! History reads for the history API (`GET /history`, the WebSocket `history` command) and
//! the start of latest-value subscriptions: the engine's range read and the gap rule of resume
//! (`resolve`), with no subscription involved.

use std::sync::Arc;

use shared::{ChannelName, Position};

use super::message::Message;
use super::resolve::{Next, Reading, resolve};
use super::{Hub, HubError, Start};

/// Most reads one range takes: a position beyond the head costs one extra read.
const MAX_READS: usize = 4;

/// One page of a channel's history, as the history API answers it.
#[derive(Debug)]
pub struct Range {
    /// The channel's head when the page was read.
    pub head: Position,
    /// The first available position, when events after the requested one are gone.
    pub gap: Option<Position>,
    /// Events after the requested position (or after `gap`), oldest first.
    pub events: Vec<Arc<Message>>,
    /// Where the next page starts: the last event's position, or where the page found the
    /// reader when it holds none.
    pub next: Position,
}

impl Range {
    /// Whether events after `next` were already stored when the page was read.
    pub fn more(&self) -> bool {
        self.next.epoch == self.head.epoch && self.next.offset < self.head.offset
    }
}

impl Hub {
    /// Up to `limit` events after `since` (from the oldest event kept when `None`), with the
    /// gap notice a resume from `since` would get. A position beyond the store's head is
    /// fenced, as on resume. Every read has the subscribe timeout as its deadline.
    pub async fn range(
        &self,
        channel: &ChannelName,
        since: Option<Position>,
        limit: usize,
    ) -> Result<Range, HubError> {
        let mut want = since;
        let mut owe_gap = false;
        let mut fenced = false;
        for _ in 0..MAX_READS {
            let read_after = want.map_or(0, |p| p.offset);
            let page = self.read_within(channel, read_after, limit).await?;
            // Without a position the reader wants the oldest event kept: nothing is missing.
            let from = want.unwrap_or(Position::new(
                page.epoch,
                page.first_available().saturating_sub(1),
            ));
            let resolved = resolve(
                Reading {
                    epoch: page.epoch,
                    read_after,
                    first_available: page.first_available(),
                    continuity: page.continuity(from),
                },
                owe_gap,
            );
            if resolved.fence && !fenced {
                fenced = true;
                self.count_client_loss();
                self.inner.engine.fence(channel, from).await?;
            }
            match resolved.next {
                Next::Reread { after } => {
                    want = Some(after);
                    owe_gap = true;
                }
                Next::Deliver { gap, after } => {
                    let events: Vec<Arc<Message>> = page
                        .messages
                        .iter()
                        .filter(|m| m.position().offset > after.offset)
                        .take(limit)
                        .cloned()
                        .collect();
                    let next = events.last().map_or(after, |m| m.position());
                    return Ok(Range {
                        head: page.head(),
                        gap,
                        events,
                        next,
                    });
                }
            }
        }
        Err(HubError::Timeout)
    }

    /// Where a latest-value subscription starts: before the `n`th-last event of `head` (the
    /// attached channel's head on this instance), or before the oldest event kept if fewer are
    /// left — a resume from there delivers them, then live events, exactly.
    pub async fn latest_start(
        &self,
        channel: &ChannelName,
        head: Position,
        n: u64,
    ) -> Result<Start, HubError> {
        let after = head.offset.saturating_sub(n);
        if after == head.offset {
            return Ok(Start::at(head));
        }
        let page = self.read_within(channel, after, 1).await?;
        let offset = if page.epoch == head.epoch {
            after.max(page.first_available().saturating_sub(1))
        } else {
            // The store moved to another epoch meanwhile: the resume finds out and says so.
            after
        };
        Ok(Start::at(Position::new(head.epoch, offset)))
    }

    async fn read_within(
        &self,
        channel: &ChannelName,
        after: u64,
        limit: usize,
    ) -> Result<super::history::Page, HubError> {
        let read = self.inner.history.read_direct(channel, after, limit);
        match tokio::time::timeout(self.inner.config.subscribe_timeout, read).await {
            Ok(page) => Ok(page?),
            Err(_) => Err(HubError::Timeout),
        }
    }

    fn count_client_loss(&self) {
        self.inner
            .metrics
            .lost_history
            .with_label_values(&[crate::metrics::labels::SeenBy::Client.as_str()])
            .inc();
    }
}

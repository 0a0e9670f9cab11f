//! The hub's background work per channel: starting a subscription (engine subscribe, then read
//! the head) and re-synchronising from history after a jump, a reconnect or a hint. At most one
//! of these runs per channel incarnation at a time: a sync is only spawned on the transition
//! into `Syncing`, and the start task runs its sync inline.

use std::time::Duration;

use std::sync::Arc;

use shared::{ChannelName, Continuity, Position};

use super::channel::Phase;
use super::{HookPoint, Hub};
use crate::backoff::Backoff;
use crate::metrics::labels::{ResyncReason, SeenBy};

impl Hub {
    pub(super) fn spawn_start(&self, channel: ChannelName, generation: u64) {
        let hub = self.clone();
        self.inner
            .runtime
            .spawn(async move { hub.start(channel, generation).await });
    }

    pub(super) fn spawn_sync(&self, channel: ChannelName, generation: u64, reason: &'static str) {
        let hub = self.clone();
        self.inner
            .runtime
            .spawn(async move { hub.sync(channel, generation, reason).await });
    }

    fn alive(&self, channel: &ChannelName, generation: u64) -> bool {
        self.with_state(channel, generation, |_, _| ()).is_some()
    }

    /// Subscribes in the engine, then reads the head; retried with backoff until it works or
    /// nobody is attached any more.
    async fn start(self, channel: ChannelName, generation: u64) {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        loop {
            if !self.alive(&channel, generation) {
                return;
            }
            if let Err(e) = self.inner.engine.subscribe(&channel).await {
                tracing::warn!(channel = %channel, error = %e, "subscribing failed; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
            self.hook(HookPoint::StartSubscribed, &channel).await;
            let Some(read_at) = self.with_state(&channel, generation, |s, _| s.arrivals()) else {
                return;
            };
            match self.inner.history.read_direct(&channel, 0, 0).await {
                Ok(page) => {
                    let in_sync = self.with_state(&channel, generation, |s, fx| {
                        s.apply_page(&page, read_at, fx)
                    });
                    match in_sync {
                        Some(false) => {
                            return self
                                .sync(channel, generation, ResyncReason::Start.as_str())
                                .await;
                        }
                        _ => return,
                    }
                }
                Err(e) => {
                    tracing::warn!(channel = %channel, error = %e, "reading the channel head failed; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }

    /// Reads history from `last` until the channel has caught up with everything it was told
    /// about; retried with backoff while the store is down.
    async fn sync(self, channel: ChannelName, generation: u64, reason: &'static str) {
        self.inner
            .metrics
            .resyncs
            .with_label_values(&[reason])
            .inc();
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        // Where the next read starts when `last` is not the right place (see below).
        let mut reread_after: Option<u64> = None;
        let mut fenced = false;
        loop {
            let step = self.with_state(&channel, generation, |s, _| {
                s.last.map(|last| {
                    let after = reread_after.take().unwrap_or(last.offset);
                    (after, s.arrivals(), last)
                })
            });
            let Some(Some((after, read_at, last))) = step else {
                return;
            };
            let page = match self
                .inner
                .history
                .read_direct(&channel, after, self.inner.config.page_size)
                .await
            {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(channel = %channel, error = %e, "history read failed during sync; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
            };
            backoff.reset();
            if let Continuity::Lost {
                resume_after,
                fence,
            } = page.continuity(last)
            {
                if fence && !fenced {
                    // The store's head is behind what this instance delivered in the same
                    // epoch: Redis lost acknowledged writes. Make it move to a new epoch
                    // before it hands those offsets out again, then read again.
                    fenced = true;
                    self.inner
                        .metrics
                        .lost_history
                        .with_label_values(&[SeenBy::Instance.as_str()])
                        .inc();
                    tracing::warn!(channel = %channel, delivered = %last, head = %page.head(), "the history store lost events this instance delivered; moving the channel to a new epoch");
                    if let Err(e) = self.inner.engine.fence(&channel, last).await {
                        tracing::warn!(channel = %channel, error = %e, "fencing the channel failed; retrying");
                        fenced = false;
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                    continue;
                }
                if after != resume_after {
                    // What follows `resume_after` in the current epoch is what subscribers
                    // still need; this page started elsewhere.
                    reread_after = Some(resume_after);
                    continue;
                }
            }
            let applied = self.with_state(&channel, generation, |s, fx| {
                (s.last == Some(last)).then(|| s.apply_page(&page, read_at, fx))
            });
            match applied {
                None | Some(Some(true)) => return,
                Some(None) | Some(Some(false)) => {}
            }
        }
    }

    /// Every `every`, compares each live channel's head in the store with what this instance
    /// delivered: a live message lost on a channel that then went quiet would otherwise never
    /// show up as an offset jump.
    pub(super) fn spawn_head_check(&self, every: Duration) {
        let weak = Arc::downgrade(&self.inner);
        let mut stop = self.shutdown_signal();
        self.inner.runtime.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.wait_for(|down| *down) => return,
                }
                let Some(inner) = weak.upgrade() else { return };
                Hub { inner }.check_heads().await;
            }
        });
    }

    async fn check_heads(&self) {
        let mut watched: Vec<(ChannelName, u64, Position)> = Vec::new();
        for shard in self.inner.shards.iter() {
            let shard = shard.lock();
            watched.extend(shard.channels.iter().filter_map(|(name, state)| {
                let last = state.last.filter(|_| state.phase == Phase::Live)?;
                Some((name.clone(), state.generation, last))
            }));
        }
        for chunk in watched.chunks(1000) {
            let names: Vec<ChannelName> = chunk.iter().map(|(name, _, _)| name.clone()).collect();
            let heads = match self.inner.engine.heads(&names).await {
                Ok(heads) => heads,
                Err(e) => {
                    tracing::debug!(error = %e, "head check failed; the next one will retry");
                    return;
                }
            };
            for ((channel, generation, last), head) in chunk.iter().zip(heads) {
                // No head: the history expired; the next publish starts a new epoch, which
                // arrives as a jump anyway.
                let Some(head) = head else { continue };
                // A head behind `last` in the same epoch means the store lost writes.
                if head != *last {
                    self.poke(channel, *generation, ResyncReason::HeadCheck.as_str());
                }
            }
        }
    }
}

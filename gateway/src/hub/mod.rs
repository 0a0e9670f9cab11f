//! The hub: this instance's local fan-out, transport-agnostic.
//!
//! Channels are spread over shards, each a mutex around a map of [`channel::ChannelState`]; no
//! lock is ever held across an `.await`, and fan-out under a shard lock only does non-blocking
//! queue pushes. The engine talks to the hub through [`crate::engine::Listener`]; transports
//! talk to it through [`Hub::attach`] and [`Hub::join`], holding a [`Membership`] per channel
//! whose drop detaches them.

mod channel;
pub mod direct;
mod group;
pub mod history;
mod join;
mod load;
pub mod message;
pub mod queue;
mod range;
mod resolve;
mod tasks;
pub mod worker;
pub mod ws_frame;

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use shared::{ChannelName, Event, Position};

use self::channel::{ChannelState, Effects, SubId};
use self::history::HistoryReader;
use self::message::Message;
use self::queue::{CloseReason, Queue};
use crate::engine::{Engine, EngineError, Listener};
use crate::metrics::Metrics;
use crate::metrics::labels::ResyncReason;

pub use join::{Announce, JoinOutcome, Start};
pub use load::ChannelLoad;
pub use range::Range;

/// Tuning of the hub, taken from [`crate::config::Settings`].
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// Items a connection may have queued before it is a slow consumer.
    pub queue_size: usize,
    /// Recent events kept per channel for resumes close to the head.
    pub channel_cache: usize,
    /// Events per history read.
    pub page_size: usize,
    /// Longest wait for the engine while attaching or resuming.
    pub subscribe_timeout: Duration,
    /// Number of shards (locks) channels are spread over.
    pub shards: usize,
    /// Period of the check of every watched channel's head against the store, if any.
    pub head_check: Option<Duration>,
    /// Presence tracking (`crate::presence`), run beside the hub on the same engine.
    pub presence: crate::config::PresenceSettings,
}

/// Why a transport could not get a subscription.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The history store failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The history store did not answer in time.
    #[error("timed out waiting for the history store")]
    Timeout,
    /// The instance is draining.
    #[error("the gateway is shutting down")]
    ShuttingDown,
    /// The connection went away meanwhile.
    #[error("the connection is closed")]
    Closed,
}

/// Points where tests may pause the hub to force races deterministically.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookPoint {
    /// The engine confirmed a new channel subscription; its head is not read yet.
    StartSubscribed,
    /// A resume is about to read history.
    JoinBeforeRead,
    /// A resume has read history but not yet joined live fan-out.
    JoinAfterRead,
}

/// A test hook: awaited at each [`HookPoint`].
#[doc(hidden)]
pub type Hook = Arc<dyn Fn(HookPoint, ChannelName) -> BoxFuture<'static, ()> + Send + Sync>;

/// Handle to the hub; cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    shards: Box<[Mutex<Shard>]>,
    hasher: std::collections::hash_map::RandomState,
    engine: Engine,
    history: HistoryReader,
    config: HubConfig,
    metrics: Metrics,
    next_generation: AtomicU64,
    next_sub: AtomicU64,
    shutting_down: AtomicBool,
    shutdown_tx: tokio::sync::watch::Sender<bool>,
    live_up: AtomicBool,
    hook: Option<Hook>,
    runtime: tokio::runtime::Handle,
    /// Kept here rather than in `AppState`, so request futures stay small.
    presence: crate::presence::Presence,
}

#[derive(Default)]
struct Shard {
    channels: HashMap<ChannelName, ChannelState>,
}

/// One connection's attachment to one channel; dropping it detaches (and unsubscribes the
/// engine when it was the channel's last).
pub struct Membership {
    hub: Hub,
    channel: ChannelName,
    id: SubId,
    generation: u64,
    queue: Arc<Queue>,
    slot: u32,
}

impl Membership {
    /// The channel.
    pub fn channel(&self) -> &ChannelName {
        &self.channel
    }

    /// The channel's slot within the connection.
    pub fn slot(&self) -> u32 {
        self.slot
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.hub.leave(self);
    }
}

impl Hub {
    /// Builds the hub and starts the engine with the hub as its listener. Must be called inside
    /// a Tokio runtime; background tasks run on it.
    pub fn new(engine: Engine, config: HubConfig, metrics: Metrics, hook: Option<Hook>) -> Self {
        let shards = (0..config.shards.max(1))
            .map(|_| Mutex::new(Shard::default()))
            .collect();
        let inner = Arc::new(Inner {
            shards,
            hasher: Default::default(),
            history: HistoryReader::new(engine.clone(), config.page_size, metrics.clone()),
            presence: crate::presence::Presence::new(
                engine.clone(),
                &config.presence,
                metrics.clone(),
            ),
            engine: engine.clone(),
            config,
            metrics,
            next_generation: AtomicU64::new(1),
            next_sub: AtomicU64::new(1),
            shutting_down: AtomicBool::new(false),
            shutdown_tx: tokio::sync::watch::channel(false).0,
            live_up: AtomicBool::new(false),
            hook,
            runtime: tokio::runtime::Handle::current(),
        });
        engine.start(Arc::new(HubListener(Arc::downgrade(&inner))));
        let hub = Self { inner };
        if let Some(every) = hub.inner.config.head_check {
            hub.spawn_head_check(every);
        }
        hub
    }

    /// The engine behind the hub.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Who is subscribed to each channel, on every instance.
    pub fn presence(&self) -> &crate::presence::Presence {
        &self.inner.presence
    }

    /// A fresh queue for a new connection.
    pub fn new_queue(&self) -> Arc<Queue> {
        Queue::new(self.inner.config.queue_size)
    }

    /// Whether the engine's live path is connected.
    pub fn is_live(&self) -> bool {
        self.inner.live_up.load(Ordering::Relaxed)
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::Relaxed)
    }

    /// Attaches a connection to `channel` and waits until the channel's head is known on this
    /// instance (subscribing in the engine if this is the first attachment). Returns the head:
    /// a fresh subscriber starts there.
    pub async fn attach(
        &self,
        mut channel: ChannelName,
        queue: Arc<Queue>,
        slot: u32,
    ) -> Result<(Membership, Position), HubError> {
        if self.is_shutting_down() {
            return Err(HubError::ShuttingDown);
        }
        let id = self.inner.next_sub.fetch_add(1, Ordering::Relaxed);
        let (generation, mut ready, created) = {
            let mut shard = self.shard(&channel).lock();
            // Share the name the hub already holds: every subscriber then points to one
            // allocation instead of keeping its own copy for as long as it stays.
            if let Some((held, _)) = shard.channels.get_key_value(&channel) {
                channel = held.clone();
            }
            let mut created = false;
            let state = shard.channels.entry(channel.clone()).or_insert_with(|| {
                created = true;
                ChannelState::new(
                    self.inner.next_generation.fetch_add(1, Ordering::Relaxed),
                    self.inner.config.channel_cache,
                    self.inner
                        .config
                        .queue_size
                        .max(self.inner.config.channel_cache),
                    self.inner.metrics.clone(),
                )
            });
            state.refs += 1;
            (state.generation, state.ready.subscribe(), created)
        };
        let membership = Membership {
            hub: self.clone(),
            channel: channel.clone(),
            id,
            generation,
            queue,
            slot,
        };
        if created {
            self.inner.metrics.channels.inc();
            self.spawn_start(channel.clone(), generation);
        }
        let wait = ready.wait_for(|ready| *ready);
        match tokio::time::timeout(self.inner.config.subscribe_timeout, wait).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => return Err(HubError::Timeout),
        }
        let head = self
            .with_state(&channel, generation, |state, _| state.last)
            .flatten()
            .ok_or(HubError::Closed)?;
        Ok((membership, head))
    }

    /// The channel's head as the history store sees it now (for checking client positions that
    /// are ahead of this instance).
    pub async fn store_head(&self, channel: &ChannelName) -> Result<Position, HubError> {
        Ok(self.inner.history.read_direct(channel, 0, 0).await?.head())
    }

    /// Resolves (changes to `true`) when shutdown begins; for connection tasks that must say
    /// goodbye even without subscriptions.
    pub fn shutdown_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        self.inner.shutdown_tx.subscribe()
    }

    /// Begins shutdown: no new attachments, and every subscribed connection is told to go.
    pub fn shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::Relaxed);
        self.inner.shutdown_tx.send_replace(true);
        for shard in self.inner.shards.iter() {
            let shard = shard.lock();
            for state in shard.channels.values() {
                state.close_all(CloseReason::Shutdown);
            }
        }
    }

    fn shard(&self, channel: &ChannelName) -> &Mutex<Shard> {
        let n = self.inner.shards.len();
        let h = self.inner.hasher.hash_one(channel);
        &self.inner.shards[usize::try_from(h % n as u64).unwrap_or(0)]
    }

    /// Runs `f` on the channel's state if it is still the incarnation `generation`, then applies
    /// the effects to metrics after the lock is released.
    fn with_state<R>(
        &self,
        channel: &ChannelName,
        generation: u64,
        f: impl FnOnce(&mut ChannelState, &mut Effects) -> R,
    ) -> Option<R> {
        let mut fx = Effects::default();
        let result = {
            let mut shard = self.shard(channel).lock();
            let state = shard
                .channels
                .get_mut(channel)
                .filter(|s| s.generation == generation)?;
            f(state, &mut fx)
        };
        // Scheduled deliveries and wake-ups run now, with the lock released.
        drop(fx);
        Some(result)
    }

    fn leave(&self, m: &Membership) {
        let mut unsubscribe = false;
        {
            let mut shard = self.shard(&m.channel).lock();
            if let Some(state) = shard
                .channels
                .get_mut(&m.channel)
                .filter(|s| s.generation == m.generation)
            {
                state.remove_sub(m.id);
                state.refs -= 1;
                if state.refs == 0 {
                    shard.channels.remove(&m.channel);
                    unsubscribe = true;
                }
            }
        }
        if unsubscribe {
            self.inner.metrics.channels.dec();
            self.inner.engine.unsubscribe(&m.channel);
        }
    }

    /// Asks for a re-read of the channel's history.
    fn poke(&self, channel: &ChannelName, generation: u64, reason: &'static str) {
        if self.with_state(channel, generation, |s, _| s.poke()) == Some(true) {
            self.spawn_sync(channel.clone(), generation, reason);
        }
    }

    async fn hook(&self, point: HookPoint, channel: &ChannelName) {
        if let Some(hook) = &self.inner.hook {
            hook(point, channel.clone()).await;
        }
    }

    fn on_event(&self, event: Event) {
        let channel = event.channel.clone();
        let message = Arc::new(Message::new(event));
        let mut fx = Effects::default();
        let sync = {
            let mut shard = self.shard(&channel).lock();
            shard
                .channels
                .get_mut(&channel)
                .and_then(|state| state.on_live(message, &mut fx).then_some(state.generation))
        };
        // Counted after the fan-out, so an observer of the metric knows the hub has applied it.
        self.inner.metrics.received.inc();
        drop(fx);
        if let Some(generation) = sync {
            self.spawn_sync(channel, generation, ResyncReason::Jump.as_str());
        }
    }

    fn on_hint(&self, channel: &ChannelName) {
        let generation = {
            let shard = self.shard(channel).lock();
            shard.channels.get(channel).map(|s| s.generation)
        };
        if let Some(generation) = generation {
            self.poke(channel, generation, ResyncReason::Hint.as_str());
        }
    }

    fn on_resubscribed(&self) {
        for shard in self.inner.shards.iter() {
            let to_sync: Vec<(ChannelName, u64)> = {
                let mut shard = shard.lock();
                shard
                    .channels
                    .iter_mut()
                    .filter_map(|(name, state)| {
                        state.poke().then(|| (name.clone(), state.generation))
                    })
                    .collect()
            };
            for (channel, generation) in to_sync {
                self.spawn_sync(channel, generation, ResyncReason::Reconnect.as_str());
            }
        }
    }
}

/// The engine's view of the hub; weak so the engine's tasks don't keep a stopped hub alive.
struct HubListener(Weak<Inner>);

impl HubListener {
    fn hub(&self) -> Option<Hub> {
        self.0.upgrade().map(|inner| Hub { inner })
    }
}

impl Listener for HubListener {
    fn on_event(&self, event: Event) {
        if let Some(hub) = self.hub() {
            hub.on_event(event);
        }
    }

    fn on_hint(&self, channel: &ChannelName) {
        if let Some(hub) = self.hub() {
            hub.on_hint(channel);
        }
    }

    fn on_resubscribed(&self) {
        if let Some(hub) = self.hub() {
            hub.on_resubscribed();
        }
    }

    fn on_live_path(&self, up: bool) {
        if let Some(hub) = self.hub() {
            hub.inner.live_up.store(up, Ordering::Relaxed);
            hub.inner.metrics.engine_up.set(i64::from(up));
        }
    }
}

//! The instance's single pub/sub connection. It owns the set of channels the hub wants, batches
//! SUBSCRIBE/UNSUBSCRIBE commands, reconnects with backoff, re-subscribes everything after a
//! reconnect and then tells the hub to re-read history, because messages published while the
//! connection was down are gone from pub/sub (but not from the streams). Every (re)connect goes
//! through the [`Dialer`], so with Sentinel it lands on the primary of that moment.
//!
//! Liveness is checked end to end, not with PING: every probe period the instance publishes a
//! sequence number to its own control channel through the command pool and expects it back on
//! this connection. A connection that answers PING but no longer receives publishes (seen after
//! failovers, when it is left on a demoted node) fails the probe and is replaced.
//!
//! Backpressure rule: this task never waits on a client. It hands each message to the listener,
//! which only does non-blocking queue pushes.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use shared::ChannelName;
use tokio::sync::{mpsc, oneshot, watch};

use super::conns::Connections;
use super::dial::Dialer;
use super::keys::Keys;
use super::wire;
use crate::backoff::Backoff;
use crate::engine::{EngineError, Listener};
use crate::metrics::Metrics;

/// A request to the pub/sub task.
pub(super) enum Command {
    /// Subscribe to a live channel; the reply is sent once Redis confirmed it.
    Subscribe(String, oneshot::Sender<Result<(), EngineError>>),
    /// Unsubscribe from a live channel.
    Unsubscribe(String),
}

/// Everything the task needs; built by the engine.
pub(super) struct PubsubTask {
    /// Opens each (re)connection.
    pub dialer: Dialer,
    pub keys: Keys,
    pub listener: Arc<dyn Listener>,
    pub commands: mpsc::UnboundedReceiver<Command>,
    pub stop: watch::Receiver<bool>,
    pub timeout: Duration,
    pub probe: Probe,
    /// The function library, checked on every (re)connect (and loaded if Redis lacks it) so a
    /// Redis restarted without persistence gets it back before the instance reports ready.
    pub library: String,
    /// The engine's cached command connections, forgotten on every reconnect.
    pub commands_cache: Connections,
    pub metrics: Metrics,
}

/// The end-to-end liveness probe's settings.
pub(super) struct Probe {
    /// Command connections the probe is published through.
    pub conns: Connections,
    /// This instance's control channel.
    pub channel: String,
    /// How often to probe; a probe not back by the next one fails.
    pub interval: Duration,
}

impl PubsubTask {
    /// Runs until `stop` fires or the engine is dropped.
    pub async fn run(mut self) {
        let mut desired: HashSet<String> = HashSet::new();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut connected_before = false;
        loop {
            let connect = tokio::time::timeout(self.timeout, self.dialer.pubsub());
            let pubsub = tokio::select! {
                r = connect => r,
                _ = self.stop.changed() => return,
            };
            let pubsub = match pubsub {
                Ok(Ok(p)) => p,
                failure => {
                    let why = match failure {
                        Ok(Err(e)) => e.to_string(),
                        _ => "connect timed out".to_owned(),
                    };
                    tracing::warn!(error = %why, "pub/sub connection failed; retrying");
                    self.metrics
                        .engine_error(crate::metrics::labels::EngineErrorKind::PubsubConnect);
                    self.listener.on_live_path(false);
                    if !self.wait_refusing(backoff.next_delay(), &mut desired).await {
                        return;
                    }
                    continue;
                }
            };
            let (mut sink, mut stream) = pubsub.split();
            {
                let mut all: Vec<&String> = desired.iter().collect();
                all.push(&self.probe.channel);
                let confirmed = tokio::time::timeout(self.timeout, sink.subscribe(all)).await;
                if !matches!(confirmed, Ok(Ok(()))) {
                    tracing::warn!("re-subscribing after reconnect failed; retrying");
                    if !self.wait_refusing(backoff.next_delay(), &mut desired).await {
                        return;
                    }
                    continue;
                }
            }
            // Whatever broke this connection broke the cached command connections too.
            self.commands_cache.forget();
            if let Err(e) = self.load_library().await {
                tracing::warn!(error = %e, "loading the Redis function library failed; retrying");
                if !self.wait_refusing(backoff.next_delay(), &mut desired).await {
                    return;
                }
                continue;
            }
            backoff.reset();
            self.listener.on_live_path(true);
            if connected_before {
                tracing::info!(
                    channels = desired.len(),
                    "pub/sub reconnected; replaying history"
                );
                self.metrics.engine_reconnects.inc();
                self.listener.on_resubscribed();
            }
            connected_before = true;

            let mut probe = tokio::time::interval(self.probe.interval);
            probe.tick().await;
            let mut sequence: u64 = 0;
            let mut outstanding: Option<u64> = None;
            loop {
                tokio::select! {
                    msg = stream.next() => match msg {
                        Some(msg) if msg.get_channel_name() == self.probe.channel => {
                            if outstanding.is_some_and(|s| msg.get_payload_bytes() == s.to_string().as_bytes()) {
                                outstanding = None;
                            }
                        }
                        Some(msg) => self.deliver(&msg),
                        None => break,
                    },
                    cmd = self.commands.recv() => {
                        let Some(cmd) = cmd else { return };
                        if self.apply(cmd, &mut sink, &mut desired).await.is_err() {
                            break;
                        }
                    }
                    _ = probe.tick() => {
                        if let Some(lost) = outstanding {
                            tracing::warn!(probe = lost, "pub/sub path is silent: the probe did not come back; reconnecting");
                            self.metrics.engine_error(crate::metrics::labels::EngineErrorKind::PubsubSilent);
                            break;
                        }
                        sequence += 1;
                        outstanding = Some(sequence);
                        self.send_probe(sequence);
                    }
                    _ = self.stop.changed() => return,
                }
            }
            tracing::warn!("pub/sub connection lost; reconnecting");
            self.metrics
                .engine_error(crate::metrics::labels::EngineErrorKind::PubsubLost);
            self.listener.on_live_path(false);
            if !self.wait_refusing(backoff.next_delay(), &mut desired).await {
                return;
            }
        }
    }

    async fn load_library(&self) -> Result<(), String> {
        let load = async {
            let (slot, mut conn) = self.probe.conns.get().await.map_err(|e| e.to_string())?;
            super::library::ensure(&mut conn, &self.library)
                .await
                .map_err(|e| {
                    self.probe.conns.drop_broken(slot);
                    e.to_string()
                })
        };
        match tokio::time::timeout(self.timeout, load).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("timed out".into()),
        }
    }

    /// Publishes probe `sequence` through the command connections without blocking the loop;
    /// if it cannot be published, it does not come back and the next tick replaces the
    /// connection.
    fn send_probe(&self, sequence: u64) {
        let conns = self.probe.conns.clone();
        let channel = self.probe.channel.clone();
        let timeout = self.timeout;
        tokio::spawn(async move {
            let publish = async {
                let (slot, mut conn) = conns.get().await.ok()?;
                let sent = redis::cmd("PUBLISH")
                    .arg(&channel)
                    .arg(sequence)
                    .query_async::<i64>(&mut conn)
                    .await;
                if sent.is_err() {
                    conns.drop_broken(slot);
                }
                sent.ok()
            };
            let _ = tokio::time::timeout(timeout, publish).await;
        });
    }

    fn deliver(&self, msg: &redis::Msg) {
        deliver(
            &self.keys,
            &*self.listener,
            msg.get_channel_name(),
            msg.get_payload_bytes(),
        );
    }

    /// Applies a batch of commands (the first one plus whatever else is already queued) with at
    /// most one UNSUBSCRIBE and one SUBSCRIBE round trip; the last command per channel wins.
    async fn apply(
        &mut self,
        first: Command,
        sink: &mut redis::aio::PubSubSink,
        desired: &mut HashSet<String>,
    ) -> Result<(), ()> {
        let mut subscribe: Vec<String> = Vec::new();
        let mut unsubscribe: Vec<String> = Vec::new();
        let mut replies = Vec::new();
        let mut next = Some(first);
        while let Some(cmd) = next {
            match cmd {
                Command::Subscribe(name, reply) => {
                    desired.insert(name.clone());
                    unsubscribe.retain(|n| n != &name);
                    subscribe.push(name);
                    replies.push(reply);
                }
                Command::Unsubscribe(name) => {
                    desired.remove(&name);
                    subscribe.retain(|n| n != &name);
                    unsubscribe.push(name);
                }
            }
            next = self.commands.try_recv().ok();
        }
        if !unsubscribe.is_empty() {
            let done = tokio::time::timeout(self.timeout, sink.unsubscribe(&unsubscribe)).await;
            if !matches!(done, Ok(Ok(()))) {
                refuse(replies, "unsubscribe failed");
                return Err(());
            }
        }
        if !subscribe.is_empty() {
            let done = tokio::time::timeout(self.timeout, sink.subscribe(&subscribe)).await;
            if !matches!(done, Ok(Ok(()))) {
                refuse(replies, "subscribe failed");
                return Err(());
            }
        }
        for reply in replies {
            let _ = reply.send(Ok(()));
        }
        Ok(())
    }

    /// Sleeps `delay` while the connection is down, keeping the desired set current and telling
    /// subscribers at once that they must retry. Returns `false` when the task should stop.
    async fn wait_refusing(&mut self, delay: Duration, desired: &mut HashSet<String>) -> bool {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => return true,
                _ = self.stop.changed() => return false,
                cmd = self.commands.recv() => match cmd {
                    None => return false,
                    Some(Command::Subscribe(name, reply)) => {
                        desired.insert(name);
                        let _ = reply.send(Err(EngineError::Unavailable("pub/sub connection is down".into())));
                    }
                    Some(Command::Unsubscribe(name)) => {
                        desired.remove(&name);
                    }
                },
            }
        }
    }
}

/// Hands one live message on `name` (a pub/sub channel name) to the listener; one that cannot be
/// decoded makes the hub re-read the channel's history instead.
pub(super) fn deliver(keys: &Keys, listener: &dyn Listener, name: &str, payload: &[u8]) {
    let Some(name) = keys.channel_of_live(name) else {
        return;
    };
    let Ok(channel) = ChannelName::new(name) else {
        return;
    };
    match wire::parse_live(channel.clone(), payload) {
        Ok(event) => listener.on_event(event),
        Err(e) => {
            tracing::warn!(channel = %channel, error = %e, "undecodable live message; re-reading history");
            listener.on_hint(&channel);
        }
    }
}

/// Answers every waiting subscribe with "unavailable".
pub(super) fn refuse(replies: Vec<oneshot::Sender<Result<(), EngineError>>>, why: &str) {
    for reply in replies {
        let _ = reply.send(Err(EngineError::Unavailable(why.to_owned())));
    }
}

//! Live delivery from a Redis Cluster: sharded pub/sub (`SSUBSCRIBE`), over one cluster
//! connection that speaks RESP3 so messages arrive as pushes.
//!
//! redis-rs keeps one connection per primary that owns a subscribed channel, so the instance has
//! one subscriber connection per such primary, not one per channel. It re-subscribes by itself
//! after a node's connection drops and after topology changes (failover, resharding), and each
//! re-subscription arrives as another `ssubscribe` push: for a channel already confirmed once,
//! that push makes the hub re-read the channel's history from what it last delivered, because
//! whatever was published while it was away is gone from pub/sub (not from the streams). When a
//! slot moves, its old owner ends the subscriptions of that slot (`sunsubscribe` push); a channel
//! still wanted is subscribed again, at its new owner, and then re-read the same way.
//!
//! Liveness is checked end to end, per shard: one probe channel whose slot each primary owns
//! (recomputed as slots move), a sequence number published to each every probe period, and any
//! probe not back by the next period replaces the whole connection and replays every channel.
//!
//! A failover is watched for more closely. redis-rs re-learns which node owns a slot only when
//! a command fails or is redirected, and a subscribe-only connection sends none: after a
//! primary dies it keeps redialling the dead address, and a connection made while the dead
//! primary still owned its slots never learns of the promoted replica. So after a node's
//! connection ends (a `Disconnection` push), and after any replaced connection, the slot layout
//! is read four times a second until every shard has answered a probe; once a primary that was
//! there is gone (its replica took over), the connection is replaced and every channel replayed.
//! Slots moving between the same primaries (resharding) do not count.
//!
//! Backpressure rule: this task never waits on a client (the listener only does non-blocking
//! queue pushes).

mod layout;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::OptionFuture;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{PushKind, Value};
use shared::ChannelName;
use tokio::sync::{mpsc, watch};

use self::layout::{Layout, SLOTS, primaries, slot_of, text};

use super::conns::Connections;
use super::dial::Dialer;
use super::keys::Keys;
use super::library;
use super::pubsub::{Command, deliver, refuse};
use crate::backoff::Backoff;
use crate::engine::{EngineError, Listener};
use crate::metrics::Metrics;
use crate::metrics::labels::EngineErrorKind;

/// Everything the task needs; built by the engine.
pub(super) struct ShardsTask {
    /// Opens each (re)connection.
    pub dialer: Dialer,
    pub keys: Keys,
    pub listener: Arc<dyn Listener>,
    pub commands: mpsc::UnboundedReceiver<Command>,
    pub stop: watch::Receiver<bool>,
    pub timeout: Duration,
    /// This instance's name in probe channels.
    pub instance: String,
    /// How often every shard is probed.
    pub probe_interval: Duration,
    /// The function library, checked on every primary at every (re)connect.
    pub library: String,
    /// The engine's command connections (probes are published through them).
    pub conns: Connections,
    pub metrics: Metrics,
}

/// The slot layout, read from a random node within `timeout`.
async fn read_layout(
    conn: &mut ClusterConnection,
    timeout: Duration,
) -> Result<Layout, EngineError> {
    let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random);
    let slots = tokio::time::timeout(
        timeout,
        conn.route_command(redis::cmd("CLUSTER").arg("SLOTS").clone(), routing),
    )
    .await
    .map_err(|_| EngineError::Unavailable("CLUSTER SLOTS timed out".into()))?
    .map_err(|e| EngineError::Unavailable(e.to_string()))?;
    Ok(primaries(&slots))
}

/// How often the slot layout is read while a failover is watched for.
const FAILOVER_WATCH: Duration = Duration::from_millis(250);

/// Why the connection is being replaced.
enum Broken {
    /// The task must end.
    Stop,
    /// Reconnect (after a backoff).
    Reconnect(EngineErrorKind),
}

impl ShardsTask {
    /// Runs until `stop` fires or the engine is dropped.
    pub async fn run(mut self) {
        let mut desired: HashSet<String> = HashSet::new();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut connected_before = false;
        // After a failure the cluster may be failing over: watch the next connection's layout.
        let mut suspect = false;
        loop {
            match self
                .session(&mut desired, &mut connected_before, suspect)
                .await
            {
                Broken::Stop => return,
                Broken::Reconnect(why) => {
                    suspect = true;
                    tracing::warn!(reason = why.as_str(), "cluster pub/sub connection replaced");
                    self.metrics.engine_error(why);
                    self.listener.on_live_path(false);
                }
            }
            if !self.wait_refusing(backoff.next_delay(), &mut desired).await {
                return;
            }
            if connected_before {
                backoff.reset();
            }
        }
    }

    /// One connection's life: connect, load the library, subscribe, then serve until broken.
    async fn session(
        &mut self,
        desired: &mut HashSet<String>,
        connected_before: &mut bool,
        suspect: bool,
    ) -> Broken {
        let (push_tx, mut pushes) = mpsc::unbounded_channel();
        let connect = tokio::time::timeout(self.timeout, self.dialer.cluster_pubsub(push_tx));
        let mut conn = tokio::select! {
            r = connect => match r {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cluster connection failed");
                    return Broken::Reconnect(EngineErrorKind::PubsubConnect);
                }
                Err(_) => return Broken::Reconnect(EngineErrorKind::PubsubConnect),
            },
            _ = self.stop.changed() => return Broken::Stop,
        };
        // Whatever broke the last connection (a failover) may have broken these too.
        self.conns.forget();
        if let Err(e) = self.load_library(&mut conn).await {
            tracing::warn!(error = %e, "loading the function library on the primaries failed");
            return Broken::Reconnect(EngineErrorKind::Library);
        }
        let mut known = match read_layout(&mut conn, self.timeout).await {
            Ok(layout) => layout,
            Err(_) => return Broken::Reconnect(EngineErrorKind::PubsubConnect),
        };
        let mut probes = self.probe_channels(&known);
        // Each subscription is confirmed by one push; later pushes for it are re-subscriptions.
        let mut confirmed: HashMap<String, bool> = HashMap::new();
        let all: Vec<String> = desired.iter().chain(probes.keys()).cloned().collect();
        if !all.is_empty() && !self.ssubscribe(&mut conn, &all).await {
            return Broken::Reconnect(EngineErrorKind::PubsubSubscribe);
        }
        self.listener.on_live_path(true);
        if *connected_before {
            tracing::info!(
                channels = desired.len(),
                "cluster pub/sub reconnected; replaying history"
            );
            self.metrics.engine_reconnects.inc();
            self.listener.on_resubscribed();
        }
        *connected_before = true;

        let mut tick = tokio::time::interval(self.probe_interval);
        tick.tick().await;
        let mut sequence: u64 = 0;
        // While set (to the probe sequence then), a failover is watched for: until every shard
        // has answered a probe sent after that.
        let mut watching: Option<u64> = suspect.then_some(0);
        let mut failover_watch = tokio::time::interval(FAILOVER_WATCH);
        // The watch's read runs beside the loop: a dead node can hold it for a whole timeout.
        let mut layout_read: Option<tokio::task::JoinHandle<Option<Layout>>> = None;
        loop {
            tokio::select! {
                push = pushes.recv() => {
                    let Some(push) = push else { return Broken::Reconnect(EngineErrorKind::PubsubLost) };
                    if push.kind == PushKind::Disconnection {
                        self.metrics.engine_error(EngineErrorKind::PubsubNodeLost);
                        watching.get_or_insert(sequence);
                        continue;
                    }
                    self.on_push(push, &mut conn, desired, &mut probes, &mut confirmed).await;
                }
                _ = failover_watch.tick(), if watching.is_some() && layout_read.is_none() => {
                    let mut reader = conn.clone();
                    let timeout = self.timeout;
                    layout_read = Some(tokio::spawn(async move {
                        read_layout(&mut reader, timeout).await.ok()
                    }));
                }
                Some(read) = OptionFuture::from(layout_read.as_mut()), if layout_read.is_some() => {
                    layout_read = None;
                    // A random node may be the dead one: then the next tick tries another.
                    if let Ok(Some(now)) = read
                        && layout::primary_gone(&known, &now)
                    {
                        tracing::warn!("a cluster primary was replaced; resubscribing");
                        return Broken::Reconnect(EngineErrorKind::PubsubFailover);
                    }
                }
                cmd = self.commands.recv() => {
                    let Some(cmd) = cmd else { return Broken::Stop };
                    if !self.apply(cmd, &mut conn, desired, &mut confirmed).await {
                        return Broken::Reconnect(EngineErrorKind::PubsubSubscribe);
                    }
                }
                _ = tick.tick() => {
                    if probes.values().any(|back| !*back) && sequence > 0 {
                        tracing::warn!("a shard's pub/sub path is silent: a probe did not come back");
                        return Broken::Reconnect(EngineErrorKind::PubsubSilent);
                    }
                    // Every shard answered a probe sent after the loss: nothing is failing over.
                    if watching.is_some_and(|at| sequence > at) {
                        watching = None;
                    }
                    // Slots move: keep one probe on every primary.
                    if let Ok(layout) = read_layout(&mut conn, self.timeout).await {
                        if layout::primary_gone(&known, &layout) {
                            tracing::warn!("a cluster primary was replaced; resubscribing");
                            return Broken::Reconnect(EngineErrorKind::PubsubFailover);
                        }
                        known = layout;
                        let now = self.probe_channels(&known);
                        let new: Vec<String> =
                            now.keys().filter(|c| !probes.contains_key(*c)).cloned().collect();
                        let old: Vec<String> =
                            probes.keys().filter(|c| !now.contains_key(*c)).cloned().collect();
                        if !new.is_empty() && !self.ssubscribe(&mut conn, &new).await {
                            return Broken::Reconnect(EngineErrorKind::PubsubSubscribe);
                        }
                        for name in &old {
                            let _ = tokio::time::timeout(self.timeout, conn.sunsubscribe(name)).await;
                        }
                        probes = now;
                    }
                    sequence += 1;
                    for back in probes.values_mut() {
                        *back = false;
                    }
                    self.send_probes(probes.keys().cloned().collect(), sequence);
                }
                _ = self.stop.changed() => return Broken::Stop,
            }
        }
    }

    /// Handles one push from the cluster connection.
    async fn on_push(
        &mut self,
        push: redis::PushInfo,
        conn: &mut ClusterConnection,
        desired: &HashSet<String>,
        probes: &mut HashMap<String, bool>,
        confirmed: &mut HashMap<String, bool>,
    ) {
        let name = push.data.first().and_then(text);
        match (push.kind, name) {
            (PushKind::SMessage, Some(name)) => {
                if let Some(back) = probes.get_mut(&name) {
                    *back = true;
                } else if let Some(Value::BulkString(payload)) = push.data.get(1) {
                    deliver(&self.keys, &*self.listener, &name, payload);
                }
            }
            (PushKind::SSubscribe, Some(name)) => {
                let again = confirmed.insert(name.clone(), true).is_some();
                if again && desired.contains(&name) {
                    // Re-subscribed after a reconnect, a failover or a slot move.
                    if let Some(channel) = self
                        .keys
                        .channel_of_live(&name)
                        .and_then(|c| ChannelName::new(c).ok())
                    {
                        self.listener.on_hint(&channel);
                    }
                }
            }
            (PushKind::SUnsubscribe, Some(name)) => {
                // Requested by us (gone from `desired`), or the slot moved away from the node.
                if desired.contains(&name) || probes.contains_key(&name) {
                    let _ = self.ssubscribe(conn, std::slice::from_ref(&name)).await;
                } else {
                    confirmed.remove(&name);
                }
            }
            _ => {}
        }
    }

    /// Applies one subscribe or unsubscribe command; `false` when the connection failed.
    async fn apply(
        &mut self,
        cmd: Command,
        conn: &mut ClusterConnection,
        desired: &mut HashSet<String>,
        confirmed: &mut HashMap<String, bool>,
    ) -> bool {
        match cmd {
            Command::Subscribe(name, reply) => {
                desired.insert(name.clone());
                if self.ssubscribe(conn, std::slice::from_ref(&name)).await {
                    let _ = reply.send(Ok(()));
                    true
                } else {
                    refuse(vec![reply], "subscribe failed");
                    false
                }
            }
            Command::Unsubscribe(name) => {
                desired.remove(&name);
                confirmed.remove(&name);
                let done = tokio::time::timeout(self.timeout, conn.sunsubscribe(&name)).await;
                matches!(done, Ok(Ok(())))
            }
        }
    }

    /// Subscribes `names`, one command each (a sharded subscribe must stay within one slot),
    /// all in flight at once; `true` when every one was confirmed.
    async fn ssubscribe(&self, conn: &mut ClusterConnection, names: &[String]) -> bool {
        let all = names.iter().map(|name| {
            let mut conn = conn.clone();
            async move { conn.ssubscribe(name).await }
        });
        let done =
            tokio::time::timeout(self.timeout, futures_util::future::try_join_all(all)).await;
        match done {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "sharded subscribe failed");
                false
            }
            Err(_) => false,
        }
    }

    /// Checks the library on every primary and loads it where it is missing or different (a
    /// node added by resharding, or one restarted empty).
    async fn load_library(&self, conn: &mut ClusterConnection) -> redis::RedisResult<bool> {
        let work = library::ensure_cluster(conn, &self.library);
        match tokio::time::timeout(self.timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()),
        }
    }

    /// One probe channel per primary, named so its hash slot is one the primary owns.
    fn probe_channels(&self, layout: &Layout) -> HashMap<String, bool> {
        let mut probes = HashMap::new();
        for ranges in layout.values() {
            let name = (0..u32::from(SLOTS) * 8)
                .map(|n| format!("{}:{n}", self.instance))
                .find(|tag| {
                    let slot = slot_of(&self.keys.control_tag(tag));
                    ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&slot))
                });
            if let Some(tag) = name {
                probes.insert(self.keys.control(&tag), false);
            }
        }
        probes
    }

    /// Publishes `sequence` to every probe channel without blocking the loop.
    fn send_probes(&self, channels: Vec<String>, sequence: u64) {
        let conns = self.conns.clone();
        let timeout = self.timeout;
        tokio::spawn(async move {
            for channel in channels {
                let publish = async {
                    let (slot, mut conn) = conns.get().await.ok()?;
                    let sent = redis::cmd("SPUBLISH")
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
            }
        });
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
                        refuse(vec![reply], "pub/sub connection is down");
                    }
                    Some(Command::Unsubscribe(name)) => {
                        desired.remove(&name);
                    }
                },
            }
        }
    }
}

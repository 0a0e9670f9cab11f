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
//! Backpressure rule: this task never waits on a client (the listener only does non-blocking
//! queue pushes).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{PushKind, Value};
use shared::ChannelName;
use tokio::sync::{mpsc, watch};

use super::conns::Connections;
use super::dial::Dialer;
use super::keys::Keys;
use super::library;
use super::pubsub::{Command, deliver, refuse};
use crate::backoff::Backoff;
use crate::engine::{EngineError, Listener};
use crate::metrics::Metrics;

/// Number of hash slots in a Redis Cluster.
const SLOTS: u16 = 16384;

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

/// Why the connection is being replaced.
enum Broken {
    /// The task must end.
    Stop,
    /// Reconnect (after a backoff).
    Reconnect(crate::metrics::labels::EngineErrorKind),
}

impl ShardsTask {
    /// Runs until `stop` fires or the engine is dropped.
    pub async fn run(mut self) {
        let mut desired: HashSet<String> = HashSet::new();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut connected_before = false;
        loop {
            match self.session(&mut desired, &mut connected_before).await {
                Broken::Stop => return,
                Broken::Reconnect(why) => {
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
    ) -> Broken {
        let (push_tx, mut pushes) = mpsc::unbounded_channel();
        let connect = tokio::time::timeout(self.timeout, self.dialer.cluster_pubsub(push_tx));
        let mut conn = tokio::select! {
            r = connect => match r {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cluster connection failed");
                    return Broken::Reconnect(crate::metrics::labels::EngineErrorKind::PubsubConnect);
                }
                Err(_) => return Broken::Reconnect(crate::metrics::labels::EngineErrorKind::PubsubConnect),
            },
            _ = self.stop.changed() => return Broken::Stop,
        };
        // Whatever broke the last connection (a failover) may have broken these too.
        self.conns.forget();
        if let Err(e) = self.load_library(&mut conn).await {
            tracing::warn!(error = %e, "loading the function library on the primaries failed");
            return Broken::Reconnect(crate::metrics::labels::EngineErrorKind::Library);
        }
        let mut probes = match self.probe_channels(&mut conn).await {
            Ok(p) => p,
            Err(_) => {
                return Broken::Reconnect(crate::metrics::labels::EngineErrorKind::PubsubConnect);
            }
        };
        // Each subscription is confirmed by one push; later pushes for it are re-subscriptions.
        let mut confirmed: HashMap<String, bool> = HashMap::new();
        let all: Vec<String> = desired.iter().chain(probes.keys()).cloned().collect();
        if !all.is_empty() && !self.ssubscribe(&mut conn, &all).await {
            return Broken::Reconnect(crate::metrics::labels::EngineErrorKind::PubsubSubscribe);
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
        loop {
            tokio::select! {
                push = pushes.recv() => {
                    let Some(push) = push else { return Broken::Reconnect(crate::metrics::labels::EngineErrorKind::PubsubLost) };
                    self.on_push(push, &mut conn, desired, &mut probes, &mut confirmed).await;
                }
                cmd = self.commands.recv() => {
                    let Some(cmd) = cmd else { return Broken::Stop };
                    if !self.apply(cmd, &mut conn, desired, &mut confirmed).await {
                        return Broken::Reconnect(crate::metrics::labels::EngineErrorKind::PubsubSubscribe);
                    }
                }
                _ = tick.tick() => {
                    if probes.values().any(|back| !*back) && sequence > 0 {
                        tracing::warn!("a shard's pub/sub path is silent: a probe did not come back");
                        return Broken::Reconnect(crate::metrics::labels::EngineErrorKind::PubsubSilent);
                    }
                    // Slots move: keep one probe on every primary.
                    if let Ok(now) = self.probe_channels(&mut conn).await {
                        let new: Vec<String> =
                            now.keys().filter(|c| !probes.contains_key(*c)).cloned().collect();
                        let old: Vec<String> =
                            probes.keys().filter(|c| !now.contains_key(*c)).cloned().collect();
                        if !new.is_empty() && !self.ssubscribe(&mut conn, &new).await {
                            return Broken::Reconnect(crate::metrics::labels::EngineErrorKind::PubsubSubscribe);
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
            (PushKind::Disconnection, _) => {
                self.metrics
                    .engine_error(crate::metrics::labels::EngineErrorKind::PubsubNodeLost);
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
    async fn probe_channels(
        &self,
        conn: &mut ClusterConnection,
    ) -> Result<HashMap<String, bool>, EngineError> {
        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random);
        let slots = tokio::time::timeout(
            self.timeout,
            conn.route_command(redis::cmd("CLUSTER").arg("SLOTS").clone(), routing),
        )
        .await
        .map_err(|_| EngineError::Unavailable("CLUSTER SLOTS timed out".into()))?
        .map_err(|e| EngineError::Unavailable(e.to_string()))?;
        let owners = primaries(&slots);
        let mut probes = HashMap::new();
        for ranges in owners.values() {
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
        Ok(probes)
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

/// A string value of a push.
fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// The hash slot of a key whose hash tag is the whole of `tag`.
fn slot_of(tag: &str) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(tag.as_bytes()) % SLOTS
}

/// Slot ranges per primary (by node id) from a `CLUSTER SLOTS` reply:
/// `[[start, end, [host, port, id, ...], replicas...], ...]`.
fn primaries(reply: &Value) -> HashMap<String, Vec<(u16, u16)>> {
    let mut owners: HashMap<String, Vec<(u16, u16)>> = HashMap::new();
    let Value::Array(ranges) = reply else {
        return owners;
    };
    for range in ranges {
        let Value::Array(parts) = range else { continue };
        let (Some(Value::Int(lo)), Some(Value::Int(hi)), Some(Value::Array(primary))) =
            (parts.first(), parts.get(1), parts.get(2))
        else {
            continue;
        };
        let id = primary.get(2).and_then(text).unwrap_or_else(|| {
            // Without an id, the address names the primary.
            primary
                .iter()
                .take(2)
                .filter_map(text)
                .collect::<Vec<_>>()
                .join(":")
        });
        if let (Ok(lo), Ok(hi)) = (u16::try_from(*lo), u16::try_from(*hi)) {
            owners.entry(id).or_default().push((lo, hi));
        }
    }
    owners
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT`.
        assert_eq!(slot_of("foo"), 12182);
        assert_eq!(slot_of("somekey"), 11058);
        assert_eq!(slot_of(""), 0);
    }

    #[test]
    fn primaries_are_read_from_cluster_slots() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let node =
            |port: i64, id: &str| Value::Array(vec![bulk("127.0.0.1"), Value::Int(port), bulk(id)]);
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node(7000, "a"),
                node(7003, "d"),
            ]),
            Value::Array(vec![Value::Int(5461), Value::Int(10922), node(7001, "b")]),
            Value::Array(vec![Value::Int(10923), Value::Int(16383), node(7000, "a")]),
        ]);
        let owners = primaries(&reply);
        assert_eq!(owners["a"], vec![(0, 5460), (10923, 16383)]);
        assert_eq!(owners["b"], vec![(5461, 10922)]);
        assert_eq!(owners.len(), 2);
    }
}

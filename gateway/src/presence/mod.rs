//! Presence: which connections are subscribed to a channel right now, on every instance, each
//! with its token's `sub` and `info` (`null` for anonymous connections: they count too).
//!
//! Every instance keeps its own entries here (`local`): with the in-memory engine that is the
//! whole answer, and `events` publishes its joins and leaves; with Redis (see `writer`) every
//! change goes to the channel's presence hash in order, and every third of
//! `presence.ttl_seconds` one batch re-adds all of the instance's entries with a fresh
//! deadline, so those of an instance that died without cleaning up expire. There Redis itself
//! publishes the joins and leaves, in the same atomic call as the change (`gw_presence`), so
//! the leaves of a dead instance's entries are published exactly once, by whichever surviving
//! instance removes them.
//! SSE streams and WebSocket subscriptions are tracked; long polls are not (they come and go).

pub mod events;
mod local;
mod writer;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use shared::ChannelName;
use tokio::sync::{mpsc, watch};

use self::local::Local;
use crate::auth::Grant;
use crate::engine::redis::presence::PresenceOp;
use crate::engine::{Engine, EngineError, PublishRequest};
use crate::metrics::Metrics;

/// Handle to this instance's presence; clones share it.
#[derive(Clone)]
pub struct Presence {
    inner: Arc<Inner>,
}

struct Inner {
    /// Prefix of this instance's connection ids.
    instance: String,
    next: AtomicU64,
    local: Local,
    engine: Engine,
    metrics: Metrics,
    /// Changes for the Redis writer, in order (none with the in-memory engine).
    changes: Option<mpsc::UnboundedSender<(ChannelName, PresenceOp)>>,
    pending: parking_lot::Mutex<Option<mpsc::UnboundedReceiver<(ChannelName, PresenceOp)>>>,
    ttl: Duration,
    max_entries: usize,
    /// Patterns of the tracked channels.
    channels: Vec<String>,
    /// Patterns of the tracked channels that get join and leave events.
    events: Vec<String>,
    /// Joins and leaves for the events task (in-memory engine only: Redis publishes its own).
    announce: Option<mpsc::UnboundedSender<PublishRequest>>,
    announced: parking_lot::Mutex<Option<mpsc::UnboundedReceiver<PublishRequest>>>,
    stop: watch::Sender<bool>,
    /// The Redis writer and the events task, once started.
    tasks: parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// A channel's presence: how many connections, and who, unless there are too many to list.
#[derive(Clone, Debug, PartialEq)]
pub struct Roster {
    /// Connections subscribed, on every instance.
    pub count: u64,
    /// `{"conn","sub","info"}` objects sorted by `conn`; `None` past `presence.max_entries`.
    pub clients: Option<Vec<Value>>,
}

/// A connection's entries in several channels, in one pointer (none when no channel is
/// tracked), so streams that track nothing stay as small as before.
pub struct Tracks {
    _entries: Box<Entries>,
}

/// What [`Tracks`] points at.
struct Entries {
    _tracked: Vec<Tracked>,
}

impl Tracks {
    /// The entries, if there are any.
    pub fn new(tracked: Vec<Tracked>) -> Option<Self> {
        (!tracked.is_empty()).then(|| Self {
            _entries: Box::new(Entries { _tracked: tracked }),
        })
    }
}

/// One connection's entry in one channel; removed when dropped.
pub struct Tracked {
    presence: Presence,
    channel: ChannelName,
    conn: Arc<str>,
}

impl Presence {
    /// Presence over `engine`; call [`Presence::start`] to run the Redis writer (or, with the
    /// in-memory engine, the events task).
    pub fn new(
        engine: Engine,
        settings: &crate::config::PresenceSettings,
        metrics: Metrics,
    ) -> Self {
        fn queue<T>() -> (
            Option<mpsc::UnboundedSender<T>>,
            Option<mpsc::UnboundedReceiver<T>>,
        ) {
            let (tx, rx) = mpsc::unbounded_channel();
            (Some(tx), Some(rx))
        }
        let ((changes, pending), (announce, announced)) = match engine {
            Engine::Redis(_) => (queue(), (None, None)),
            Engine::Memory(_) => ((None, None), queue()),
        };
        Self {
            inner: Arc::new(Inner {
                instance: format!("{:012x}", fastrand::u64(..) >> 16),
                next: AtomicU64::new(1),
                local: Local::default(),
                engine,
                metrics,
                changes,
                pending: parking_lot::Mutex::new(pending),
                ttl: Duration::from_secs(settings.ttl_seconds),
                max_entries: settings.max_entries,
                channels: settings.channels.clone(),
                events: settings.events.clone(),
                announce,
                announced: parking_lot::Mutex::new(announced),
                stop: watch::channel(false).0,
                tasks: parking_lot::Mutex::new(Vec::new()),
            }),
        }
    }

    /// Starts the Redis writer, or with the in-memory engine the events task.
    pub fn start(&self) {
        let mut tasks = self.inner.tasks.lock();
        if let Some(events) = self.inner.announced.lock().take() {
            tasks.push(tokio::spawn(events::run(
                self.inner.engine.clone(),
                events,
                self.inner.metrics.clone(),
                self.inner.stop.subscribe(),
            )));
        }
        if let (Engine::Redis(engine), Some(changes)) =
            (&self.inner.engine, self.inner.pending.lock().take())
        {
            tasks.push(tokio::spawn(writer::run(
                engine.clone(),
                self.clone(),
                changes,
                self.inner.stop.subscribe(),
            )));
        }
    }

    /// Stops the writer once what is queued (the removals of the connections that just ended)
    /// has been written, waiting for that at most `wait`.
    pub async fn stop(&self, wait: Duration) {
        let _ = self.inner.stop.send(true);
        let tasks = std::mem::take(&mut *self.inner.tasks.lock());
        let _ = tokio::time::timeout(wait, futures_util::future::join_all(tasks)).await;
    }

    /// A fresh connection id, `<instance>-<n>`, unique across instances.
    pub fn connection_id(&self) -> Arc<str> {
        let n = self.inner.next.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.inner.instance).into()
    }

    /// Whether `channel`'s subscribers are tracked (`presence.channels`).
    pub fn tracks(&self, channel: &ChannelName) -> bool {
        let name = channel.as_str();
        self.inner
            .channels
            .iter()
            .any(|p| shared::pattern_matches(p, name))
    }

    /// Records `conn` (holding `grant`) as subscribed to `channel` until the result drops;
    /// nothing when the channel is not tracked.
    pub fn track(&self, channel: &ChannelName, conn: &Arc<str>, grant: &Grant) -> Option<Tracked> {
        if !self.tracks(channel) {
            return None;
        }
        let value = entry(conn, grant);
        if let Some(announce) = &self.inner.announce
            && self.announces(channel)
        {
            let _ = announce.send(events::request(channel, events::JOIN, &value));
        }
        if self.inner.local.insert(channel, conn, value.clone()) {
            self.inner.metrics.presence.entries.inc();
        }
        if let Some(changes) = &self.inner.changes {
            let _ = changes.send((channel.clone(), PresenceOp::Add(conn.to_string(), value)));
        }
        Some(Tracked {
            presence: self.clone(),
            channel: channel.clone(),
            conn: conn.clone(),
        })
    }

    /// Who is subscribed to `channel` on every instance (entries up to `max_entries`; `0`
    /// asks for the count only); `None` when the channel is not tracked.
    pub async fn roster(
        &self,
        channel: &ChannelName,
        max: usize,
    ) -> Result<Option<Roster>, EngineError> {
        if !self.tracks(channel) {
            return Ok(None);
        }
        let max = max.min(self.inner.max_entries);
        let (count, values) = match &self.inner.engine {
            Engine::Redis(e) => e.presence_read(channel, max).await?,
            Engine::Memory(_) => self.inner.local.read(channel, max),
        };
        Ok(Some(Roster {
            count,
            clients: values.map(|v| parse_entries(&v)),
        }))
    }

    /// The most entries a roster lists.
    pub fn max_entries(&self) -> usize {
        self.inner.max_entries
    }

    /// Whether `channel` gets join and leave events (`presence.events`).
    fn announces(&self, channel: &ChannelName) -> bool {
        let name = channel.as_str();
        self.inner
            .events
            .iter()
            .any(|p| shared::pattern_matches(p, name))
    }

    fn untrack(&self, channel: &ChannelName, conn: &Arc<str>) {
        if let Some(value) = self.inner.local.remove(channel, conn) {
            self.inner.metrics.presence.entries.dec();
            if let Some(announce) = &self.inner.announce
                && self.announces(channel)
            {
                let _ = announce.send(events::request(channel, events::LEAVE, &value));
            }
        }
        if let Some(changes) = &self.inner.changes {
            let _ = changes.send((channel.clone(), PresenceOp::Remove(conn.to_string())));
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.presence.untrack(&self.channel, &self.conn);
    }
}

/// The stored JSON of one connection's entry.
fn entry(conn: &str, grant: &Grant) -> String {
    let (sub, info) = match grant {
        Grant::Token(c) => (
            c.sub.clone().map(Value::String),
            c.info.clone().map(Value::Object),
        ),
        Grant::Anyone => (None, None),
    };
    json!({"conn": conn, "sub": sub, "info": info}).to_string()
}

/// Entries as JSON objects sorted by `conn`; unreadable ones (never written by a gateway) are
/// skipped.
fn parse_entries(values: &[String]) -> Vec<Value> {
    let mut entries: Vec<Value> = values
        .iter()
        .filter_map(|v| serde_json::from_str::<Value>(v).ok())
        .filter(Value::is_object)
        .collect();
    entries.sort_by(|a, b| a["conn"].as_str().cmp(&b["conn"].as_str()));
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_carry_sub_and_info() {
        let v: Value = serde_json::from_str(&entry("i-1", &Grant::Anyone)).unwrap();
        assert_eq!(v, json!({"conn": "i-1", "sub": null, "info": null}));
        let claims = crate::auth::Claims {
            sub: Some("u1".into()),
            info: json!({"name": "Ada"}).as_object().cloned(),
            ..Default::default()
        };
        let v: Value =
            serde_json::from_str(&entry("i-2", &Grant::Token(Arc::new(claims)))).unwrap();
        assert_eq!(
            v,
            json!({"conn": "i-2", "sub": "u1", "info": {"name": "Ada"}})
        );
    }

    #[tokio::test]
    async fn memory_presence_tracks_only_matching_channels_and_announces_comings_and_goings() {
        let engine = Engine::Memory(crate::engine::memory::MemoryEngine::new(
            10,
            Duration::from_secs(60),
        ));
        let settings = crate::config::PresenceSettings {
            channels: vec!["chat:*".into(), "lobby".into()],
            events: vec!["lobby".into()],
            ..Default::default()
        };
        let metrics = Metrics::new();
        let presence = Presence::new(engine, &settings, metrics.clone());
        let (chat, lobby, other) = (
            ChannelName::new("chat:1").unwrap(),
            ChannelName::new("lobby").unwrap(),
            ChannelName::new("other").unwrap(),
        );
        let conn = presence.connection_id();
        assert_ne!(conn, presence.connection_id());
        assert!(presence.track(&other, &conn, &Grant::Anyone).is_none());
        assert_eq!(presence.roster(&other, 10).await.unwrap(), None);
        let in_chat = presence.track(&chat, &conn, &Grant::Anyone);
        let in_lobby = presence.track(&lobby, &conn, &Grant::Anyone);
        let roster = presence.roster(&chat, 10).await.unwrap().unwrap();
        assert_eq!(roster.count, 1);
        assert_eq!(roster.clients.unwrap()[0]["conn"], json!(&*conn));
        assert_eq!(metrics.presence.entries.get(), 2);
        drop((in_chat, in_lobby));
        assert_eq!(presence.roster(&chat, 10).await.unwrap().unwrap().count, 0);
        assert_eq!(metrics.presence.entries.get(), 0);
        // Only the lobby announced: its join, then its leave.
        let mut queued = presence.inner.announced.lock().take().unwrap();
        let names: Vec<String> = std::iter::from_fn(|| queued.try_recv().ok())
            .map(|r| format!("{} {}", r.channel, r.name.unwrap().as_str()))
            .collect();
        assert_eq!(names, ["lobby presence.join", "lobby presence.leave"]);
    }

    #[test]
    fn entries_are_sorted_and_junk_skipped() {
        let values = vec![
            r#"{"conn":"b"}"#.to_owned(),
            "nope".to_owned(),
            "[1]".to_owned(),
            r#"{"conn":"a"}"#.to_owned(),
        ];
        let conns: Vec<_> = parse_entries(&values)
            .iter()
            .map(|e| e["conn"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(conns, ["a", "b"]);
    }
}

//! Presence in Redis through `gw_presence` and `gw_presence_read` (see `gateway.lua`): a hash
//! of entries and a sorted set of their deadlines per channel, both under the channel's hash
//! tag, so every call stays in one Cluster slot.

use futures_util::StreamExt;
use redis::Value;
use shared::ChannelName;

use super::RedisEngine;
use crate::engine::EngineError;

/// One change to a channel's presence, applied in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PresenceOp {
    /// Adds or refreshes the connection's entry (its JSON).
    Add(String, String),
    /// Removes the connection's entry.
    Remove(String),
}

/// A channel's presence as read: the count, and the entries (JSON) unless over the bound.
pub type PresenceRead = (u64, Option<Vec<String>>);

/// One channel's changes for [`RedisEngine::presence_apply`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresenceBatch {
    /// The channel.
    pub channel: ChannelName,
    /// Whether its entries' comings and goings are published (`presence.events`).
    pub announce: bool,
    /// Each connection's change, at most one per connection.
    pub ops: Vec<PresenceOp>,
}

/// What Redis did for a batch of `gw_presence` calls, summed, so the writer can count it.
#[derive(Debug, Default)]
pub struct PresenceApplied {
    /// Calls that succeeded.
    pub ok: u64,
    /// Calls that failed.
    pub failed: u64,
    /// `presence.join` events published.
    pub joins: u64,
    /// `presence.leave` events published (removals and expiries).
    pub leaves: u64,
    /// Entries past their deadline removed (a dead instance's).
    pub expired: u64,
    /// The first failure, if any.
    pub error: Option<EngineError>,
}

/// How many channels' calls are in flight at once during one batch.
const IN_FLIGHT: usize = 64;

impl RedisEngine {
    /// Applies each channel's ops with one `gw_presence` call per channel, all in flight
    /// together, which also removes (and, where announced, publishes the leave of) entries
    /// past their deadline. Never retried: a call Redis ran whose answer was lost must not run
    /// twice (a lost answer only loses the counts; the next refresh repairs the entries).
    pub async fn presence_apply(
        &self,
        batches: Vec<PresenceBatch>,
        ttl_ms: u64,
    ) -> PresenceApplied {
        let calls = batches.into_iter().map(|batch| {
            let c = &batch.channel;
            let mut cmd = redis::cmd("FCALL");
            cmd.arg("gw_presence")
                .arg(4)
                .arg(self.inner.keys.presence(c))
                .arg(self.inner.keys.presence_expiry(c))
                .arg(self.inner.keys.stream(c))
                .arg(self.inner.keys.meta(c))
                .arg(ttl_ms)
                .arg(if batch.announce { "1" } else { "0" })
                .arg(&self.inner.maxlen)
                .arg(&self.inner.ttl_ms);
            for op in batch.ops {
                match op {
                    PresenceOp::Add(conn, value) => cmd.arg("a").arg(conn).arg(value),
                    PresenceOp::Remove(conn) => cmd.arg("r").arg(conn).arg(""),
                };
            }
            async move { self.query::<(u64, u64, u64)>(&cmd).await }
        });
        let results: Vec<Result<(u64, u64, u64), EngineError>> = futures_util::stream::iter(calls)
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        let mut applied = PresenceApplied::default();
        for result in results {
            match result {
                Ok((joins, leaves, expired)) => {
                    applied.ok += 1;
                    applied.joins += joins;
                    applied.leaves += leaves;
                    applied.expired += expired;
                }
                Err(e) => {
                    applied.failed += 1;
                    applied.error.get_or_insert(e);
                }
            }
        }
        applied
    }

    /// Reads a channel's live entries (those past their deadline are left out, and left for
    /// the next `gw_presence` to remove); entries only up to `max`. Writes nothing, so it is
    /// retried on a broken connection.
    pub async fn presence_read(
        &self,
        channel: &ChannelName,
        max: usize,
    ) -> Result<PresenceRead, EngineError> {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg("gw_presence_read")
            .arg(2)
            .arg(self.inner.keys.presence(channel))
            .arg(self.inner.keys.presence_expiry(channel))
            .arg(max);
        let reply: Vec<Value> = self.query_idempotent(&cmd).await?;
        parse_read(reply)
    }
}

/// `{ count, value... }` or `{ count }`.
fn parse_read(reply: Vec<Value>) -> Result<PresenceRead, EngineError> {
    let mut items = reply.into_iter();
    let count = match items.next() {
        Some(Value::Int(n)) => u64::try_from(n).unwrap_or(0),
        other => {
            return Err(EngineError::Protocol(format!(
                "gw_presence_read count was {other:?}"
            )));
        }
    };
    let values: Vec<String> = items
        .map(|v| match v {
            Value::BulkString(b) => String::from_utf8(b)
                .map_err(|_| EngineError::Protocol("presence entry is not UTF-8".into())),
            other => Err(EngineError::Protocol(format!(
                "presence entry was {other:?}"
            ))),
        })
        .collect::<Result<_, _>>()?;
    // `{ count }` alone (over the bound) has no list; with a count of 0 the empty list is the
    // truth either way.
    let listed = values.len() as u64 == count;
    Ok((count, listed.then_some(values)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_count_and_entries() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let (n, list) = parse_read(vec![Value::Int(2), bulk("{}"), bulk("[]")]).unwrap();
        assert_eq!((n, list.unwrap().len()), (2, 2));
        assert_eq!(parse_read(vec![Value::Int(0)]).unwrap(), (0, Some(vec![])));
        assert_eq!(parse_read(vec![Value::Int(9)]).unwrap(), (9, None));
        assert!(parse_read(vec![]).is_err());
        assert!(parse_read(vec![Value::Int(1), Value::Int(3)]).is_err());
    }
}

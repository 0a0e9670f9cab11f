//! The Redis writer: applies this instance's presence changes in order, batched (what arrives
//! within [`COALESCE`] of a first change goes out together, one `gw_presence` call per channel
//! carrying each connection's final state), and every third of the TTL re-adds all of the
//! instance's entries with a fresh deadline. Each call also removes the channel's entries past
//! their deadline (an instance that died without cleaning up), and on channels with join and
//! leave events publishes, in the same atomic call, a join for every entry that appeared and a
//! leave for every one that disappeared (see `gw_presence`). A failed write is logged and
//! counted; the next heartbeat repairs lost adds, and a lost removal expires with the TTL.

use std::collections::HashMap;
use std::time::Duration;

use shared::ChannelName;
use tokio::sync::{mpsc, watch};

use super::Presence;
use crate::engine::redis::RedisEngine;
use crate::engine::redis::presence::{PresenceBatch, PresenceOp};

/// Most changes gathered into one batch.
const MAX_BATCH: usize = 10_000;

/// How long changes gather after a first one: a reconnect storm costs a few calls, not one per
/// client, and a change shows on every instance this much later.
const COALESCE: Duration = Duration::from_millis(50);

/// Runs until `stop`, then writes what is still queued.
pub(super) async fn run(
    engine: RedisEngine,
    presence: Presence,
    mut changes: mpsc::UnboundedReceiver<(ChannelName, PresenceOp)>,
    mut stop: watch::Receiver<bool>,
) {
    let ttl = presence.inner.ttl;
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    let mut heartbeat = tokio::time::interval((ttl / 3).max(Duration::from_millis(100)));
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            got = changes.recv() => {
                let Some(first) = got else { return };
                tokio::select! {
                    () = tokio::time::sleep(COALESCE) => {}
                    _ = stop.changed() => {}
                }
                let mut ops = vec![first];
                while ops.len() < MAX_BATCH && let Ok(more) = changes.try_recv() {
                    ops.push(more);
                }
                apply(&engine, &presence, group(ops), ttl_ms).await;
            }
            _ = heartbeat.tick() => {
                let all = presence.inner.local.snapshot();
                if !all.is_empty() {
                    apply(&engine, &presence, all, ttl_ms).await;
                }
            }
            _ = stop.changed() => {
                let mut ops = Vec::new();
                while let Ok(more) = changes.try_recv() {
                    ops.push(more);
                }
                if !ops.is_empty() {
                    apply(&engine, &presence, group(ops), ttl_ms).await;
                }
                return;
            }
        }
    }
}

/// Writes each channel's ops (announced where `presence.events` says so) and counts the
/// outcome.
async fn apply(
    engine: &RedisEngine,
    presence: &Presence,
    changes: Vec<(ChannelName, Vec<PresenceOp>)>,
    ttl_ms: u64,
) {
    let batches = changes
        .into_iter()
        .map(|(channel, ops)| PresenceBatch {
            announce: presence.announces(&channel),
            channel,
            ops,
        })
        .collect();
    let done = engine.presence_apply(batches, ttl_ms).await;
    let m = &presence.inner.metrics.presence;
    m.writes_ok.inc_by(done.ok);
    m.writes_failed.inc_by(done.failed);
    m.joins.inc_by(done.joins);
    m.leaves.inc_by(done.leaves);
    m.expired.inc_by(done.expired);
    if let Some(e) = done.error {
        tracing::warn!(error = %e, failed = done.failed, "presence write failed; the next refresh repairs it");
    }
}

/// Ops grouped by channel in order of first appearance, keeping each connection's last op
/// only (a batch is applied at once, so only the final state matters).
fn group(ops: Vec<(ChannelName, PresenceOp)>) -> Vec<(ChannelName, Vec<PresenceOp>)> {
    let mut index: HashMap<ChannelName, usize> = HashMap::new();
    let mut groups: Vec<(ChannelName, HashMap<String, usize>, Vec<PresenceOp>)> = Vec::new();
    for (channel, op) in ops {
        let i = *index.entry(channel.clone()).or_insert_with(|| {
            groups.push((channel, HashMap::new(), Vec::new()));
            groups.len() - 1
        });
        let Some((_, seen, list)) = groups.get_mut(i) else {
            continue;
        };
        let conn = match &op {
            PresenceOp::Add(conn, _) | PresenceOp::Remove(conn) => conn.clone(),
        };
        match seen.get(&conn) {
            Some(&at) => {
                if let Some(slot) = list.get_mut(at) {
                    *slot = op;
                }
            }
            None => {
                seen.insert(conn, list.len());
                list.push(op);
            }
        }
    }
    groups
        .into_iter()
        .map(|(channel, _, list)| (channel, list))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_keep_each_connections_last_op() {
        let (a, b) = (
            ChannelName::new("a").unwrap(),
            ChannelName::new("b").unwrap(),
        );
        let add = |c: &str| PresenceOp::Add(c.into(), "{}".into());
        let rm = |c: &str| PresenceOp::Remove(c.into());
        let groups = group(vec![
            (a.clone(), add("1")),
            (b.clone(), add("2")),
            (a.clone(), add("3")),
            (a.clone(), rm("1")),
            (b.clone(), rm("2")),
            (b.clone(), add("2")),
        ]);
        assert_eq!(
            groups,
            vec![(a, vec![rm("1"), add("3")]), (b, vec![add("2")])]
        );
    }
}

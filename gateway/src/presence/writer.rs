//! The Redis writer: applies this instance's presence changes in order, batched (everything
//! queued goes out together, one `gw_presence` call per channel), and every third of the TTL
//! re-adds all of the instance's entries with a fresh deadline. A failed write is logged; the
//! next heartbeat repairs lost adds, and a lost removal expires with the TTL.

use std::collections::HashMap;
use std::time::Duration;

use shared::ChannelName;
use tokio::sync::{mpsc, watch};

use super::Presence;
use crate::engine::redis::RedisEngine;
use crate::engine::redis::presence::PresenceOp;

/// Most changes gathered into one batch.
const MAX_BATCH: usize = 10_000;

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
                let mut ops = vec![first];
                while ops.len() < MAX_BATCH && let Ok(more) = changes.try_recv() {
                    ops.push(more);
                }
                apply(&engine, group(ops), ttl_ms).await;
            }
            _ = heartbeat.tick() => {
                let all = presence.inner.local.snapshot();
                if !all.is_empty() {
                    apply(&engine, all, ttl_ms).await;
                }
            }
            _ = stop.changed() => {
                let mut ops = Vec::new();
                while let Ok(more) = changes.try_recv() {
                    ops.push(more);
                }
                if !ops.is_empty() {
                    apply(&engine, group(ops), ttl_ms).await;
                }
                return;
            }
        }
    }
}

async fn apply(engine: &RedisEngine, batches: Vec<(ChannelName, Vec<PresenceOp>)>, ttl_ms: u64) {
    if let Err(e) = engine.presence_apply(batches, ttl_ms).await {
        tracing::warn!(error = %e, "presence write failed; the next refresh repairs it");
    }
}

/// Ops grouped by channel, each channel's in their original order.
fn group(ops: Vec<(ChannelName, PresenceOp)>) -> Vec<(ChannelName, Vec<PresenceOp>)> {
    let mut index: HashMap<ChannelName, usize> = HashMap::new();
    let mut groups: Vec<(ChannelName, Vec<PresenceOp>)> = Vec::new();
    for (channel, op) in ops {
        match index.get(&channel) {
            Some(&i) => groups[i].1.push(op),
            None => {
                index.insert(channel.clone(), groups.len());
                groups.push((channel, vec![op]));
            }
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_keep_each_channels_order() {
        let (a, b) = (
            ChannelName::new("a").unwrap(),
            ChannelName::new("b").unwrap(),
        );
        let add = |c: &str| PresenceOp::Add(c.into(), "{}".into());
        let rm = |c: &str| PresenceOp::Remove(c.into());
        let groups = group(vec![
            (a.clone(), add("1")),
            (b.clone(), add("2")),
            (a.clone(), rm("1")),
        ]);
        assert_eq!(
            groups,
            vec![(a, vec![add("1"), rm("1")]), (b, vec![add("2")])]
        );
    }
}

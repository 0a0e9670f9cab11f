//! Many publishes in one round trip: one `FCALL gw_publish_many` holding the whole batch, which
//! stores and pushes every event atomically, in order. On a cluster one call may only touch
//! keys of one hash slot, so the batch is split by slot and the calls (one per slot group) are
//! all in flight at once on the cluster connection: one round trip per shard, each group all
//! or nothing.

use std::collections::HashMap;

use futures_util::future::join_all;
use redis::cluster_routing::Slot;
use shared::{ChannelName, Position};

use super::{RedisEngine, parse_id};
use crate::engine::{EngineError, PublishRequest};

impl RedisEngine {
    /// Publishes every request, each group of one slot atomically; the outer error when every
    /// call failed (so nothing was stored, unless a call timed out after Redis ran it).
    pub async fn publish_batch(
        &self,
        requests: &[PublishRequest],
    ) -> Result<Vec<Result<Position, EngineError>>, EngineError> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let groups = if self.inner.dialer.is_cluster() {
            by_slot(requests, |c| self.inner.keys.stream(c))
        } else {
            vec![(0..requests.len()).collect()]
        };
        let calls = groups
            .iter()
            .map(|group| self.publish_group(requests, group));
        let outcomes = join_all(calls).await;
        if outcomes.iter().all(Result::is_err)
            && let Some(Err(e)) = outcomes.first()
        {
            return Err(e.clone());
        }
        let mut results: Vec<Result<Position, EngineError>> = (0..requests.len())
            .map(|_| Err(EngineError::Protocol("not answered".into())))
            .collect();
        for (group, outcome) in groups.iter().zip(outcomes) {
            for (k, &i) in group.iter().enumerate() {
                results[i] = match &outcome {
                    Ok(positions) => Ok(positions[k]),
                    Err(e) => Err(e.clone()),
                };
            }
        }
        Ok(results)
    }

    /// One `FCALL gw_publish_many` with the requests at `group` (indices into `requests`);
    /// their positions in the same order.
    async fn publish_group(
        &self,
        requests: &[PublishRequest],
        group: &[usize],
    ) -> Result<Vec<Position>, EngineError> {
        let mut numbers: HashMap<&ChannelName, usize> = HashMap::new();
        let mut channels: Vec<&ChannelName> = Vec::new();
        for &i in group {
            let channel = &requests[i].channel;
            numbers.entry(channel).or_insert_with(|| {
                channels.push(channel);
                channels.len()
            });
        }
        let mut cmd = redis::cmd("FCALL");
        cmd.arg("gw_publish_many").arg(channels.len() * 2);
        for c in &channels {
            cmd.arg(self.inner.keys.stream(c))
                .arg(self.inner.keys.meta(c));
        }
        cmd.arg(&self.inner.maxlen).arg(&self.inner.ttl_ms);
        for &i in group {
            let r = &requests[i];
            cmd.arg(numbers.get(&r.channel).copied().unwrap_or(0))
                .arg(&r.data[..])
                .arg(r.name.as_ref().map_or("", |n| n.as_str()))
                .arg(r.kind.as_str());
        }
        let ids: Vec<String> = self.query(&cmd).await?;
        if ids.len() != group.len() {
            return Err(EngineError::Protocol(format!(
                "gw_publish_many answered {} ids for {} events",
                ids.len(),
                group.len()
            )));
        }
        ids.iter().map(|id| parse_id(id)).collect()
    }
}

/// The indices of `requests` grouped by the hash slot of their channel's keys (`key_of`), each
/// group in request order, groups in order of first appearance.
fn by_slot(
    requests: &[PublishRequest],
    key_of: impl Fn(&ChannelName) -> String,
) -> Vec<Vec<usize>> {
    let mut index: HashMap<Slot, usize> = HashMap::new();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        let slot = Slot::for_key(key_of(&r.channel));
        let g = *index.entry(slot).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(i);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use shared::PayloadKind;

    fn request(channel: &str) -> PublishRequest {
        PublishRequest {
            channel: ChannelName::new(channel).unwrap(),
            name: None,
            kind: PayloadKind::Text,
            data: Bytes::from_static(b"x"),
        }
    }

    #[test]
    fn groups_keep_request_order_within_a_slot() {
        let keys = super::super::keys::Keys::new("gw:");
        // "a" and "b" hash to different slots; a channel's keys always share one.
        let requests = [request("a"), request("b"), request("a"), request("b")];
        let groups = by_slot(&requests, |c| keys.stream(c));
        assert_eq!(groups, [vec![0, 2], vec![1, 3]]);
        assert_eq!(
            Slot::for_key(keys.stream(&requests[0].channel)),
            Slot::for_key(keys.meta(&requests[0].channel))
        );
    }
}

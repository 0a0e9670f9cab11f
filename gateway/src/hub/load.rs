//! How busy this instance's channels are, for the operators' status page: one pass over the
//! shards that keeps only the `n` channels with the most connections, so the cost is one short
//! lock per shard and memory bounded by `n`, whatever the number of channels.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use shared::{ChannelName, Epoch, Position};

use super::Hub;

/// One channel's load on this instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelLoad {
    /// The channel.
    pub channel: ChannelName,
    /// Connections attached to it here.
    pub subscribers: usize,
    /// The newest event handed to its subscribers here (event rates are differences of its
    /// offset within one epoch); `None` while the channel is starting.
    pub head: Option<Position>,
}

/// A heap entry: fewer connections rank lower, then a later name. Positions are not ordered,
/// so the head is kept as its parts.
type Ranked = (Reverse<usize>, ChannelName, Option<(Epoch, u64)>);

impl Hub {
    /// The `n` channels with the most connections on this instance, busiest first (ties by
    /// name). Scans every channel once; meant for a few calls per second at most.
    pub fn busiest(&self, n: usize) -> Vec<ChannelLoad> {
        if n == 0 {
            return Vec::new();
        }
        // A min-heap of the best `n` so far: its weakest is replaced by anything busier.
        let mut best: BinaryHeap<Ranked> = BinaryHeap::with_capacity(n + 1);
        for shard in self.inner.shards.iter() {
            let shard = shard.lock();
            for (name, state) in &shard.channels {
                if best.len() == n
                    && best.peek().is_some_and(|(Reverse(refs), weakest, _)| {
                        (state.refs, weakest) <= (*refs, name)
                    })
                {
                    continue;
                }
                let head = state.last.map(|p| (p.epoch, p.offset));
                best.push((Reverse(state.refs), name.clone(), head));
                if best.len() > n {
                    best.pop();
                }
            }
        }
        best.into_sorted_vec()
            .into_iter()
            .map(|(Reverse(subscribers), channel, head)| ChannelLoad {
                channel,
                subscribers,
                head: head.map(|(epoch, offset)| Position { epoch, offset }),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::engine::Engine;
    use crate::engine::memory::MemoryEngine;
    use crate::hub::HubConfig;
    use crate::metrics::Metrics;

    #[tokio::test]
    async fn the_busiest_are_the_most_connected_then_by_name() {
        let engine = Engine::Memory(MemoryEngine::new(10, Duration::from_secs(60)));
        let config = HubConfig {
            queue_size: 16,
            channel_cache: 4,
            page_size: 10,
            subscribe_timeout: Duration::from_secs(5),
            shards: 4,
            head_check: None,
            presence: Default::default(),
        };
        let hub = Hub::new(engine, config, Metrics::new(), None);
        let mut held = Vec::new();
        let mut expected = Vec::new();
        for i in 0..30usize {
            let name = ChannelName::new(&format!("ch{i:02}")).unwrap();
            let subscribers = i % 7 + 1;
            for _ in 0..subscribers {
                held.push(hub.attach(name.clone(), hub.new_queue(), 0).await.unwrap());
            }
            expected.push((subscribers, name));
        }
        expected.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.as_str().cmp(b.1.as_str())));
        let got: Vec<(usize, ChannelName)> = hub
            .busiest(5)
            .into_iter()
            .map(|l| (l.subscribers, l.channel))
            .collect();
        assert_eq!(got, expected[..5].to_vec());
        assert_eq!(hub.busiest(100).len(), 30);
        assert!(hub.busiest(0).is_empty());
    }
}

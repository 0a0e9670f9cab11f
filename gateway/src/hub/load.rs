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

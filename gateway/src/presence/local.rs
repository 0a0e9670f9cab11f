//! This instance's own presence entries: the whole store with the in-memory engine, and what
//! the Redis writer refreshes with every heartbeat.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use shared::ChannelName;

use crate::engine::redis::presence::{PresenceOp, PresenceRead};

/// Entries (connection id -> JSON) per channel.
#[derive(Default)]
pub(super) struct Local {
    channels: Mutex<HashMap<ChannelName, HashMap<Arc<str>, String>>>,
}

impl Local {
    /// Adds or replaces one entry; `true` when it is new.
    pub(super) fn insert(&self, channel: &ChannelName, conn: &Arc<str>, value: String) -> bool {
        self.channels
            .lock()
            .entry(channel.clone())
            .or_default()
            .insert(conn.clone(), value)
            .is_none()
    }

    /// Removes one entry (returned), and the channel once it has none.
    pub(super) fn remove(&self, channel: &ChannelName, conn: &Arc<str>) -> Option<String> {
        let mut channels = self.channels.lock();
        let entries = channels.get_mut(channel)?;
        let removed = entries.remove(conn);
        if entries.is_empty() {
            channels.remove(channel);
        }
        removed
    }

    /// The channel's count, and its entries when there are at most `max`.
    pub(super) fn read(&self, channel: &ChannelName, max: usize) -> PresenceRead {
        let channels = self.channels.lock();
        let Some(entries) = channels.get(channel) else {
            return (0, Some(Vec::new()));
        };
        let count = entries.len() as u64;
        let listed = (entries.len() <= max).then(|| entries.values().cloned().collect());
        (count, listed)
    }

    /// Every entry as an `Add`, grouped by channel: one heartbeat's refresh.
    pub(super) fn snapshot(&self) -> Vec<(ChannelName, Vec<PresenceOp>)> {
        self.channels
            .lock()
            .iter()
            .map(|(channel, entries)| {
                let ops = entries
                    .iter()
                    .map(|(conn, value)| PresenceOp::Add(conn.to_string(), value.clone()))
                    .collect();
                (channel.clone(), ops)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_lists_within_the_bound_and_forgets_empty_channels() {
        let local = Local::default();
        let ch = ChannelName::new("a").unwrap();
        let (c1, c2): (Arc<str>, Arc<str>) = ("x-1".into(), "x-2".into());
        local.insert(&ch, &c1, "1".into());
        local.insert(&ch, &c2, "2".into());
        let (count, listed) = local.read(&ch, 5);
        assert_eq!((count, listed.map(|l| l.len())), (2, Some(2)));
        assert_eq!(local.read(&ch, 1), (2, None));
        assert_eq!(local.snapshot()[0].1.len(), 2);
        local.remove(&ch, &c1);
        local.remove(&ch, &c2);
        assert_eq!(local.read(&ch, 5), (0, Some(vec![])));
        assert!(local.snapshot().is_empty());
    }
}

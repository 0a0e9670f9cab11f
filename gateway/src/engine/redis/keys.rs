//! Key and pub/sub channel names. Every name of a channel carries the channel in a `{hash tag}`
//! so its stream, meta hash and live channel share one Redis Cluster slot.

use shared::ChannelName;

/// Builds and parses the names under one configurable prefix.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Names under `prefix` (default `gw:`).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// `<prefix>{<channel>}:stream`, the capped history.
    pub fn stream(&self, channel: &ChannelName) -> String {
        format!("{}{{{}}}:stream", self.prefix, channel)
    }

    /// `<prefix>{<channel>}:meta`, the epoch and offset counter.
    pub fn meta(&self, channel: &ChannelName) -> String {
        format!("{}{{{}}}:meta", self.prefix, channel)
    }

    /// `<prefix>{<channel>}:live`, the pub/sub channel.
    pub fn live(&self, channel: &ChannelName) -> String {
        format!("{}{{{}}}:live", self.prefix, channel)
    }

    /// `<prefix>{<channel>}:presence`, who is subscribed (connection id -> JSON entry).
    pub fn presence(&self, channel: &ChannelName) -> String {
        format!("{}{{{}}}:presence", self.prefix, channel)
    }

    /// `<prefix>{<channel>}:presence:exp`, each presence entry's deadline (Unix ms).
    pub fn presence_expiry(&self, channel: &ChannelName) -> String {
        format!("{}{{{}}}:presence:exp", self.prefix, channel)
    }

    /// `<prefix>{ctl:<instance>}:probe`, an instance's liveness-probe channel; its suffix keeps
    /// it apart from every channel's live name.
    pub fn control(&self, instance: &str) -> String {
        format!("{}{{{}}}:probe", self.prefix, self.control_tag(instance))
    }

    /// The hash tag of [`Keys::control`]: what decides its Cluster slot.
    pub fn control_tag(&self, instance: &str) -> String {
        format!("ctl:{instance}")
    }

    /// The channel a live pub/sub name belongs to, if it is one of ours.
    pub fn channel_of_live<'a>(&self, name: &'a str) -> Option<&'a str> {
        name.strip_prefix(self.prefix.as_str())?
            .strip_prefix('{')?
            .strip_suffix("}:live")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_share_a_hash_tag_and_parse_back() {
        let keys = Keys::new("gw:");
        let ch = ChannelName::new("chat:room-1").unwrap();
        assert_eq!(keys.stream(&ch), "gw:{chat:room-1}:stream");
        assert_eq!(keys.meta(&ch), "gw:{chat:room-1}:meta");
        assert_eq!(keys.live(&ch), "gw:{chat:room-1}:live");
        assert_eq!(keys.presence(&ch), "gw:{chat:room-1}:presence");
        assert_eq!(keys.presence_expiry(&ch), "gw:{chat:room-1}:presence:exp");
        assert_eq!(keys.channel_of_live(&keys.live(&ch)), Some("chat:room-1"));
        assert_eq!(keys.channel_of_live("other:{x}:live"), None);
        assert_eq!(keys.channel_of_live("gw:{x}:stream"), None);
        assert_eq!(keys.channel_of_live(&keys.control("abc")), None);
    }
}

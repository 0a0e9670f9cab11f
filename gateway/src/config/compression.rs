//! `[compression]`: compressed SSE streams and WebSocket messages, off by default. Each event
//! is compressed once per instance and the bytes shared by every subscriber, so the cost is per
//! event, not per delivery.

use serde::{Deserialize, Serialize};

use super::{ConfigError, Settings};

/// `[compression]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompressionSettings {
    /// Compress SSE streams whose request accepts gzip or deflate (`Accept-Encoding`).
    pub sse: bool,
    /// Accept WebSocket `permessage-deflate` offers.
    pub ws: bool,
    /// Deflate level, 1 (fastest) to 9 (smallest); paid once per event.
    pub level: u32,
    /// Let WebSocket clients compress with context takeover: better ratios for what clients
    /// send, at the cost of an inflater (about 42 KiB) kept per compressing connection. Off:
    /// the gateway answers `client_no_context_takeover` and keeps none between messages.
    pub ws_client_context_takeover: bool,
    /// Keep server context takeover when a WebSocket client's offer allows it: an event may be
    /// sent compressed against the channel's previous one (a client that inflated it last
    /// gets far fewer bytes). Costs the gateway nothing per connection; the client keeps its
    /// 32 KiB window, as it offered to. Off: `server_no_context_takeover` always.
    pub ws_server_context_takeover: bool,
}

impl Default for CompressionSettings {
    fn default() -> Self {
        Self {
            sse: false,
            ws: false,
            level: 6,
            ws_client_context_takeover: false,
            ws_server_context_takeover: true,
        }
    }
}

impl Settings {
    /// `compression.level` is a deflate level.
    pub(super) fn validate_compression(&self) -> Result<(), ConfigError> {
        if !(1..=9).contains(&self.compression.level) {
            return Err(ConfigError::Invalid {
                key: "compression.level",
                problem: "must be between 1 and 9".to_owned(),
            });
        }
        Ok(())
    }
}

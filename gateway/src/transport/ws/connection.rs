//! A WebSocket connection's state: its grant, queue, subscriptions, command budget and the
//! inbox its side tasks report to.

use std::sync::Arc;

use serde_json::Value;
use shared::ChannelName;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::inbox::Inbox;
use super::limits::Budget;
use super::token::TokenClock;
use crate::auth::Grant;
use crate::hub::Membership;
use crate::hub::direct::Link;
use crate::hub::queue::Queue;
use crate::state::{AppState, ConnectionGuard};

/// One subscription of the connection.
pub(super) struct Slot {
    /// The slot number events carry.
    pub id: u32,
    pub channel: ChannelName,
    /// The subscribe's `req`, echoed in `subscribed`.
    pub req: Option<Value>,
    /// Set once joined.
    pub membership: Option<Membership>,
    /// The resume task, until it reports.
    pub task: Option<JoinHandle<()>>,
    /// The connection's presence entry in the channel (from the subscribe on).
    /// Boxed: most slots have none, and every slot of every connection pays for the inline size.
    pub _presence: Option<Box<crate::presence::Tracked>>,
}

/// Everything the session loop and the command handlers share.
pub(super) struct Connection {
    pub state: AppState,
    pub grant: Grant,
    pub queue: Arc<Queue>,
    pub slots: Slots,
    pub next_slot: u32,
    pub budget: Budget,
    /// When the client last sent anything (heartbeat timeout).
    pub last_seen: Instant,
    pub reports: Arc<Inbox>,
    /// When the token is due (first `auth`, expiry warning, expiry).
    pub clock: TokenClock,
    /// The connection's id in presence entries, made on its first tracked subscription.
    pub conn_id: Option<Arc<str>>,
    /// The event whose message the client inflated last, with server context takeover: the
    /// next event of that channel may be sent compressed against it (`hub::direct::Form`).
    pub seen: Option<Link>,
    pub _guard: ConnectionGuard,
}

/// A connection's subscriptions: a few at most (`limits.max_channels`), so a small vector
/// searched linearly beats two hash maps, and allocates nothing until the first subscribe.
#[derive(Default)]
pub(super) struct Slots(pub Vec<Slot>);

impl Slots {
    pub fn get(&self, id: u32) -> Option<&Slot> {
        self.0.iter().find(|s| s.id == id)
    }

    pub fn get_mut(&mut self, id: u32) -> Option<&mut Slot> {
        self.0.iter_mut().find(|s| s.id == id)
    }

    pub fn find(&self, channel: &ChannelName) -> Option<u32> {
        self.0.iter().find(|s| &s.channel == channel).map(|s| s.id)
    }

    pub fn remove(&mut self, id: u32) -> Option<Slot> {
        let index = self.0.iter().position(|s| s.id == id)?;
        Some(self.0.swap_remove(index))
    }
}

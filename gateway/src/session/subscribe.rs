//! Subscribing one channel of a connection, in the order exactness depends on, for both
//! transports: attach (the hub buffers live events for the connection from here on), decide
//! where to start (the head, the client's position, checked against the store: a position
//! beyond it starts with a gap, or before the channel's last N events), then join (history
//! after the start, then the buffered live events, nothing twice) and count the resume outcome.

use std::sync::Arc;

use shared::{ChannelName, Position};

use crate::hub::queue::Queue;
use crate::hub::{Announce, HubError, Membership, Start};
use crate::state::AppState;

/// Where a subscription asks to start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// At the head: events published from now on.
    Head,
    /// Right after the client's position: a resume.
    After(Position),
    /// The channel's last `n` events, then live ones: a resume from before the `n`th-last.
    Latest(u64),
}

impl Want {
    /// Whether this is a resume (for `gateway_resumes_total` and WebSocket `recovered`).
    pub fn resumes(self) -> bool {
        matches!(self, Self::After(_))
    }
}

/// A channel attached to a connection, and where its stream starts.
pub struct Attached {
    /// The connection's membership in the channel (detaches when dropped).
    pub membership: Membership,
    /// Where the stream starts (see [`Start`]).
    pub start: Start,
}

/// Steps one and two: attaches `channel` to `queue` under `slot` and picks the start.
pub async fn attach(
    state: &AppState,
    channel: ChannelName,
    queue: Arc<Queue>,
    slot: u32,
    want: Want,
) -> Result<Attached, HubError> {
    let hub = &state.hub;
    let (membership, head) = hub.attach(channel, queue, slot).await?;
    let start = match want {
        Want::Head => Start::at(head),
        Want::After(wanted) => hub.start_position(&membership, head, Some(wanted)).await?,
        Want::Latest(n) => hub.latest_start(membership.channel(), head, n).await?,
    };
    Ok(Attached { membership, start })
}

/// Step three: delivers history after `start`, then live events, and counts the outcome
/// (`fresh`, `recovered`, or `gap`) in `gateway_resumes_total`.
pub async fn join(
    state: &AppState,
    membership: &Membership,
    start: Start,
    resumed: bool,
    announce: Announce,
) -> Result<(), HubError> {
    let outcome = state.hub.join(membership, start, announce).await?;
    let label = match (resumed, outcome.recovered) {
        (false, _) => crate::metrics::labels::ResumeOutcome::Fresh,
        (true, true) => crate::metrics::labels::ResumeOutcome::Recovered,
        (true, false) => crate::metrics::labels::ResumeOutcome::Gap,
    };
    state.metrics.resume(label);
    Ok(())
}

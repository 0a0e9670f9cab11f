//! Subscribing one channel of a connection, in the order exactness depends on, for both
//! transports: attach (the hub buffers live events for the connection from here on), decide
//! where to start (the head, or the client's position, checked against the store: a position
//! beyond it starts with a gap), then join (history after the start, then the buffered live
//! events, nothing twice) and count the resume outcome.

use std::sync::Arc;

use shared::{ChannelName, Position};

use crate::hub::queue::Queue;
use crate::hub::{Announce, HubError, Membership, Start};
use crate::state::AppState;

/// A channel attached to a connection, and where its stream starts.
pub struct Attached {
    /// The connection's membership in the channel (detaches when dropped).
    pub membership: Membership,
    /// Where the stream starts (see [`Start`]).
    pub start: Start,
}

/// Steps one and two: attaches `channel` to `queue` under `slot` and picks the start (`wanted`,
/// the client's position, if any).
pub async fn attach(
    state: &AppState,
    channel: ChannelName,
    queue: Arc<Queue>,
    slot: u32,
    wanted: Option<Position>,
) -> Result<Attached, HubError> {
    let hub = &state.hub;
    let (membership, head) = hub.attach(channel, queue, slot).await?;
    let start = hub.start_position(&membership, head, wanted).await?;
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

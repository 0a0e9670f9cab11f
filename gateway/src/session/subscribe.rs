//! Subscribing one channel of a connection, in the order exactness depends on, for both
//! transports: attach (the hub buffers live events for the connection from here on), decide
//! where to start (the head, or the client's position, checked against the store), then join
//! (history after the start, then the buffered live events, nothing twice) and count the resume
//! outcome.

use std::sync::Arc;

use shared::{ChannelName, Position};

use crate::hub::queue::Queue;
use crate::hub::{Announce, HubError, Membership, StartError};
use crate::state::AppState;

/// A channel attached to a connection, and where its stream starts.
pub struct Attached {
    /// The connection's membership in the channel (detaches when dropped).
    pub membership: Membership,
    /// The position the stream starts after.
    pub start: Position,
}

/// Why a channel could not be subscribed.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    /// The client's position is beyond the channel's newest event in the store.
    #[error("position {wanted} of channel {channel} is beyond its newest event {head}")]
    Ahead {
        /// The channel.
        channel: ChannelName,
        /// What the client asked for.
        wanted: Position,
        /// The channel's newest event.
        head: Position,
    },
    /// The hub or the store failed (or the instance is shutting down).
    #[error(transparent)]
    Hub(#[from] HubError),
}

/// Steps one and two: attaches `channel` to `queue` under `slot` and picks the start (`wanted`,
/// the client's position, if any). A position ahead of the store counts as a bad cursor.
pub async fn attach(
    state: &AppState,
    channel: ChannelName,
    queue: Arc<Queue>,
    slot: u32,
    wanted: Option<Position>,
) -> Result<Attached, SubscribeError> {
    let hub = &state.hub;
    let (membership, head) = hub.attach(channel, queue, slot).await?;
    match hub.start_position(&membership, head, wanted).await {
        Ok(start) => Ok(Attached { membership, start }),
        Err(StartError::Ahead { wanted, head }) => {
            state
                .metrics
                .resumes
                .with_label_values(&["bad_cursor"])
                .inc();
            Err(SubscribeError::Ahead {
                channel: membership.channel().clone(),
                wanted,
                head,
            })
        }
        Err(StartError::Hub(e)) => Err(e.into()),
    }
}

/// Step three: delivers history after `start`, then live events, and counts the outcome
/// (`fresh`, `recovered`, or `gap`) in `gateway_resumes_total`.
pub async fn join(
    state: &AppState,
    membership: &Membership,
    start: Position,
    resumed: bool,
    announce: Announce,
) -> Result<(), HubError> {
    let outcome = state.hub.join(membership, start, announce).await?;
    let label = match (resumed, outcome.recovered) {
        (false, _) => "fresh",
        (true, true) => "recovered",
        (true, false) => "gap",
    };
    state.metrics.resumes.with_label_values(&[label]).inc();
    Ok(())
}

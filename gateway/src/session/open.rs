//! Opening the channels of one request-scoped subscriber (an SSE stream or a long poll): admit
//! it, check that its grant covers every channel, then attach them all to one queue and pick
//! each start. Both transports call this, so a poll is admitted, limited and resumed exactly
//! as a stream is; they differ only in how long they drain the queue.

use std::net::IpAddr;
use std::sync::Arc;

use http::header::HeaderMap;
use shared::{ChannelName, ErrorCode};

use super::subscribe::Want;
use super::{Admitted, Refusal, Transport, admit, attach};
use crate::auth::Grant;
use crate::error::ApiError;
use crate::hub::queue::Queue;
use crate::hub::{Membership, Start};
use crate::state::{AppState, ConnectionGuard};

/// The channels of an admitted request, attached and ready to join.
pub struct Opened {
    /// What the request's credentials grant (its expiry ends a stream).
    pub grant: Grant,
    /// The request's slot under the connection limits.
    pub guard: ConnectionGuard,
    /// The queue every channel delivers to.
    pub queue: Arc<Queue>,
    /// One membership per channel, in the request's (sorted) channel order.
    pub members: Arc<[Membership]>,
    /// Where each channel starts, in the same order.
    pub starts: Vec<Start>,
}

/// Admits the request and attaches `channels`, the `i`th starting as `wants[i]` asks; every
/// failure is the HTTP error to answer with.
pub async fn open(
    state: &AppState,
    transport: Transport,
    headers: &HeaderMap,
    query: &str,
    peer: IpAddr,
    channels: &[ChannelName],
    wants: &[Want],
) -> Result<Opened, ApiError> {
    let Admitted { grant, guard, .. } = admit(state, transport, headers, query, channels, peer)
        .await
        .map_err(Refusal::into_error)?;
    if let Some(denied) = channels.iter().find(|c| !grant.may_subscribe(c)) {
        return Err(forbidden(denied));
    }
    let queue = state.hub.new_queue();
    let attached = futures_util::future::join_all(channels.iter().zip(wants).enumerate().map(
        |(i, (channel, want))| attach(state, channel.clone(), queue.clone(), i as u32, *want),
    ))
    .await;
    let mut members = Vec::with_capacity(attached.len());
    let mut starts = Vec::with_capacity(attached.len());
    for result in attached {
        let a = result?;
        members.push(a.membership);
        starts.push(a.start);
    }
    Ok(Opened {
        grant,
        guard,
        queue,
        members: members.into(),
        starts,
    })
}

/// The 403 for a channel the credentials do not cover.
pub fn forbidden(channel: &ChannelName) -> ApiError {
    ApiError::new(
        http::StatusCode::FORBIDDEN,
        ErrorCode::Forbidden,
        format!("the token does not allow channel {channel}"),
    )
}

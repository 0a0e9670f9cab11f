//! `presence.join` / `presence.leave` events on the channels `presence.events` names, with the
//! in-memory engine: published through the gateway's one publishing path (`publish::batch`),
//! so they get positions, history and resume like any event. One task per instance publishes
//! them in the order connections came and went, everything queued at once as one batch. (With
//! Redis, `gw_presence` publishes them itself, atomically with the change: see `writer`.)

use bytes::Bytes;
use shared::{ChannelName, EventName, PayloadKind};
use tokio::sync::{mpsc, watch};

use crate::engine::{Engine, PublishRequest};
use crate::metrics::Metrics;

/// The event of a connection subscribing to a channel.
pub const JOIN: &str = "presence.join";
/// The event of a connection leaving a channel.
pub const LEAVE: &str = "presence.leave";

/// Most events in one batch.
const MAX_BATCH: usize = 1000;

/// The request publishing `name` (`JOIN` or `LEAVE`) with an entry's JSON on `channel`.
pub(super) fn request(channel: &ChannelName, name: &'static str, entry: &str) -> PublishRequest {
    PublishRequest {
        channel: channel.clone(),
        // Both names are valid; a stored-name check skips only the reserved list.
        name: EventName::from_stored(name).ok(),
        kind: PayloadKind::Json,
        data: Bytes::copy_from_slice(entry.as_bytes()),
    }
}

/// Publishes what arrives, in order, until `stop`; then what is still queued.
pub(super) async fn run(
    engine: Engine,
    mut events: mpsc::UnboundedReceiver<PublishRequest>,
    metrics: Metrics,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let first = tokio::select! {
            got = events.recv() => got,
            _ = stop.changed() => None,
        };
        let mut batch: Vec<PublishRequest> = first.into_iter().collect();
        while batch.len() < MAX_BATCH
            && let Ok(more) = events.try_recv()
        {
            batch.push(more);
        }
        if batch.is_empty() {
            return;
        }
        let m = &metrics.presence;
        match crate::publish::batch::publish(&engine, &batch, None).await {
            Ok(results) => {
                for (request, result) in batch.iter().zip(&results) {
                    match result {
                        Ok(_) if request.name.as_ref().is_some_and(|n| n.as_str() == JOIN) => {
                            m.joins.inc();
                        }
                        Ok(_) => m.leaves.inc(),
                        Err(_) => m.events_failed.inc(),
                    }
                }
                if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
                    tracing::warn!(error = %e, "a presence event was not published");
                }
            }
            Err(e) => {
                m.events_failed.inc_by(batch.len() as u64);
                tracing::warn!(error = %e, "presence events were not published");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_named_json_events() {
        let ch = ChannelName::new("chat").unwrap();
        let r = request(&ch, JOIN, r#"{"conn":"a-1"}"#);
        assert_eq!(r.name.as_ref().map(|n| n.as_str()), Some(JOIN));
        assert_eq!(r.kind, PayloadKind::Json);
        assert_eq!(&r.data[..], br#"{"conn":"a-1"}"#);
        assert!(request(&ch, LEAVE, "{}").name.is_some());
    }
}

//! Events as JSON objects, for the answers that carry several at once (`GET /history`,
//! `GET /poll`, the WebSocket `history` reply): the shape of a WebSocket `event` message, with
//! binary payloads base64-encoded and marked `"binary": true` (JSON has no bytes).

use base64::Engine as _;
use serde_json::{Map, Value, json};
use shared::{ChannelName, PayloadKind, Position};

use crate::hub::Range;
use crate::hub::message::Message;

/// `{"type":"event","channel":..,"id":..,"event"?:..,"data":..,"binary"?:true}`.
pub fn event(m: &Message) -> Value {
    let e = &m.event;
    let mut out = Map::new();
    out.insert("type".into(), "event".into());
    out.insert("channel".into(), e.channel.as_str().into());
    out.insert("id".into(), e.position.to_string().into());
    if let Some(name) = &e.name {
        out.insert("event".into(), name.as_str().into());
    }
    let text = || Value::String(String::from_utf8_lossy(&e.data).into_owned());
    let data = match e.kind {
        // Invalid JSON published straight into Redis is delivered as text, as on WebSocket.
        PayloadKind::Json => serde_json::from_slice(&e.data).unwrap_or_else(|_| text()),
        PayloadKind::Text => text(),
        PayloadKind::Binary => {
            out.insert("binary".into(), true.into());
            base64::engine::general_purpose::STANDARD
                .encode(&e.data)
                .into()
        }
    };
    out.insert("data".into(), data);
    Value::Object(out)
}

/// `{"type":"gap","channel":..,"first_available":..}`, as on WebSocket.
pub fn gap(channel: &ChannelName, first_available: Position) -> Value {
    json!({
        "type": "gap",
        "channel": channel.as_str(),
        "first_available": first_available.to_string(),
    })
}

/// The fields of a history page: `events`, `gap` (only when events are gone), `next`, `head`
/// and `more`.
pub fn range(channel: &ChannelName, range: &Range) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("channel".into(), channel.as_str().into());
    let events = range.events.iter().map(|m| event(m)).collect();
    out.insert("events".into(), Value::Array(events));
    if let Some(first) = range.gap {
        out.insert(
            "gap".into(),
            json!({ "first_available": first.to_string() }),
        );
    }
    out.insert("next".into(), range.next.to_string().into());
    out.insert("head".into(), range.head.to_string().into());
    out.insert("more".into(), range.more().into());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use shared::{Epoch, Event, EventName};

    fn message(kind: PayloadKind, name: Option<&str>, data: &'static [u8]) -> Message {
        Message::new(Event {
            channel: ChannelName::new("c").unwrap(),
            position: Position::new(Epoch(0xa), 3),
            name: name.map(|n| EventName::new(n).unwrap()),
            kind,
            data: Bytes::from_static(data),
            published_ms: 0,
        })
    }

    #[test]
    fn events_look_like_websocket_events() {
        let m = message(PayloadKind::Json, Some("p"), br#"{"x":1}"#);
        assert_eq!(
            event(&m),
            json!({"type":"event","channel":"c","id":"a:3","event":"p","data":{"x":1}})
        );
        assert_eq!(
            serde_json::from_str::<Value>(&m.ws_text()).unwrap(),
            event(&m)
        );
        let t = message(PayloadKind::Text, None, b"hi");
        assert_eq!(event(&t)["data"], "hi");
        let bad = message(PayloadKind::Json, None, b"{nope");
        assert_eq!(event(&bad)["data"], "{nope");
    }

    #[test]
    fn binary_payloads_are_base64_and_marked() {
        let m = message(PayloadKind::Binary, None, &[0, 1, 2]);
        assert_eq!(event(&m)["data"], "AAEC");
        assert_eq!(event(&m)["binary"], true);
    }
}

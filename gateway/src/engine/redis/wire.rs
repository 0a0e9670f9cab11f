//! Decoding what the publish function writes: live pub/sub payloads and stream entries.
//! Pure functions, so a corrupt or foreign value is an error here and never a panic later.

use bytes::Bytes;
use redis::Value;
use shared::{ChannelName, Epoch, Event, EventName, Lineage, PayloadKind, Position};

use crate::engine::{EngineError, HistoryPage};

fn corrupt(what: impl Into<String>) -> EngineError {
    EngineError::Protocol(what.into())
}

/// Parses `"<epoch> <offset> <ms> <kind> <event>\n<data>"`.
pub fn parse_live(channel: ChannelName, payload: &[u8]) -> Result<Event, EngineError> {
    let newline = payload
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| corrupt("live message without header line"))?;
    let header = std::str::from_utf8(&payload[..newline])
        .map_err(|_| corrupt("live message header is not UTF-8"))?;
    let mut parts = header.splitn(5, ' ');
    let mut next = |what: &str| {
        parts
            .next()
            .ok_or_else(|| corrupt(format!("live message lacks {what}")))
    };
    let epoch: Epoch = next("epoch")?
        .parse()
        .map_err(|_| corrupt("bad epoch in live message"))?;
    let offset: u64 = next("offset")?
        .parse()
        .map_err(|_| corrupt("bad offset in live message"))?;
    let published_ms: u64 = next("time")?
        .parse()
        .map_err(|_| corrupt("bad time in live message"))?;
    let kind =
        PayloadKind::parse(next("kind")?).ok_or_else(|| corrupt("bad kind in live message"))?;
    let name = event_name(next("event")?)?;
    Ok(Event {
        channel,
        position: Position::new(epoch, offset),
        name,
        kind,
        data: Bytes::copy_from_slice(&payload[newline + 1..]),
        published_ms,
    })
}

fn event_name(raw: &str) -> Result<Option<EventName>, EngineError> {
    if raw.is_empty() {
        return Ok(None);
    }
    EventName::from_stored(raw)
        .map(Some)
        .map_err(|e| corrupt(format!("bad event name: {e}")))
}

/// Parses the reply of `gw_read`: `[epoch, top, [[id, [field, value, ...]], ...], lineage]`
/// (a library from before lineages answers without the last item).
pub fn parse_page(channel: &ChannelName, reply: Value) -> Result<HistoryPage, EngineError> {
    let Value::Array(mut items) = reply else {
        return Err(corrupt("gw_read reply is not an array"));
    };
    let lineage: Lineage = match items.len() {
        3 => Lineage::default(),
        4 => text(items.pop().unwrap_or(Value::Nil))?
            .parse()
            .map_err(|_| corrupt("bad lineage in meta hash"))?,
        _ => return Err(corrupt("gw_read reply must have 3 or 4 items")),
    };
    let entries = items.pop().unwrap_or(Value::Nil);
    let top = text(items.pop().unwrap_or(Value::Nil))?;
    let epoch = text(items.pop().unwrap_or(Value::Nil))?;
    let epoch: Epoch = epoch
        .parse()
        .map_err(|_| corrupt("bad epoch in meta hash"))?;
    let top: u64 = top
        .parse()
        .map_err(|_| corrupt("bad offset in meta hash"))?;
    let Value::Array(entries) = entries else {
        return Err(corrupt("gw_read entries are not an array"));
    };
    let events = entries
        .into_iter()
        .map(|entry| parse_entry(channel, epoch, entry))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(HistoryPage {
        epoch,
        top,
        events,
        lineage,
    })
}

fn parse_entry(channel: &ChannelName, epoch: Epoch, entry: Value) -> Result<Event, EngineError> {
    let Value::Array(mut pair) = entry else {
        return Err(corrupt("stream entry is not an array"));
    };
    if pair.len() != 2 {
        return Err(corrupt("stream entry must be [id, fields]"));
    }
    let fields = pair.pop().unwrap_or(Value::Nil);
    let id = text(pair.pop().unwrap_or(Value::Nil))?;
    let offset: u64 = id
        .strip_suffix("-0")
        .and_then(|o| o.parse().ok())
        .ok_or_else(|| corrupt(format!("stream entry id {id:?} is not <offset>-0")))?;
    let Value::Array(fields) = fields else {
        return Err(corrupt("stream entry fields are not an array"));
    };
    let mut data = None;
    let mut published_ms = 0;
    let mut name = None;
    let mut kind = PayloadKind::Text;
    let mut it = fields.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        let k = bytes(k)?;
        match &k[..] {
            b"d" => data = Some(Bytes::from(bytes(v)?)),
            b"t" => published_ms = text(v)?.parse().unwrap_or(0),
            b"e" => name = event_name(&text(v)?)?,
            b"k" => {
                kind = PayloadKind::parse(&text(v)?)
                    .ok_or_else(|| corrupt("bad kind in stream entry"))?
            }
            _ => {}
        }
    }
    Ok(Event {
        channel: channel.clone(),
        position: Position::new(epoch, offset),
        name,
        kind,
        data: data.ok_or_else(|| corrupt("stream entry without data"))?,
        published_ms,
    })
}

fn bytes(v: Value) -> Result<Vec<u8>, EngineError> {
    match v {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        Value::Int(i) => Ok(i.to_string().into_bytes()),
        other => Err(corrupt(format!("expected a string, got {other:?}"))),
    }
}

/// A string reply as UTF-8 text.
pub fn text(v: Value) -> Result<String, EngineError> {
    String::from_utf8(bytes(v)?).map_err(|_| corrupt("expected UTF-8 text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch() -> ChannelName {
        ChannelName::new("news").unwrap()
    }

    #[test]
    fn live_payload_round_trip() {
        let e = parse_live(ch(), b"1f 42 1700000000000 json update\n{\"a\":1}\nmore").unwrap();
        assert_eq!(e.position, Position::new(Epoch(0x1f), 42));
        assert_eq!(e.published_ms, 1_700_000_000_000);
        assert_eq!(e.kind, PayloadKind::Json);
        assert_eq!(e.name.as_ref().map(EventName::as_str), Some("update"));
        assert_eq!(&e.data[..], b"{\"a\":1}\nmore");
        let e = parse_live(ch(), b"1f 43 1 text \n").unwrap();
        assert_eq!(e.name, None);
        assert!(e.data.is_empty());
    }

    #[test]
    fn bad_live_payloads_are_errors() {
        for bad in [
            &b""[..],
            b"no newline",
            b"zz 1 1 text \nx",
            b"1 x 1 text \nx",
            b"1 1 1 xml \nx",
            b"1 1 1 text a b\nx",
        ] {
            assert!(
                parse_live(ch(), bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn page_parsing() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let reply = Value::Array(vec![
            bulk("ab"),
            bulk("5"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("4-0"),
                    Value::Array(vec![bulk("d"), bulk("x"), bulk("t"), bulk("9")]),
                ]),
                Value::Array(vec![
                    bulk("5-0"),
                    Value::Array(vec![
                        bulk("d"),
                        bulk("y"),
                        bulk("t"),
                        bulk("9"),
                        bulk("e"),
                        bulk("up"),
                        bulk("k"),
                        bulk("json"),
                    ]),
                ]),
            ]),
        ]);
        let page = parse_page(&ch(), reply).unwrap();
        assert_eq!(page.head(), Position::new(Epoch(0xab), 5));
        assert_eq!(page.first_available(), 4);
        assert_eq!(page.events[1].kind, PayloadKind::Json);
        assert_eq!(
            page.events[1].name.as_ref().map(EventName::as_str),
            Some("up")
        );
        assert!(parse_page(&ch(), bulk("x")).is_err());
    }
}

//! The published payload, `{"seq":N,"ts":UNIX_MICROS,"p":"xxxx"}`, and the byte searches that
//! read it back (and the few fields of a WebSocket message) without parsing JSON.

use std::io::Write;

/// Appends the payload for `seq` sent at `ts_us`, padded with `p` to about `size` bytes.
pub fn write_payload(out: &mut Vec<u8>, seq: u64, ts_us: u64, size: usize) {
    let start = out.len();
    // Writing into a Vec cannot fail.
    let _ = write!(out, r#"{{"seq":{seq},"ts":{ts_us},"p":""#);
    let used = out.len() - start + 2;
    out.resize(out.len() + size.saturating_sub(used), b'x');
    out.extend_from_slice(b"\"}");
}

/// Like [`write_payload`], but filled to about `size` bytes with rows resembling quote updates
/// (`{"symbol":"MSFT","bid":412.31,"ask":412.35,"size":300,"venue":"XNAS","time":...}`), their
/// numbers varying with `seq`, so the payload compresses like real events rather than a run of
/// x's.
pub fn write_rows(out: &mut Vec<u8>, seq: u64, ts_us: u64, size: usize) {
    const SYMBOLS: [&str; 16] = [
        "AAPL", "MSFT", "NVDA", "AMZN", "GOOGL", "META", "TSLA", "BRK.B", "AVGO", "JPM", "LLY",
        "V", "XOM", "UNH", "MA", "COST",
    ];
    const VENUES: [&str; 4] = ["XNAS", "XNYS", "ARCX", "BATS"];
    let start = out.len();
    let _ = write!(out, r#"{{"seq":{seq},"ts":{ts_us},"rows":["#);
    let mut x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut first = true;
    while out.len() - start + 100 < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if !first {
            out.push(b',');
        }
        first = false;
        let bid = 5_000 + (x >> 8) % 95_000;
        let _ = write!(
            out,
            r#"{{"symbol":"{}","bid":{}.{:02},"ask":{}.{:02},"size":{},"venue":"{}","time":{}}}"#,
            SYMBOLS[(x % 16) as usize],
            bid / 100,
            bid % 100,
            (bid + 1 + (x >> 40) % 9) / 100,
            (bid + 1 + (x >> 40) % 9) % 100,
            100 * (1 + (x >> 20) % 50),
            VENUES[((x >> 30) % 4) as usize],
            ts_us / 1000 - (x >> 50) % 500,
        );
    }
    out.extend_from_slice(b"]}");
}

/// The publisher's sequence number and send time found in an event's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Stamp {
    /// Per-channel sequence number, from 0.
    pub seq: Option<u64>,
    /// Send time, microseconds since the Unix epoch.
    pub ts: Option<u64>,
}

/// Reads `seq` and `ts` from a payload: a fast path for the exact layout [`write_payload`]
/// produces, and a byte search for anything else (a server that re-encodes JSON, a payload
/// delivered as an escaped JSON string).
pub fn extract(data: &[u8]) -> Stamp {
    if let Some(rest) = data.strip_prefix(br#"{"seq":"#)
        && let Some((seq, rest)) = take_digits(rest)
        && let Some(rest) = rest.strip_prefix(br#","ts":"#)
        && let Some((ts, _)) = take_digits(rest)
    {
        return Stamp {
            seq: Some(seq),
            ts: Some(ts),
        };
    }
    Stamp {
        seq: number_after_key(data, b"seq"),
        ts: number_after_key(data, b"ts"),
    }
}

/// Leading decimal digits (1 to 19) and the rest.
fn take_digits(v: &[u8]) -> Option<(u64, &[u8])> {
    let n = v.iter().take(20).take_while(|b| b.is_ascii_digit()).count();
    if n == 0 || n > 19 {
        return None;
    }
    let value = v[..n]
        .iter()
        .fold(0u64, |acc, &d| acc * 10 + u64::from(d - b'0'));
    Some((value, &v[n..]))
}

/// Finds `"key"` (or `\"key\"` inside an escaped string) followed by `:` and a number.
fn number_after_key(hay: &[u8], key: &[u8]) -> Option<u64> {
    for pos in memchr::memmem::find_iter(hay, key) {
        if pos == 0 || hay[pos - 1] != b'"' {
            continue;
        }
        let mut rest = &hay[pos + key.len()..];
        rest = rest.strip_prefix(b"\\").unwrap_or(rest);
        let Some(r) = rest.strip_prefix(b"\"") else {
            continue;
        };
        let r = skip_spaces(r);
        let Some(r) = r.strip_prefix(b":") else {
            continue;
        };
        if let Some((v, _)) = take_digits(skip_spaces(r)) {
            return Some(v);
        }
    }
    None
}

fn skip_spaces(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    v
}

/// The value of a string field `"key":"value"` (without unescaping; the gateway's ids,
/// positions and codes never need escapes).
fn string_field<'a>(hay: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    for pos in memchr::memmem::find_iter(hay, key) {
        if pos == 0 || hay[pos - 1] != b'"' {
            continue;
        }
        let rest = &hay[pos + key.len()..];
        let Some(r) = rest.strip_prefix(b"\"") else {
            continue;
        };
        let Some(r) = skip_spaces(r).strip_prefix(b":") else {
            continue;
        };
        let Some(r) = skip_spaces(r).strip_prefix(b"\"") else {
            continue;
        };
        let end = memchr::memchr(b'"', r)?;
        return Some(&r[..end]);
    }
    None
}

/// A gateway WebSocket text message, as far as the load generator cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WsMsg<'a> {
    /// `{"type":"event",...}`.
    Event {
        /// Event id (`epoch:offset`).
        id: Option<&'a [u8]>,
        /// Event name, if the event had one.
        name: Option<&'a [u8]>,
        /// What the data carried.
        stamp: Stamp,
    },
    /// `{"type":"subscribed","position":...}`.
    Subscribed {
        /// The position the subscription starts after.
        position: Option<&'a [u8]>,
    },
    /// `{"type":"gap","first_available":...}`.
    Gap {
        /// First position that follows.
        first_available: Option<&'a [u8]>,
    },
    /// `{"type":"error","code":...}`.
    Error {
        /// Error code.
        code: Option<&'a [u8]>,
    },
    /// Anything else (`pong`, `unsubscribed`, unknown types).
    Other,
    /// No `type` at all: not a gateway message (garbled, or inflated wrong).
    Unreadable,
}

/// Classifies a WebSocket text message with byte searches: the gateway writes events as
/// `{"type":"event","channel":"C","id":"E:O"[,"event":"N"],"data":...}`, which takes the fast
/// path; other layouts fall back to searching for each field.
pub fn parse_ws(text: &[u8]) -> WsMsg<'_> {
    if let Some(rest) = text.strip_prefix(br#"{"type":"event","channel":""#)
        && let Some(q) = memchr::memchr(b'"', rest)
        && let Some(rest) = rest[q..].strip_prefix(br#"","id":""#)
        && let Some(q) = memchr::memchr(b'"', rest)
    {
        let id = &rest[..q];
        let mut rest = &rest[q + 1..];
        let mut name = None;
        if let Some(r) = rest.strip_prefix(br#","event":""#)
            && let Some(q) = memchr::memchr(b'"', r)
        {
            name = Some(&r[..q]);
            rest = &r[q + 1..];
        }
        if let Some(data) = rest.strip_prefix(br#","data":"#) {
            return WsMsg::Event {
                id: Some(id),
                name,
                stamp: extract(data),
            };
        }
    }
    match string_field(text, b"type") {
        Some(b"event") => {
            // Search only the data for seq/ts, so a channel named "seq" cannot confuse it.
            let data = memchr::memmem::find(text, br#""data""#).map_or(text, |i| &text[i..]);
            WsMsg::Event {
                id: string_field(text, b"id"),
                name: string_field(text, b"event"),
                stamp: extract(data),
            }
        }
        Some(b"subscribed") => WsMsg::Subscribed {
            position: string_field(text, b"position"),
        },
        Some(b"gap") => WsMsg::Gap {
            first_available: string_field(text, b"first_available"),
        },
        Some(b"error") => WsMsg::Error {
            code: string_field(text, b"code"),
        },
        Some(_) => WsMsg::Other,
        None => WsMsg::Unreadable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_has_the_requested_size_and_reads_back() {
        for size in [0, 10, 40, 100, 1000] {
            let mut out = Vec::new();
            write_payload(&mut out, 42, 1_700_000_000_123_456, size);
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(v["seq"], 42);
            assert_eq!(v["ts"], 1_700_000_000_123_456u64);
            if size >= 50 {
                assert_eq!(out.len(), size);
            }
            assert_eq!(
                extract(&out),
                Stamp {
                    seq: Some(42),
                    ts: Some(1_700_000_000_123_456)
                }
            );
        }
    }

    #[test]
    fn slow_path_finds_reordered_and_escaped_fields() {
        let s = |seq, ts| Stamp {
            seq: Some(seq),
            ts: Some(ts),
        };
        assert_eq!(extract(br#"{"p":"seq","ts": 5, "seq" : 7}"#), s(7, 5));
        assert_eq!(extract(br#""{\"seq\":3,\"ts\":9,\"p\":\"x\"}""#), s(3, 9));
        assert_eq!(extract(b"hello"), Stamp::default());
        assert_eq!(
            extract(br#"{"seq":99999999999999999999,"ts":1}"#),
            Stamp {
                seq: None,
                ts: Some(1)
            }
        );
    }

    #[test]
    fn ws_messages_from_the_gateway_encoding() {
        let text =
            br#"{"type":"event","channel":"lt-1","id":"a1:7","data":{"seq":6,"ts":123,"p":"xx"}}"#;
        assert_eq!(
            parse_ws(text),
            WsMsg::Event {
                id: Some(b"a1:7"),
                name: None,
                stamp: Stamp {
                    seq: Some(6),
                    ts: Some(123)
                }
            }
        );
        let named =
            br#"{"type":"event","channel":"c","id":"a:1","event":"n","data":{"seq":0,"ts":1}}"#;
        assert!(matches!(
            parse_ws(named),
            WsMsg::Event {
                name: Some(b"n"),
                ..
            }
        ));
        // Field order the fast path does not expect.
        let odd = br#"{"id":"a:2","channel":"seq","type":"event","data":{"ts":5,"seq":1}}"#;
        assert_eq!(
            parse_ws(odd),
            WsMsg::Event {
                id: Some(b"a:2"),
                name: None,
                stamp: Stamp {
                    seq: Some(1),
                    ts: Some(5)
                }
            }
        );
        assert_eq!(
            parse_ws(br#"{"type":"subscribed","channel":"c","position":"ab:0","recovered":false}"#),
            WsMsg::Subscribed {
                position: Some(b"ab:0")
            }
        );
        assert_eq!(
            parse_ws(br#"{"type":"gap","channel":"c","first_available":"ab:5"}"#),
            WsMsg::Gap {
                first_available: Some(b"ab:5")
            }
        );
        assert_eq!(
            parse_ws(br#"{"type":"error","code":"bad_position","message":"m"}"#),
            WsMsg::Error {
                code: Some(b"bad_position")
            }
        );
        assert_eq!(parse_ws(br#"{"type":"pong"}"#), WsMsg::Other);
        assert_eq!(
            parse_ws(br#"{"type":"unsubscribed","channel":"c"}"#),
            WsMsg::Other
        );
        assert_eq!(parse_ws(b"not json"), WsMsg::Unreadable);
        assert_eq!(
            parse_ws(b"{\"ty\0\0\0\":\"event\",\"data\":{}}"),
            WsMsg::Unreadable
        );
    }
}

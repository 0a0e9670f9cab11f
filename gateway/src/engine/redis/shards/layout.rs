//! Which primary owns which hash slots: read from `CLUSTER SLOTS`, used to place one probe
//! channel on every primary and to notice that a primary was replaced.

use std::collections::BTreeMap;

use redis::Value;

/// Number of hash slots in a Redis Cluster.
pub(super) const SLOTS: u16 = 16384;

/// Slot ranges per primary, by node id.
pub(super) type Layout = BTreeMap<String, Vec<(u16, u16)>>;

/// Whether a primary of `before` owns no slot in `now`: it failed and a replica took over (or
/// it was emptied by resharding). Slots moving between the same primaries do not count.
pub(super) fn primary_gone(before: &Layout, now: &Layout) -> bool {
    !now.is_empty() && before.keys().any(|id| !now.contains_key(id))
}

/// A string value of a reply or a push.
pub(super) fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// The hash slot of a key whose hash tag is the whole of `tag`.
pub(super) fn slot_of(tag: &str) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(tag.as_bytes()) % SLOTS
}

/// Slot ranges per primary (by node id) from a `CLUSTER SLOTS` reply:
/// `[[start, end, [host, port, id, ...], replicas...], ...]`.
pub(super) fn primaries(reply: &Value) -> Layout {
    let mut owners = Layout::new();
    let Value::Array(ranges) = reply else {
        return owners;
    };
    for range in ranges {
        let Value::Array(parts) = range else { continue };
        let (Some(Value::Int(lo)), Some(Value::Int(hi)), Some(Value::Array(primary))) =
            (parts.first(), parts.get(1), parts.get(2))
        else {
            continue;
        };
        let id = primary.get(2).and_then(text).unwrap_or_else(|| {
            // Without an id, the address names the primary.
            primary
                .iter()
                .take(2)
                .filter_map(text)
                .collect::<Vec<_>>()
                .join(":")
        });
        if let (Ok(lo), Ok(hi)) = (u16::try_from(*lo), u16::try_from(*hi)) {
            owners.entry(id).or_default().push((lo, hi));
        }
    }
    owners
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT`.
        assert_eq!(slot_of("foo"), 12182);
        assert_eq!(slot_of("somekey"), 11058);
        assert_eq!(slot_of(""), 0);
    }

    #[test]
    fn primaries_are_read_from_cluster_slots() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let node =
            |port: i64, id: &str| Value::Array(vec![bulk("127.0.0.1"), Value::Int(port), bulk(id)]);
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node(7000, "a"),
                node(7003, "d"),
            ]),
            Value::Array(vec![Value::Int(5461), Value::Int(10922), node(7001, "b")]),
            Value::Array(vec![Value::Int(10923), Value::Int(16383), node(7000, "a")]),
        ]);
        let owners = primaries(&reply);
        assert_eq!(owners["a"], vec![(0, 5460), (10923, 16383)]);
        assert_eq!(owners["b"], vec![(5461, 10922)]);
        assert_eq!(owners.len(), 2);
    }

    #[test]
    fn a_replaced_primary_counts_and_a_moved_slot_does_not() {
        let layout = |owners: &[(&str, u16, u16)]| -> Layout {
            let mut l = Layout::new();
            for (id, lo, hi) in owners {
                l.entry(id.to_string()).or_default().push((*lo, *hi));
            }
            l
        };
        let before = layout(&[("a", 0, 5460), ("b", 5461, 10922), ("c", 10923, 16383)]);
        // Slot 100 migrated from a to b: the same primaries.
        let moved = layout(&[
            ("a", 0, 99),
            ("a", 101, 5460),
            ("b", 100, 100),
            ("b", 5461, 10922),
            ("c", 10923, 16383),
        ]);
        assert!(!primary_gone(&before, &moved));
        // a died and its replica d took over.
        let failed_over = layout(&[("d", 0, 5460), ("b", 5461, 10922), ("c", 10923, 16383)]);
        assert!(primary_gone(&before, &failed_over));
        // A read that failed or found no slots says nothing.
        assert!(!primary_gone(&before, &Layout::new()));
    }
}

//! The Redis Functions library (`gateway.lua`): its source as this instance loads it, and
//! loading it only when Redis lacks exactly that code.
//!
//! Loading is not free of effects: each load starts a new Lua state, and with it a new writer
//! token, so every channel moves to a new epoch on its next command (see `gateway.lua`). The
//! move costs clients nothing, as the new epoch inherits the old offsets, but an instance that
//! reloaded on every reconnect would make every channel move after every gateway restart. So an
//! identical library already in Redis is left alone.

use std::time::Duration;

use redis::Value;
use redis::aio::ConnectionLike;

/// Name of the library in `FUNCTION LIST`.
pub const NAME: &str = "gateway_v1";

/// Source of the library, with the defaults filled in by [`source`].
const TEMPLATE: &str = include_str!("gateway.lua");

/// The library as loaded into Redis: defaults for callers that omit `maxlen`/`ttl_ms`, and
/// whether Redis keeps every acknowledged write (`redis.durable`), come from this instance's
/// settings. Instances sharing a Redis must agree on them, or each reloads its own.
pub fn source(history_size: usize, ttl: Duration, durable: bool) -> String {
    TEMPLATE
        .replace("__MAXLEN__", &history_size.to_string())
        .replace("__TTL_MS__", &ttl.as_millis().to_string())
        .replace("__DURABLE__", if durable { "true" } else { "false" })
}

/// Loads `code` unless Redis already has exactly it; `true` when it was loaded.
pub async fn ensure<C: ConnectionLike + Send>(
    conn: &mut C,
    code: &str,
) -> redis::RedisResult<bool> {
    let listed: Value = redis::cmd("FUNCTION")
        .arg("LIST")
        .arg("LIBRARYNAME")
        .arg(NAME)
        .arg("WITHCODE")
        .query_async(conn)
        .await?;
    if has_code(&listed, code.as_bytes()) {
        return Ok(false);
    }
    let _: Value = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(code)
        .query_async(conn)
        .await?;
    Ok(true)
}

/// Whether a `FUNCTION LIST ... WITHCODE` reply (RESP2 arrays or RESP3 maps) holds a library
/// whose `library_code` is `code`.
fn has_code(reply: &Value, code: &[u8]) -> bool {
    let is_key = |v: &Value| {
        matches!(v, Value::BulkString(k) if k == b"library_code")
            || matches!(v, Value::SimpleString(k) if k == "library_code")
    };
    let is_code = |v: &Value| matches!(v, Value::BulkString(c) if c == code);
    match reply {
        Value::Array(items) => {
            items.windows(2).any(|w| is_key(&w[0]) && is_code(&w[1]))
                || items.iter().any(|v| has_code(v, code))
        }
        Value::Map(pairs) => pairs
            .iter()
            .any(|(k, v)| (is_key(k) && is_code(v)) || has_code(v, code)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn finds_the_code_in_resp2_and_resp3_replies() {
        let resp2 = Value::Array(vec![Value::Array(vec![
            bulk("library_name"),
            bulk(NAME),
            bulk("functions"),
            Value::Array(vec![]),
            bulk("library_code"),
            bulk("lua code"),
        ])]);
        assert!(has_code(&resp2, b"lua code"));
        assert!(!has_code(&resp2, b"other code"));
        let resp3 = Value::Array(vec![Value::Map(vec![
            (bulk("library_name"), bulk(NAME)),
            (bulk("library_code"), bulk("lua code")),
        ])]);
        assert!(has_code(&resp3, b"lua code"));
        assert!(!has_code(&Value::Array(vec![]), b"lua code"));
    }

    #[test]
    fn the_source_fills_in_the_defaults() {
        let code = source(100, Duration::from_secs(2), true);
        assert!(code.contains("local DEFAULT_MAXLEN = 100\n"));
        assert!(code.contains("local DEFAULT_TTL_MS = 2000\n"));
        assert!(code.contains("local DURABLE = true\n"));
        assert!(!code.contains("__"), "every placeholder is filled");
        assert!(code.starts_with(&format!("#!lua name={NAME}\n")));
    }
}

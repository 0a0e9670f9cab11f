//! The Redis Functions library (`gateway.lua`): its source as this instance loads it, and
//! loading it only when Redis lacks exactly that code.
//!
//! An identical library already in Redis is left alone: reloading it would be harmless (the
//! writer token is the server's run_id, which a reload does not change) but costs a script
//! compilation on every reconnect of every instance.

use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{FromRedisValue, Value};

/// Name of the library in `FUNCTION LIST`.
pub const NAME: &str = "gateway_v1";

/// Source of the library, with the defaults filled in by [`source`].
const TEMPLATE: &str = include_str!("gateway.lua");

/// How the library is built for one deployment: instances sharing a Redis must agree on all
/// of it, or each reloads its own.
#[derive(Clone, Copy, Debug)]
pub struct Flavour {
    /// Default history length for callers that omit `maxlen`.
    pub history_size: usize,
    /// Default history lifetime for callers that omit `ttl_ms`.
    pub ttl: Duration,
    /// Redis keeps every acknowledged write (`redis.durable`).
    pub durable: bool,
    /// Redis Cluster: live messages go out with `SPUBLISH`, writers are named by node.
    pub cluster: bool,
}

impl Flavour {
    /// The flavour these settings ask for.
    pub fn of(settings: &crate::config::Settings) -> Self {
        Self {
            history_size: settings.history.size,
            ttl: settings.history_ttl(),
            durable: settings.redis.durable,
            cluster: !settings.redis.cluster_nodes.is_empty(),
        }
    }
}

/// The library as loaded into Redis, with this deployment's [`Flavour`] filled in.
pub fn source(flavour: Flavour) -> String {
    let flag = |on: bool| if on { "true" } else { "false" };
    TEMPLATE
        .replace("__MAXLEN__", &flavour.history_size.to_string())
        .replace("__TTL_MS__", &flavour.ttl.as_millis().to_string())
        .replace("__DURABLE__", flag(flavour.durable))
        .replace("__CLUSTER__", flag(flavour.cluster))
        .replace("__RESERVED__", &reserved_names())
        .replace("__BINARY_PREFIX__", shared::event::BINARY_EVENT_PREFIX)
}

/// The gateway's reserved event names as a Lua set, from the one list publishing over HTTP
/// checks too (`shared::RESERVED_EVENT_NAMES`): a backend calling the function directly is held
/// to the same rule, so clients can trust a `gap` or a `presence.join` whatever path it took.
fn reserved_names() -> String {
    let entries: Vec<String> = shared::event::RESERVED_EVENT_NAMES
        .iter()
        .map(|name| format!("['{name}'] = true"))
        .collect();
    format!("{{ {} }}", entries.join(", "))
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

/// [`ensure`] on every primary of a cluster: the library is checked on all of them at once and
/// loaded only on those that lack this exact code (a node added by resharding, or one that
/// restarted empty); a promoted replica already has it, as functions are replicated.
pub async fn ensure_cluster(
    conn: &mut redis::cluster_async::ClusterConnection,
    code: &str,
) -> redis::RedisResult<bool> {
    use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo, SingleNodeRoutingInfo};
    let list = redis::cmd("FUNCTION")
        .arg("LIST")
        .arg("LIBRARYNAME")
        .arg(NAME)
        .arg("WITHCODE")
        .clone();
    let all = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
    let Value::Map(per_node) = conn.route_command(list, all).await? else {
        return Err(redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "FUNCTION LIST on every primary did not answer per node",
        )));
    };
    let mut loaded = false;
    for (address, reply) in per_node {
        if has_code(&reply, code.as_bytes()) {
            continue;
        }
        let address = String::from_redis_value(address)?;
        let Some((host, port)) = address
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.to_owned(), p.parse().ok()?)))
        else {
            continue;
        };
        let load = redis::cmd("FUNCTION")
            .arg("LOAD")
            .arg("REPLACE")
            .arg(code)
            .clone();
        let node = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
        conn.route_command(load, node).await?;
        loaded = true;
    }
    Ok(loaded)
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
        let code = source(Flavour {
            history_size: 100,
            ttl: Duration::from_secs(2),
            durable: true,
            cluster: false,
        });
        assert!(code.contains("local DEFAULT_MAXLEN = 100\n"));
        assert!(code.contains("local DEFAULT_TTL_MS = 2000\n"));
        assert!(code.contains("local DURABLE = true\n"));
        assert!(code.contains("local CLUSTER = false\n"));
        assert!(
            code.contains("['presence.join'] = true"),
            "the shared reserved names"
        );
        assert!(code.contains("local BINARY_PREFIX = 'binary:'\n"));
        assert!(!code.contains("__"), "every placeholder is filled");
        assert!(code.starts_with(&format!("#!lua name={NAME}\n")));
    }
}

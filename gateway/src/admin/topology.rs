//! What the status page says about the engine: the Redis topology this instance was configured
//! with (addresses only, never credentials) and how healthy it is right now.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::Settings;
use crate::hub::Hub;

/// How this instance reaches its history store, for display.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Topology {
    /// `memory`, `single`, `sentinel` or `cluster`.
    pub kind: &'static str,
    /// `host:port` of each configured node (the sentinels, for `sentinel`); a socket path for
    /// `unix://`.
    pub nodes: Vec<String>,
    /// The monitored name, with sentinels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub master: Option<String>,
    /// Whether Redis is reached over TLS.
    pub tls: bool,
}

impl Topology {
    /// The topology `settings` select (validated settings: one way to find Redis at most).
    pub fn of(settings: &Settings) -> Self {
        let redis = &settings.redis;
        let hosts = |urls: &[String]| urls.iter().map(|u| address(u)).collect();
        let (kind, nodes, master) = if !redis.enabled() {
            ("memory", Vec::new(), None)
        } else if !redis.cluster_nodes.is_empty() {
            ("cluster", hosts(&redis.cluster_nodes), None)
        } else if !redis.sentinels.is_empty() {
            (
                "sentinel",
                hosts(&redis.sentinels),
                redis.sentinel_master.clone(),
            )
        } else {
            (
                "single",
                redis.url.iter().map(|u| address(u)).collect(),
                None,
            )
        };
        Self {
            kind,
            nodes,
            master,
            tls: redis.enabled() && redis.uses_tls(),
        }
    }
}

/// The address part of a Redis URL: no scheme, user, password, database or query.
fn address(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    if scheme == "unix" {
        return rest.split(['?', '#']).next().unwrap_or_default().to_owned();
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    host.to_owned()
}

/// The engine's health as an operator wants to see it.
#[derive(Debug, Clone, Serialize)]
pub struct Health {
    /// The live path (pub/sub) is connected.
    pub live: bool,
    /// What `/readyz` would answer: live, answering, and not shutting down.
    pub ready: bool,
    /// Round trip of one ping to the store, milliseconds (`None` when it failed).
    pub ping_ms: Option<f64>,
    /// Why the instance is not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// Checks the engine now: one ping, bounded by `timeout`.
pub async fn health(hub: &Hub, timeout: Duration) -> Health {
    let started = Instant::now();
    let ping = tokio::time::timeout(timeout, hub.engine().ping()).await;
    let ping_ms = matches!(ping, Ok(Ok(()))).then(|| started.elapsed().as_secs_f64() * 1000.0);
    let live = hub.is_live();
    let problem = if hub.is_shutting_down() {
        Some("shutting down".to_owned())
    } else if !live {
        Some("engine live path is down".to_owned())
    } else {
        match ping {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!(
                "engine did not answer within {} ms",
                timeout.as_millis()
            )),
        }
    };
    Health {
        live,
        ready: problem.is_none(),
        ping_ms,
        problem,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_never_carry_credentials() {
        assert_eq!(address("redis://127.0.0.1:6379/0"), "127.0.0.1:6379");
        assert_eq!(
            address("rediss://user:s3cret@redis.internal:6380/2?x=1"),
            "redis.internal:6380"
        );
        assert_eq!(address("redis://:pw@[::1]:7000"), "[::1]:7000");
        assert_eq!(
            address("unix:///run/redis.sock?pass=s3cret"),
            "/run/redis.sock"
        );
    }

    #[test]
    fn the_topology_follows_the_settings() {
        let mut s = Settings::default();
        assert_eq!(Topology::of(&s).kind, "memory");
        s.redis.sentinels = vec!["redis://:pw@10.0.0.1:26379".into()];
        s.redis.sentinel_master = Some("main".into());
        let t = Topology::of(&s);
        assert_eq!(
            (t.kind, t.nodes.as_slice()),
            ("sentinel", &["10.0.0.1:26379".to_owned()][..])
        );
        assert_eq!(t.master.as_deref(), Some("main"));
        s.redis.sentinels.clear();
        s.redis.cluster_nodes = vec!["redis://a:7000".into(), "redis://b:7001".into()];
        let t = Topology::of(&s);
        assert_eq!((t.kind, t.nodes.len()), ("cluster", 2));
    }
}

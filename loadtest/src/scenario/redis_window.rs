//! Redis measurement windows around a scenario's publishing.

use std::sync::atomic::Ordering;

use super::Harness;
use crate::redis_nodes::{self, RedisNodes};

/// Samples every measured Redis node, when there are any.
pub(super) async fn sample(
    nodes: &mut Option<RedisNodes>,
) -> anyhow::Result<Option<redis_nodes::Sample>> {
    match nodes {
        Some(n) => Ok(Some(n.sample().await?)),
        None => Ok(None),
    }
}

/// Closes a Redis measurement window: per node and per role figures, and Redis CPU and commands
/// per successful publish.
pub(super) async fn redis_window(
    h: &mut Harness,
    nodes: &mut Option<RedisNodes>,
    before: Option<redis_nodes::Sample>,
    window_s: f64,
) -> anyhow::Result<()> {
    if let (Some(n), Some(b)) = (nodes, before) {
        let after = n.sample().await?;
        let d = n.deltas(&b, &after, window_s);
        d.write(&mut h.report);
        d.per_unit(
            &mut h.report,
            "publish",
            h.pstats.ok.load(Ordering::Relaxed),
        );
    }
    Ok(())
}

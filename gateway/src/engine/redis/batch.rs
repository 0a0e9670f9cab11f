//! Many publishes in one round trip: on a single node (or through Sentinel) one pipeline of
//! `FCALL gw_publish`, each answered on its own; on a cluster, where a pipeline must stay on one
//! node, every publish in flight at once on the cluster connection (one round trip per shard).
//! A batch is not a transaction: each event is stored or refused by itself, and the caller is
//! told which.

use futures_util::future::join_all;
use redis::Value;

use super::{RedisEngine, classify, parse_id};
use crate::engine::{EngineError, PublishRequest};
use shared::Position;

impl RedisEngine {
    /// Publishes every request; the outer error when the batch did not reach Redis at all.
    pub async fn publish_batch(
        &self,
        requests: &[PublishRequest],
    ) -> Result<Vec<Result<Position, EngineError>>, EngineError> {
        if self.inner.dialer.is_cluster() {
            let each = requests.iter().map(|r| self.publish(r.clone()));
            return Ok(join_all(each).await);
        }
        let results = self.pipeline(requests).await?;
        // Every call refused by Redis itself: the library is missing (a restart without
        // persistence), so none ran. Load it and send the batch once more.
        let all_refused = !results.is_empty()
            && results
                .iter()
                .all(|r| matches!(r, Err(EngineError::Refused(_))));
        if all_refused && self.load_library().await.is_ok() {
            return self.pipeline(requests).await;
        }
        Ok(results)
    }

    async fn pipeline(
        &self,
        requests: &[PublishRequest],
    ) -> Result<Vec<Result<Position, EngineError>>, EngineError> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for r in requests {
            pipe.add_command(self.publish_cmd(r));
        }
        let replies: Vec<redis::RedisResult<Value>> = self
            .run(|mut conn| async move { pipe.query_async(&mut conn).await })
            .await?;
        Ok(replies
            .into_iter()
            .map(|reply| match reply {
                Ok(Value::BulkString(id)) => parse_id(&String::from_utf8_lossy(&id)),
                Ok(Value::SimpleString(id)) => parse_id(&id),
                Ok(other) => Err(EngineError::Protocol(format!(
                    "gw_publish returned {other:?}"
                ))),
                Err(e) => Err(classify(e)),
            })
            .collect())
    }
}

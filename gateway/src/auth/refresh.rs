//! The JWKS keys in use, and the task that keeps them fresh: a fetch at start, then one every
//! `auth.jwks_refresh_seconds`, and one soon after a token names an unknown `kid`, but never two
//! within `auth.jwks_cooldown_seconds`, however many requests ask (so tokens with made-up `kid`s
//! cannot make the gateway hammer the identity provider). A failed fetch keeps the last keys.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::jwks::Fetcher;
use super::keys::Key;

/// The JWKS keys in use and what refreshes them.
pub struct LiveJwks {
    fetcher: Fetcher,
    keys: RwLock<Arc<Vec<Key>>>,
    wake: Notify,
    refresh: Duration,
    cooldown: Duration,
}

impl LiveJwks {
    /// No keys yet; [`LiveJwks::load`] fetches the first ones.
    pub fn new(fetcher: Fetcher, refresh: Duration, cooldown: Duration) -> Self {
        Self {
            fetcher,
            keys: RwLock::new(Arc::new(Vec::new())),
            wake: Notify::new(),
            refresh,
            cooldown,
        }
    }

    /// The keys in use (a snapshot: a refresh swaps in a new list).
    pub fn keys(&self) -> Arc<Vec<Key>> {
        self.keys.read().clone()
    }

    /// Fetches the document and, if it has usable keys, puts them in use; returns how many.
    pub async fn load(&self) -> Result<usize, String> {
        let keys = self.fetcher.fetch().await?;
        let n = keys.len();
        *self.keys.write() = Arc::new(keys);
        Ok(n)
    }

    /// Asks for a fetch as soon as the cooldown allows; cheap, callable from any thread.
    pub fn request_refresh(&self) {
        self.wake.notify_one();
    }

    /// Refreshes until the runtime stops. Call after a first [`LiveJwks::load`].
    pub async fn run(self: Arc<Self>) {
        let mut last = Instant::now();
        let mut due = last + self.refresh;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(due) => {}
                () = self.wake.notified() => {
                    tokio::time::sleep_until(last + self.cooldown).await;
                }
            }
            let result = self.load().await;
            last = Instant::now();
            due = match result {
                Ok(n) => {
                    tracing::debug!(keys = n, "auth.jwks_url refreshed");
                    last + self.refresh
                }
                Err(problem) => {
                    tracing::warn!(
                        "auth.jwks_url: refresh failed, keeping the last keys: {problem}"
                    );
                    last + self.cooldown.min(self.refresh)
                }
            };
        }
    }
}

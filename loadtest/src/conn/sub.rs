//! One subscriber's transport state across sessions, and the `live` gauge guard.

use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;

use super::acct::{Acct, End};
use super::{Shared, SubResult};
use crate::account::{IdTracker, SeqTracker};
use crate::sse::SseParser;
use crate::stats::{Batch, Stats};

/// Transport state of one subscriber, kept across its sessions.
pub(super) struct Sub {
    pub(super) source: Ipv4Addr,
    pub(super) acct: Acct,
    /// SSE parser; its last id survives reconnects (sent as `Last-Event-ID`).
    pub(super) sse: SseParser,
    /// Last WebSocket event id (sent as `since`).
    pub(super) ws_last_id: Vec<u8>,
    /// Whether the current session got established.
    pub(super) up: bool,
    /// Whether any session got established.
    pub(super) ever_up: bool,
    /// The current session's gzip decoder (`--compressed`; `--inflate-once` picks which).
    pub(super) gzip: Option<Box<crate::inflate::SseInflate>>,
}

/// Keeps the `live` gauge right however a session ends (including being dropped).
pub(super) struct LiveGuard<'a> {
    pub(super) stats: &'a Stats,
    pub(super) up: bool,
}

impl LiveGuard<'_> {
    pub(super) fn set(&mut self) {
        if !self.up {
            self.up = true;
            self.stats.live.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(super) fn clear(&mut self) {
        if self.up {
            self.up = false;
            self.stats.live.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for LiveGuard<'_> {
    fn drop(&mut self) {
        if self.up {
            self.stats.live.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Sub {
    /// Subscriber `idx`'s state before its first connection.
    pub(super) fn new(idx: usize, sh: &Shared) -> Self {
        let plan = &sh.plan;
        Self {
            source: plan.sources[idx % plan.sources.len()],
            acct: Acct {
                shard: idx,
                channel: idx % sh.book.names.len(),
                seq: SeqTracker::default(),
                ids: IdTracker::default(),
                check_ids: !plan.template,
                batch: Batch::default(),
                storm: None,
            },
            sse: SseParser::new(),
            gzip: None,
            ws_last_id: Vec::new(),
            up: false,
            ever_up: false,
        }
    }

    /// Accounts the end of a session (or of an HTTP/2 stream): flushes, counts the disconnect
    /// or the failure. Returns false when the subscriber is finished: it never got established
    /// (a failed connection), or must not reconnect.
    pub(super) fn ended(&mut self, sh: &Shared, end: &End, storm: bool) -> bool {
        sh.stats.flush(self.acct.shard, &mut self.acct.batch);
        if self.up {
            Stats::bump(&sh.stats.disconnects);
        } else if !self.ever_up && !storm {
            sh.stats.fail(&end.reason());
            Stats::bump(&sh.stats.failed);
            return false;
        } else {
            Stats::bump(&sh.stats.reconnect_failures);
            sh.stats.fail(&format!("reconnect_{}", end.reason()));
        }
        self.up = false;
        sh.plan.reconnect
    }

    pub(super) fn result(mut self, sh: &Shared) -> Option<SubResult> {
        sh.stats.flush(self.acct.shard, &mut self.acct.batch);
        self.ever_up.then_some(SubResult {
            channel: self.acct.channel,
            seq: self.acct.seq,
        })
    }
}

//! Per-subscriber accounting, independent of the transport, and why a session ended.

use std::io;
use std::time::Instant;

use super::Shared;
use crate::account::{IdTracker, SeqOutcome, SeqTracker, parse_position};
use crate::payload::{Stamp, WsMsg};
use crate::sse::SseItem;
use crate::stats::{Batch, Stats};

/// Why a session ended.
#[derive(Debug)]
pub(super) enum End {
    /// TCP connect failed.
    Connect(io::Error),
    /// The TLS handshake failed (or ALPN did not agree).
    Tls(io::Error),
    /// HTTP/2 failed: handshake, request, or the stream (reset, GOAWAY, connection error).
    Http2(String),
    /// Connect, head or handshake took too long.
    Timeout,
    /// The response was not 200 (or the upgrade was refused with this status).
    Status(u16),
    /// The server broke the protocol.
    Protocol(String),
    /// The WebSocket subscribe was refused.
    WsError(String),
    /// A socket error after connecting.
    Io(io::Error),
    /// The server ended the stream.
    Closed,
}

impl End {
    pub(super) fn reason(&self) -> String {
        match self {
            Self::Connect(e) => format!("connect_{:?}", e.kind()).to_ascii_lowercase(),
            Self::Tls(e) => format!(
                "tls: {}",
                e.to_string().chars().take(60).collect::<String>()
            ),
            Self::Http2(m) => format!("http2: {}", m.chars().take(60).collect::<String>()),
            Self::Timeout => "timeout".into(),
            Self::Status(s) => format!("status_{s}"),
            Self::Protocol(m) => format!("protocol: {}", m.chars().take(60).collect::<String>()),
            Self::WsError(code) => format!("ws_error_{code}"),
            Self::Io(e) => format!("io_{:?}", e.kind()).to_ascii_lowercase(),
            Self::Closed => "closed".into(),
        }
    }
}

/// Per-subscriber accounting, independent of the transport.
pub(super) struct Acct {
    pub(super) shard: usize,
    pub(super) channel: usize,
    pub(super) seq: SeqTracker,
    pub(super) ids: IdTracker,
    pub(super) check_ids: bool,
    pub(super) batch: Batch,
    /// Set while a storm reconnect is under way: (reconnect start, completion recorded).
    pub(super) storm: Option<(Instant, bool)>,
}

impl Acct {
    #[inline]
    pub(super) fn on_data(&mut self, stamp: Stamp, now_us: u64, sh: &Shared) {
        let (Some(seq), Some(ts)) = (stamp.seq, stamp.ts) else {
            self.batch.c.malformed += 1;
            return;
        };
        let c = &mut self.batch.c;
        c.deliveries += 1;
        let outcome = self.seq.on_seq(seq);
        if let Some(w) = sh.watch.get() {
            w.event(self.channel, ts, now_us, &outcome);
        }
        match outcome {
            SeqOutcome::InOrder => c.in_order += 1,
            SeqOutcome::Jump(n) => {
                c.in_order += 1;
                c.lost = c.lost.saturating_add(n);
            }
            SeqOutcome::Duplicate => c.duplicated += 1,
            SeqOutcome::Late => c.reordered += 1,
        }
        if self.batch.latency(now_us.saturating_sub(ts)) {
            sh.stats.flush(self.shard, &mut self.batch);
        }
        if self.storm.is_some() {
            self.check_storm(sh);
        }
    }

    /// Records the time to completion once this subscriber has every event after a storm.
    pub(super) fn check_storm(&mut self, sh: &Shared) {
        let Some((start, done)) = &mut self.storm else {
            return;
        };
        if *done || !self.seq.complete(sh.book.expected(self.channel)) {
            return;
        }
        *done = true;
        let us = start.elapsed().as_micros() as u64;
        crate::stats::lock(&sh.stats.storm_latency).saturating_record(us.max(1));
        Stats::bump(&sh.stats.storm_complete);
    }

    pub(super) fn on_sse(&mut self, item: SseItem<'_>, now_us: u64, sh: &Shared) {
        match item {
            SseItem::Marker { id } => {
                if self.check_ids {
                    self.ids.marker(id);
                }
            }
            SseItem::Event {
                id,
                id_in_block,
                name,
                stamp,
            } => match name {
                b"" | b"message" => {
                    self.on_data(stamp, now_us, sh);
                    if self.check_ids && id_in_block {
                        let before = self.ids.jumps;
                        self.ids.event(id);
                        self.batch.c.id_jumps += self.ids.jumps - before;
                    }
                }
                b"gap" => {
                    self.batch.c.gaps += 1;
                    if let Some(w) = sh.watch.get() {
                        w.gap(self.channel);
                    }
                    if self.check_ids {
                        self.ids.marker(id);
                    }
                }
                _ => self.batch.c.other_events += 1,
            },
        }
    }

    pub(super) fn on_ws(
        &mut self,
        msg: WsMsg<'_>,
        now_us: u64,
        sh: &Shared,
    ) -> Option<Result<(), String>> {
        match msg {
            WsMsg::Event { id, name, stamp } => {
                match name {
                    None | Some(b"message") => {
                        self.on_data(stamp, now_us, sh);
                        if self.check_ids {
                            let before = self.ids.jumps;
                            self.ids.event(id.unwrap_or(b""));
                            self.batch.c.id_jumps += self.ids.jumps - before;
                        }
                    }
                    Some(_) => self.batch.c.other_events += 1,
                }
                None
            }
            WsMsg::Subscribed { position } => {
                if self.check_ids {
                    self.ids.marker(position.unwrap_or(b""));
                }
                Some(Ok(()))
            }
            WsMsg::Gap { first_available } => {
                self.batch.c.gaps += 1;
                if self.check_ids {
                    let prev = first_available
                        .and_then(parse_position)
                        .map(|p| shared::Position::new(p.epoch, p.offset.saturating_sub(1)));
                    self.ids.set(prev);
                }
                None
            }
            WsMsg::Error { code } => {
                self.batch.c.ws_errors += 1;
                Some(Err(
                    String::from_utf8_lossy(code.unwrap_or(b"unknown")).into_owned()
                ))
            }
            WsMsg::Other => None,
            // Counted against the run: the gateway sends nothing like it, so it was garbled
            // (or inflated wrong).
            WsMsg::Unreadable => {
                self.batch.c.malformed += 1;
                None
            }
        }
    }
}

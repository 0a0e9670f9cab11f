//! Writing to the client: every frame goes through the connection's writer with a deadline (a
//! write that makes no progress within the heartbeat timeout is a slow consumer), and a drained
//! batch of events becomes one write.

use std::time::Duration;

use bytes::Bytes;
use bytestring::ByteString;
use shared::Disconnect;
use shared::ws::ServerMessage;

use super::End;
use super::connection::Connection;
use super::io::{Closed, Session};
use crate::hub::direct::{Form, Link};
use crate::hub::queue::Item;

impl Connection {
    /// Runs one write, treating a write that makes no progress within `timeout` as a slow
    /// consumer.
    pub(super) async fn timed(
        &self,
        write: impl Future<Output = Result<(), Closed>>,
        timeout: Duration,
    ) -> Result<(), End> {
        match tokio::time::timeout(timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(None),
            Err(_) => {
                self.state.metrics.slow_consumers.inc();
                Err(Some(Disconnect::SlowConsumer))
            }
        }
    }

    /// Queues one frame (see [`Session::feed_text`]); [`Connection::flush`] writes it.
    pub(super) async fn feed(
        &self,
        session: &mut Session,
        frame: Frame,
        timeout: Duration,
    ) -> Result<(), End> {
        let write = async {
            match frame {
                Frame::Text(text) => session.feed_text(text).await,
                Frame::Whole(bytes) => session.feed_frame(bytes).await,
                Frame::Tail(bytes) => session.feed_tail(bytes).await,
            }
        };
        self.timed(write, timeout).await?;
        self.state.metrics.hot.ws_frames_out.inc();
        Ok(())
    }

    pub(super) async fn flush(&self, session: &mut Session, timeout: Duration) -> Result<(), End> {
        self.timed(session.flush(), timeout).await
    }

    /// Sends one frame now.
    pub(super) async fn send(
        &self,
        session: &mut Session,
        frame: Frame,
        timeout: Duration,
    ) -> Result<(), End> {
        self.feed(session, frame, timeout).await?;
        self.flush(session, timeout).await
    }

    pub(super) async fn reply(
        &self,
        session: &mut Session,
        msg: &ServerMessage,
        timeout: Duration,
    ) -> Result<(), End> {
        self.send(session, text_frame(msg), timeout).await
    }

    pub(super) async fn write_batch(
        &mut self,
        session: &mut Session,
        batch: &mut Vec<Item>,
        timeout: Duration,
    ) -> Result<(), End> {
        let mut delivered = 0u64;
        let mut oldest_live_ms = None;
        for item in batch.drain(..) {
            match item {
                Item::Event {
                    slot,
                    message,
                    live,
                } => {
                    if self.slots.get(slot).is_none() {
                        continue; // unsubscribed meanwhile
                    }
                    // The whole frame, encoded (and compressed) once per event and shared by
                    // every subscriber, as fan-out writes it itself (`hub::direct`).
                    let form = self.form(session);
                    let frame = form
                        .frame_after(&message, Link::on(self.seen, slot))
                        .clone();
                    if let Some(position) = form.seen_after(&message, &frame) {
                        self.seen = Some(Link { slot, position });
                    }
                    self.feed(session, Frame::Whole(frame), timeout).await?;
                    delivered += 1;
                    if live && oldest_live_ms.is_none() {
                        oldest_live_ms = Some(message.event.published_ms);
                    }
                }
                Item::Gap {
                    slot,
                    first_available,
                } => {
                    let Some(s) = self.slots.get(slot) else {
                        continue;
                    };
                    let msg = ServerMessage::Gap {
                        channel: s.channel.to_string(),
                        first_available: first_available.to_string(),
                    };
                    self.feed(session, text_frame(&msg), timeout).await?;
                }
                // The rest of a frame fan-out began writing itself (`hub::direct`).
                Item::Tail(rest) => self.feed(session, Frame::Tail(rest), timeout).await?,
                Item::Subscribed {
                    slot,
                    position,
                    recovered,
                } => {
                    let Some(s) = self.slots.get_mut(slot) else {
                        continue;
                    };
                    let msg = ServerMessage::Subscribed {
                        channel: s.channel.to_string(),
                        position: position.to_string(),
                        recovered,
                        req: s.req.take(),
                    };
                    self.feed(session, text_frame(&msg), timeout).await?;
                }
            }
        }
        // The whole batch in one write on a raw socket.
        self.flush(session, timeout).await?;
        let metrics = &self.state.metrics;
        if delivered > 0 {
            metrics.hot.delivered_ws.inc_by(delivered);
        }
        if let Some(ms) = oldest_live_ms {
            metrics.observe_delivery(ms);
        }
        Ok(())
    }
}

impl Connection {
    /// Which of an event's shared frames this connection takes.
    pub(super) fn form(&self, session: &Session) -> Form {
        Form::ws(
            session.compress_up_to(),
            self.state.settings.compression.level,
            session.deflate_context(),
        )
    }
}

/// A frame to send: a reply's text, an event's whole frame (header included), shared, or the
/// rest of frames fan-out began writing itself.
pub(super) enum Frame {
    Text(ByteString),
    Whole(Bytes),
    Tail(Bytes),
}

pub(super) fn text_frame(msg: &ServerMessage) -> Frame {
    // Serialising these plain structs cannot fail.
    let text = serde_json::to_string(msg).unwrap_or_default();
    Frame::Text(ByteString::from(text))
}

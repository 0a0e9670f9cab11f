//! Resume: bring one attached connection from its position to the channel's head, then join
//! live fan-out — with nothing lost and nothing twice.
//!
//! The loop alternates between work under the shard lock and history reads outside it:
//! - under the lock, if the channel's in-memory ring reaches back to the connection's position,
//!   the missing events are queued *and* the connection joins `subs` in the same critical
//!   section, so no live event can slip between history and live delivery;
//! - otherwise a page of history is read (coalesced with identical reads), queued with
//!   backpressure (waiting only on this connection's own queue), and the loop repeats from the
//!   new position. Events published while the page was read are, by then, in the ring.
//!
//! A page whose history does not continue the connection's position (see `shared::lineage`),
//! or one starting after the next wanted offset, means events are gone: a gap notice goes
//! first, then whatever is available. A position in an earlier epoch that the current one
//! inherited continues without a gap.

use std::sync::Arc;
use std::time::Duration;

use shared::{Continuity, Epoch, Position};
use tokio::time::Instant;

use super::channel::Sub;
use super::message::{Delivery, Message};
use super::queue::{Item, PushError};
use super::resolve::{Next, Reading, resolve};
use super::{HookPoint, Hub, HubError, Membership};

/// How a join ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JoinOutcome {
    /// `false` when a gap notice had to be sent.
    pub recovered: bool,
    /// The position delivery had reached when the connection joined live fan-out.
    pub position: Position,
}

/// Where a connection starts on a channel, as [`Hub::start_position`] decided it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Start {
    /// The client's position, or the head for a fresh subscription: what the client is told
    /// it subscribed at, and the cursor it resumes from if it reconnects before anything else.
    pub requested: Position,
    /// Delivery continues after this position.
    pub after: Position,
    /// The client saw events the store no longer has: a gap notice goes first.
    pub lost: bool,
}

impl Start {
    /// A start with nothing lost.
    pub fn at(position: Position) -> Self {
        Self {
            requested: position,
            after: position,
            lost: false,
        }
    }
}

/// Whether a join acknowledges the subscription before its first event, and as what.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Announce {
    /// No acknowledgement (SSE).
    Silent,
    /// A new subscription from the head.
    Fresh,
    /// A resume from a client position.
    Resume,
}

enum Step {
    Done,
    Push(Vec<Arc<Message>>),
    Fetch { after: u64, hub_epoch: Epoch },
}

impl From<PushError> for HubError {
    fn from(_: PushError) -> Self {
        HubError::Closed
    }
}

impl Hub {
    /// Where a connection starts on an attached channel: after `wanted`, or after the head for
    /// a fresh subscription. A position ahead of this instance is fine if another instance
    /// already delivered it, so only the store decides: a position beyond the store's head
    /// means the store lost writes (or the cursor is forged). Either way the client gets a gap
    /// and continues from the store's head, never a refusal (`EventSource` would give up), and
    /// the store is fenced so it never hands those offsets out again.
    pub async fn start_position(
        &self,
        m: &Membership,
        head: Position,
        wanted: Option<Position>,
    ) -> Result<Start, HubError> {
        let Some(wanted) = wanted else {
            return Ok(Start::at(head));
        };
        if wanted.epoch != head.epoch || wanted.offset <= head.offset {
            return Ok(Start::at(wanted));
        }
        let store = self.inner.history.read_direct(&m.channel, 0, 0).await?;
        match store.continuity(wanted) {
            Continuity::Continuous(_) => Ok(Start::at(wanted)),
            Continuity::Lost {
                resume_after,
                fence,
            } => {
                self.inner
                    .metrics
                    .lost_history
                    .with_label_values(&[crate::metrics::labels::SeenBy::Client.as_str()])
                    .inc();
                if fence {
                    tracing::debug!(channel = %m.channel, position = %wanted, head = %store.head(), "a client resumed beyond the store's head; fencing the channel");
                    self.inner.engine.fence(&m.channel, wanted).await?;
                }
                Ok(Start {
                    requested: wanted,
                    after: Position::new(store.epoch, resume_after),
                    lost: true,
                })
            }
        }
    }

    /// Delivers everything after `from` and joins live fan-out. Unless `announce` is
    /// [`Announce::Silent`], an [`Item::Subscribed`] precedes the first event.
    pub async fn join(
        &self,
        m: &Membership,
        start: Start,
        announce: Announce,
    ) -> Result<JoinOutcome, HubError> {
        let deadline = Instant::now() + self.inner.config.subscribe_timeout;
        let requested = start.requested;
        let mut from = start.after;
        let mut recovered = !start.lost;
        // A gap is owed when the client saw events that are gone; it is sent with the first
        // page read from `from`, so it names the first event really available.
        let mut owe_gap = start.lost;
        let mut fenced = false;
        let mut announced = announce == Announce::Silent;
        // Only a resume can be "recovered"; a fresh subscription reports false.
        let resuming = announce == Announce::Resume;
        loop {
            if Instant::now() > deadline {
                return Err(HubError::Timeout);
            }
            let step = self
                .with_state(
                    &m.channel,
                    m.generation,
                    |state, fx| -> Result<Step, HubError> {
                        if m.queue.is_closed() {
                            return Err(HubError::Closed);
                        }
                        if self.is_shutting_down() {
                            return Err(HubError::ShuttingDown);
                        }
                        let last = state.last.ok_or(HubError::Timeout)?;
                        if from.epoch != last.epoch || owe_gap {
                            return Ok(Step::Fetch {
                                after: from.offset,
                                hub_epoch: last.epoch,
                            });
                        }
                        let Some(missing) = state.ring_after(from) else {
                            return Ok(Step::Fetch {
                                after: from.offset,
                                hub_epoch: last.epoch,
                            });
                        };
                        let needed = missing.len() + usize::from(!announced);
                        if needed > m.queue.room() {
                            return Ok(Step::Push(missing));
                        }
                        if !announced {
                            m.queue.push(Item::Subscribed {
                                slot: m.slot,
                                position: requested,
                                recovered: recovered && resuming,
                            })?;
                        }
                        for message in missing {
                            m.queue.push(Item::Event {
                                slot: m.slot,
                                message: Arc::new(Delivery(message)),
                                live: false,
                            })?;
                        }
                        state.add_sub(
                            m.id,
                            Sub {
                                queue: m.queue.clone(),
                                slot: m.slot,
                                skip_until: from.offset.max(last.offset),
                            },
                            fx,
                        );
                        from = Position::new(last.epoch, from.offset.max(last.offset));
                        Ok(Step::Done)
                    },
                )
                .ok_or(HubError::Closed)??;

            match step {
                Step::Done => {
                    return Ok(JoinOutcome {
                        recovered,
                        position: from,
                    });
                }
                Step::Push(messages) => {
                    self.announce(m, &mut announced, requested, recovered && resuming)
                        .await?;
                    for message in messages {
                        let position = message.position();
                        m.queue
                            .push_wait(Item::Event {
                                slot: m.slot,
                                message: Arc::new(Delivery(message)),
                                live: false,
                            })
                            .await?;
                        from = position;
                    }
                }
                Step::Fetch { after, hub_epoch } => {
                    self.hook(HookPoint::JoinBeforeRead, &m.channel).await;
                    let page = self.inner.history.read(&m.channel, after).await?;
                    self.hook(HookPoint::JoinAfterRead, &m.channel).await;
                    if page.epoch != hub_epoch {
                        // This instance has not seen the store's current epoch yet: let the
                        // channel catch up first, then try again.
                        self.poke(
                            &m.channel,
                            m.generation,
                            crate::metrics::labels::ResyncReason::StaleHead.as_str(),
                        );
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                    // Later resumes from about here are then served from memory.
                    self.with_state(&m.channel, m.generation, |state, _| {
                        state.seed_ring(&page.messages)
                    });
                    let resolved = resolve(
                        Reading {
                            epoch: page.epoch,
                            read_after: after,
                            first_available: page.first_available(),
                            continuity: page.continuity(from),
                        },
                        owe_gap,
                    );
                    if resolved.fence && !fenced {
                        fenced = true;
                        self.inner.engine.fence(&m.channel, from).await?;
                    }
                    match resolved.next {
                        Next::Reread { after } => {
                            // The page was read after the wrong offset: read again.
                            recovered = false;
                            owe_gap = true;
                            from = after;
                            continue;
                        }
                        Next::Deliver { gap, after } => {
                            from = after;
                            if let Some(first_available) = gap {
                                recovered = false;
                                owe_gap = false;
                                self.announce(m, &mut announced, requested, false).await?;
                                m.queue
                                    .push_wait(Item::Gap {
                                        slot: m.slot,
                                        first_available,
                                    })
                                    .await?;
                                self.inner.metrics.gaps.inc();
                            }
                        }
                    }
                    self.announce(m, &mut announced, requested, recovered && resuming)
                        .await?;
                    for message in &page.messages {
                        let position = message.position();
                        if position.offset <= from.offset {
                            continue;
                        }
                        m.queue
                            .push_wait(Item::Event {
                                slot: m.slot,
                                message: Arc::new(Delivery(message.clone())),
                                live: false,
                            })
                            .await?;
                        from = position;
                    }
                }
            }
        }
    }

    async fn announce(
        &self,
        m: &Membership,
        announced: &mut bool,
        position: Position,
        recovered: bool,
    ) -> Result<(), HubError> {
        if !*announced {
            m.queue
                .push_wait(Item::Subscribed {
                    slot: m.slot,
                    position,
                    recovered,
                })
                .await?;
            *announced = true;
        }
        Ok(())
    }
}

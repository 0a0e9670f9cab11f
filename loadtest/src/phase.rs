//! The scenario's phase, broadcast to every subscriber task. Unlike a `watch` channel, waiting
//! for a change takes no shared lock when polled: each task has its own `AtomicWaker`, and the
//! subscriber's select polls it on every wake-up (every event), so that matters.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

use crate::conn::Phase;

struct Cell {
    /// `version << 8 | phase`.
    state: AtomicU64,
    wakers: Mutex<Vec<Arc<AtomicWaker>>>,
}

fn encode(p: Phase) -> u64 {
    match p {
        Phase::Run => 0,
        Phase::Disconnect => 1,
        Phase::Reconnect => 2,
        Phase::Stop => 3,
    }
}

fn decode(state: u64) -> Phase {
    match state & 0xff {
        0 => Phase::Run,
        1 => Phase::Disconnect,
        2 => Phase::Reconnect,
        _ => Phase::Stop,
    }
}

/// The sending side, held by the scenario.
pub struct PhaseTx {
    cell: Arc<Cell>,
}

/// The receiving side, one per subscriber task.
pub struct PhaseRx {
    cell: Arc<Cell>,
    waker: Arc<AtomicWaker>,
    seen: u64,
}

impl PhaseTx {
    /// Starts in `phase`.
    pub fn new(phase: Phase) -> Self {
        Self {
            cell: Arc::new(Cell {
                state: AtomicU64::new(encode(phase)),
                wakers: Mutex::new(Vec::new()),
            }),
        }
    }

    /// A receiver that has seen the current phase.
    pub fn subscribe(&self) -> PhaseRx {
        let waker = Arc::new(AtomicWaker::new());
        crate::stats::lock(&self.cell.wakers).push(waker.clone());
        PhaseRx {
            seen: self.cell.state.load(Ordering::SeqCst),
            cell: self.cell.clone(),
            waker,
        }
    }

    /// Moves every receiver to `phase` and wakes them.
    pub fn set(&self, phase: Phase) {
        let old = self.cell.state.load(Ordering::SeqCst);
        let version = (old >> 8) + 1;
        self.cell
            .state
            .store((version << 8) | encode(phase), Ordering::SeqCst);
        for w in crate::stats::lock(&self.cell.wakers).iter() {
            w.wake();
        }
    }

    /// The current phase.
    #[cfg(test)]
    pub fn get(&self) -> Phase {
        decode(self.cell.state.load(Ordering::SeqCst))
    }
}

impl PhaseRx {
    /// The current phase, marking it seen.
    pub fn current(&mut self) -> Phase {
        self.seen = self.cell.state.load(Ordering::SeqCst);
        decode(self.seen)
    }

    /// Resolves when the phase changes after the last [`Self::current`].
    pub fn changed(&mut self) -> Changed<'_> {
        Changed { rx: self }
    }
}

/// Future of [`PhaseRx::changed`].
pub struct Changed<'a> {
    rx: &'a mut PhaseRx,
}

impl Future for Changed<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let rx = &mut *self.get_mut().rx;
        rx.waker.register(cx.waker());
        if rx.cell.state.load(Ordering::SeqCst) != rx.seen {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn receivers_see_changes() {
        let tx = PhaseTx::new(Phase::Run);
        let mut rx = tx.subscribe();
        assert_eq!(rx.current(), Phase::Run);
        let waiter = tokio::spawn(async move {
            rx.changed().await;
            rx.current()
        });
        tokio::task::yield_now().await;
        tx.set(Phase::Stop);
        assert_eq!(waiter.await.unwrap(), Phase::Stop);
        assert_eq!(tx.get(), Phase::Stop);
        // Setting the same phase again is still a change.
        let mut rx2 = tx.subscribe();
        rx2.current();
        tx.set(Phase::Stop);
        rx2.changed().await;
    }
}

//! The publish thread: one more thread, beside the workers, that serves connections whose first
//! request is `POST /publish` (moved there by `handoff`).
//!
//! At full fan-out every worker has thousands of streams to write; a publish served there waits
//! in the same run queue, once for its request and once for the Redis reply, and a publisher
//! that sends one request at a time falls behind. This thread has its own runtime and, being a
//! worker to the engine (`rt`), its own Redis connection, so a publish waits only for the OS to
//! schedule a thread that is otherwise idle. It is a worker like the others in every other way:
//! any request on a connection it serves is answered the same, streams included.
//!
//! The hub's background work runs here too, the engine's pub/sub reader included: Redis sends
//! an event's pub/sub message while it runs the publishing function, just before the reply, so
//! a publish made here wakes this thread once for both, and the workers are woken from here.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};

use super::Front;
use super::conn::serve_handed;
use super::handoff::{Handed, Handoff};

/// The running publish thread.
pub struct PublishThread {
    handoff: Handoff,
    runtime: tokio::runtime::Handle,
    front: Option<oneshot::Sender<Front>>,
    stop: oneshot::Sender<()>,
    done: oneshot::Receiver<()>,
}

impl PublishThread {
    /// Starts the thread and its runtime; it serves once given its [`Front`] ([`Self::serve`]),
    /// until the instance shuts down, then lets its connections finish for at most `drain`.
    /// Tasks spawned on [`Self::runtime`] run until [`Self::join`].
    pub fn spawn(drain: Duration) -> std::io::Result<Self> {
        let (handoff, handed) = Handoff::channel();
        let (front_tx, front_rx) = oneshot::channel::<Front>();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (done_tx, done) = oneshot::channel();
        let (runtime_tx, runtime_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("gateway-publish".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = runtime_tx.send(Err(e));
                        return;
                    }
                };
                let _ = runtime_tx.send(Ok(rt.handle().clone()));
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, async move {
                    if let Ok(front) = front_rx.await {
                        run(front, handed, drain).await;
                    }
                    // What else runs here (the engine's pub/sub reader) lasts until the end.
                    let _ = stop_rx.await;
                });
                drop(local);
                drop(rt);
                let _ = done_tx.send(());
            })?;
        let runtime = runtime_rx
            .recv()
            .map_err(|_| std::io::Error::other("the publish thread ended at start"))??;
        Ok(Self {
            handoff,
            runtime,
            front: Some(front_tx),
            stop: stop_tx,
            done,
        })
    }

    /// The thread's runtime: the engine's pub/sub reader runs here, so that the reply to a
    /// publish made on this thread and its pub/sub message are read in one wake-up.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    /// Starts serving handed-over connections with `front` (its own `handoff` is ignored:
    /// nothing is handed on from here).
    pub fn serve(&mut self, mut front: Front) {
        front.handoff = None;
        if let Some(tx) = self.front.take() {
            let _ = tx.send(front);
        }
    }

    /// The workers' way to hand a connection over.
    pub fn handoff(&self) -> Handoff {
        self.handoff.clone()
    }

    /// Stops the thread (after the instance's shutdown and its drain) and waits until it has.
    pub async fn join(self) {
        drop(self.handoff);
        drop(self.front);
        let _ = self.stop.send(());
        let _ = self.done.await;
    }
}

async fn run(front: Front, mut handed: mpsc::Receiver<Handed>, drain: Duration) {
    crate::hub::worker::Worker::install(front.state.settings.server.delivery_pace);
    let front = Rc::new(front);
    let mut shutdown = front.state.hub.shutdown_signal();
    let live = Rc::new(Live::default());
    loop {
        tokio::select! {
            next = handed.recv() => match next {
                Some(h) => serve(&front, &live, h),
                None => break,
            },
            _ = shutdown.wait_for(|down| *down) => break,
        }
    }
    // Connections already queued are served (and drained) like the rest.
    handed.close();
    while let Some(h) = handed.recv().await {
        serve(&front, &live, h);
    }
    if tokio::time::timeout(drain, live.none()).await.is_err() {
        tracing::debug!(
            connections = live.count.get(),
            "publish thread: drain timed out"
        );
    }
}

fn serve(front: &Rc<Front>, live: &Rc<Live>, handed: Handed) {
    let conn = serve_handed(front.clone(), handed);
    let guard = Live::enter(live);
    tokio::task::spawn_local(async move {
        conn.await;
        drop(guard);
    });
}

/// Connections being served on this thread, so the drain knows when they are all done.
#[derive(Default)]
struct Live {
    count: Cell<usize>,
    idle: Notify,
}

impl Live {
    fn enter(this: &Rc<Self>) -> LiveGuard {
        this.count.set(this.count.get() + 1);
        LiveGuard(this.clone())
    }

    /// Resolves once no connection is left.
    async fn none(&self) {
        while self.count.get() > 0 {
            self.idle.notified().await;
        }
    }
}

struct LiveGuard(Rc<Live>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        let left = self.0.count.get() - 1;
        self.0.count.set(left);
        if left == 0 {
            self.0.idle.notify_waiters();
        }
    }
}

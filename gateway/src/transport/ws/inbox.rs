//! Reports from a connection's side tasks (resumes, publishes) back to its session.

use std::collections::VecDeque;

use shared::ErrorCode;
use shared::ws::ServerMessage;
use tokio::sync::Notify;

use crate::hub::Membership;

/// What side tasks report to the session.
pub(super) enum Report {
    Joined {
        slot: u32,
        membership: Membership,
    },
    SubscribeFailed {
        slot: u32,
        code: ErrorCode,
        message: String,
    },
    Send(Box<ServerMessage>),
}

/// Reports from side tasks to the session. Allocates nothing until the first report (a tokio
/// mpsc would preallocate room for 32 messages on every connection); bounded in practice, as
/// there is at most one report per command and commands are rate-limited.
#[derive(Default)]
pub(super) struct Inbox {
    items: parking_lot::Mutex<VecDeque<Report>>,
    ready: Notify,
}

impl Inbox {
    pub(super) fn send(&self, report: Report) {
        self.items.lock().push_back(report);
        // Stores a permit when the session is not waiting, so no report is missed.
        self.ready.notify_one();
    }

    pub(super) async fn recv(&self) -> Report {
        loop {
            if let Some(report) = self.pop() {
                return report;
            }
            self.ready.notified().await;
        }
    }

    fn pop(&self) -> Option<Report> {
        let mut items = self.items.lock();
        let report = items.pop_front();
        if report.is_some() && items.is_empty() {
            // Reports are rare; an idle connection should not keep room for four.
            *items = VecDeque::new();
        }
        report
    }
}

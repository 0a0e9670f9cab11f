//! Unit tests of the per-connection queue.
use super::*;
use shared::Epoch;

fn gap(n: u64) -> Item {
    Item::Gap {
        slot: 0,
        first_available: Position::new(Epoch(1), n),
    }
}

fn drain(q: &Queue) -> (Vec<Item>, Poll<Drained>) {
    let mut out = Vec::new();
    let waker = futures_util::task::noop_waker();
    let poll = q.poll_drain(&mut Context::from_waker(&waker), &mut out);
    (out, poll)
}

#[test]
fn overflow_closes_as_slow_consumer_and_frees_memory() {
    let q = Queue::new(2);
    assert_eq!(q.push(gap(1)), Ok(()));
    assert_eq!(q.push(gap(2)), Ok(()));
    assert_eq!(q.push(gap(3)), Err(PushError::Overflowed));
    assert_eq!(q.push(gap(4)), Err(PushError::Closed));
    let (items, poll) = drain(&q);
    assert!(items.is_empty());
    assert_eq!(
        poll,
        Poll::Ready(Drained::Closed(CloseReason::SlowConsumer))
    );
}

#[test]
fn close_keeps_queued_items_readable() {
    let q = Queue::new(4);
    q.push(gap(1)).unwrap();
    q.close(CloseReason::Shutdown);
    q.close(CloseReason::Unavailable);
    let (items, poll) = drain(&q);
    assert_eq!((items.len(), poll), (1, Poll::Ready(Drained::Items)));
    let (_, poll) = drain(&q);
    assert_eq!(poll, Poll::Ready(Drained::Closed(CloseReason::Shutdown)));
}

#[tokio::test]
async fn push_wait_waits_for_room_instead_of_overflowing() {
    let q = Queue::new(1);
    q.push(gap(1)).unwrap();
    let q2 = q.clone();
    let waiter = tokio::spawn(async move { q2.push_wait(gap(2)).await });
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished());
    let (items, _) = drain(&q);
    assert_eq!(items.len(), 1);
    assert_eq!(waiter.await.unwrap(), Ok(()));
    assert_eq!(q.room(), 0);
    q.close(CloseReason::Shutdown);
    assert_eq!(q.push_wait(gap(3)).await, Err(PushError::Closed));
}

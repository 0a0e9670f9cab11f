//! Direct writes on real loopback sockets: order, tails, disarming, slow consumers.
use std::sync::Arc;

use bytes::Bytes;
use shared::{ChannelName, Epoch, Event, PayloadKind, Position};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::hub::message::Delivery;
use crate::hub::queue::{Arm, CloseReason, Drained, Item, Pushed, Queue};

fn event(offset: u64, size: usize) -> Arc<Delivery> {
    let data = format!("{offset}:{}", "x".repeat(size));
    Arc::new(Delivery(Arc::new(Message::new(Event {
        channel: ChannelName::new("c").unwrap(),
        position: Position::new(Epoch(1), offset),
        name: None,
        kind: PayloadKind::Text,
        data: Bytes::from(data),
        published_ms: 0,
    }))))
}

/// Offers a round of `events` to an armed queue.
fn offer(queue: &Queue, events: &[Arc<Delivery>]) -> Option<Pushed> {
    queue
        .write_round(&mut Round::new(events), 0)
        .map(|r| r.unwrap())
}

async fn write_all(socket: &TcpStream, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        socket.writable().await.unwrap();
        match socket.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("{e}"),
        }
    }
}

/// A connected pair on loopback: (the server's socket, the client's).
async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap());
    let (server, client) = tokio::join!(listener.accept(), client);
    (server.unwrap().0, client.unwrap())
}

#[tokio::test]
async fn a_socket_that_fills_up_gets_every_byte_once_in_order() {
    let (server, mut client) = pair().await;
    // A small send buffer, so the socket stops taking whole frames early.
    socket2::SockRef::from(&server)
        .set_send_buffer_size(4096)
        .unwrap();
    let socket = Arc::new(server);
    let queue = Queue::new(1024);
    queue.set_direct(Direct::new(socket.clone(), Form::Sse));
    assert_eq!(queue.arm(None), Arm::Armed);
    let mut expected = Vec::new();

    // Small events go out whole, a round at a time, in one write each.
    let small: Vec<_> = (1..=3).map(|o| event(o, 100)).collect();
    small
        .iter()
        .for_each(|e| expected.extend_from_slice(e.sse_frame()));
    let pushed = offer(&queue, &small).unwrap();
    assert_eq!((pushed.written, pushed.waker.is_some()), (3, false));
    assert_eq!(queue.room(), 1024, "written, not queued");

    // A round of 256 KiB events the socket cannot take whole: it takes the start of the
    // round's bytes, and the rest is queued as one tail.
    let large: Vec<_> = (4..=8).map(|o| event(o, 256 * 1024)).collect();
    large
        .iter()
        .for_each(|e| expected.extend_from_slice(e.sse_frame()));
    let pushed = offer(&queue, &large).unwrap();
    assert_eq!(pushed.written, 5);
    assert_eq!(queue.arm(None), Arm::Busy, "queued items come first");

    // The connection's task: drains and writes what was queued, while the client reads.
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match client.read(&mut buf).await.unwrap() {
                0 => return got,
                n => got.extend_from_slice(&buf[..n]),
            }
        }
    });
    let mut batch = Vec::new();
    assert_eq!(queue.drain(&mut batch).await, Drained::Items);
    assert!(matches!(batch[0], Item::Tail(_)), "the rest of the round");
    assert_eq!(batch.len(), 1);
    // Later rounds queue behind it, each event on its own.
    let later = [event(9, 100), event(10, 100)];
    later
        .iter()
        .for_each(|e| expected.extend_from_slice(e.sse_frame()));
    assert!(offer(&queue, &later).is_none());
    queue
        .push_batch(later.iter().map(|d| Item::Event {
            slot: 0,
            message: d.clone(),
            live: true,
        }))
        .unwrap();
    queue.drain(&mut batch).await;
    assert_eq!(batch.len(), 3);
    for item in batch {
        let bytes = match item {
            Item::Tail(rest) => rest,
            Item::Event { message, .. } => message.sse_frame().clone(),
            _ => unreachable!(),
        };
        write_all(&socket, &bytes).await;
    }
    // Armed again: fan-out writes the next round itself, after what the task wrote (or
    // queues it while the socket is still full, for the task to write).
    assert_eq!(queue.arm(None), Arm::Armed);
    let last = [event(11, 100)];
    expected.extend_from_slice(last[0].sse_frame());
    if offer(&queue, &last).unwrap().written == 0 {
        let mut batch = Vec::new();
        queue.drain(&mut batch).await;
        write_all(&socket, last[0].sse_frame()).await;
    }
    queue.close(CloseReason::Gone);
    assert_eq!(
        Arc::strong_count(&socket),
        1,
        "the closed queue let go of the socket"
    );
    drop(socket);
    let got = reader.await.unwrap();
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "bytes differ");
}

#[tokio::test]
async fn disarming_tells_when_fan_out_last_wrote() {
    let (server, _client) = pair().await;
    let queue = Queue::new(8);
    queue.set_direct(Direct::new(Arc::new(server), Form::Sse));
    assert_eq!(queue.arm(None), Arm::Armed);
    assert_eq!(queue.disarm(), None, "nothing written while armed");
    assert_eq!(queue.arm(None), Arm::Armed);
    let events = [event(1, 10)];
    let mut round = Round::new(&events);
    let at = round.at();
    let pushed = queue.write_round(&mut round, 0).unwrap().unwrap();
    assert_eq!(pushed.written, 1);
    let wrote = queue.disarm().expect("written");
    assert_eq!(wrote.at, at, "the round's time, for the heartbeat");
    assert_eq!(
        wrote.last,
        Some(Link {
            slot: 0,
            position: Position::new(Epoch(1), 1)
        }),
        "the stream's output ends there"
    );
    assert_eq!(queue.disarm(), None, "told once");
}

/// Inflates a raw deflate stream (no header: the pieces alone).
fn inflate(stream: &[u8]) -> Vec<u8> {
    let mut d = flate2::Decompress::new(false);
    let mut out = Vec::with_capacity(1 << 16);
    d.decompress_vec(stream, &mut out, flate2::FlushDecompress::Sync)
        .unwrap();
    assert_eq!(d.total_in() as usize, stream.len());
    out
}

#[tokio::test]
async fn compressed_rounds_refer_back_to_what_the_connection_carried_last() {
    let events: Vec<_> = (1..=4).map(|i| event(i, 300)).collect();
    for pair in events.windows(2) {
        pair[1].follow(pair[0].position(), Arc::downgrade(&pair[0].0));
    }
    let form = Form::SseDeflated(6);
    let plain = |from: usize| -> Vec<u8> {
        events[from..]
            .iter()
            .flat_map(|d| d.sse_frame().to_vec())
            .collect()
    };
    // A connection that carried event 1 last: event 2's piece refers back into it.
    let (server, mut client) = pair().await;
    let queue = Queue::new(8);
    queue.set_direct(Direct::new(Arc::new(server), form));
    let first = form.frame(&events[0]).clone();
    assert_eq!(queue.arm(Some(link(0, &events[0]))), Arm::Armed);
    let mut round = Round::new(&events[1..]);
    let pushed = queue.write_round(&mut round, 0).unwrap().unwrap();
    assert_eq!(pushed.written, 3);
    let wrote = queue.disarm().unwrap();
    assert_eq!(wrote.last, Some(link(0, &events[3])));
    let chained = round.joined(form, Some(events[0].position())).0.clone();
    let mut got = vec![0; chained.len()];
    client.read_exact(&mut got).await.unwrap();
    assert_eq!(got, chained);
    assert_eq!(inflate(&[first.to_vec(), got].concat()), plain(0));
    // One that carried anything else gets a first piece that stands alone.
    let alone = round.joined(form, None).0.clone();
    assert_eq!(inflate(&alone), plain(1));
    assert_eq!(round.joined(form, Some(events[2].position())).0, &alone);
    let separate: usize = events[1..].iter().map(|d| form.frame(d).len()).sum();
    assert!(chained.len() < alone.len() && alone.len() < separate);
}

fn link(slot: u32, d: &Delivery) -> Link {
    Link {
        slot,
        position: d.position(),
    }
}

/// The messages of server frames (`hub::ws_frame`), inflated as a client that keeps its window
/// between messages would: compressed ones (RSV1) through one inflater, plain ones as they are.
fn ws_messages(mut bytes: &[u8], window: &mut flate2::Decompress) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (head, len) = match bytes[1] & 0x7f {
            126 => (4, usize::from(u16::from_be_bytes([bytes[2], bytes[3]]))),
            127 => (
                10,
                u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
            ),
            n => (2, usize::from(n)),
        };
        let payload = &bytes[head..head + len];
        if ws_frame::is_compressed(bytes) {
            let mut text = Vec::with_capacity(1 << 16);
            let wire = [payload, &crate::compression::deflate::SYNC_TAIL[..]].concat();
            window
                .decompress_vec(&wire, &mut text, flate2::FlushDecompress::Sync)
                .unwrap();
            out.push(text);
        } else {
            out.push(payload.to_vec());
        }
        bytes = &bytes[head + len..];
    }
    out
}

#[tokio::test]
async fn websocket_rounds_refer_back_only_to_what_the_client_inflated() {
    // Event 3 is longer than the client's window allows compressed: it goes plain, leaves the
    // client's window as it was, and event 4 cannot refer back to it.
    let events: Vec<_> = [(1, 300), (2, 300), (3, 2000), (4, 300)]
        .into_iter()
        .map(|(o, n)| event(o, n))
        .collect();
    for pair in events.windows(2) {
        pair[1].follow(pair[0].position(), Arc::downgrade(&pair[0].0));
    }
    let form = Form::WsDeflated {
        level: 6,
        max: 1000,
        chain: true,
    };
    let texts: Vec<Vec<u8>> = events
        .iter()
        .map(|d| d.ws_text().as_bytes().to_vec())
        .collect();
    let (server, mut client) = pair().await;
    let queue = Queue::new(8);
    queue.set_direct(Direct::new(Arc::new(server), form));
    let first = form.frame(&events[0]).clone();
    assert!(ws_frame::is_compressed(&first));
    // The client inflated event 1 last, on the channel of slot 2.
    assert_eq!(queue.arm(Some(link(2, &events[0]))), Arm::Armed);
    let mut round = Round::new(&events[1..]);
    let pushed = queue.write_round(&mut round, 2).unwrap().unwrap();
    assert_eq!(pushed.written, 3);
    assert_eq!(queue.disarm().unwrap().last, Some(link(2, &events[3])));
    let (chained, seen) = round.joined(form, Some(events[0].position()));
    let chained = chained.clone();
    assert_eq!(seen, Some(events[3].position()));
    let mut got = vec![0; chained.len()];
    client.read_exact(&mut got).await.unwrap();
    assert_eq!(got, chained);
    let mut window = flate2::Decompress::new(false);
    assert_eq!(
        ws_messages(&[first.to_vec(), got].concat(), &mut window),
        texts
    );
    // A link on another channel of the connection is no link here: event 2 stands alone.
    assert_eq!(Link::on(Some(link(1, &events[0])), 2), None);
    let alone = round.joined(form, None).0.clone();
    assert!(
        chained.len() < alone.len(),
        "{} !< {}",
        chained.len(),
        alone.len()
    );
    let mut fresh = flate2::Decompress::new(false);
    assert_eq!(ws_messages(&alone, &mut fresh), texts[1..]);
    // A round of plain messages only leaves the link as it was.
    assert_eq!(queue.arm(Some(link(2, &events[1]))), Arm::Armed);
    let pushed = queue
        .write_round(&mut Round::new(&events[2..3]), 2)
        .unwrap()
        .unwrap();
    assert_eq!(pushed.written, 1);
    assert_eq!(queue.disarm().unwrap().last, Some(link(2, &events[1])));
}

#[tokio::test]
async fn any_other_push_disarms_and_a_closed_queue_writes_nothing() {
    let (server, _client) = pair().await;
    let queue = Queue::new(8);
    queue.set_direct(Direct::new(Arc::new(server), Form::Sse));
    assert_eq!(queue.arm(None), Arm::Armed);
    queue
        .push(Item::Gap {
            slot: 0,
            first_available: Position::new(Epoch(1), 5),
        })
        .unwrap();
    // Disarmed: the next event is queued behind the gap, not written ahead of it.
    assert!(offer(&queue, &[event(6, 10)]).is_none());
    assert_eq!(queue.arm(None), Arm::Busy);
    queue.close(CloseReason::Gone);
    assert_eq!(queue.arm(None), Arm::Off);
    assert!(offer(&queue, &[event(7, 10)]).is_none());
}

#[tokio::test]
async fn a_slow_consumer_still_gets_the_rest_of_a_half_written_frame() {
    let (server, _client) = pair().await;
    socket2::SockRef::from(&server)
        .set_send_buffer_size(4096)
        .unwrap();
    let queue = Queue::new(2);
    queue.set_direct(Direct::new(Arc::new(server), Form::Sse));
    assert_eq!(queue.arm(None), Arm::Armed);
    let pushed = offer(&queue, &[event(1, 256 * 1024)]).unwrap();
    assert_eq!(pushed.written, 1, "written in part");
    // Two more events fill the queue; the third overflows it.
    let more = |o| {
        queue.push_batch(std::iter::once(Item::Event {
            slot: 0,
            message: event(o, 10),
            live: true,
        }))
    };
    more(2).unwrap();
    assert!(more(3).is_err());
    // What is left to write: the tail, then the close (no half event before it).
    let mut batch = Vec::new();
    assert_eq!(queue.drain(&mut batch).await, Drained::Items);
    assert!(matches!(batch.as_slice(), [Item::Tail(_)]));
    assert_eq!(
        queue.drain(&mut batch).await,
        Drained::Closed(CloseReason::SlowConsumer)
    );
}

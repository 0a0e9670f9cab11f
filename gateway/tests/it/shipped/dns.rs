//! A small DNS server on a free loopback UDP port: answers A queries for one name with a list of
//! IPv4 addresses that the test can change, NXDOMAIN for any other name. The shipped proxy
//! configurations resolve the gateways' name at run time through it, as they would through
//! Docker's or the cluster's DNS.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A running DNS server; stops when dropped.
pub struct Dns {
    pub addr: SocketAddr,
    addresses: Arc<Mutex<Vec<Ipv4Addr>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Dns {
    /// Serves `name` (case-insensitive, without the trailing dot) as `addresses`.
    pub fn start(name: &str, addresses: &[Ipv4Addr]) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind DNS socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("DNS socket timeout");
        let addr = socket.local_addr().expect("DNS address");
        let shared = Arc::new(Mutex::new(addresses.to_vec()));
        let stop = Arc::new(AtomicBool::new(false));
        let (name, answers, stopping) = (name.to_ascii_lowercase(), shared.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !stopping.load(Ordering::Relaxed) {
                let Ok((len, peer)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let current = answers.lock().map(|a| a.clone()).unwrap_or_default();
                if let Some(reply) = answer(&buf[..len], &name, &current) {
                    let _ = socket.send_to(&reply, peer);
                }
            }
        });
        Self {
            addr,
            addresses: shared,
            stop,
            thread: Some(thread),
        }
    }

    /// Replaces the addresses the name resolves to (instances come and go).
    pub fn set(&self, addresses: &[Ipv4Addr]) {
        if let Ok(mut current) = self.addresses.lock() {
            *current = addresses.to_vec();
        }
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The reply to one query: the header and question echoed, then one A record (TTL 1 s) per
/// address when the question is an A query for `name`; no records for other types of the name;
/// NXDOMAIN for other names. Anything that is not a one-question query gets no reply.
fn answer(query: &[u8], name: &str, addresses: &[Ipv4Addr]) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 || query[4..6] != [0, 1] {
        return None;
    }
    // The question: length-prefixed labels up to a zero byte, then type and class.
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*query.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        labels.push(String::from_utf8_lossy(query.get(at..at + len)?).to_ascii_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]);
    let question = query.get(12..at + 4)?;
    let known = labels.join(".") == name;
    let records: &[Ipv4Addr] = if known && qtype == 1 { addresses } else { &[] };

    let mut reply = Vec::with_capacity(512);
    reply.extend_from_slice(&query[0..2]);
    // QR=1, opcode 0, RD copied; RA=1; rcode 0 (NOERROR) or 3 (NXDOMAIN).
    reply.push(0x80 | (query[2] & 0x01));
    reply.push(if known { 0x80 } else { 0x83 });
    reply.extend_from_slice(&[0, 1]);
    reply.extend_from_slice(&u16::try_from(records.len()).ok()?.to_be_bytes());
    reply.extend_from_slice(&[0, 0, 0, 0]);
    reply.extend_from_slice(question);
    for ip in records {
        // Name: a pointer to the question's name at offset 12; type A, class IN, TTL 1 s.
        reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4]);
        reply.extend_from_slice(&ip.octets());
    }
    Some(reply)
}

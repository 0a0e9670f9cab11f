//! A TCP proxy in front of Redis that can make the gateway's pub/sub connection go silent while
//! its socket stays open — the failure a PING-based health check misses after a failover.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct Shared {
    /// (is a subscriber connection, frozen) per proxied connection.
    connections: Mutex<Vec<(Arc<AtomicBool>, Arc<AtomicBool>)>>,
    /// Freeze subscriber connections as soon as they subscribe.
    block_subscribers: AtomicBool,
}

/// A loopback proxy to a Redis port.
pub struct FreezingProxy {
    pub port: u16,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl FreezingProxy {
    /// Starts proxying a free port to `127.0.0.1:<upstream>`.
    pub async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let shared = Arc::new(Shared::default());
        let accept_shared = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue;
                };
                let subscriber = Arc::new(AtomicBool::new(false));
                let frozen = Arc::new(AtomicBool::new(false));
                accept_shared
                    .connections
                    .lock()
                    .push((subscriber.clone(), frozen.clone()));
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                let shared = accept_shared.clone();
                tokio::spawn(pump(
                    client_read,
                    server_write,
                    Some((subscriber, shared)),
                    frozen.clone(),
                ));
                tokio::spawn(pump(server_read, client_write, None, frozen));
            }
        });
        Self { port, shared, task }
    }

    /// `redis://127.0.0.1:<proxy port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Silences every connection that has subscribed; their sockets stay open.
    pub fn freeze_subscribers(&self) {
        for (subscriber, frozen) in self.shared.connections.lock().iter() {
            if subscriber.load(Ordering::SeqCst) {
                frozen.store(true, Ordering::SeqCst);
            }
        }
    }

    /// While on, connections are silenced the moment they subscribe.
    pub fn block_subscribers(&self, on: bool) {
        self.shared.block_subscribers.store(on, Ordering::SeqCst);
    }
}

impl Drop for FreezingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies one direction; a frozen connection's bytes are swallowed (the peer never hears back,
/// the socket stays open).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    watch_for_subscribe: Option<(Arc<AtomicBool>, Arc<Shared>)>,
    frozen: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if let Some((subscriber, shared)) = &watch_for_subscribe
            && subscribes(&buf[..n])
        {
            subscriber.store(true, Ordering::SeqCst);
            if shared.block_subscribers.load(Ordering::SeqCst) {
                frozen.store(true, Ordering::SeqCst);
            }
        }
        if frozen.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Whether `bytes` hold a (S)SUBSCRIBE command: the command's name as a RESP bulk string, not
/// the word anywhere (the gateway's function library, loaded on a command connection,
/// mentions subscribers).
fn subscribes(bytes: &[u8]) -> bool {
    [&b"$9\r\nSUBSCRIBE\r\n"[..], b"$10\r\nSSUBSCRIBE\r\n"]
        .iter()
        .any(|name| {
            bytes
                .windows(name.len())
                .any(|w| w.eq_ignore_ascii_case(name))
        })
}

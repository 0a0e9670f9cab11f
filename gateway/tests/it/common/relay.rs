//! A TCP relay whose upstream can be switched: stands for a DNS name or virtual IP that an
//! operator moves to another Redis node (or away from every node), dropping the connections
//! that went to the old one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A loopback relay to `127.0.0.1:<upstream>`.
pub struct Relay {
    pub port: u16,
    upstream: Arc<AtomicU16>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Relay {
    /// Starts relaying a free port to `upstream`.
    pub async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let port = listener.local_addr().expect("relay addr").port();
        let target = Arc::new(AtomicU16::new(upstream));
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (accept_target, accept_links) = (target.clone(), links.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = accept_target.load(Ordering::SeqCst);
                let link = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                accept_links.lock().push(link);
            }
        });
        Self {
            port,
            upstream: target,
            links,
            accept,
        }
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Sends new connections to `upstream` and cuts every existing one.
    pub fn switch(&self, upstream: u16) {
        self.upstream.store(upstream, Ordering::SeqCst);
        for link in self.links.lock().drain(..) {
            link.abort();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        for link in self.links.lock().drain(..) {
            link.abort();
        }
    }
}

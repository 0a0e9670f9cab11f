//! One bounded HTTP(S) GET, for the JWKS: hyper's HTTP/1.1 client on a fresh connection
//! (a fetch every few minutes needs no pool), TLS through rustls with the ring provider and the
//! public web roots compiled in, like the Redis TLS. At most [`TIMEOUT`] in all and
//! [`MAX_BYTES`] of body; redirects are not followed (configure the final URL).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONNECTION, HOST, USER_AGENT};
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, pki_types::ServerName};

/// Longest a fetch may take, connecting and reading included.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Largest body read; bigger ones are refused.
pub const MAX_BYTES: usize = 256 * 1024;

/// A GET of one URL, ready to run.
pub struct HttpGet {
    uri: Uri,
    host: String,
    port: u16,
    tls: Option<TlsConnector>,
}

impl HttpGet {
    /// Parses `url` (`http://` or `https://`) and prepares the TLS client for `https://`.
    pub fn new(url: &str) -> Result<Self, String> {
        let uri: Uri = url.parse().map_err(|_| "is not a URL")?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("must start with https:// or http://".into()),
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or("names no host")?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            let mut roots = rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
            Some(TlsConnector::from(Arc::new(config)))
        } else {
            None
        };
        Ok(Self {
            uri,
            host,
            port,
            tls,
        })
    }

    /// The body of a 2xx answer.
    pub async fn run(&self) -> Result<Vec<u8>, String> {
        tokio::time::timeout(TIMEOUT, self.attempt())
            .await
            .map_err(|_| format!("no answer within {} s", TIMEOUT.as_secs()))?
    }

    async fn attempt(&self) -> Result<Vec<u8>, String> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        match &self.tls {
            None => self.exchange(TokioIo::new(tcp)).await,
            Some(tls) => {
                let name = ServerName::try_from(self.host.clone())
                    .map_err(|_| "the host is not a valid TLS server name")?;
                let stream = tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS handshake failed: {e}"))?;
                self.exchange(TokioIo::new(stream)).await
            }
        }
    }

    async fn exchange<I>(&self, io: I) -> Result<Vec<u8>, String>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| format!("HTTP handshake failed: {e}"))?;
        let conn = tokio::spawn(conn);
        let result = async {
            let path = self.uri.path_and_query().map_or("/", |p| p.as_str());
            let authority = self.uri.authority().map_or("", |a| a.as_str());
            let req = Request::get(path)
                .header(HOST, authority)
                .header(ACCEPT, "application/jwk-set+json, application/json")
                .header(USER_AGENT, "push-gateway")
                .header(CONNECTION, "close")
                .body(Empty::<Bytes>::new())
                .map_err(|_| "cannot build the request")?;
            let res = sender
                .send_request(req)
                .await
                .map_err(|e| format!("GET failed: {e}"))?;
            if !res.status().is_success() {
                return Err(format!("GET answered {}", res.status()));
            }
            let body = Limited::new(res.into_body(), MAX_BYTES)
                .collect()
                .await
                .map_err(|_| format!("the body failed or is over {MAX_BYTES} bytes"))?;
            Ok(body.to_bytes().to_vec())
        }
        .await;
        conn.abort();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let get = HttpGet::new("https://idp.example/keys?v=2").unwrap();
        assert_eq!((get.host.as_str(), get.port), ("idp.example", 443));
        assert!(get.tls.is_some());
        let get = HttpGet::new("http://[::1]:8081/jwks.json").unwrap();
        assert_eq!((get.host.as_str(), get.port), ("::1", 8081));
        assert!(get.tls.is_none());
        for bad in ["ftp://x/", "not a url", "http:///path"] {
            assert!(HttpGet::new(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn bodies_are_bounded() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for size in [10, MAX_BYTES + 1] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n");
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&vec![b'x'; size]).await;
            }
        });
        let get = HttpGet::new(&format!("http://{addr}/jwks.json")).unwrap();
        assert_eq!(get.run().await.unwrap().len(), 10);
        assert!(get.run().await.unwrap_err().contains("over"));
    }
}

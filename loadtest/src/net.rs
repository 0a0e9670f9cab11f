//! Byte streams to the target: plain TCP or TLS (rustls, ring provider), and the TLS client
//! configurations (`--ca`, `--insecure`; ALPN `http/1.1` or `h2`). Also `gen-cert`, which writes
//! a self-signed certificate for loopback servers.
//!
//! A TLS stream is boxed inside [`Stream`], so a plain connection pays nothing for TLS; an idle
//! TLS connection costs rustls' connection state and its receive buffer (a few KiB).

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::{Context as _, ensure};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::target::Url;

/// A connection to the target: TCP, or TLS over TCP.
pub enum Stream {
    /// Cleartext.
    Plain(TcpStream),
    /// TLS (boxed: rustls' state is large, and plain connections should not pay for it).
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// The ALPN protocol agreed in the TLS handshake (none for plain TCP).
    #[cfg(test)]
    pub fn alpn(&self) -> Option<&[u8]> {
        match self {
            Self::Plain(_) => None,
            Self::Tls(s) => s.get_ref().1.alpn_protocol(),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Which application protocol a TLS connection offers (ALPN).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpn {
    /// `http/1.1` only (SSE over HTTP/1.1, WebSocket, publishing).
    Http1,
    /// `h2` only.
    H2,
}

impl Alpn {
    fn id(self) -> &'static [u8] {
        match self {
            Self::Http1 => b"http/1.1",
            Self::H2 => b"h2",
        }
    }
}

/// TLS client configurations for `https://` targets, one per ALPN offer.
#[derive(Clone)]
pub struct TlsClient {
    http1: TlsConnector,
    h2: TlsConnector,
    /// Whether certificates are not verified (`--insecure`).
    pub insecure: bool,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("insecure", &self.insecure)
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsClient {
    /// Trusts the certificates in `ca` (PEM; a CA or the server's self-signed certificate), or,
    /// with `insecure`, any certificate.
    pub fn new(ca: Option<&Path>, insecure: bool) -> anyhow::Result<Self> {
        ensure!(
            ca.is_some() || insecure,
            "https:// targets need --ca <PEM> (the server's certificate or its CA) or --insecure"
        );
        let config = |alpn: Alpn| -> anyhow::Result<ClientConfig> {
            let builder = ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .context("TLS protocol versions")?;
            let mut config = if insecure {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(AnyCert(provider())))
                    .with_no_client_auth()
            } else {
                let mut roots = RootCertStore::empty();
                if let Some(path) = ca {
                    for cert in CertificateDer::pem_file_iter(path)
                        .with_context(|| format!("reading {}", path.display()))?
                    {
                        let cert = cert.with_context(|| format!("reading {}", path.display()))?;
                        roots
                            .add(cert)
                            .with_context(|| format!("{}: unusable certificate", path.display()))?;
                    }
                    ensure!(!roots.is_empty(), "{}: no certificate", path.display());
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            };
            config.alpn_protocols = vec![alpn.id().to_vec()];
            // Every connection does a full handshake, as distinct clients would (and no client
            // session cache grows with the connection count).
            config.resumption = rustls::client::Resumption::disabled();
            Ok(config)
        };
        Ok(Self {
            http1: TlsConnector::from(Arc::new(config(Alpn::Http1)?)),
            h2: TlsConnector::from(Arc::new(config(Alpn::H2)?)),
            insecure,
        })
    }

    /// Runs the TLS handshake on `tcp`, offering `alpn`; fails unless the server agreed to it.
    pub async fn connect(&self, tcp: TcpStream, url: &Url, alpn: Alpn) -> io::Result<Stream> {
        let connector = match alpn {
            Alpn::Http1 => &self.http1,
            Alpn::H2 => &self.h2,
        };
        let tls = connector.connect(server_name(url), tcp).await?;
        let agreed = tls.get_ref().1.alpn_protocol();
        // A server without ALPN speaks HTTP/1.1; anything else is a refusal of our protocol.
        let ok = match alpn {
            Alpn::Http1 => agreed.is_none_or(|p| p == alpn.id()),
            Alpn::H2 => agreed == Some(alpn.id()),
        };
        if !ok {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "ALPN: offered {}, server agreed to {}",
                    String::from_utf8_lossy(alpn.id()),
                    agreed.map_or("nothing".into(), String::from_utf8_lossy)
                ),
            ));
        }
        Ok(Stream::Tls(Box::new(tls)))
    }
}

/// The name the server's certificate must have: `localhost`, or the IP address.
pub fn server_name(url: &Url) -> ServerName<'static> {
    // Hosts are IP addresses or `localhost` (see `target`); `[::1]:443` splits at `[`.
    let host = url.host.split(':').next().unwrap_or_default();
    if host.eq_ignore_ascii_case("localhost")
        && let Ok(name) = ServerName::try_from("localhost")
    {
        return name;
    }
    ServerName::IpAddress(url.addr.ip().into())
}

/// `--insecure`: accepts any certificate, but still checks the handshake signatures (so the
/// connection is a real TLS connection with the key the server presented).
#[derive(Debug)]
struct AnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `gen-cert`: a self-signed certificate (ECDSA P-256) for `localhost`, `127.0.0.1` and `::1`,
/// written as `cert.pem` and `key.pem` into `dir`; clients trust it with `--ca DIR/cert.pem`.
pub fn gen_cert(dir: &Path) -> anyhow::Result<()> {
    let names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let certified = rcgen::generate_simple_self_signed(names).context("generating")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, certified.cert.pem())
        .with_context(|| format!("writing {}", cert.display()))?;
    write_private(&key, certified.signing_key.serialize_pem().as_bytes())
        .with_context(|| format!("writing {}", key.display()))?;
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::parse_url;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn server_names() {
        let name = |u: &str| server_name(&parse_url(u).unwrap());
        assert_eq!(
            name("https://localhost:8443"),
            ServerName::try_from("localhost").unwrap()
        );
        assert_eq!(
            name("https://127.0.0.1:8443/x"),
            ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into())
        );
        assert_eq!(
            name("https://[::1]:8443"),
            ServerName::IpAddress(std::net::Ipv6Addr::LOCALHOST.into())
        );
    }

    #[test]
    fn https_needs_a_trust_decision() {
        assert!(TlsClient::new(None, false).is_err());
        assert!(TlsClient::new(None, true).is_ok());
    }

    /// A generated certificate is served by a rustls server and trusted with `--ca`; ALPN is
    /// checked; `--insecure` connects too.
    #[tokio::test]
    async fn generated_certificate_round_trip() {
        let dir = std::env::temp_dir().join(format!("lt-cert-{}", std::process::id()));
        gen_cert(&dir).unwrap();
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(dir.join("cert.pem"))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(dir.join("key.pem")).unwrap();
        let mut server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let mut s = acceptor.accept(tcp).await.unwrap();
                    let mut b = [0u8; 4];
                    s.read_exact(&mut b).await.unwrap();
                    s.write_all(&b).await.unwrap();
                    s.flush().await.unwrap();
                });
            }
        });
        let url = parse_url(&format!("https://{addr}")).unwrap();
        let by_ca = TlsClient::new(Some(&dir.join("cert.pem")), false).unwrap();
        let any = TlsClient::new(None, true).unwrap();
        for (client, alpn) in [(&by_ca, Alpn::Http1), (&by_ca, Alpn::H2), (&any, Alpn::H2)] {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let mut s = client.connect(tcp, &url, alpn).await.unwrap();
            assert_eq!(s.alpn(), Some(alpn.id()));
            s.write_all(b"ping").await.unwrap();
            let mut b = [0u8; 4];
            s.read_exact(&mut b).await.unwrap();
            assert_eq!(&b, b"ping");
        }
        // Another certificate is refused.
        let other = std::env::temp_dir().join(format!("lt-cert-other-{}", std::process::id()));
        gen_cert(&other).unwrap();
        let wrong = TlsClient::new(Some(&other.join("cert.pem")), false).unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        assert!(wrong.connect(tcp, &url, Alpn::Http1).await.is_err());
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&other);
    }
}

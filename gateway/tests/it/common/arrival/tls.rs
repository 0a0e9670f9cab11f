//! The test certificate, TLS clients, and a fresh connection for each arrival.

use super::*;

/// A self-signed certificate for `localhost` and `127.0.0.1`, written once per test process.
pub struct TestCert {
    /// PEM certificate file.
    pub cert_path: PathBuf,
    /// PEM private key file.
    pub key_path: PathBuf,
    /// The certificate, for clients to trust.
    pub der: CertificateDer<'static>,
}

/// The test process's certificate.
pub fn test_cert() -> &'static TestCert {
    static CERT: OnceLock<TestCert> = OnceLock::new();
    CERT.get_or_init(|| {
        let certified = rcgen::generate_simple_self_signed(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .expect("generate a test certificate");
        let dir = std::env::temp_dir().join(unique("gw-tls-"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let cert_path = dir.join("cert.pem");
        let key_path = dir.join("key.pem");
        std::fs::write(&cert_path, certified.cert.pem()).expect("write cert");
        std::fs::write(&key_path, certified.signing_key.serialize_pem()).expect("write key");
        TestCert {
            cert_path,
            key_path,
            der: certified.cert.der().clone(),
        }
    })
}

/// A TLS client trusting only the test certificate, offering exactly `alpn`.
pub fn tls_connector(alpn: &[u8]) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(test_cert().der.clone())
        .expect("trust the test certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    TlsConnector::from(Arc::new(config))
}

/// A byte stream to the gateway: TCP or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}
/// A boxed [`Io`].
pub type BoxIo = Box<dyn Io>;

/// Where a gateway listens, without owning its process.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// Its address.
    pub addr: std::net::SocketAddr,
    /// `http` or `https`.
    pub scheme: &'static str,
}

impl Target {
    /// Whether it serves TLS.
    pub fn is_tls(self) -> bool {
        self.scheme == "https"
    }
}

impl From<&Gateway> for Target {
    fn from(gw: &Gateway) -> Self {
        Self {
            addr: gw.addr,
            scheme: gw.scheme,
        }
    }
}

/// A fresh connection for `arrival`: TCP, or TLS with the ALPN protocol the arrival offers
/// (checked to be the one agreed).
pub async fn connect(arrival: Arrival, gw: impl Into<Target>) -> BoxIo {
    let gw: Target = gw.into();
    assert_eq!(
        gw.is_tls(),
        arrival.tls(),
        "{arrival} needs a gateway with{} TLS",
        if arrival.tls() { "" } else { "out" }
    );
    let tcp = tokio::time::timeout(WAIT, TcpStream::connect(gw.addr))
        .await
        .expect("TCP connect timed out")
        .expect("TCP connect");
    tcp.set_nodelay(true).expect("nodelay");
    if !arrival.tls() {
        return Box::new(tcp);
    }
    let alpn: &[u8] = if arrival.http2() { b"h2" } else { b"http/1.1" };
    let name = ServerName::try_from("localhost").expect("server name");
    let tls = tokio::time::timeout(WAIT, tls_connector(alpn).connect(name, tcp))
        .await
        .expect("TLS handshake timed out")
        .expect("TLS handshake");
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(alpn),
        "the gateway agreed to another ALPN protocol"
    );
    Box::new(tls)
}

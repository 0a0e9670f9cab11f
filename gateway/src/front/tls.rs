//! TLS termination with rustls, for running the gateway without a terminating proxy: HTTPS and
//! `wss://`, with ALPN offering `h2` (unless `server.http2` is off) and `http/1.1`. The
//! certificate and key are PEM files, re-read on SIGHUP; connections already open keep the
//! configuration they started with, new ones get the new one, none is dropped.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why a certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file is missing, unreadable or holds nothing usable.
    #[error("cannot read {path}: {detail}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// rustls refused the certificate or key (e.g. they do not match).
    #[error("the certificate or key is not usable: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The current TLS configuration, shared by every worker and swapped on reload.
#[derive(Clone)]
pub struct Tls {
    current: Arc<RwLock<Arc<ServerConfig>>>,
    cert: PathBuf,
    key: PathBuf,
    http2: bool,
}

impl Tls {
    /// Loads the certificate chain and key.
    pub fn load(cert: &Path, key: &Path, http2: bool) -> Result<Self, TlsError> {
        let config = server_config(cert, key, http2)?;
        Ok(Self {
            current: Arc::new(RwLock::new(Arc::new(config))),
            cert: cert.to_owned(),
            key: key.to_owned(),
            http2,
        })
    }

    /// Re-reads the files; on failure the previous configuration stays in force.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = server_config(&self.cert, &self.key, self.http2)?;
        *self.current.write() = Arc::new(config);
        Ok(())
    }

    /// The configuration in force now, for a new connection.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current.read().clone()
    }
}

fn pem_error(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::Pem {
        path: path.to_owned(),
        detail: e.to_string(),
    }
}

fn server_config(cert: &Path, key: &Path, http2: bool) -> Result<ServerConfig, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem_error(cert, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(cert, e))?;
    if chain.is_empty() {
        return Err(pem_error(cert, "no certificate in the file"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_error(key, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)?;
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(config)
}

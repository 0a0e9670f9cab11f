//! A throwaway certificate authority made with `openssl` at test time: a CA, a server
//! certificate for `127.0.0.1`/`localhost` and a client certificate, all signed by it, as PEM
//! files in a temp directory removed on drop. ECDSA P-256 keys, so making one is quick.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::unique;

/// The CA's files and the certificates it signed.
pub struct TestCa {
    dir: PathBuf,
}

impl TestCa {
    /// Makes a new CA with a server and a client certificate (panics if `openssl` fails).
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(unique("gw-ca-"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let ca = Self { dir };
        ca.openssl(&[
            "req",
            "-x509",
            "-new",
            "-nodes",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=gateway test CA",
        ]);
        ca.issue(
            "server",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        );
        ca.issue("client", "extendedKeyUsage=clientAuth\n");
        ca
    }

    /// The CA certificate (what a client trusts).
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// The server certificate and key.
    pub fn server(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("server.crt"), self.dir.join("server.key"))
    }

    /// The client certificate and key.
    pub fn client(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("client.crt"), self.dir.join("client.key"))
    }

    /// A key and a certificate `name.{key,crt}` signed by the CA, with `extensions`.
    fn issue(&self, name: &str, extensions: &str) {
        let ext = format!("{name}.ext");
        std::fs::write(
            self.dir.join(&ext),
            format!("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n{extensions}"),
        )
        .expect("write extensions");
        let (key, csr, crt) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
        );
        let subject = format!("/CN=gateway test {name}");
        self.openssl(&[
            "req",
            "-new",
            "-nodes",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &subject,
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "2",
            "-extfile",
            &ext,
        ]);
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&self.dir)
            .output()
            .expect("openssl must be installed (scripts/test.sh installs it)");
        assert!(
            out.status.success(),
            "openssl {} failed: {}",
            args.first().unwrap_or(&""),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The directory holding every file.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

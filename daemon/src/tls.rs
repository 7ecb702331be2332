//! TLS on `--listen`: the certificate chain and key of `tls_cert_file` and
//! `tls_key_file`, served to every client and peer connection and read
//! again on reload (SIGHUP) without dropping a connection: handshakes after
//! the reload get the new certificate, open connections keep theirs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use mpreg_client::tls::{provider, read_certs, read_key};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::BufReader;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::either::Either;

use crate::error::{Error, Result};

/// The byte stream of an accepted connection: plain, or TLS read through a
/// buffer (so the request line can be looked at before the WebSocket
/// handshake reads it).
pub type ServerStream = Either<TcpStream, BufReader<tokio_rustls::server::TlsStream<TcpStream>>>;

/// The server side of TLS on `--listen`.
pub struct ServerTls {
    acceptor: TlsAcceptor,
    current: Arc<CurrentCert>,
    cert_file: PathBuf,
    key_file: PathBuf,
}

/// The certificate handed to each new handshake.
#[derive(Debug)]
struct CurrentCert(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

fn invalid(what: String) -> Error {
    Error::InvalidSetting(format!("TLS: {what}"))
}

/// Reads a certificate chain and its key, checking that they belong
/// together.
fn certified_key(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey> {
    let chain = read_certs(cert_file).map_err(invalid)?;
    let key = read_key(key_file).map_err(invalid)?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| {
        invalid(format!(
            "{} and {}: {e}",
            cert_file.display(),
            key_file.display()
        ))
    })
}

impl ServerTls {
    /// Reads the certificate and key; errors name the file.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<ServerTls> {
        let current = Arc::new(CurrentCert(RwLock::new(Arc::new(certified_key(
            cert_file, key_file,
        )?))));
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        Ok(ServerTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            current,
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
        })
    }

    /// Reads the files again; new handshakes get the new certificate. A
    /// failure keeps the one in use.
    pub fn reload(&self) -> Result<()> {
        let fresh = certified_key(&self.cert_file, &self.key_file)?;
        *self.current.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(fresh);
        Ok(())
    }

    /// The TLS handshake of an accepted connection.
    pub async fn accept(&self, tcp: TcpStream) -> std::io::Result<ServerStream> {
        let stream = self.acceptor.accept(tcp).await?;
        Ok(Either::Right(BufReader::new(stream)))
    }
}

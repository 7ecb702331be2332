//! TLS on `--listen` (and on `--admin-listen` with `admin_tls`): the
//! node's certificate chain and key ([`NodeCert`], from `tls_cert_file` and
//! `tls_key_file`), served to every client, peer and admin connection,
//! presented to the nodes this node connects to, and read again on reload
//! (SIGHUP) without dropping a connection: handshakes after the reload get
//! the new certificate, open connections keep theirs. With
//! `tls_client_ca_file`, every connection must present a certificate that
//! CA signed (mutual TLS).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use mpreg_client::tls::{provider, read_certs, read_key};
use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::CertificateDer;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
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

/// The certificate an accepted connection presented (mutual TLS), if any.
pub fn presented_certificate(stream: &ServerStream) -> Option<CertificateDer<'static>> {
    let Either::Right(tls) = stream else {
        return None;
    };
    let (_, connection) = tls.get_ref().get_ref();
    let chain = connection.peer_certificates()?;
    chain.first().map(|cert| cert.clone().into_owned())
}

/// The server side of TLS on `--listen`.
pub struct ServerTls {
    acceptor: TlsAcceptor,
    cert: Arc<NodeCert>,
}

/// This node's certificate chain and key: served to each new handshake,
/// presented as the client certificate of each link this node opens.
#[derive(Debug)]
pub struct NodeCert {
    current: RwLock<Arc<CertifiedKey>>,
    cert_file: PathBuf,
    key_file: PathBuf,
}

impl NodeCert {
    /// Reads the certificate and key; errors name the file.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Arc<NodeCert>> {
        Ok(Arc::new(NodeCert {
            current: RwLock::new(Arc::new(certified_key(cert_file, key_file)?)),
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
        }))
    }

    /// Reads the files again; new handshakes use the new certificate. A
    /// failure keeps the one in use.
    pub fn reload(&self) -> Result<()> {
        let fresh = certified_key(&self.cert_file, &self.key_file)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(fresh);
        Ok(())
    }

    fn get(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl ResolvesServerCert for NodeCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

impl ResolvesClientCert for NodeCert {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }

    fn has_certs(&self) -> bool {
        true
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
    /// The TLS acceptor, for listeners that run their own handshake
    /// (PostgreSQL wire).
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }

    /// Reads the certificate and key, and with `client_ca_file` the CA
    /// certificates every connection's certificate must chain to; errors
    /// name the file.
    pub fn load(
        cert_file: &Path,
        key_file: &Path,
        client_ca_file: Option<&Path>,
    ) -> Result<ServerTls> {
        let cert = NodeCert::load(cert_file, key_file)?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(e.to_string()))?;
        let builder = match client_ca_file {
            None => builder.with_no_client_auth(),
            Some(ca_file) => {
                let mut roots = rustls::RootCertStore::empty();
                for ca in read_certs(ca_file).map_err(invalid)? {
                    roots
                        .add(ca)
                        .map_err(|e| invalid(format!("{}: {e}", ca_file.display())))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                        .build()
                        .map_err(|e| invalid(format!("{}: {e}", ca_file.display())))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder.with_cert_resolver(cert.clone());
        Ok(ServerTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            cert,
        })
    }

    /// Reads the certificate files again (see [`NodeCert::reload`]).
    pub fn reload(&self) -> Result<()> {
        self.cert.reload()
    }

    /// The TLS handshake of an accepted connection.
    pub async fn accept(&self, tcp: TcpStream) -> std::io::Result<ServerStream> {
        let stream = self.acceptor.accept(tcp).await?;
        Ok(Either::Right(BufReader::new(stream)))
    }
}

/// Admin HTTP over TLS: TCP connections accepted and their handshakes run on
/// tasks of their own (a slow client holds up only itself), handed to axum
/// as they complete.
pub struct TlsListener {
    incoming: tokio::sync::mpsc::Receiver<(ServerStream, std::net::SocketAddr)>,
    local: std::net::SocketAddr,
    accepting: tokio::task::JoinHandle<()>,
}

/// Longest an admin client may take over its TLS handshake.
const ADMIN_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl TlsListener {
    pub fn new(listener: tokio::net::TcpListener, tls: Arc<ServerTls>) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (handed, incoming) = tokio::sync::mpsc::channel(64);
        let accepting = tokio::spawn(async move {
            loop {
                let (tcp, addr) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (tls, handed) = (tls.clone(), handed.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(ADMIN_HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = handed.send((stream, addr)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%addr, error = %e, "admin TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%addr, "admin TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener {
            incoming,
            local,
            accepting,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = ServerStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.incoming.recv().await {
            Some(accepted) => accepted,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

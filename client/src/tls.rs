//! Connections to a node: `wss://` and `tcps://` URLs go over rustls (ring
//! provider) and trust the CA certificates of a PEM file, optionally
//! presenting a client certificate; `ws://` and `tcp://` URLs stay plain
//! TCP. The daemon uses the same connector for its links to other nodes.

use std::path::Path;
use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::codec::Framed;
use tokio_util::either::Either;

use crate::framing::FrameCodec;

/// The byte stream under a connection to a node.
pub type NodeStream = Either<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>;
/// A WebSocket connection to a node.
pub type NodeSocket = WebSocketStream<NodeStream>;

/// The crypto provider every TLS config of mpreg uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate of a PEM file; an error names the file.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no PEM certificate in the file",
            path.display()
        ));
    }
    Ok(certs)
}

/// Reads the private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// How a client trusts the nodes it connects to over `wss://`.
#[derive(Clone, Debug)]
pub struct TlsClient {
    config: Arc<rustls::ClientConfig>,
}

impl TlsClient {
    /// Trusts the CA certificates of `ca_file`; presents the certificate
    /// chain and key of `client_cert` when given.
    pub fn new(ca_file: &Path, client_cert: Option<(&Path, &Path)>) -> Result<TlsClient, String> {
        let builder = Self::trusting(ca_file)?;
        let config = match client_cert {
            Some((cert, key)) => builder
                .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
                .map_err(|e| format!("{}: {e}", cert.display()))?,
            None => builder.with_no_client_auth(),
        };
        Ok(TlsClient {
            config: Arc::new(config),
        })
    }

    /// Trusts the CA certificates of `ca_file`; presents the certificate
    /// `resolver` gives at each handshake (one that can change while the
    /// client lives).
    pub fn with_cert_resolver(
        ca_file: &Path,
        resolver: Arc<dyn ResolvesClientCert>,
    ) -> Result<TlsClient, String> {
        let config = Self::trusting(ca_file)?.with_client_cert_resolver(resolver);
        Ok(TlsClient {
            config: Arc::new(config),
        })
    }

    fn trusting(
        ca_file: &Path,
    ) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>, String>
    {
        let mut roots = rustls::RootCertStore::empty();
        for cert in read_certs(ca_file)? {
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", ca_file.display()))?;
        }
        Ok(rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots))
    }
}

/// Opens a WebSocket to `request`'s URL: TLS for `wss://` (with `tls`),
/// plain for `ws://`.
pub async fn connect(
    request: impl IntoClientRequest,
    tls: Option<&TlsClient>,
    config: Option<WebSocketConfig>,
) -> Result<(NodeSocket, Response), String> {
    let request: Request = request.into_client_request().map_err(|e| e.to_string())?;
    let uri = request.uri();
    let secure = match uri.scheme_str() {
        Some("wss") => true,
        Some("ws") => false,
        other => {
            return Err(format!(
                "unsupported URL scheme {other:?}: use ws://, wss://, tcp:// or tcps://"
            ));
        }
    };
    let host = uri.host().ok_or("the URL has no host")?.to_string();
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    let stream = open(&host, port, secure, tls).await?;
    tokio_tungstenite::client_async_with_config(request, stream, config)
        .await
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(response) => {
                let body = response.body().as_deref().unwrap_or_default();
                format!("{}: {}", response.status(), String::from_utf8_lossy(body))
            }
            other => other.to_string(),
        })
}

/// Opens a `tcp://host:port` or `tcps://host:port` connection (TLS with
/// `tls`) carrying length-prefixed frames of at most `max_frame` bytes.
pub async fn connect_framed(
    url: &str,
    tls: Option<&TlsClient>,
    max_frame: usize,
) -> Result<Framed<NodeStream, FrameCodec>, String> {
    let (secure, rest) = if let Some(rest) = url.strip_prefix("tcps://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("tcp://") {
        (false, rest)
    } else {
        return Err(format!(
            "{url}: expected tcp://host:port or tcps://host:port"
        ));
    };
    let authority = rest.trim_end_matches('/');
    let (host, port) = authority
        .rsplit_once(':')
        .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
        .ok_or_else(|| format!("{url}: expected tcp://host:port or tcps://host:port"))?;
    let stream = open(host, port, secure, tls).await?;
    Ok(Framed::new(stream, FrameCodec::new(max_frame)))
}

/// A TCP connection to `host:port`, with TLS when `secure` (which needs
/// `tls`). Nagle is off: replies are small and latency-bound.
async fn open(
    host: &str,
    port: u16,
    secure: bool,
    tls: Option<&TlsClient>,
) -> Result<NodeStream, String> {
    let tls = match (secure, tls) {
        (true, None) => {
            return Err(
                "a wss:// or tcps:// URL needs a CA file to trust (--ca-file, tls_ca_file)".into(),
            );
        }
        (true, tls) => tls,
        (false, _) => None,
    };
    let bare = host.trim_matches(['[', ']']);
    let tcp = TcpStream::connect((bare, port))
        .await
        .map_err(|e| format!("{host}:{port}: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let Some(tls) = tls else {
        return Ok(Either::Left(tcp));
    };
    let name = ServerName::try_from(bare.to_string()).map_err(|e| format!("{host}: {e}"))?;
    let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
    let stream = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with {host}:{port}: {e}"))?;
    Ok(Either::Right(stream))
}

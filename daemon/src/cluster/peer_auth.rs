//! Peer authentication at link setup, before any envelope is read: the
//! serving node sends a challenge (its cluster id and a fresh nonce), the
//! connecting node answers with its cluster id, node id, its own nonce and
//! an HMAC-SHA256 over both nonces under the secret the two share, and the
//! server answers with its own HMAC, so each side proves the secret without
//! sending it and no answer can be replayed on another connection.
//!
//! The secret is the `cluster_secret` between members of one cluster, and a
//! neighbour's link secret (`[link_secrets]`) between clusters. A node that
//! holds a secret for the other side requires the other side's proof; with
//! none, the link is unauthenticated (as before), unless
//! `require_link_secrets` refuses neighbours without one (see
//! [`crate::config::SecretFiles`]).
//!
//! With mutual TLS (`tls_client_ca_file`), the TLS handshake has already
//! checked that the connecting node's certificate chains to a trusted CA;
//! here the certificate must also name the node and cluster the proof
//! claims, as the URI `mpreg://<cluster id>/<node id>` among its subject
//! alternative names, so one member's certificate cannot act as another.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::config::Secrets;

/// Longest either side waits for the other's handshake frame.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Version of the handshake; a node refuses another version by name.
const VERSION: u8 = 1;
/// Largest handshake frame read.
const MAX_FRAME: usize = 4096;

/// The serving node's first frame.
#[derive(Debug, Serialize, Deserialize)]
pub struct Challenge {
    pub version: u8,
    pub cluster_id: String,
    pub nonce: String,
}

/// The connecting node's answer. `mac` is absent when it holds no secret
/// for the serving node's cluster.
#[derive(Debug, Serialize, Deserialize)]
pub struct Proof {
    pub cluster_id: String,
    pub node_id: String,
    pub nonce: String,
    pub mac: Option<String>,
}

/// The serving node's last handshake frame.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Accepted { mac: Option<String> },
    Refused { reason: String },
}

/// Why a peer was refused at the handshake; [`Refusal::reason`] labels
/// the metric.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("no handshake within {HANDSHAKE_TIMEOUT:?}")]
    Timeout,
    #[error("unreadable handshake: {0}")]
    Malformed(String),
    #[error(
        "cluster {cluster} requires a secret from its peers; node {node} of cluster {from} sent no proof"
    )]
    NoProof {
        cluster: String,
        node: String,
        from: String,
    },
    #[error("node {node} of cluster {from} sent a proof that does not match the secret")]
    BadProof { node: String, from: String },
    #[error("the connection closed during the handshake")]
    Closed,
    #[error("node {node} of cluster {from}: {problem}")]
    Certificate {
        node: String,
        from: String,
        problem: String,
    },
}

impl Refusal {
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Timeout => "timeout",
            Refusal::Malformed(_) => "malformed",
            Refusal::NoProof { .. } => "no_proof",
            Refusal::BadProof { .. } => "bad_proof",
            Refusal::Closed => "closed",
            Refusal::Certificate { .. } => "certificate",
        }
    }
}

/// Why this node's handshake with a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The exchange broke off (closed, timed out, unreadable): try again.
    #[error("handshake failed: {0}")]
    Failed(String),
    /// One side refused the other's proof: trying again does not help.
    #[error("{0}")]
    Refused(String),
}

/// The secrets of one node and the rules for using them.
pub struct PeerAuth {
    cluster_id: String,
    cluster_secret: Option<hmac::Key>,
    link_secrets: BTreeMap<String, hmac::Key>,
    require_link_secrets: bool,
    /// Whether a peer's TLS certificate must name it (mutual TLS).
    require_certificates: bool,
    random: SystemRandom,
}

impl PeerAuth {
    pub fn new(cluster_id: &str, secrets: &Secrets) -> PeerAuth {
        let key = |bytes: &Vec<u8>| hmac::Key::new(hmac::HMAC_SHA256, bytes);
        PeerAuth {
            cluster_id: cluster_id.to_string(),
            cluster_secret: secrets.cluster.as_ref().map(key),
            link_secrets: secrets
                .links
                .iter()
                .map(|(cluster, bytes)| (cluster.clone(), key(bytes)))
                .collect(),
            require_link_secrets: secrets.require_links,
            require_certificates: false,
            random: SystemRandom::new(),
        }
    }

    /// Refuses peers whose TLS certificate does not name them.
    pub fn requiring_certificates(self, required: bool) -> PeerAuth {
        PeerAuth {
            require_certificates: required,
            ..self
        }
    }

    /// The secret shared with the nodes of `cluster`.
    fn key_for(&self, cluster: &str) -> Option<&hmac::Key> {
        if cluster == self.cluster_id {
            self.cluster_secret.as_ref()
        } else {
            self.link_secrets.get(cluster)
        }
    }

    /// Whether nodes of `cluster` must prove a secret.
    fn required_of(&self, cluster: &str) -> bool {
        self.key_for(cluster).is_some() || (cluster != self.cluster_id && self.require_link_secrets)
    }

    fn nonce(&self) -> Result<String, String> {
        let mut bytes = [0u8; 32];
        self.random
            .fill(&mut bytes)
            .map_err(|_| "no random bytes for a nonce".to_string())?;
        Ok(hex::encode(bytes))
    }

    /// Serves the handshake on a connection just accepted, which presented
    /// `certificate` in its TLS handshake; the cluster the peer proved (or,
    /// with no secret for it, claimed) membership of.
    pub async fn accept<S>(
        &self,
        ws: &mut S,
        certificate: Option<&CertificateDer<'_>>,
    ) -> Result<String, Refusal>
    where
        S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
    {
        let nonce = self.nonce().map_err(Refusal::Malformed)?;
        let challenge = Challenge {
            version: VERSION,
            cluster_id: self.cluster_id.clone(),
            nonce: nonce.clone(),
        };
        send(ws, &challenge).await.map_err(|_| Refusal::Closed)?;
        let proof: Proof = receive(ws).await?;
        let verdict = self
            .judge(&nonce, &proof)
            .and_then(|()| self.judge_certificate(&proof, certificate));
        let answer = match &verdict {
            Ok(()) => Verdict::Accepted {
                mac: self
                    .key_for(&proof.cluster_id)
                    .map(|key| mac(key, "server", &transcript(&self.cluster_id, &proof, &nonce))),
            },
            Err(refusal) => Verdict::Refused {
                reason: refusal.to_string(),
            },
        };
        send(ws, &answer).await.map_err(|_| Refusal::Closed)?;
        verdict.map(|()| proof.cluster_id)
    }

    fn judge(&self, nonce: &str, proof: &Proof) -> Result<(), Refusal> {
        if !self.required_of(&proof.cluster_id) {
            return Ok(());
        }
        let (Some(key), Some(sent)) = (self.key_for(&proof.cluster_id), &proof.mac) else {
            return Err(Refusal::NoProof {
                cluster: self.cluster_id.clone(),
                node: proof.node_id.clone(),
                from: proof.cluster_id.clone(),
            });
        };
        let sent = hex::decode(sent).map_err(|e| Refusal::Malformed(format!("mac: {e}")))?;
        hmac::verify(
            key,
            &tagged("client", &transcript(&self.cluster_id, proof, nonce)),
            &sent,
        )
        .map_err(|_| Refusal::BadProof {
            node: proof.node_id.clone(),
            from: proof.cluster_id.clone(),
        })
    }

    fn judge_certificate(
        &self,
        proof: &Proof,
        certificate: Option<&CertificateDer<'_>>,
    ) -> Result<(), Refusal> {
        if !self.require_certificates {
            return Ok(());
        }
        let refused = |problem: String| Refusal::Certificate {
            node: proof.node_id.clone(),
            from: proof.cluster_id.clone(),
            problem,
        };
        let certificate =
            certificate.ok_or_else(|| refused("presented no TLS certificate".to_string()))?;
        let expected = certificate_uri(&proof.cluster_id, &proof.node_id);
        let names = uri_names(certificate).map_err(|e| refused(format!("its certificate: {e}")))?;
        if names.contains(&expected) {
            Ok(())
        } else {
            Err(refused(format!(
                "its certificate does not name it: expected URI {expected}, found {names:?}"
            )))
        }
    }

    /// Runs the handshake on a connection this node opened as `node_id`.
    pub async fn connect<S>(&self, node_id: &str, ws: &mut S) -> Result<(), HandshakeError>
    where
        S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
    {
        let failed = |e: &dyn std::fmt::Display| HandshakeError::Failed(e.to_string());
        let challenge: Challenge = receive(ws).await.map_err(|e| failed(&e))?;
        if challenge.version != VERSION {
            return Err(HandshakeError::Refused(format!(
                "the peer speaks handshake version {}, this node {VERSION}",
                challenge.version
            )));
        }
        let key = self.key_for(&challenge.cluster_id);
        let mut proof = Proof {
            cluster_id: self.cluster_id.clone(),
            node_id: node_id.to_string(),
            nonce: self.nonce().map_err(|e| failed(&e))?,
            mac: None,
        };
        let shown = transcript(&challenge.cluster_id, &proof, &challenge.nonce);
        proof.mac = key.map(|key| mac(key, "client", &shown));
        send(ws, &proof).await.map_err(|e| failed(&e))?;
        let refused = HandshakeError::Refused;
        match receive(ws).await.map_err(|e| failed(&e))? {
            Verdict::Refused { reason } => {
                Err(refused(format!("refused at the handshake: {reason}")))
            }
            Verdict::Accepted { mac: answer } => match (key, answer) {
                (None, _) if !self.required_of(&challenge.cluster_id) => Ok(()),
                (None, _) => Err(refused(format!(
                    "this node requires a link secret for cluster {} and holds none",
                    challenge.cluster_id
                ))),
                (Some(_), None) => Err(refused(format!(
                    "cluster {} proved no secret: this node holds one for it",
                    challenge.cluster_id
                ))),
                (Some(key), Some(answer)) => {
                    let answer =
                        hex::decode(answer).map_err(|e| refused(format!("server mac: {e}")))?;
                    hmac::verify(key, &tagged("server", &shown), &answer).map_err(|_| {
                        refused(format!(
                            "cluster {} answered with a proof that does not match the secret",
                            challenge.cluster_id
                        ))
                    })
                }
            },
        }
    }
}

/// The name a member's certificate carries for it.
pub fn certificate_uri(cluster_id: &str, node_id: &str) -> String {
    format!("mpreg://{cluster_id}/{node_id}")
}

/// The URIs among a certificate's subject alternative names.
fn uri_names(certificate: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(certificate).map_err(|e| e.to_string())?;
    let Some(names) = parsed
        .subject_alternative_name()
        .map_err(|e| e.to_string())?
    else {
        return Ok(Vec::new());
    };
    Ok(names
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => Some(uri.to_string()),
            _ => None,
        })
        .collect())
}

/// What both MACs cover: both clusters, the connecting node and both
/// nonces, each length-prefixed.
fn transcript(server_cluster: &str, proof: &Proof, server_nonce: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    for field in [
        server_cluster,
        &proof.cluster_id,
        &proof.node_id,
        server_nonce,
        &proof.nonce,
    ] {
        bytes.extend_from_slice(&(field.len() as u32).to_be_bytes());
        bytes.extend_from_slice(field.as_bytes());
    }
    bytes
}

/// `transcript` under a role tag, so the server's MAC is never the
/// client's.
fn tagged(role: &str, transcript: &[u8]) -> Vec<u8> {
    let mut bytes = format!("mpreg-peer-v{VERSION}/{role}/").into_bytes();
    bytes.extend_from_slice(transcript);
    bytes
}

fn mac(key: &hmac::Key, role: &str, transcript: &[u8]) -> String {
    hex::encode(hmac::sign(key, &tagged(role, transcript)))
}

async fn send<S, T>(ws: &mut S, value: &T) -> Result<(), WsError>
where
    S: Sink<Message, Error = WsError> + Unpin,
    T: Serialize,
{
    let text = serde_json::to_string(value).unwrap_or_default();
    ws.send(Message::text(text)).await
}

async fn receive<S, T>(ws: &mut S) -> Result<T, Refusal>
where
    S: Stream<Item = Result<Message, WsError>> + Unpin,
    T: for<'de> Deserialize<'de>,
{
    let frame = tokio::time::timeout(HANDSHAKE_TIMEOUT, ws.next())
        .await
        .map_err(|_| Refusal::Timeout)?;
    match frame {
        Some(Ok(Message::Text(text))) if text.len() <= MAX_FRAME => {
            serde_json::from_str(&text).map_err(|e| Refusal::Malformed(e.to_string()))
        }
        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => Err(Refusal::Closed),
        Some(Ok(other)) => Err(Refusal::Malformed(format!(
            "expected a handshake text frame, got {} bytes of another kind",
            other.len()
        ))),
    }
}

#[cfg(test)]
mod test {
    use super::*;

    fn auth(cluster: &str, secret: Option<&str>, links: &[(&str, &str)]) -> PeerAuth {
        PeerAuth::new(
            cluster,
            &Secrets {
                cluster: secret.map(|s| s.as_bytes().to_vec()),
                links: links
                    .iter()
                    .map(|(c, s)| (c.to_string(), s.as_bytes().to_vec()))
                    .collect(),
                require_links: false,
            },
        )
    }

    /// A proof as a connecting node of `client` would build it.
    fn proof(client: &PeerAuth, server_cluster: &str, server_nonce: &str) -> Proof {
        let mut proof = Proof {
            cluster_id: client.cluster_id.clone(),
            node_id: "n2".to_string(),
            nonce: client.nonce().unwrap(),
            mac: None,
        };
        let shown = transcript(server_cluster, &proof, server_nonce);
        proof.mac = client
            .key_for(server_cluster)
            .map(|k| mac(k, "client", &shown));
        proof
    }

    #[test]
    fn the_same_secret_passes_and_another_or_none_is_refused() {
        let server = auth("c1", Some("0123456789abcdef"), &[]);
        let nonce = server.nonce().unwrap();
        let same = auth("c1", Some("0123456789abcdef"), &[]);
        assert!(server.judge(&nonce, &proof(&same, "c1", &nonce)).is_ok());
        let wrong = auth("c1", Some("fedcba9876543210"), &[]);
        let refused = server.judge(&nonce, &proof(&wrong, "c1", &nonce));
        assert_eq!(refused.unwrap_err().reason(), "bad_proof");
        let none = auth("c1", None, &[]);
        let refused = server.judge(&nonce, &proof(&none, "c1", &nonce));
        assert_eq!(refused.unwrap_err().reason(), "no_proof");
    }

    #[test]
    fn a_proof_for_one_nonce_is_refused_for_another() {
        let server = auth("c1", Some("0123456789abcdef"), &[]);
        let (first, second) = (server.nonce().unwrap(), server.nonce().unwrap());
        assert_ne!(first, second);
        let client = auth("c1", Some("0123456789abcdef"), &[]);
        let replayed = server.judge(&second, &proof(&client, "c1", &first));
        assert_eq!(replayed.unwrap_err().reason(), "bad_proof");
    }

    #[test]
    fn a_proof_claiming_another_node_is_refused() {
        let server = auth("c1", Some("0123456789abcdef"), &[]);
        let nonce = server.nonce().unwrap();
        let client = auth("c1", Some("0123456789abcdef"), &[]);
        let mut forged = proof(&client, "c1", &nonce);
        forged.node_id = "n3".to_string();
        assert_eq!(
            server.judge(&nonce, &forged).unwrap_err().reason(),
            "bad_proof"
        );
    }

    #[test]
    fn neighbours_use_their_link_secret_and_pass_without_one_unless_required() {
        let server = auth(
            "c1",
            Some("cluster-secret-c1"),
            &[("c2", "link-secret-c1-c2")],
        );
        let nonce = server.nonce().unwrap();
        let c2 = auth(
            "c2",
            Some("cluster-secret-c2"),
            &[("c1", "link-secret-c1-c2")],
        );
        assert!(server.judge(&nonce, &proof(&c2, "c1", &nonce)).is_ok());
        let c2_without = auth("c2", None, &[]);
        assert_eq!(
            server
                .judge(&nonce, &proof(&c2_without, "c1", &nonce))
                .unwrap_err()
                .reason(),
            "no_proof"
        );
        let c3 = auth("c3", None, &[]);
        assert!(server.judge(&nonce, &proof(&c3, "c1", &nonce)).is_ok());
        let strict = PeerAuth {
            require_link_secrets: true,
            ..auth("c1", None, &[])
        };
        assert_eq!(
            strict
                .judge(&nonce, &proof(&c3, "c1", &nonce))
                .unwrap_err()
                .reason(),
            "no_proof"
        );
    }

    fn certificate_naming(uris: &[&str]) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        for uri in uris {
            params
                .subject_alt_names
                .push(rcgen::SanType::URI((*uri).try_into().unwrap()));
        }
        let pair = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&pair).unwrap().der().clone()
    }

    #[test]
    fn with_mutual_tls_a_peer_certificate_must_name_the_node_it_claims() {
        let server = auth("c1", None, &[]).requiring_certificates(true);
        let nonce = server.nonce().unwrap();
        let claim = proof(&auth("c1", None, &[]), "c1", &nonce);
        let own = certificate_naming(&["mpreg://c1/other", "mpreg://c1/n2"]);
        assert!(server.judge_certificate(&claim, Some(&own)).is_ok());
        for refused in [
            Some(certificate_naming(&["mpreg://c1/n3"])),
            Some(certificate_naming(&["mpreg://c2/n2"])),
            Some(certificate_naming(&[])),
            None,
        ] {
            let verdict = server.judge_certificate(&claim, refused.as_ref());
            assert_eq!(verdict.unwrap_err().reason(), "certificate");
        }
        let lenient = auth("c1", None, &[]);
        assert!(lenient.judge_certificate(&claim, None).is_ok());
    }
}

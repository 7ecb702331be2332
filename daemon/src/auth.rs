//! Client authentication and permissions. A client presents a token on the
//! WebSocket upgrade (upstream MPREG's `Authorization: Bearer <token>` or
//! `X-API-Key: <key>`), admin HTTP on each request. Credentials are rows of
//! the `credentials` view, so every node answers alike, and each request is
//! checked against the row as it is now: a revocation reaches open
//! connections at their next request. With no live credential, everyone
//! may do everything (the loopback default).

use std::sync::Arc;

use axum::http::HeaderMap;
use mpreg_client::protocol::{ErrorCode, RpcError, RpcRequest};
use mpreg_storage::credential::Action;
use mpreg_storage::views::Catalog;
use mpreg_storage::{EventKind, Outcome};
use prometheus::IntCounterVec;
use serde_json::Value;

use crate::cluster::Node;
use crate::config::Credential;

/// SHA-256 of a token, lowercase hex: what credentials store.
pub fn token_sha256(token: &str) -> String {
    hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        token.as_bytes(),
    ))
}

/// The token `headers` present: `Authorization: Bearer <token>` (a value
/// without a scheme is taken as a bearer token, as upstream does) or
/// `X-API-Key: <key>`.
pub fn presented_token(headers: &HeaderMap) -> Option<String> {
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|value| match value.trim().split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Some(token.trim()),
            Some(_) => None,
            None => Some(value.trim()),
        });
    let api_key = || {
        headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    authorization
        .or_else(api_key)
        .filter(|token| !token.is_empty())
        .map(str::to_string)
}

/// Who a connection or request is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// No token, accepted while no credential is live.
    Anonymous,
    /// The credential whose token was presented.
    Credential { name: String, token_sha256: String },
}

/// Why a client was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// Label of `mpreg_client_auth_refusals_total`, one of
    /// `crate::metrics::CLIENT_AUTH_REFUSALS`.
    pub reason: &'static str,
    pub message: String,
}

impl Refused {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Refused {
            reason,
            message: message.into(),
        }
    }

    /// The error a refused request is answered with.
    pub fn rpc_error(&self) -> RpcError {
        RpcError::new(ErrorCode::PermissionDenied, self.message.clone())
    }
}

/// Checks tokens and permissions against the node's `credentials` view and
/// counts refusals.
pub struct Auth {
    node: Arc<Node>,
    refusals: IntCounterVec,
    /// Credentials are configured here: tokens are required even before
    /// they are applied (no window where anyone is accepted).
    configured: bool,
}

impl Auth {
    pub fn new(node: Arc<Node>, refusals: IntCounterVec, configured: bool) -> Self {
        Auth {
            node,
            refusals,
            configured,
        }
    }

    fn required(&self, catalog: &Catalog) -> bool {
        self.configured || catalog.requires_credentials()
    }

    fn counted<T>(&self, result: Result<T, Refused>) -> Result<T, Refused> {
        if let Err(refused) = &result {
            self.refusals.with_label_values(&[refused.reason]).inc();
        }
        result
    }

    /// Whether a client must present a token now.
    pub fn is_required(&self) -> bool {
        self.required(&self.node.views().catalog())
    }

    /// Who presents `token`.
    pub fn authenticate(&self, token: Option<&str>) -> Result<Principal, Refused> {
        let catalog = self.node.views().catalog();
        self.counted(authenticate(&catalog, self.required(&catalog), token))
    }

    /// Whether `principal` may do every one of `actions`.
    pub fn authorize(&self, principal: &Principal, actions: &[Action<'_>]) -> Result<(), Refused> {
        let catalog = self.node.views().catalog();
        let required = self.required(&catalog);
        let result = actions
            .iter()
            .try_for_each(|action| authorize(&catalog, required, principal, *action));
        self.counted(result)
    }
}

fn authenticate(
    catalog: &Catalog,
    required: bool,
    token: Option<&str>,
) -> Result<Principal, Refused> {
    if !required {
        return Ok(Principal::Anonymous);
    }
    let Some(token) = token else {
        return Err(Refused::new(
            "missing_token",
            "this node requires a credential: send Authorization: Bearer <token> or X-API-Key: <token>",
        ));
    };
    let hash = token_sha256(token);
    match catalog.credential_by_token(&hash) {
        Some(row) => Ok(Principal::Credential {
            name: row.name.clone(),
            token_sha256: hash,
        }),
        None => Err(Refused::new(
            "unknown_token",
            "the token matches no credential (unknown or revoked)",
        )),
    }
}

fn authorize(
    catalog: &Catalog,
    required: bool,
    principal: &Principal,
    action: Action<'_>,
) -> Result<(), Refused> {
    match principal {
        Principal::Anonymous if required => Err(Refused::new(
            "missing_token",
            "this node requires a credential since this connection opened: reconnect with a token",
        )),
        Principal::Anonymous => Ok(()),
        Principal::Credential { name, token_sha256 } => {
            let row = catalog
                .credential(name)
                .filter(|row| row.live() && row.token_sha256 == *token_sha256)
                .ok_or_else(|| Refused::new("revoked", format!("credential {name} was revoked")))?;
            if row.permissions.allows(action) {
                Ok(())
            } else {
                Err(Refused::new(
                    "denied",
                    format!("credential {name} may not {action}"),
                ))
            }
        }
    }
}

/// Proposes each configured credential the view does not hold as it is
/// (a changed token or permissions is proposed again). A refusal (a token
/// revoked under that name, or one another credential has) is logged: the
/// credential stays as the log has it.
pub async fn propose_configured(
    node: &Node,
    credentials: &[Credential],
) -> crate::error::Result<()> {
    for credential in credentials {
        let held = node
            .views()
            .catalog()
            .credential(&credential.name)
            .filter(|row| row.token_sha256 == credential.token_sha256)
            .map(|row| (row.live(), row.permissions == credential.permissions));
        match held {
            Some((true, true)) => continue,
            Some((false, _)) => {
                tracing::warn!(credential = %credential.name, "configured credential was revoked with this token; give it another token or remove it from the config file");
                continue;
            }
            Some((true, false)) | None => {}
        }
        let kind = EventKind::CredentialSet {
            name: credential.name.clone(),
            token_sha256: credential.token_sha256.clone(),
            permissions: credential.permissions.clone(),
        };
        match node.propose(kind).await? {
            Outcome::Rejected { reason } => {
                tracing::warn!(credential = %credential.name, %reason, "configured credential not set");
            }
            _ => tracing::info!(credential = %credential.name, "credential set"),
        }
    }
    Ok(())
}

/// What an RPC request asks to do: calling each function, or for the queue
/// functions, using the queue named in the body (every queue when none is).
pub fn rpc_actions(request: &RpcRequest) -> Vec<Action<'_>> {
    request
        .cmds
        .iter()
        .map(|cmd| {
            if !crate::rpc::is_queue_function(&cmd.fun) {
                return Action::Call(&cmd.fun);
            }
            let named = cmd
                .kwargs
                .get("queue_name")
                .or_else(|| match cmd.args.as_slice() {
                    [Value::Object(body)] => body.get("queue_name"),
                    _ => None,
                })
                .and_then(Value::as_str);
            named.map_or(Action::AllQueues, Action::Queue)
        })
        .collect()
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn tokens_are_read_from_either_header() {
        let mut headers = HeaderMap::new();
        assert_eq!(presented_token(&headers), None);
        headers.insert("x-api-key", "key-1".parse().unwrap());
        assert_eq!(presented_token(&headers).as_deref(), Some("key-1"));
        headers.insert("authorization", "Bearer tok-2".parse().unwrap());
        assert_eq!(presented_token(&headers).as_deref(), Some("tok-2"));
        headers.insert("authorization", "tok-3".parse().unwrap());
        assert_eq!(presented_token(&headers).as_deref(), Some("tok-3"));
        headers.insert("authorization", "Basic dXNlcg==".parse().unwrap());
        assert_eq!(presented_token(&headers).as_deref(), Some("key-1"));
    }

    #[test]
    fn the_stored_hash_is_sha256_hex() {
        assert_eq!(
            token_sha256("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}

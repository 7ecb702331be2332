//! The cache across clusters: a namespace belongs to the cluster that
//! holds its entries (named in that cluster's catalog summary). A request
//! for a namespace another cluster holds is carried there along the routes
//! and its `cache-response` comes back unchanged; nothing of it is kept in
//! this node's memory tier, so no read here is older than the owner's last
//! acknowledged write. A namespace nobody holds is written here; one two
//! clusters hold is refused as ambiguous, naming them.

use std::time::Duration;

use mpreg_client::protocol::{CacheRequest, ErrorCode};
use mpreg_storage::Flow;
use mpreg_storage::federation::live;
use mpreg_storage::views::{CacheRow, View};
use serde_json::Value;

use super::Cache;
use crate::clock::now_ms;
use crate::envelope::{FederationReply, FederationRequest, Refused};
use crate::federation::Routing;
use crate::refusal::Refusal;

/// Longest a request carried to another cluster waits for its answer.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);

/// The namespace a request addresses: its key's, or the `namespace` of an
/// invalidation or namespace operation.
pub fn namespace_of(request: &CacheRequest) -> Option<&str> {
    if let Some(key) = &request.key {
        return Some(&key.namespace);
    }
    request.namespace.as_deref().or_else(|| {
        request
            .namespace_operation
            .as_ref()
            .and_then(|op| op.get("namespace"))
            .and_then(Value::as_str)
    })
}

impl Cache {
    /// The other cluster that holds the namespace `request` addresses, if
    /// one does and this one does not.
    pub(super) fn owner(&self, request: &CacheRequest) -> Result<Option<String>, Refusal> {
        let Some(namespace) = namespace_of(request) else {
            return Ok(None);
        };
        let now = now_ms();
        let mut holders: Vec<String> = self
            .node
            .views()
            .catalog()
            .remote_catalogs()
            .filter(|row| live(row, now) && row.ad.summary.caches.iter().any(|n| n == namespace))
            .map(|row| row.ad.cluster_id.clone())
            .collect();
        if holders.is_empty() {
            return Ok(None);
        }
        let mut here = false;
        self.node
            .inspector()
            .scan_keys(
                View::CacheEntries,
                &CacheRow::namespace_prefix(namespace),
                |_| {
                    here = true;
                    Flow::Stop
                },
            )
            .map_err(|e| Refusal::new(ErrorCode::Unavailable, e.to_string()))?;
        if !here && holders.len() == 1 {
            return Ok(holders.pop());
        }
        if here {
            holders.push(self.node.identity().cluster_id.clone());
        }
        holders.sort();
        Err(Refusal::invalid(format!(
            "cache namespace {namespace} is held by clusters {}: each keeps its own",
            holders.join(", ")
        )))
    }

    /// Carries `request` to `cluster`; its `cache-response`.
    pub(super) async fn forward(
        &self,
        cluster: &str,
        request: &CacheRequest,
    ) -> Result<Value, Refusal> {
        let json = serde_json::to_string(request).map_err(|e| Refusal::invalid(e.to_string()))?;
        let routing = Routing {
            target: cluster.to_string(),
            path: Vec::new(),
            budget: self.federation.hop_budget(),
        };
        let request = FederationRequest::Cache { request: json };
        let reply = self
            .federation
            .forward(request, &routing, FORWARD_TIMEOUT)
            .await;
        match reply {
            Ok(FederationReply::Cached(json)) => serde_json::from_str(&json).map_err(|e| {
                Refusal::new(
                    ErrorCode::LinkFailed,
                    format!("cluster {cluster} answered bad JSON: {e}"),
                )
            }),
            Ok(other) => Err(Refusal::new(
                ErrorCode::LinkFailed,
                format!("cluster {cluster} answered {other:?}; it may have run"),
            )),
            Err(e) => Err(Refusal::new(e.code(), e.to_string())),
        }
    }

    /// Serves a `cache-request` another cluster sent: here when this
    /// cluster is its target, else carried one cluster closer.
    pub async fn handle_federated(
        &self,
        request: String,
        routing: Routing,
    ) -> Result<FederationReply, Refused> {
        let local = &self.node.identity().cluster_id;
        if routing.target.is_empty() {
            return Err(Refused::Invalid(format!(
                "a cache request reached cluster {local} naming no target cluster"
            )));
        }
        if routing.target != *local {
            let forwarded = FederationRequest::Cache { request };
            return self
                .federation
                .forward(forwarded, &routing, FORWARD_TIMEOUT)
                .await
                .map_err(Refused::from);
        }
        let request: CacheRequest = serde_json::from_str(&request)
            .map_err(|e| Refused::Invalid(format!("cache request from another cluster: {e}")))?;
        let reply = self.handle_here(request).await;
        let json = serde_json::to_string(&reply)
            .map_err(|e| Refused::Invalid(format!("cache reply did not serialize: {e}")))?;
        Ok(FederationReply::Cached(json))
    }
}

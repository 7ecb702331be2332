//! Calls across clusters: where a command runs (here, or in the cluster
//! the catalog summaries and routes point to; a queue operation in the
//! cluster that holds the queue), sending it there through
//! the federation, and serving a call another cluster sent (running it
//! here when this is its target, else carrying it one cluster closer).

use std::time::Duration;

use mpreg_client::protocol::{ErrorCode, RpcCommand, RpcError};
use serde_json::{Map, Value};

use mpreg_storage::federation::live;
use mpreg_storage::views::{QueueRow, View};

use super::{Arguments, Rpc, json_text, select};
use crate::clock::now_ms;
use crate::envelope::{FederatedCall, FederationReply, FederationRequest};
use crate::federation::{ForwardError, Routing};
use crate::queue;

/// Where a command runs.
pub(super) enum Place {
    Here,
    Cluster(String),
}

/// The queue a queue operation names (`queue_name` in its one object
/// argument or its keyword arguments); none for `create`, which declares
/// the queue where it is called.
fn queue_named(cmd: &RpcCommand) -> Option<&str> {
    if !queue::FUNCTIONS.contains(&cmd.fun.as_str()) || cmd.fun == "mpreg.queue.create" {
        return None;
    }
    cmd.kwargs
        .get("queue_name")
        .or_else(|| match cmd.args.as_slice() {
            [Value::Object(body)] => body.get("queue_name"),
            _ => None,
        })
        .and_then(Value::as_str)
}

/// The error a failed forward answers the caller with.
fn forward_error(e: ForwardError) -> RpcError {
    RpcError::new(e.code(), e.to_string())
}

impl Rpc {
    /// Where `cmd` runs: in its `target_cluster` when that is another
    /// cluster; here when a live provider here matches it; else in the
    /// other cluster that serves the highest matching version over a
    /// usable route, the one fewest hops away first.
    pub(super) fn place(&self, cmd: &RpcCommand) -> Result<Place, RpcError> {
        let local = &self.node.identity().cluster_id;
        let target = cmd.target_cluster.as_deref().filter(|t| !t.is_empty());
        if let Some(t) = target.filter(|t| *t != local) {
            return Ok(Place::Cluster(t.to_string()));
        }
        if let Some(queue) = queue_named(cmd).filter(|_| target.is_none()) {
            return self.place_queue(queue);
        }
        let catalog = self.node.views().catalog();
        let here = select::providers(&catalog, cmd, |f| self.is_live(f)).map(|_| Place::Here);
        if target.is_some() {
            return here;
        }
        let here_error = match here {
            Ok(place) => return Ok(place),
            Err(e) => e,
        };
        let remote = match select::remote_providers(&catalog, cmd, now_ms()) {
            Ok(remote) => remote,
            Err(e) if here_error.code == ErrorCode::UnknownFunction.code() => return Err(e),
            Err(_) => return Err(here_error),
        };
        drop(catalog);
        let reachable = remote
            .iter()
            .filter_map(|(cluster, version)| {
                let hops = self.federation.route_hops(cluster)?;
                Some((version, std::cmp::Reverse(hops), cluster))
            })
            .max_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)).then_with(|| b.2.cmp(a.2)));
        match reachable {
            Some((_, _, cluster)) => Ok(Place::Cluster(cluster.clone())),
            None => {
                let clusters: Vec<&str> = remote.iter().map(|(c, _)| c.as_str()).collect();
                Err(RpcError::new(
                    ErrorCode::NoRoute,
                    format!(
                        "{} is served by cluster {}, and cluster {local} has no route there",
                        cmd.fun,
                        clusters.join(", ")
                    ),
                ))
            }
        }
    }

    /// Where an operation on queue `name` runs: in the cluster that holds
    /// it (here if none does, so the answer is "not found"). A name held
    /// by several clusters is refused as ambiguous, naming them.
    fn place_queue(&self, name: &str) -> Result<Place, RpcError> {
        let local = &self.node.identity().cluster_id;
        let now = now_ms();
        let mut holders: Vec<String> = self
            .node
            .views()
            .catalog()
            .remote_catalogs()
            .filter(|row| live(row, now) && row.ad.summary.queues.iter().any(|q| q == name))
            .map(|row| row.ad.cluster_id.clone())
            .collect();
        if holders.is_empty() {
            // Here, where a queue that does not exist is answered "not
            // found": no need to read its row first.
            return Ok(Place::Here);
        }
        let here = self
            .node
            .inspector()
            .get::<QueueRow>(View::Queues, &QueueRow::key(name))
            .map_err(|e| RpcError::new(ErrorCode::Unavailable, e.to_string()))?
            .is_some_and(|q| q.name == name);
        match (here, holders.len()) {
            (false, 1) => Ok(Place::Cluster(holders.remove(0))),
            _ => {
                if here {
                    holders.push(local.clone());
                }
                holders.sort();
                Err(RpcError::new(
                    ErrorCode::BadRequest,
                    format!(
                        "queue {name} is held by clusters {}: name one with target_cluster",
                        holders.join(", ")
                    ),
                ))
            }
        }
    }

    /// Runs `cmd` in `cluster`, sent along the routes.
    pub(super) async fn call_cluster(
        &self,
        cluster: &str,
        cmd: &RpcCommand,
        (args, kwargs): Arguments<'_>,
        deadline: tokio::time::Instant,
    ) -> Result<Value, RpcError> {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let call = FederatedCall {
            fun: cmd.fun.clone(),
            function_id: cmd.function_id.clone(),
            version_constraint: cmd.version_constraint.clone(),
            locs: cmd.locs.clone(),
            args: json_text(args)?,
            kwargs: json_text(kwargs)?,
            timeout_ms: u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX),
        };
        let routing = Routing {
            target: cluster.to_string(),
            path: Vec::new(),
            budget: self.federation.hop_budget(),
        };
        self.metrics
            .federated_calls
            .with_label_values(&["sent"])
            .inc();
        let json = self.forward(call, &routing, remaining).await?;
        serde_json::from_str(&json).map_err(|e| {
            RpcError::new(
                ErrorCode::ExecutionFailed,
                format!("cluster {cluster} answered {} with bad JSON: {e}", cmd.fun),
            )
        })
    }

    async fn forward(
        &self,
        call: FederatedCall,
        routing: &Routing,
        timeout: Duration,
    ) -> Result<String, RpcError> {
        let request = FederationRequest::Call(call);
        match self.federation.forward(request, routing, timeout).await {
            Ok(FederationReply::Called(result)) => result,
            Ok(other) => Err(RpcError::new(
                ErrorCode::LinkFailed,
                format!(
                    "cluster {} answered a call with {other:?}; it may have run",
                    routing.target
                ),
            )),
            Err(e) => Err(forward_error(e)),
        }
    }

    /// Serves a call another cluster sent: runs it here when this cluster
    /// is its target (errors name this cluster), else carries it on.
    pub async fn call_federated(
        &self,
        call: FederatedCall,
        routing: Routing,
    ) -> Result<String, RpcError> {
        let local = self.node.identity().cluster_id.clone();
        let timeout = Duration::from_millis(call.timeout_ms);
        if routing.target.is_empty() {
            return Err(RpcError::new(
                ErrorCode::BadRequest,
                format!("a call reached cluster {local} naming no target cluster"),
            ));
        }
        if routing.target != local {
            self.metrics
                .federated_calls
                .with_label_values(&["relayed"])
                .inc();
            return self.forward(call, &routing, timeout).await;
        }
        self.metrics
            .federated_calls
            .with_label_values(&["served"])
            .inc();
        let in_cluster = |e: RpcError| RpcError {
            details: Some(format!(
                "in cluster {local}: {}",
                e.details.as_deref().unwrap_or(&e.message)
            )),
            ..e
        };
        let bad = |what: &str, e: serde_json::Error| {
            in_cluster(RpcError::new(
                ErrorCode::BadRequest,
                format!("forwarded {what} are not JSON: {e}"),
            ))
        };
        let args: Vec<Value> = serde_json::from_str(&call.args).map_err(|e| bad("arguments", e))?;
        let kwargs: Map<String, Value> =
            serde_json::from_str(&call.kwargs).map_err(|e| bad("keyword arguments", e))?;
        let cmd = RpcCommand {
            name: call.fun.clone(),
            fun: call.fun,
            function_id: call.function_id,
            version_constraint: call.version_constraint,
            locs: call.locs,
            target_cluster: Some(local.clone()),
            ..RpcCommand::default()
        };
        let deadline = tokio::time::Instant::now() + timeout;
        match tokio::time::timeout_at(deadline, self.call(&cmd, (&args, &kwargs), deadline)).await {
            Ok(result) => result.map(|v| v.to_string()).map_err(in_cluster),
            Err(_) => Err(in_cluster(RpcError::new(
                ErrorCode::Timeout,
                format!(
                    "{} did not finish within the caller's deadline ({} ms)",
                    cmd.fun, call.timeout_ms
                ),
            ))),
        }
    }
}

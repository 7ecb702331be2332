//! Admin HTTP (axum) on `--admin-listen`: `/health`, `/status`, `/sql`
//! ([`sql`]), `/metrics` ([`gauges`] reads the node's figures when
//! scraped), `/cluster/members` and `/cluster/leave`, `/federation/*`
//! ([`federation`]) and `/credentials/*`; [`credentials`] also checks the
//! token of every request while credentials are required.

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use mpreg_query::SqlEngine;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::auth::Auth;
use crate::cluster::membership::Joining;
use crate::cluster::{Node, RaftStatus, membership};
use crate::envelope::{Envelope, PeerRequest, Refused};
use crate::federation::Federation;
use crate::metrics::Metrics;

mod credentials;
mod federation;
mod gauges;
mod sql;

pub use sql::{PgCredentials, engine as sql_engine};

/// What the handlers read; the node appears once it has started.
#[derive(Clone)]
pub struct AdminState {
    node: Arc<OnceLock<Arc<Node>>>,
    sql: Arc<OnceLock<Arc<SqlEngine>>>,
    federation: Arc<OnceLock<Arc<Federation>>>,
    auth: Arc<OnceLock<Arc<Auth>>>,
    /// `/health`, `/status` and `/metrics` answer without a token.
    open_health_endpoints: bool,
    metrics: Arc<Metrics>,
    /// Stops the node (after it left its cluster).
    shutdown: CancellationToken,
}

impl AdminState {
    pub fn new(
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
        open_health_endpoints: bool,
    ) -> Self {
        AdminState {
            node: Arc::default(),
            sql: Arc::default(),
            federation: Arc::default(),
            auth: Arc::default(),
            open_health_endpoints,
            metrics,
            shutdown,
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Makes the started node, its SQL engine and its credential checks
    /// visible to the handlers.
    pub fn set_node(&self, node: Arc<Node>, sql: Arc<SqlEngine>, auth: Arc<Auth>) {
        let _ = self.auth.set(auth);
        let _ = self.node.set(node);
        let _ = self.sql.set(sql);
    }

    /// Serves `/federation/*` from now on.
    pub fn set_federation(&self, federation: Arc<Federation>) {
        let _ = self.federation.set(federation);
    }

    /// The SQL engine, once the node has started.
    pub fn sql(&self) -> Option<&Arc<SqlEngine>> {
        self.sql.get()
    }
}

/// `/status` body.
#[derive(Serialize)]
pub struct Status {
    pub node_id: String,
    pub cluster_id: String,
    pub role: &'static str,
    pub term: u64,
    pub leader: Option<u64>,
    pub last_applied: u64,
    pub views_digest: String,
    pub raft: RaftStatus,
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/status", get(status))
        .route("/sql", get(sql::get).post(sql::post))
        .route("/metrics", get(metrics))
        .route("/cluster/members", get(members).post(add_member))
        .route(
            "/cluster/members/{node}",
            axum::routing::delete(remove_member),
        )
        .route("/cluster/leave", axum::routing::post(leave))
        .route(
            "/federation/links",
            get(federation::links).post(federation::link),
        )
        .route(
            "/federation/links/{cluster}",
            axum::routing::delete(federation::unlink),
        )
        .route(
            "/federation/reload",
            axum::routing::post(federation::reload),
        )
        .route(
            "/federation/rotate-key",
            axum::routing::post(federation::rotate_key),
        )
        .route(
            "/credentials/{name}",
            axum::routing::delete(credentials::revoke),
        )
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            credentials::check,
        ))
        .with_state(state)
}

fn starting() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"status": "starting"})),
    )
        .into_response()
}

async fn health(State(state): State<AdminState>) -> Response {
    let Some(node) = state.node.get() else {
        return starting();
    };
    let raft = node.raft_status();
    if !node.raft_running() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "raft_stopped", "node_id": node.identity().node_id})),
        )
            .into_response();
    }
    if node.has_leader() {
        Json(json!({"status": "ok", "node_id": node.identity().node_id, "leader": raft.leader}))
            .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "no_leader", "node_id": node.identity().node_id})),
        )
            .into_response()
    }
}

async fn status(State(state): State<AdminState>) -> Response {
    let Some(node) = state.node.get() else {
        return starting();
    };
    let applied = node.applied();
    let raft = node.raft_status();
    Json(Status {
        node_id: node.identity().node_id.clone(),
        cluster_id: node.identity().cluster_id.clone(),
        role: raft.role,
        term: raft.term,
        leader: raft.leader,
        last_applied: applied.last_applied_index(),
        views_digest: applied.digest_hex(),
        raft,
    })
    .into_response()
}

/// `GET /metrics`: Prometheus text format.
async fn metrics(State(state): State<AdminState>) -> Response {
    if let Some(node) = state.node.get() {
        // The refresh scans the queues view: off the reactor.
        let (metrics, node) = (state.metrics.clone(), node.clone());
        let refreshed = tokio::task::spawn_blocking(move || gauges::refresh(&metrics, &node));
        if let Err(e) = refreshed.await {
            tracing::warn!(error = %e, "the metrics refresh failed");
        }
    }
    match state.metrics.render() {
        Ok(text) => (
            [(axum::http::header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
            text,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("failed to render metrics: {e}\n"),
        )
            .into_response(),
    }
}

/// `GET /cluster/members`: the raft membership as this node applied it.
async fn members(State(state): State<AdminState>) -> Response {
    let Some(node) = state.node.get() else {
        return starting();
    };
    let members = membership::members(node);
    Json(json!({"node_id": node.identity().node_id, "members": members})).into_response()
}

/// Body of `POST /cluster/members`.
#[derive(Deserialize)]
struct AddMember {
    node_id: String,
    /// The URL the node serves peers on (`ws://host:port`).
    url: String,
}

fn membership_answer(result: Result<Vec<String>, Refused>) -> Response {
    match result {
        Ok(members) => Json(json!({"members": members})).into_response(),
        Err(e @ Refused::NotLeader { .. }) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": format!("no leader to change the membership: {e}; retry")})),
        )
            .into_response(),
        Err(e @ Refused::Unavailable(_)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": format!("{e}; retry")})),
        )
            .into_response(),
        Err(e @ (Refused::Uncertain(_) | Refused::Invalid(_))) => {
            (StatusCode::CONFLICT, Json(json!({"error": e.to_string()}))).into_response()
        }
    }
}

/// `POST /cluster/members` `{"node_id","url"}`: adds a running node (as a
/// learner until it caught up, then as a voter).
async fn add_member(
    State(state): State<AdminState>,
    body: Result<Json<AddMember>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Some(node) = state.node.get() else {
        return starting();
    };
    let Json(add) = match body {
        Ok(body) => body,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": format!("expected {{\"node_id\", \"url\"}}: {e}")})),
            )
                .into_response();
        }
    };
    let request = PeerRequest::Join {
        node_id: add.node_id.clone(),
        addr: add.url.clone(),
    };
    let envelope = Envelope::local(&node.identity().cluster_id, request);
    membership_answer(
        membership::join(node, &add.node_id, &add.url, Joining::Running, &envelope).await,
    )
}

/// `DELETE /cluster/members/{node}`: removes a member (node id or raft id).
async fn remove_member(
    State(state): State<AdminState>,
    axum::extract::Path(who): axum::extract::Path<String>,
) -> Response {
    let Some(node) = state.node.get() else {
        return starting();
    };
    let envelope = Envelope::local(
        &node.identity().cluster_id,
        PeerRequest::Remove { node: who.clone() },
    );
    membership_answer(membership::remove(node, &who, &envelope).await)
}

/// `POST /cluster/leave`: this node removes itself from its cluster, then
/// shuts down (exit 0). A node that is only stopped stays a member.
async fn leave(State(state): State<AdminState>) -> Response {
    let Some(node) = state.node.get() else {
        return starting();
    };
    let me = node.identity().node_id.clone();
    let envelope = Envelope::local(
        &node.identity().cluster_id,
        PeerRequest::Remove { node: me.clone() },
    );
    let result = membership::remove(node, &me, &envelope).await;
    if result.is_ok() {
        tracing::info!(node_id = %me, "left the cluster; shutting down");
        let shutdown = state.shutdown.clone();
        tokio::spawn(async move {
            // Let this answer reach the caller first.
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            shutdown.cancel();
        });
    }
    membership_answer(result)
}

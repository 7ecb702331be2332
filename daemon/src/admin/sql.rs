//! SQL on a live node: the engine over the node's data dir, the `raft` row
//! from the running raft, `cache_entries.hits`/`tier` from the cache's
//! memory tier, the `/sql` HTTP handlers, and who may log in on
//! `--pg-listen` ([`PgCredentials`]).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use mpreg_query::{
    CacheTierSource, Format, PeerRow, RaftRow, RaftSource, SqlEngine, SqlError, SqlLimits, format,
};
use mpreg_storage::credential::Action;
use mpreg_storage::event::CacheKey;
use serde::Deserialize;
use serde_json::json;

use super::AdminState;
use crate::auth::{Auth, Principal};
use crate::cache::Cache;
use crate::cluster::{Node, membership};

/// The `raft` row of the running node.
struct LiveRaft(Arc<Node>);

impl RaftSource for LiveRaft {
    fn raft_row(&self) -> mpreg_storage::Result<RaftRow> {
        let node = &self.0;
        let status = node.raft_status();
        let last_applied = node.applied().last_applied_index();
        let leader = status.leader.map(|leader| {
            membership::node_name(node, leader).unwrap_or_else(|| leader.to_string())
        });
        Ok(RaftRow {
            node_id: node.identity().node_id.clone(),
            role: status.role.to_string(),
            term: status.term,
            leader,
            last_log_index: status.last_log_index,
            committed: node.commit_index(),
            last_applied,
            snapshot_index: Some(status.snapshot_index).filter(|&i| i > 0),
        })
    }

    fn peers(&self) -> mpreg_storage::Result<Vec<PeerRow>> {
        let node = &self.0;
        Ok(membership::members(node)
            .into_iter()
            .map(|m| PeerRow {
                peer: m.node_id.unwrap_or_else(|| m.raft_id.to_string()),
                raft_id: m.raft_id,
                last_contact_ms: node.peers().last_contact(&m.addr),
                address: m.addr,
                state: if m.leader { "leader" } else { m.role }.to_string(),
                match_index: m.match_index,
                lag: m.lag,
            })
            .collect())
    }
}

/// `cache_entries.hits`/`tier` from the running cache's memory tier.
impl CacheTierSource for Cache {
    fn memory_hits(&self, key: &CacheKey) -> Option<u64> {
        Cache::memory_hits(self, key)
    }
}

/// PostgreSQL logins, checked against the node's credentials: the user is
/// the credential's name, the password its token, and the credential needs
/// the `sql` permission. With no credentials, anyone connects.
pub struct PgCredentials(pub Arc<Auth>);

impl mpreg_query::pg::PgLogin for PgCredentials {
    fn required(&self) -> bool {
        self.0.is_required()
    }

    fn check(&self, user: &str, password: &str) -> Result<(), String> {
        let principal = self.0.authenticate(Some(password)).map_err(|r| r.message)?;
        if let Principal::Credential { name, .. } = &principal
            && name != user
        {
            return Err(format!(
                "the password is the token of credential {name}, not of user {user}: log in as {name}"
            ));
        }
        self.0
            .authorize(&principal, &[Action::Sql])
            .map_err(|r| r.message)
    }
}

/// The SQL engine of a running node.
pub fn engine(node: Arc<Node>, cache: Arc<Cache>, limits: SqlLimits) -> std::io::Result<SqlEngine> {
    SqlEngine::new(node.inspector(), Arc::new(LiveRaft(node)), cache, limits)
}

/// Query string of `/sql`.
#[derive(Deserialize)]
pub struct SqlParams {
    q: Option<String>,
    format: Option<String>,
}

fn error(status: StatusCode, kind: &str, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into(), "kind": kind}))).into_response()
}

async fn answer(state: &AdminState, sql: Option<String>, format: Option<String>) -> Response {
    let Some(engine) = state.sql() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "starting",
            "the node is starting",
        );
    };
    let format: Format = match format.as_deref().map(str::parse).transpose() {
        Ok(format) => format.unwrap_or_default(),
        Err(message) => return error(StatusCode::BAD_REQUEST, "bad_request", message),
    };
    let Some(sql) = sql.filter(|q| !q.trim().is_empty()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "no SQL: pass it as ?q= or as the POST body",
        );
    };
    let metrics = &state.metrics().sql;
    let timer = metrics.query_seconds.start_timer();
    let result = engine.query(&sql).await;
    timer.observe_duration();
    let outcome = result.as_ref().map_or_else(SqlError::kind, |_| "ok");
    metrics.queries.with_label_values(&[outcome]).inc();
    match result {
        Ok(output) => match format::encode(format, &output) {
            Ok(body) => {
                metrics.rows_returned.inc_by(output.num_rows() as u64);
                (
                    [(header::CONTENT_TYPE, format.content_type())],
                    Body::from(body),
                )
                    .into_response()
            }
            Err(e) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("cannot encode the result as {format:?}: {e}"),
            ),
        },
        Err(e) => {
            let status = if matches!(e, SqlError::Busy(_)) {
                StatusCode::SERVICE_UNAVAILABLE
            } else if e.is_client_error() {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            if matches!(e, SqlError::Internal(_)) {
                tracing::warn!(error = %e, "SQL query failed");
            }
            error(status, e.kind(), e.to_string())
        }
    }
}

/// `GET /sql?q=SQL&format=json|csv|arrow`.
pub async fn get(State(state): State<AdminState>, Query(params): Query<SqlParams>) -> Response {
    answer(&state, params.q, params.format).await
}

/// `POST /sql?format=...` with the SQL as the body.
pub async fn post(
    State(state): State<AdminState>,
    Query(params): Query<SqlParams>,
    body: String,
) -> Response {
    answer(&state, Some(body), params.format).await
}

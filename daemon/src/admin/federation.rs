//! `/federation/*`: list, add and remove links to neighbour clusters,
//! reload the neighbour policies, and rotate this node's signing key.
//!
//! - `GET /federation/links`: every link with its live state;
//! - `POST /federation/links` `{"url":"ws://.."}`: links the cluster of
//!   that node (a URL of this cluster is refused with 400);
//! - `DELETE /federation/links/{cluster}`: removes a link (404 if none);
//! - `POST /federation/reload`: reads the policies from `--config` again;
//! - `POST /federation/rotate-key`: a new signing key for this node; the
//!   old one verifies for `key_overlap_seconds` more.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use serde::Deserialize;
use serde_json::json;

use super::{AdminState, starting};
use crate::federation::FederationError;

fn error(e: FederationError) -> Response {
    let status = match &e {
        FederationError::Invalid(_) => StatusCode::BAD_REQUEST,
        FederationError::NoSuchLink(_) => StatusCode::NOT_FOUND,
        FederationError::Unreachable { .. } => StatusCode::BAD_GATEWAY,
        FederationError::Refused(r) if r.retry_safe() => StatusCode::SERVICE_UNAVAILABLE,
        FederationError::Refused(_) => StatusCode::CONFLICT,
        FederationError::Local(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, Json(json!({"error": e.to_string()}))).into_response()
}

/// `GET /federation/links`.
pub(super) async fn links(State(state): State<AdminState>) -> Response {
    let (Some(node), Some(federation)) = (state.node.get(), state.federation.get()) else {
        return starting();
    };
    let rows: Vec<_> = node
        .views()
        .catalog()
        .links()
        .map(|row| {
            let live = federation.link_runtime(&row.cluster_id).unwrap_or_default();
            json!({
                "cluster_id": row.cluster_id,
                "urls": row.urls,
                "linked_at_ms": row.linked_at_ms,
                "state": if live.state.is_empty() { "unknown" } else { live.state },
                "rtt_ms": live.rtt_us.map(|us| us as f64 / 1000.0),
                "last_seen_ms": live.last_seen_ms,
                "announcements_in": live.announcements_in,
                "announcements_out": live.announcements_out,
                "rejections": live.rejections,
            })
        })
        .collect();
    Json(json!({"cluster_id": node.identity().cluster_id, "links": rows})).into_response()
}

/// Body of `POST /federation/links`.
#[derive(Deserialize)]
pub(super) struct NewLink {
    url: String,
}

/// `POST /federation/links`.
pub(super) async fn link(
    State(state): State<AdminState>,
    body: Result<Json<NewLink>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Some(federation) = state.federation.get() else {
        return starting();
    };
    let Json(new) = match body {
        Ok(body) => body,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": format!("expected {{\"url\": \"ws://host:port\"}}: {e}")})),
            )
                .into_response();
        }
    };
    match federation.link(&new.url).await {
        Ok(cluster_id) => Json(json!({"cluster_id": cluster_id, "url": new.url})).into_response(),
        Err(e) => error(e),
    }
}

/// `DELETE /federation/links/{cluster}`.
pub(super) async fn unlink(
    State(state): State<AdminState>,
    Path(cluster): Path<String>,
) -> Response {
    let Some(federation) = state.federation.get() else {
        return starting();
    };
    match federation.unlink(&cluster).await {
        Ok(()) => Json(json!({"unlinked": cluster})).into_response(),
        Err(e) => error(e),
    }
}

/// `POST /federation/reload`.
pub(super) async fn reload(State(state): State<AdminState>) -> Response {
    let Some(federation) = state.federation.get() else {
        return starting();
    };
    match federation.reload() {
        Ok(()) => Json(json!({"reloaded": true})).into_response(),
        Err(e) => error(e),
    }
}

/// `POST /federation/rotate-key`.
pub(super) async fn rotate_key(State(state): State<AdminState>) -> Response {
    let Some(federation) = state.federation.get() else {
        return starting();
    };
    match federation.rotate_key().await {
        Ok(rotated) => Json(rotated).into_response(),
        Err(e) => error(e),
    }
}

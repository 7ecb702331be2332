//! Admin authentication and `/credentials`.
//!
//! While credentials are required, every admin request presents a token
//! (`Authorization: Bearer` or `X-API-Key`): `/sql` needs the `sql`
//! permission; `/health`, `/status` and `/metrics` none unless
//! `open_health_endpoints = false` (then `sql`); everything else `admin`. Refusals are
//! 401 (no or unknown token) or 403 (not allowed).
//!
//! - `DELETE /credentials/{name}`: revokes a credential on every node (404
//!   if unknown, 409 if already revoked). List them with
//!   `SELECT * FROM credentials`.

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Json, Response};
use mpreg_storage::credential::Action;
use mpreg_storage::{EventKind, Outcome};
use serde_json::json;

use super::{AdminState, starting};
use crate::auth::{self, Refused};

/// The permission a request to `path` needs; `None` for the open ones.
fn needed(path: &str, open_health_endpoints: bool) -> Option<Action<'static>> {
    match path {
        "/health" | "/status" | "/metrics" if open_health_endpoints => None,
        "/sql" | "/health" | "/status" | "/metrics" => Some(Action::Sql),
        _ => Some(Action::Admin),
    }
}

fn refused(refused: Refused) -> Response {
    let status = match refused.reason {
        "missing_token" | "unknown_token" | "revoked" => StatusCode::UNAUTHORIZED,
        _ => StatusCode::FORBIDDEN,
    };
    (status, Json(json!({"error": refused.message}))).into_response()
}

/// Middleware: checks the request's token before any handler runs.
pub(super) async fn check(
    State(state): State<AdminState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(auth) = state.auth.get() else {
        return next.run(request).await;
    };
    let Some(action) = needed(request.uri().path(), state.open_health_endpoints) else {
        return next.run(request).await;
    };
    let token = auth::presented_token(request.headers());
    let allowed = auth
        .authenticate(token.as_deref())
        .and_then(|principal| auth.authorize(&principal, &[action]));
    match allowed {
        Ok(()) => next.run(request).await,
        Err(refusal) => refused(refusal),
    }
}

/// `DELETE /credentials/{name}`.
pub(super) async fn revoke(State(state): State<AdminState>, Path(name): Path<String>) -> Response {
    let Some(node) = state.node.get() else {
        return starting();
    };
    let unknown = node.views().catalog().credential(&name).is_none();
    if unknown {
        let error = format!("unknown credential {name}");
        return (StatusCode::NOT_FOUND, Json(json!({"error": error}))).into_response();
    }
    match node
        .propose(EventKind::CredentialRevoked { name: name.clone() })
        .await
    {
        Ok(Outcome::Rejected { reason }) => {
            (StatusCode::CONFLICT, Json(json!({"error": reason}))).into_response()
        }
        Ok(_) => Json(json!({"revoked": name})).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": e.to_string()})),
        )
            .into_response(),
    }
}

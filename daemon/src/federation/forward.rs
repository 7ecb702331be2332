//! Carrying a request to another cluster along the routes: the best usable
//! route to the target within the hop budget, one member of its next hop
//! reached over the link's URLs, and the envelope's `federation_path`,
//! `hop_budget` and `target_cluster` checked and passed on. When no member
//! of a next hop can be reached (nothing was sent), the next best route is
//! tried; once something was sent, a failure is reported as such, since the
//! request may have run.

use std::time::Duration;

use mpreg_client::protocol::ErrorCode;
use mpreg_storage::federation::{ranked_to, usable};

use super::Federation;
use crate::clock::now_ms;
use crate::cluster::peer::PeerError;
use crate::envelope::{FederationReply, FederationRequest, PeerReply, PeerRequest, Refused};

/// Where a request is going and where it has been.
#[derive(Clone, Debug)]
pub struct Routing {
    pub target: String,
    /// Clusters crossed so far, the origin first.
    pub path: Vec<String>,
    /// Cluster hops the request may still cross.
    pub budget: u8,
}

/// Why a request did not reach its target cluster, or its answer did not
/// come back. Only [`ForwardError::Uncertain`] and
/// [`ForwardError::Timeout`] may have let it run.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("cluster {at} has no route to cluster {target}")]
    NoRoute { at: String, target: String },
    #[error(
        "cluster {target} is {hops} cluster hops from {at}, beyond the hop budget of {budget}; nothing was sent"
    )]
    HopBudget {
        at: String,
        target: String,
        hops: u32,
        budget: u8,
    },
    #[error("loop: a request for cluster {target} came back to {at} (federation path {path:?})")]
    Loop {
        at: String,
        target: String,
        path: Vec<String>,
    },
    #[error(
        "no member of cluster {next_hop} (next hop from {at} toward {target}) could be reached: {reason}; nothing was sent"
    )]
    Unreachable {
        at: String,
        target: String,
        next_hop: String,
        reason: String,
    },
    #[error(
        "the link from {at} to {next_hop} failed mid-request toward {target}: {reason}; it may have run"
    )]
    Uncertain {
        at: String,
        target: String,
        next_hop: String,
        reason: String,
    },
    #[error(
        "no answer from {url} (cluster {next_hop}, toward {target}) within {after:?}; it may have run"
    )]
    Timeout {
        target: String,
        next_hop: String,
        url: String,
        after: Duration,
    },
    #[error("cluster {next_hop} refused the request for {target}: {refused}")]
    Refused {
        target: String,
        next_hop: String,
        refused: Refused,
    },
}

impl ForwardError {
    /// The client error code that reports this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            ForwardError::NoRoute { .. } => ErrorCode::NoRoute,
            ForwardError::HopBudget { .. } => ErrorCode::HopBudgetExhausted,
            ForwardError::Loop { .. } => ErrorCode::LoopDetected,
            ForwardError::Unreachable { .. } | ForwardError::Uncertain { .. } => {
                ErrorCode::LinkFailed
            }
            ForwardError::Timeout { .. } => ErrorCode::Timeout,
            ForwardError::Refused { .. } => ErrorCode::Unavailable,
        }
    }
}

/// Across nodes, a failed forward says whether it can have run.
impl From<ForwardError> for Refused {
    fn from(e: ForwardError) -> Self {
        match e {
            ForwardError::Refused { refused, .. } => refused,
            ForwardError::Uncertain { .. } | ForwardError::Timeout { .. } => {
                Refused::Uncertain(e.to_string())
            }
            ForwardError::Unreachable { .. } => Refused::Unavailable(e.to_string()),
            ForwardError::NoRoute { .. }
            | ForwardError::HopBudget { .. }
            | ForwardError::Loop { .. } => Refused::Invalid(e.to_string()),
        }
    }
}

/// One way toward the target: a neighbour, the hops from here through it,
/// and its members' URLs.
struct Way {
    next_hop: String,
    hops: u32,
    urls: Vec<String>,
}

impl Federation {
    /// Most cluster hops a request sent from this cluster may cross.
    pub fn hop_budget(&self) -> u8 {
        self.settings().hop_budget
    }

    /// Cluster hops of the best usable route to `dest`, if there is one.
    pub fn route_hops(&self, dest: &str) -> Option<u32> {
        let now = now_ms();
        let catalog = self.node.views().catalog();
        ranked_to(&catalog, dest, now)
            .into_iter()
            .find(|row| usable(row, now))
            .map(|row| row.route.metrics.hops)
    }

    /// The usable routes to `target`, best first, that avoid `path`.
    fn ways(&self, target: &str, path: &[String]) -> Vec<Way> {
        let now = now_ms();
        let catalog = self.node.views().catalog();
        ranked_to(&catalog, target, now)
            .into_iter()
            .filter(|row| usable(row, now) && !path.contains(&row.route.next_hop))
            .map(|row| Way {
                next_hop: row.route.next_hop.clone(),
                hops: row.route.metrics.hops,
                urls: catalog
                    .link(&row.route.next_hop)
                    .map(|link| link.urls.clone())
                    .unwrap_or_default(),
            })
            .collect()
    }

    /// Sends `request` one cluster closer to `routing.target` and waits,
    /// at most `timeout`, for the answer that comes back the same way.
    pub async fn forward(
        &self,
        request: FederationRequest,
        routing: &Routing,
        timeout: Duration,
    ) -> Result<FederationReply, ForwardError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let at = self.local().to_string();
        let target = routing.target.clone();
        if routing.path.contains(&at) {
            return Err(ForwardError::Loop {
                at,
                target,
                path: routing.path.clone(),
            });
        }
        let ways = self.ways(&target, &routing.path);
        let Some(fewest) = ways.iter().map(|w| w.hops).min() else {
            return Err(ForwardError::NoRoute { at, target });
        };
        if fewest > u32::from(routing.budget) {
            return Err(ForwardError::HopBudget {
                at,
                target,
                hops: fewest,
                budget: routing.budget,
            });
        }
        let mut path = routing.path.clone();
        path.push(at.clone());
        let mut last = None;
        for way in ways
            .into_iter()
            .filter(|w| w.hops <= u32::from(routing.budget))
        {
            for url in &way.urls {
                let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
                let sent = self
                    .node
                    .peers()
                    .request_across(
                        url,
                        PeerRequest::Federation(request.clone()),
                        (path.clone(), routing.budget - 1, &target),
                        remaining,
                    )
                    .await;
                let next_hop = way.next_hop.clone();
                match sent {
                    Ok(PeerReply::Federation(Ok(reply))) => return Ok(reply),
                    Ok(PeerReply::Federation(Err(refused)) | PeerReply::Refused(refused)) => {
                        return Err(ForwardError::Refused {
                            target,
                            next_hop,
                            refused,
                        });
                    }
                    Ok(other) => {
                        return Err(ForwardError::Uncertain {
                            at,
                            target,
                            next_hop,
                            reason: format!("unexpected reply {other:?}"),
                        });
                    }
                    Err(PeerError::Timeout { after, .. }) => {
                        tracing::warn!(%url, %next_hop, %target, ?after, "a request to another cluster was not answered in time");
                        return Err(ForwardError::Timeout {
                            target,
                            next_hop,
                            url: url.clone(),
                            after,
                        });
                    }
                    Err(e @ PeerError::Closed { .. }) => {
                        return Err(ForwardError::Uncertain {
                            at,
                            target,
                            next_hop,
                            reason: e.to_string(),
                        });
                    }
                    Err(
                        e @ (PeerError::Unreachable { .. } | PeerError::Unauthenticated { .. }),
                    ) => {
                        tracing::debug!(%url, error = %e, "member of the next hop unreachable");
                        last = Some((next_hop, e.to_string()));
                    }
                }
            }
            if last.is_none() {
                last = Some((way.next_hop, "the link has no member URLs".to_string()));
            }
        }
        let (next_hop, reason) = last.unwrap_or_default();
        Err(ForwardError::Unreachable {
            at,
            target,
            next_hop,
            reason,
        })
    }
}

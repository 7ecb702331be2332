//! Federation: this cluster's links to neighbour clusters and the
//! path-vector route control over them. Entry type [`Federation`].
//!
//! The raft leader speaks for the cluster: it dials each neighbour
//! ([`speaker`]), sends it the whole route table on an interval and at once
//! when the table changes, measures each link's round trip, and withdraws
//! the routes of a link that answers nothing for `link_dead_seconds`. It
//! judges what neighbours announce ([`receive`]) and proposes what it
//! accepts as events, so every member holds the same routes, a restart
//! replays them, and a new leader carries on from the views. Links and
//! routes are views; what is kept only in memory is each link's live state
//! (up or down, round trip, counters), shown by `federation_links`.
//!
//! Each table also carries the catalog summaries the cluster holds, its
//! own first ([`summary`]), which the receiver takes like routes; and
//! requests for other clusters travel along the routes ([`forward`]).
//!
//! Tables are signed with this node's key ([`keys`]); the cluster's public
//! keys are on its log (`route_keys`), and each table carries them, so a
//! neighbour learns a rotated key or a new leader's key under a signature
//! it already trusts.

mod forward;
mod keys;
mod receive;
mod speaker;
mod summary;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use mpreg_storage::EventKind;
use mpreg_storage::federation::{
    Announcement, CatalogAd, ExportContext, KeyAd, TableSignature, table_bytes,
};
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::cluster::{Node, membership};
use crate::config::{FederationSettings, FileConfig, is_node_url};
use crate::envelope::{FederationReply, FederationRequest, PeerReply, PeerRequest, Refused};
use crate::error::Result;
use crate::metrics::FederationMetrics;
pub use forward::{ForwardError, Routing};
use keys::NodeKeys;
use summary::OwnSummary;

/// Longest a request to a neighbour may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Most member URLs kept per link.
const MAX_LINK_URLS: usize = 16;

/// What this node knows of one link while it runs (kept in memory).
#[derive(Clone, Debug, Default)]
pub struct LinkRuntime {
    /// `up`, `down`, `connecting`, or `standby` on a member that is not the
    /// leader.
    pub state: &'static str,
    pub rtt_us: Option<u64>,
    pub last_seen_ms: Option<u64>,
    pub announcements_in: u64,
    pub announcements_out: u64,
    pub rejections: BTreeMap<&'static str, u64>,
    /// Highest epoch of a table taken from the neighbour: an older table
    /// (replayed, or late) is refused whole.
    pub table_epoch: u64,
}

/// Links to neighbour clusters and route control.
pub struct Federation {
    node: Arc<Node>,
    settings: RwLock<FederationSettings>,
    /// Read again by [`Federation::reload`].
    config_file: Option<PathBuf>,
    metrics: FederationMetrics,
    links: Mutex<BTreeMap<String, LinkRuntime>>,
    /// The last epoch this node announced with.
    epoch: AtomicU64,
    /// Clusters unlinked lately, by when: their announcements still in
    /// flight must not link them again.
    unlinked: Mutex<BTreeMap<String, std::time::Instant>>,
    /// This node's signing keys.
    keys: RwLock<Arc<NodeKeys>>,
    own_summary: OwnSummary,
}

/// A rotated key: the new one, and until when the previous one verifies.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RotatedKey {
    pub key_id: String,
    pub public_key: String,
    pub previous_key_id: String,
    pub previous_expires_at_ms: u64,
}

/// How long an unlinked cluster's announcements are refused.
const UNLINK_QUARANTINE: Duration = Duration::from_secs(30);

/// Why a federation admin operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    #[error("{0}")]
    Invalid(String),
    #[error("no link to cluster {0}")]
    NoSuchLink(String),
    #[error("{url} did not answer: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{0}")]
    Refused(#[from] Refused),
    /// This node's own state failed (its key file).
    #[error("{0}")]
    Local(String),
}

impl Federation {
    /// Starts speaking for the cluster whenever this node leads it; opens
    /// (or creates) this node's signing keys in `data_dir`.
    pub fn start(
        node: Arc<Node>,
        settings: FederationSettings,
        config_file: Option<PathBuf>,
        data_dir: &Path,
        metrics: FederationMetrics,
        shutdown: CancellationToken,
    ) -> Result<Arc<Federation>> {
        let keys = NodeKeys::open(data_dir, now_ms())?;
        let federation = Arc::new(Federation {
            node,
            settings: RwLock::new(settings),
            config_file,
            metrics,
            links: Mutex::default(),
            epoch: AtomicU64::new(0),
            unlinked: Mutex::default(),
            keys: RwLock::new(Arc::new(keys)),
            own_summary: OwnSummary::default(),
        });
        tokio::spawn(speaker::run(federation.clone(), shutdown));
        Ok(federation)
    }

    fn keys(&self) -> Arc<NodeKeys> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// This cluster's keys as a table carries them: those on the log that
    /// still verify, and this node's own (it signs), which is primary.
    fn key_ad(&self, now_ms: u64) -> KeyAd {
        let keys = self.keys();
        let own = keys.current();
        let mut ad = self
            .node
            .views()
            .catalog()
            .route_keys(self.local())
            .cloned()
            .unwrap_or_else(|| KeyAd {
                cluster_id: self.local().to_string(),
                keys: Vec::new(),
                primary_key_id: own.key_id.clone(),
            });
        ad.keys.retain(|k| k.active(now_ms));
        if !ad.keys.iter().any(|k| k.key_id == own.key_id) {
            ad.keys.push(own.clone());
        }
        ad.primary_key_id = own.key_id.clone();
        ad.normalized()
    }

    /// Signs the table this cluster sends: by every key of this node that
    /// still verifies.
    fn sign_table(
        &self,
        urls: &[String],
        routes: &[Announcement],
        keys: &KeyAd,
        catalogs: &[CatalogAd],
        now_ms: u64,
    ) -> Vec<TableSignature> {
        let bytes = table_bytes(self.local(), urls, routes, Some(keys), catalogs);
        self.keys().sign(&bytes, now_ms)
    }

    /// Replaces this node's signing key (admin `POST
    /// /federation/rotate-key`): the new key goes on the log (primary when
    /// this node leads) and the old one verifies, and signs, for
    /// `key_overlap_seconds` more.
    pub async fn rotate_key(&self) -> std::result::Result<RotatedKey, FederationError> {
        let now = now_ms();
        let overlap = self.settings().key_overlap.as_millis() as u64;
        let expires_at_ms = now.saturating_add(overlap);
        let previous = {
            let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
            let rotated = keys
                .rotate(now, expires_at_ms)
                .map_err(|e| FederationError::Local(e.to_string()))?;
            std::mem::replace(&mut *keys, Arc::new(rotated))
        };
        let old = previous.current().clone();
        let new = self.keys().current().clone();
        let local = self.local().to_string();
        self.propose(vec![
            EventKind::RouteKeyAdded {
                cluster_id: local.clone(),
                key: new.clone(),
                primary: self.node.is_leader(),
            },
            EventKind::RouteKeyRetired {
                cluster_id: local,
                key_id: old.key_id.clone(),
                expires_at_ms,
            },
        ])
        .await?;
        Ok(RotatedKey {
            key_id: new.key_id,
            public_key: new.public_key,
            previous_key_id: old.key_id,
            previous_expires_at_ms: expires_at_ms,
        })
    }

    fn settings(&self) -> FederationSettings {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn local(&self) -> &str {
        &self.node.identity().cluster_id
    }

    fn runtime<T>(&self, cluster: &str, f: impl FnOnce(&mut LinkRuntime) -> T) -> T {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        f(links.entry(cluster.to_string()).or_default())
    }

    /// The live state of the link to `cluster`, if this node has one.
    pub fn link_runtime(&self, cluster: &str) -> Option<LinkRuntime> {
        let links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        links.get(cluster).cloned()
    }

    fn mark_unlinked(&self, cluster: &str) {
        let mut unlinked = self.unlinked.lock().unwrap_or_else(|e| e.into_inner());
        unlinked.retain(|_, at| at.elapsed() < UNLINK_QUARANTINE);
        unlinked.insert(cluster.to_string(), std::time::Instant::now());
        self.links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(cluster);
    }

    /// Whether `cluster` was unlinked within [`UNLINK_QUARANTINE`].
    fn recently_unlinked(&self, cluster: &str) -> bool {
        let unlinked = self.unlinked.lock().unwrap_or_else(|e| e.into_inner());
        unlinked
            .get(cluster)
            .is_some_and(|at| at.elapsed() < UNLINK_QUARANTINE)
    }

    /// An epoch above every one this node used (announcement time in ms,
    /// so a new leader starts above its predecessor's).
    fn next_epoch(&self) -> u64 {
        let now = now_ms();
        let mut current = self.epoch.load(Ordering::Relaxed);
        loop {
            let next = now.max(current + 1);
            match self
                .epoch
                .compare_exchange(current, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(seen) => current = seen,
            }
        }
    }

    /// Client URLs of this cluster's members, and its leader's.
    fn own_urls(&self) -> (Vec<String>, Option<String>) {
        let urls = membership::members(&self.node)
            .into_iter()
            .map(|m| m.addr)
            .take(MAX_LINK_URLS)
            .collect();
        let leader = self.node.leader().and_then(|id| self.node.member_addr(id));
        (urls, leader)
    }

    /// Answers a request from a neighbour cluster (calls, messages and
    /// cache requests excepted: the peer server hands them to RPC, pub/sub
    /// and the cache).
    pub async fn handle(&self, request: FederationRequest) -> Result<FederationReply, Refused> {
        match request {
            FederationRequest::Hello { .. } => {
                let (urls, leader_url) = self.own_urls();
                Ok(FederationReply::Hello {
                    cluster_id: self.local().to_string(),
                    urls,
                    leader_url,
                })
            }
            FederationRequest::Ping => Ok(FederationReply::Pong),
            FederationRequest::Announce {
                cluster_id,
                urls,
                routes,
                keys,
                catalogs,
                signatures,
            } => {
                let table = receive::Table {
                    sender: cluster_id,
                    urls,
                    routes,
                    keys,
                    catalogs,
                    signatures,
                };
                receive::announce(self, table).await
            }
            FederationRequest::Call(_)
            | FederationRequest::Publish { .. }
            | FederationRequest::Cache { .. } => Err(Refused::Invalid(
                "calls, messages and cache requests are answered by RPC, pub/sub and the cache, not here"
                    .to_string(),
            )),
            FederationRequest::Unlink { cluster_id } => {
                if !self.node.is_leader() {
                    let (_, leader_url) = self.own_urls();
                    return Ok(FederationReply::NotLeader { leader_url });
                }
                self.mark_unlinked(&cluster_id);
                if self.node.views().catalog().link(&cluster_id).is_some() {
                    self.propose(vec![EventKind::FederationUnlinked { cluster_id }])
                        .await?;
                }
                Ok(FederationReply::Unlinked)
            }
        }
    }

    async fn propose(&self, events: Vec<EventKind>) -> Result<(), Refused> {
        if events.is_empty() {
            return Ok(());
        }
        for outcome in self.node.propose_all(events).await? {
            if let mpreg_storage::Outcome::Rejected { reason } = outcome {
                tracing::warn!(%reason, "a federation event was refused");
            }
        }
        Ok(())
    }

    /// Asks the node at `url` which cluster it is in.
    async fn hello(
        &self,
        url: &str,
    ) -> Result<(String, Vec<String>, Option<String>), FederationError> {
        let request = FederationRequest::Hello {
            cluster_id: self.local().to_string(),
        };
        match self.request(url, request).await? {
            FederationReply::Hello {
                cluster_id,
                urls,
                leader_url,
            } => Ok((cluster_id, urls, leader_url)),
            other => Err(FederationError::Unreachable {
                url: url.to_string(),
                reason: format!("answered Hello with {other:?}"),
            }),
        }
    }

    async fn request(
        &self,
        url: &str,
        request: FederationRequest,
    ) -> Result<FederationReply, FederationError> {
        let unreachable = |reason: String| FederationError::Unreachable {
            url: url.to_string(),
            reason,
        };
        let reply = self
            .node
            .peers()
            .request(url, PeerRequest::Federation(request), REQUEST_TIMEOUT)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        match reply {
            PeerReply::Federation(Ok(reply)) => Ok(reply),
            PeerReply::Federation(Err(refused)) | PeerReply::Refused(refused) => {
                Err(unreachable(refused.to_string()))
            }
            other => Err(unreachable(format!("unexpected reply {other:?}"))),
        }
    }

    /// Links the cluster of the node at `url` (admin `POST
    /// /federation/links`); its id. A URL of this cluster is refused.
    pub async fn link(&self, url: &str) -> Result<String, FederationError> {
        if !is_node_url(url) {
            return Err(FederationError::Invalid(format!(
                "{url:?} is not a node URL: expected ws://host:port"
            )));
        }
        let (cluster_id, urls, _) = self.hello(url).await?;
        if cluster_id == self.local() {
            return Err(FederationError::Invalid(format!(
                "{url} is a member of this cluster ({cluster_id}); a cluster does not link to itself"
            )));
        }
        self.unlinked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&cluster_id);
        let mut all = vec![url.to_string()];
        all.extend(urls.into_iter().filter(|u| u != url));
        all.truncate(MAX_LINK_URLS);
        self.propose(vec![EventKind::FederationLinked {
            cluster_id: cluster_id.clone(),
            urls: all,
        }])
        .await?;
        Ok(cluster_id)
    }

    /// Removes the link to `cluster` (admin `DELETE
    /// /federation/links/{cluster}`), telling the neighbour first so it
    /// does not link back.
    pub async fn unlink(&self, cluster: &str) -> Result<(), FederationError> {
        let urls = match self.node.views().catalog().link(cluster) {
            Some(row) => row.urls.clone(),
            None => return Err(FederationError::NoSuchLink(cluster.to_string())),
        };
        self.mark_unlinked(cluster);
        let request = || FederationRequest::Unlink {
            cluster_id: self.local().to_string(),
        };
        for url in &urls {
            match self.request(url, request()).await {
                Ok(FederationReply::NotLeader {
                    leader_url: Some(leader),
                }) => {
                    if self.request(&leader, request()).await.is_ok() {
                        break;
                    }
                }
                Ok(_) => break,
                Err(e) => tracing::debug!(error = %e, "neighbour not told of the unlink"),
            }
        }
        self.propose(vec![EventKind::FederationUnlinked {
            cluster_id: cluster.to_string(),
        }])
        .await?;
        Ok(())
    }

    /// Reads the neighbour policies (and damping) from the config file
    /// again; they apply to messages from now on.
    pub fn reload(&self) -> Result<(), FederationError> {
        let Some(path) = &self.config_file else {
            return Err(FederationError::Invalid(
                "the daemon was started without --config: there is nothing to reload".into(),
            ));
        };
        let file = FileConfig::load(path).map_err(|e| FederationError::Invalid(e.to_string()))?;
        let mut settings = self.settings.write().unwrap_or_else(|e| e.into_inner());
        settings.import = file.import_policy.unwrap_or_default();
        settings.export = file.export_policy.unwrap_or_default();
        tracing::info!(path = %path.display(), "federation policies reloaded");
        Ok(())
    }
}

impl mpreg_query::LinkStateSource for Federation {
    fn link_state(&self, cluster_id: &str) -> Option<mpreg_query::LinkState> {
        let live = self.link_runtime(cluster_id)?;
        Some(mpreg_query::LinkState {
            state: live.state.to_string(),
            rtt_ms: live.rtt_us.map(|us| us as f64 / 1000.0),
            last_seen_ms: live.last_seen_ms,
            announcements_in: live.announcements_in,
            announcements_out: live.announcements_out,
            rejections: live
                .rejections
                .iter()
                .map(|(reason, count)| (reason.to_string(), *count))
                .collect(),
        })
    }
}

/// The route table this cluster announces to `to` now (see
/// [`mpreg_storage::federation::export_table`]).
fn export_table(
    federation: &Federation,
    to: &str,
    settings: &FederationSettings,
) -> Vec<Announcement> {
    let policy = settings.export.lookup(to);
    let ctx = ExportContext {
        local: federation.local(),
        to,
        now_ms: now_ms(),
        epoch: federation.next_epoch(),
        ttl_ms: settings.route_ttl.as_millis() as u64,
        policy: &policy,
    };
    mpreg_storage::federation::export_table(&federation.node.views().catalog(), &ctx)
}

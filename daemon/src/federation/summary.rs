//! This cluster's catalog summary as its leader advertises it: rebuilt
//! when an entry was applied, and given a new epoch when its content
//! changed or a third of the route TTL passed, so a neighbour holding it
//! never lets it expire while this cluster lives.

use std::sync::Mutex;
use std::time::Instant;

use mpreg_storage::Flow;
use mpreg_storage::federation::{CatalogAd, CatalogSummary, MAX_SUMMARY_ENTRIES};
use mpreg_storage::views::{BUILTIN_PROVIDER, QueueRow, View};

use super::Federation;

/// The summary last advertised.
#[derive(Default)]
pub(super) struct OwnSummary {
    advertised: Mutex<Option<Advertised>>,
}

struct Advertised {
    ad: CatalogAd,
    /// The applied index it was built at.
    index: u64,
    /// When its epoch was given.
    at: Instant,
}

impl Federation {
    /// This cluster's summary, as sent now.
    pub(super) fn own_summary(&self) -> CatalogAd {
        let index = self.node.applied().last_applied_index();
        let refresh = self.settings().route_ttl / 3;
        let mut advertised = self
            .own_summary
            .advertised
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(a) = advertised.as_ref()
            && a.index == index
            && a.at.elapsed() < refresh
        {
            return a.ad.clone();
        }
        let stores = (self.queue_names(), self.cache_namespaces());
        let summary = CatalogSummary::of(
            &self.node.views().catalog(),
            self.local(),
            BUILTIN_PROVIDER,
            stores,
        );
        if let Some(a) = advertised.as_mut()
            && a.ad.summary == summary
            && a.at.elapsed() < refresh
        {
            a.index = index;
            return a.ad.clone();
        }
        let ad = CatalogAd {
            cluster_id: self.local().to_string(),
            epoch: self.next_epoch(),
            summary,
        };
        *advertised = Some(Advertised {
            ad: ad.clone(),
            index,
            at: Instant::now(),
        });
        ad
    }

    /// The cache namespaces this cluster holds entries of (a read error
    /// leaves them out of this summary, and is logged).
    fn cache_namespaces(&self) -> Vec<String> {
        self.node
            .inspector()
            .cache_namespaces(MAX_SUMMARY_ENTRIES)
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cache namespaces left out of the catalog summary");
                Vec::new()
            })
    }

    /// The queues declared in this cluster (the queue view's rows; a read
    /// error leaves them out of this summary, and is logged).
    fn queue_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        let scanned = self
            .node
            .inspector()
            .scan_view(View::Queues, &[], |row: QueueRow| {
                names.push(row.name);
                Flow::Continue
            });
        if let Err(e) = scanned {
            tracing::warn!(error = %e, "queues left out of the catalog summary");
        }
        names
    }
}

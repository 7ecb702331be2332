//! Pub/sub across clusters. A message published here goes to every other
//! cluster whose catalog summary has a subscription pattern matching its
//! topic, and to no other, along the routes: once per cluster (each is the
//! target of its own copy, so rings and meshes deliver no duplicate, and
//! `federation_path` stops loops). Per target cluster one task carries the
//! messages in publish order, in batches, each answered before the next
//! leaves, so a subscriber anywhere sees each publisher's messages in
//! order. Delivery is at most once, as within a cluster: a batch that
//! fails is counted and not sent again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mpreg_storage::federation::live;
use mpreg_storage::topic::pattern_matches;
use prometheus::IntCounterVec;
use tokio::sync::mpsc;

use super::Queued;
use crate::clock::now_ms;
use crate::cluster::Node;
use crate::envelope::{FederationReply, FederationRequest};
use crate::federation::{Federation, Routing};

/// Messages waiting for one cluster; past this a message for it is
/// dropped (and counted), so a publisher never waits for another cluster.
const OUTBOX_CAPACITY: usize = 10_000;
/// Most messages one request carries.
const MAX_BATCH: usize = 256;
/// Longest a batch waits for the target cluster's answer.
pub(super) const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// One outbox per target cluster, each drained by its own task.
pub(super) struct Outboxes {
    node: Arc<Node>,
    federation: Arc<Federation>,
    boxes: Mutex<HashMap<String, mpsc::Sender<Queued>>>,
    counts: IntCounterVec,
}

impl Outboxes {
    pub(super) fn new(node: Arc<Node>, federation: Arc<Federation>, counts: IntCounterVec) -> Self {
        Outboxes {
            node,
            federation,
            boxes: Mutex::default(),
            counts,
        }
    }

    /// Queues `message` for every other cluster with a subscription
    /// matching `topic`.
    pub(super) fn send(&self, topic: &str, message: &Queued) {
        let now = now_ms();
        let targets: Vec<String> = self
            .node
            .views()
            .catalog()
            .remote_catalogs()
            .filter(|row| live(row, now))
            .filter(|row| {
                row.ad
                    .summary
                    .topics
                    .iter()
                    .any(|p| pattern_matches(p, topic))
            })
            .map(|row| row.ad.cluster_id.clone())
            .collect();
        if targets.is_empty() {
            return;
        }
        let mut boxes = self.boxes.lock().unwrap_or_else(|e| e.into_inner());
        for target in targets {
            let outbox = boxes.entry(target.clone()).or_insert_with(|| {
                let (tx, rx) = mpsc::channel(OUTBOX_CAPACITY);
                tokio::spawn(carry(
                    self.federation.clone(),
                    target.clone(),
                    rx,
                    self.counts.clone(),
                ));
                tx
            });
            if outbox.try_send(message.clone()).is_err() {
                self.counts.with_label_values(&["dropped"]).inc();
                tracing::debug!(%target, "outbox full: message for another cluster dropped");
            }
        }
    }
}

/// Carries the messages for `target`, in order, until the outbox closes.
async fn carry(
    federation: Arc<Federation>,
    target: String,
    mut outbox: mpsc::Receiver<Queued>,
    counts: IntCounterVec,
) {
    while let Some(first) = outbox.recv().await {
        let mut messages = vec![first.to_string()];
        while messages.len() < MAX_BATCH {
            match outbox.try_recv() {
                Ok(next) => messages.push(next.to_string()),
                Err(_) => break,
            }
        }
        let count = messages.len() as u64;
        let routing = Routing {
            target: target.clone(),
            path: Vec::new(),
            budget: federation.hop_budget(),
        };
        let request = FederationRequest::Publish { messages };
        match federation.forward(request, &routing, SEND_TIMEOUT).await {
            Ok(FederationReply::Published { .. }) => {
                counts.with_label_values(&["sent"]).inc_by(count);
            }
            Ok(other) => {
                counts.with_label_values(&["failed"]).inc_by(count);
                tracing::warn!(%target, ?other, "messages for another cluster refused");
            }
            Err(e) => {
                counts.with_label_values(&["failed"]).inc_by(count);
                tracing::warn!(%target, error = %e, count, "messages for another cluster not delivered");
            }
        }
    }
}

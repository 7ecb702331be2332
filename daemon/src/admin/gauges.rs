//! The gauges `/metrics` reads from the running node when scraped: raft
//! positions, members and their lag, log size, queue depths.

use mpreg_storage::Flow;
use mpreg_storage::views::{QueueRow, View};

use crate::clock::now_ms;
use crate::cluster::{Node, membership};
use crate::metrics::{Metrics, OTHER_LABEL};

/// Sets the gauges read at scrape time (raft, log size, members, queue
/// depths) from `node`.
pub fn refresh(metrics: &Metrics, node: &Node) {
    let status = node.raft_status();
    let applied = node.applied().last_applied_index();
    let committed = node.commit_index();
    let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    metrics.raft.term.set(as_i64(status.term));
    metrics
        .raft
        .is_leader
        .set(i64::from(status.role == "leader"));
    metrics
        .raft
        .last_log_index
        .set(as_i64(status.last_log_index));
    metrics.raft.commit_index.set(as_i64(committed));
    metrics.raft.last_applied_index.set(as_i64(applied));
    metrics
        .raft
        .apply_lag
        .set(as_i64(committed.saturating_sub(applied)));
    if let Ok(bytes) = node.inspector().log_bytes() {
        metrics.raft.log_bytes.set(as_i64(bytes));
    }
    metrics.raft.has_leader.set(i64::from(node.has_leader()));
    metrics.raft.peer_lag.reset();
    metrics.raft.peer_contact_age.reset();
    let now = now_ms();
    let members = membership::members(node);
    metrics.raft.voters.set(as_i64(
        members.iter().filter(|m| m.role == "voter").count() as u64
    ));
    for member in members {
        let name = member.node_id.unwrap_or_else(|| member.raft_id.to_string());
        if let Some(lag) = member.lag {
            metrics
                .raft
                .peer_lag
                .with_label_values(&[&name])
                .set(as_i64(lag));
        }
        if let Some(at) = node.peers().last_contact(&member.addr) {
            metrics
                .raft
                .peer_contact_age
                .with_label_values(&[&name])
                .set(as_i64(now.saturating_sub(at)));
        }
    }
    metrics.queue.depth.reset();
    metrics.queue.in_flight.reset();
    // The first `max_queue_labels` queues (in name order) get their own
    // series; the rest are summed under `_other`.
    let mut queues = 0;
    let (mut other_depth, mut other_in_flight) = (0, 0);
    let _ = node
        .inspector()
        .scan_view(View::Queues, &[], |q: QueueRow| {
            queues += 1;
            if queues > metrics.max_queue_labels {
                other_depth += q.ready + q.delayed;
                other_in_flight += q.in_flight;
                return Flow::Continue;
            }
            let name = [q.name.as_str()];
            metrics
                .queue
                .depth
                .with_label_values(&name)
                .set(as_i64(q.ready + q.delayed));
            metrics
                .queue
                .in_flight
                .with_label_values(&name)
                .set(as_i64(q.in_flight));
            Flow::Continue
        });
    if queues > metrics.max_queue_labels {
        let other = [OTHER_LABEL];
        metrics
            .queue
            .depth
            .with_label_values(&other)
            .set(as_i64(other_depth));
        metrics
            .queue
            .in_flight
            .with_label_values(&other)
            .set(as_i64(other_in_flight));
    }
}

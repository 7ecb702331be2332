//! The timer task: when the earliest timer (queue delay end, lease expiry,
//! message TTL, dedup window, cache entry TTL) is due and this node leads,
//! it proposes `TimersFired`; apply then fires every timer due at the
//! event's time. Apply never reads a clock.

use std::sync::Arc;
use std::time::Duration;

use mpreg_storage::views::{Timer, View};
use mpreg_storage::{EventKind, Outcome};

use super::Queues;

/// Most timers one event fires.
const MAX_FIRED: u32 = 1024;
/// Longest sleep between looks at the earliest timer (new timers appear
/// with sends, nacks and leases without waking this task).
const MAX_SLEEP: Duration = Duration::from_millis(100);

/// Due time of the earliest pending timer (read off the reactor: the seek
/// may step over many deleted timers).
async fn earliest_due(queues: &Queues) -> Option<u64> {
    let inspector = queues.node.inspector();
    let first = tokio::task::spawn_blocking(move || inspector.first_key(View::QueueTimers))
        .await
        .map_err(|e| mpreg_storage::Error::Task(e.to_string()))
        .and_then(|read| read);
    match first {
        Ok(key) => key.and_then(|k| Timer::from_key(&k)).map(|t| t.due_ms),
        Err(e) => {
            tracing::warn!(error = %e, "failed to read queue timers");
            None
        }
    }
}

pub(super) async fn run(queues: Arc<Queues>) {
    loop {
        let now = queues.node.event_now();
        // Only the leader proposes firings; every node applies them.
        let due = if queues.node.is_leader() {
            earliest_due(&queues).await
        } else {
            None
        };
        let sleep = match due {
            Some(due) if due <= now => match fire(&queues).await {
                Some(true) => Duration::ZERO,
                _ => Duration::from_millis(10),
            },
            Some(due) => Duration::from_millis(due - now).min(MAX_SLEEP),
            None => MAX_SLEEP,
        };
        tokio::select! {
            () = tokio::time::sleep(sleep) => {}
            () = queues.shutdown.cancelled() => return,
        }
    }
}

/// Proposes one `TimersFired`; `Some(true)` when more are due.
async fn fire(queues: &Queues) -> Option<bool> {
    let outcome = queues
        .propose(EventKind::TimersFired { max: MAX_FIRED })
        .await;
    let fired = match outcome {
        Ok(Outcome::TimersFired(fired)) => fired,
        Ok(other) => {
            tracing::warn!(?other, "unexpected outcome of queue timers");
            return None;
        }
        Err(e) => {
            tracing::warn!(error = %e, "failed to fire queue timers");
            return None;
        }
    };
    let m = &queues.metrics;
    m.lease_expiries.inc_by(fired.leases_expired);
    m.expired.inc_by(fired.messages_expired);
    m.dead_lettered.inc_by(fired.dead_lettered);
    Some(fired.more_due)
}

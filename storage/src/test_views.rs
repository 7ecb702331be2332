//! Test helpers: events applied to in-memory views, and every row or key
//! of a view held in memory, decoded.

use std::collections::BTreeSet;

use serde::de::DeserializeOwned;

use crate::codec;
use crate::event::{Event, EventKind, Outcome};
use crate::replay::MemViews;
use crate::views::{Digest, RowStore, View, ViewTxn, apply};

/// Events applied to in-memory views, as replay applies them, with the
/// digest kept incrementally as a live node keeps it. Each model test adds
/// its own accessors in an `impl AppliedViews` block.
#[derive(Default)]
pub struct AppliedViews {
    pub store: MemViews,
    pub digest: Digest,
}

impl AppliedViews {
    pub fn apply(&mut self, time_ms: u64, kind: EventKind) -> Outcome {
        let event = Event { time_ms, kind };
        apply(&mut ViewTxn::new(&mut self.store, &mut self.digest), &event).unwrap()
    }

    /// Applies a one-apply bulk event (`QueuePurged`, `QueueDeleted`,
    /// `CacheInvalidated`) as the daemon now does: bulk steps of `limit`
    /// rows, each proposing the next, all at `time_ms`. Answers what the
    /// one-apply event answers; other events are applied as they are.
    pub fn apply_in_steps(&mut self, time_ms: u64, kind: EventKind, limit: u32) -> Outcome {
        let first = match kind {
            EventKind::QueuePurged { name } => EventKind::QueueTrimmed {
                name,
                from_seq: 0,
                below_seq: None,
                limit,
            },
            EventKind::QueueDeleted { name } => EventKind::QueueDeleteStep {
                name,
                from_seq: 0,
                from_id: String::new(),
                limit,
            },
            EventKind::CacheInvalidated { namespace, pattern } => EventKind::CacheInvalidateStep {
                namespace,
                pattern,
                from: Vec::new(),
                limit,
            },
            other => return self.apply(time_ms, other),
        };
        let cache = matches!(first, EventKind::CacheInvalidateStep { .. });
        let mut step = Some(first);
        let mut total = 0;
        while let Some(kind) = step.take() {
            match self.apply(time_ms, kind) {
                Outcome::Stepped { removed, next } => {
                    total += removed;
                    step = next.map(|next| *next);
                }
                refused => return refused,
            }
        }
        if cache {
            Outcome::CacheRemoved { entries: total }
        } else {
            Outcome::Applied
        }
    }
}

/// Every row of `view`, decoded, in key order.
pub fn all_rows<T: DeserializeOwned>(views: &MemViews, view: View) -> Vec<(Vec<u8>, T)> {
    views
        .scan(view, &[], &[], usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(key, value)| (key, codec::decode(view.cf_name(), &value).unwrap()))
        .collect()
}

/// Every key of `view`.
pub fn all_keys(views: &MemViews, view: View) -> BTreeSet<Vec<u8>> {
    views
        .scan(view, &[], &[], usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(key, _)| key)
        .collect()
}

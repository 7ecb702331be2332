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

//! Test helpers: every row or key of a view held in memory, decoded.

use std::collections::BTreeSet;

use serde::de::DeserializeOwned;

use crate::codec;
use crate::replay::MemViews;
use crate::views::{RowStore, View};

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

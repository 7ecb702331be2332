//! The transaction apply writes through: [`RowStore`] (raw rows: the
//! RocksDB batch on a live node, in-memory maps in replay) and [`ViewTxn`]
//! (typed rows over it, keeping the digest current), plus the refusal
//! helpers every part of apply shares.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::View;
use super::digest::Digest;
use crate::codec;
use crate::error::Result;
use crate::event::{EventKind, MAX_STEP_ROWS, Outcome};

/// Raw row storage that apply writes through: the RocksDB batch on a live
/// node, in-memory maps in replay.
pub trait RowStore {
    /// The current value of a row, including changes not yet committed.
    fn get(&self, view: View, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Up to `limit` rows whose key starts with `prefix` and is not below
    /// `from`, in key order.
    fn scan(
        &self,
        view: View,
        prefix: &[u8],
        from: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    fn put(&mut self, view: View, key: Vec<u8>, value: Vec<u8>);
    fn delete(&mut self, view: View, key: Vec<u8>);
}

/// Typed row access over a [`RowStore`] that keeps the digest current.
pub struct ViewTxn<'a, S: RowStore> {
    store: &'a mut S,
    digest: Option<&'a mut Digest>,
}

impl<'a, S: RowStore> ViewTxn<'a, S> {
    pub fn new(store: &'a mut S, digest: &'a mut Digest) -> Self {
        ViewTxn {
            store,
            digest: Some(digest),
        }
    }

    /// A transaction that keeps no digest, for replay: it computes the
    /// digest from scratch over the rebuilt rows, so a put need not read
    /// the row it replaces.
    pub fn untracked(store: &'a mut S) -> Self {
        ViewTxn {
            store,
            digest: None,
        }
    }

    pub(super) fn get<T: DeserializeOwned>(&self, view: View, key: &[u8]) -> Result<Option<T>> {
        match self.store.get(view, key)? {
            Some(bytes) => Ok(Some(codec::decode_row(view.cf_name(), key, &bytes)?)),
            None => Ok(None),
        }
    }

    pub(super) fn scan<T: DeserializeOwned>(&self, view: View, prefix: &[u8]) -> Result<Vec<T>> {
        self.store
            .scan(view, prefix, prefix, usize::MAX)?
            .iter()
            .map(|(key, bytes)| codec::decode_row(view.cf_name(), key, bytes))
            .collect()
    }

    /// Up to `limit` decoded rows of `view` starting with `prefix`, from
    /// `from` on, with their keys.
    pub(super) fn rows<T: DeserializeOwned>(
        &self,
        view: View,
        prefix: &[u8],
        from: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, T)>> {
        self.store
            .scan(view, prefix, from, limit)?
            .into_iter()
            .map(|(key, bytes)| {
                let row = codec::decode_row(view.cf_name(), &key, &bytes)?;
                Ok((key, row))
            })
            .collect()
    }

    /// Up to `limit` keys of `view` starting with `prefix`, from `from` on.
    pub(super) fn keys(
        &self,
        view: View,
        prefix: &[u8],
        from: &[u8],
        limit: usize,
    ) -> Result<Vec<Vec<u8>>> {
        Ok(self
            .store
            .scan(view, prefix, from, limit)?
            .into_iter()
            .map(|(key, _)| key)
            .collect())
    }

    pub(super) fn put<T: Serialize>(&mut self, view: View, key: Vec<u8>, row: &T) -> Result<()> {
        let replaced = match self.digest {
            Some(_) => self.store.get(view, &key)?,
            None => None,
        };
        self.write(view, key, row, replaced)
    }

    /// Puts a row whose key is new by construction (it carries a fresh
    /// sequence number, or was just found absent): the digest adds it
    /// without reading a row it would replace. Debug builds check that
    /// there is none; a row that was there would also make the live digest
    /// differ from the one replay computes from scratch.
    pub(super) fn put_new<T: Serialize>(
        &mut self,
        view: View,
        key: Vec<u8>,
        row: &T,
    ) -> Result<()> {
        debug_assert!(
            self.store.get(view, &key)?.is_none(),
            "put_new over an existing row of {}",
            view.cf_name()
        );
        self.write(view, key, row, None)
    }

    /// Writes a row in place of `replaced`, keeping the digest current.
    fn write<T: Serialize>(
        &mut self,
        view: View,
        key: Vec<u8>,
        row: &T,
        replaced: Option<Vec<u8>>,
    ) -> Result<()> {
        let value = codec::encode(view.cf_name(), row)?;
        if let Some(digest) = self.digest.as_deref_mut() {
            if let Some(old) = replaced {
                digest.remove(view, &key, &old);
            }
            digest.add(view, &key, &value);
        }
        self.store.put(view, key, value);
        Ok(())
    }

    /// Deletes a row; returns whether it existed.
    pub(super) fn delete(&mut self, view: View, key: Vec<u8>) -> Result<bool> {
        match self.store.get(view, &key)? {
            Some(old) => {
                if let Some(digest) = self.digest.as_deref_mut() {
                    digest.remove(view, &key, &old);
                }
                self.store.delete(view, key);
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

pub(super) fn rejected(reason: impl Into<String>) -> Outcome {
    Outcome::Rejected {
        reason: reason.into(),
    }
}

/// Refuses identifiers that would break key encoding: empty or holding NUL.
pub(super) fn check_ids(ids: &[(&str, &str)]) -> Option<Outcome> {
    ids.iter().find_map(|(field, value)| {
        if value.is_empty() {
            Some(rejected(format!("{field} must not be empty")))
        } else if value.contains('\0') {
            Some(rejected(format!("{field} must not contain NUL")))
        } else {
            None
        }
    })
}

/// Refuses a bulk step limit outside `1..=MAX_STEP_ROWS`.
pub(super) fn check_step_limit(limit: u32) -> Option<Outcome> {
    (!(1..=MAX_STEP_ROWS).contains(&limit))
        .then(|| rejected(format!("step limit {limit} is outside 1..={MAX_STEP_ROWS}")))
}

pub(super) fn stepped(removed: u64, next: Option<EventKind>) -> Outcome {
    Outcome::Stepped {
        removed,
        next: next.map(Box::new),
    }
}

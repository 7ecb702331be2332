//! [`AppliedState`]: how far the state machine has applied (last entry,
//! membership, digest), written to the meta column family in the same
//! `WriteBatch` as the rows of every apply batch and snapshot install.

use rocksdb::{DB, WriteBatch};
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::db::{CF_META, cf, meta_key};
use crate::error::Result;
use crate::raft_types::typ::LogId;
use crate::views::Digest;

/// What the state machine has applied, stored with every apply batch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedState {
    pub last_applied: Option<LogId>,
    pub membership: crate::raft_types::typ::StoredMembership,
    /// `views_digest` at `last_applied`, kept incrementally by apply.
    pub digest: u128,
}

impl AppliedState {
    /// Index of the last applied entry (0 before the first).
    pub fn last_applied_index(&self) -> u64 {
        self.last_applied.map_or(0, |id| id.index)
    }

    pub fn digest_hex(&self) -> String {
        Digest::from_u128(self.digest).to_hex()
    }
}

/// Adds `applied` to `batch`.
pub(super) fn write_applied(db: &DB, batch: &mut WriteBatch, applied: &AppliedState) -> Result<()> {
    batch.put_cf(
        cf(db, CF_META)?,
        meta_key::APPLIED,
        codec::encode("applied state", applied)?,
    );
    Ok(())
}

//! openraft's storage conformance suite, run against our RocksDB stores.

use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;

use crate::db::{DataDir, OpenMode};
use crate::raft_types::TypeConfig;
use crate::{LogStore, StateMachine, open_raft_storage};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, (TempDir, DataDir)> for Builder {
    async fn build(
        &self,
    ) -> Result<((TempDir, DataDir), LogStore, StateMachine), StorageError<u64>> {
        let tmp = TempDir::new().expect("temp dir");
        let dir = DataDir::open(tmp.path(), OpenMode::ReadWrite).expect("open data dir");
        let (log, sm) = open_raft_storage(&dir, Default::default()).expect("open raft storage");
        Ok(((tmp, dir), log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    if let Err(e) = Suite::test_all(Builder) {
        panic!("openraft storage suite failed: {e}");
    }
}

//! openraft's storage conformance suite against the RocksDB log store and state machine.

use coffer_raft::{
    open_db, ArchiveDir, LogStore, SnapshotFiles, StateMachine, StorageError, TypeConfig,
};
use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;

struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for RocksBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = open_db(&dir.path().join("raft")).expect("open rocksdb");
        let snapshots =
            SnapshotFiles::new(dir.path().join("snapshots"), db.clone()).expect("snapshot dir");
        let (applied, _) = tokio::sync::watch::channel(0);
        let archive = ArchiveDir::new(dir.path().join("archive"));
        let sm = StateMachine::open(db.clone(), snapshots, archive, applied)?;
        Ok((dir, LogStore::new(db), sm))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(RocksBuilder).expect("storage suite");
}

//! openraft's storage conformance suite against the RocksDB log store and state machine.

use kv_store::typ::{StorageError, TypeConfig};
use kv_store::{LogStore, StateMachine};
use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;

struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for RocksBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        // Small log segments: each is zero-filled and synced before use, and the suite
        // builds a store for every case.
        let stores = kv_store::open_with(dir.path(), 64 * 1024).expect("a fresh store opens");
        Ok((dir, stores.log, stores.state_machine))
    }
}

#[test]
fn openraft_storage_suite_passes() {
    if let Err(e) = Suite::test_all(RocksBuilder) {
        panic!("storage suite failed: {e}");
    }
}

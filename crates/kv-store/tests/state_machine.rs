//! The state machine on a real RocksDB: persistence across reopen, snapshots.

use kv_core::{Command, OpResult, Precondition, Request, Response, Ttl};
use kv_store::typ::{LogEntry, Snapshot, SnapshotMeta, StoredMembership};
use kv_store::{SnapshotData, StateMachine};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload, LogId, Membership, RaftSnapshotBuilder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn log_id(index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

fn normal(index: u64, stamp_ms: u64, command: Command) -> LogEntry {
    LogEntry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(Request { stamp_ms, command }),
    }
}

fn set(key: &str, value: &str, ttl_ms: Option<u64>) -> Command {
    Command::Set {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        ttl: ttl_ms.map_or(Ttl::Clear, Ttl::AfterMs),
        precondition: Precondition::Always,
    }
}

/// A snapshot of the state machine as it is now.
async fn snapshot_of(sm: &mut StateMachine) -> Snapshot {
    sm.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build")
}

/// The bytes of a snapshot's data, as a leader sends them.
async fn bytes_of(snapshot: Snapshot) -> Vec<u8> {
    let mut data = snapshot.snapshot;
    let mut bytes = vec![];
    data.read_to_end(&mut bytes).await.expect("read");
    bytes
}

/// `bytes` received by `sm` as openraft's chunk receiver writes them.
async fn received(sm: &mut StateMachine, bytes: &[u8]) -> Box<SnapshotData> {
    let mut data = sm.begin_receiving_snapshot().await.expect("begin");
    data.write_all(bytes).await.expect("write");
    data.flush().await.expect("flush");
    data
}

/// Installs `bytes` as the data of `meta`, received as openraft's receiver does.
async fn install_bytes(sm: &mut StateMachine, meta: &SnapshotMeta, bytes: &[u8]) {
    let data = received(sm, bytes).await;
    sm.install_snapshot(meta, data).await.expect("install");
}

/// Installs `snapshot` as another node receives it.
async fn install(sm: &mut StateMachine, snapshot: Snapshot) {
    let meta = snapshot.meta.clone();
    install_bytes(sm, &meta, &bytes_of(snapshot).await).await;
}

/// Opens the stores in `dir` with small log segments: each is zero-filled and synced
/// before use, which a test need not wait for.
fn open(dir: &std::path::Path) -> Result<kv_store::Stores, kv_store::StoreError> {
    kv_store::open_with(dir, 64 * 1024)
}

/// A node's stores in a new temporary directory (removed when the guard drops).
fn fresh_node() -> (tempfile::TempDir, kv_store::Stores) {
    let dir = tempfile::tempdir().expect("tempdir");
    let stores = open(dir.path()).expect("open");
    (dir, stores)
}

fn membership_entry(index: u64) -> LogEntry {
    let m = Membership::new(vec![[1u64, 2, 3].into_iter().collect()], None);
    LogEntry {
        log_id: log_id(index),
        payload: EntryPayload::Membership(m),
    }
}

#[tokio::test]
async fn applied_state_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut s = open(dir.path()).expect("open");
        let responses = s
            .state_machine
            .apply([
                membership_entry(1),
                normal(2, 1000, set("a", "1", None)),
                normal(3, 1500, set("b", "[2]", Some(100))),
                normal(
                    4,
                    1200,
                    Command::Delete {
                        key: "a".into(),
                        precondition: Precondition::Always,
                    },
                ),
            ])
            .await
            .expect("apply");
        assert_eq!(
            responses.len(),
            4,
            "one response per entry, including membership"
        );
        assert_eq!(responses[0], Response::None);
        assert_eq!(
            responses[3],
            Response::Applied(OpResult::Deleted {
                deleted: true,
                revision: 4
            })
        );
    }
    let mut s = open(dir.path()).expect("reopen");
    let (applied, membership) = s
        .state_machine
        .applied_state()
        .await
        .expect("applied_state");
    assert_eq!(applied, Some(log_id(4)));
    assert_eq!(membership.log_id(), &Some(log_id(1)));
    assert_eq!(
        s.reader.clock_ms(),
        1500,
        "the clock never moves back, and persists"
    );
    assert_eq!(s.reader.get("a").expect("get"), None);
    let b = s.reader.get("b").expect("get").expect("b is stored");
    assert_eq!(
        (b.value.as_slice(), b.expires_at_ms),
        (&b"[2]"[..], Some(1600))
    );
    assert!(!s.reader.has_due(1599).expect("has_due"));
    assert!(s.reader.has_due(1600).expect("has_due"));
}

#[tokio::test]
async fn snapshot_moves_the_whole_state_to_another_node_and_replaces_its_own() {
    let (_a_dir, mut a) = fresh_node();
    let (_b_dir, mut b) = fresh_node();
    a.state_machine
        .apply([
            membership_entry(1),
            normal(2, 1000, set("x", "1", Some(5000))),
            normal(3, 1000, set("y", "2", None)),
        ])
        .await
        .expect("apply");
    // b has state of its own that the snapshot must wipe.
    b.state_machine
        .apply([normal(1, 900, set("stale", "0", Some(50)))])
        .await
        .expect("apply");

    let mut builder = a.state_machine.get_snapshot_builder().await;
    // Applying more after the builder was taken must not leak into the snapshot.
    a.state_machine
        .apply([normal(4, 2000, set("later", "3", None))])
        .await
        .expect("apply");
    let snapshot = builder.build_snapshot().await.expect("build");
    assert_eq!(snapshot.meta.last_log_id, Some(log_id(3)));

    let current = a
        .state_machine
        .get_current_snapshot()
        .await
        .expect("current")
        .expect("persisted");
    assert_eq!(current.meta, snapshot.meta);

    let meta = snapshot.meta.clone();
    install(&mut b.state_machine, snapshot).await;
    let (applied, membership) = b
        .state_machine
        .applied_state()
        .await
        .expect("applied_state");
    assert_eq!(applied, Some(log_id(3)));
    assert_eq!(
        membership,
        StoredMembership::new(Some(log_id(1)), membership.membership().clone())
    );
    assert_eq!(b.reader.get("stale").expect("get"), None);
    assert_eq!(b.reader.get("later").expect("get"), None);
    assert_eq!(
        b.reader.get("x").expect("get").map(|e| e.expires_at_ms),
        Some(Some(6000))
    );
    assert!(b.reader.get("y").expect("get").is_some());
    assert!(
        !b.reader.has_due(1000).expect("has_due"),
        "the stale key's expiry index entry is gone"
    );
    assert!(
        b.reader.has_due(6000).expect("has_due"),
        "the snapshot's expiry index is rebuilt"
    );
    let installed = b
        .state_machine
        .get_current_snapshot()
        .await
        .expect("current")
        .expect("persisted");
    assert_eq!(installed.meta.snapshot_id, meta.snapshot_id);
}

/// Apply keeps recently written entries in memory; after a snapshot replaces the data,
/// it must read the snapshot's entries, not the ones it wrote before.
#[tokio::test]
async fn apply_after_a_snapshot_install_reads_the_installed_entries() {
    let (_a_dir, mut a) = fresh_node();
    let (_b_dir, mut b) = fresh_node();
    a.state_machine
        .apply([
            normal(1, 1000, set("x", "1", None)),
            normal(2, 1000, set("y", "2", None)),
        ])
        .await
        .expect("apply");
    let delete = |key: &str| Command::Delete {
        key: key.into(),
        precondition: Precondition::Always,
    };
    b.state_machine
        .apply([
            normal(1, 900, set("x", "old", None)),
            normal(2, 900, set("x", "older", None)),
            normal(3, 900, set("y", "b", None)),
            normal(4, 900, delete("y")),
            normal(5, 900, set("gone", "0", None)),
        ])
        .await
        .expect("apply");

    let snapshot = snapshot_of(&mut a.state_machine).await;
    install(&mut b.state_machine, snapshot).await;
    let create = |key: &str| Command::Set {
        key: key.into(),
        value: b"9".to_vec(),
        ttl: Ttl::Clear,
        precondition: Precondition::Absent,
    };
    let responses = b
        .state_machine
        .apply([
            normal(3, 2000, set("x", "3", None)),
            normal(4, 2000, create("y")),
            normal(5, 2000, create("gone")),
        ])
        .await
        .expect("apply");
    let results: Vec<OpResult> = responses
        .into_iter()
        .map(|r| match r {
            Response::Applied(r) => r,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    let written = |revision, create_revision, version| OpResult::Written {
        revision,
        create_revision,
        version,
        expires_at_ms: None,
    };
    assert_eq!(
        results[0],
        written(3, 1, 2),
        "x continues from the snapshot's entry"
    );
    assert!(
        matches!(&results[1], OpResult::Failed { current: Some(e), .. } if e.value == b"2"),
        "y exists in the snapshot: {:?}",
        results[1]
    );
    assert_eq!(
        results[2],
        written(5, 5, 1),
        "gone is absent in the snapshot"
    );
}

#[tokio::test]
async fn snapshot_ids_are_unique() {
    let (_dir, mut s) = fresh_node();
    s.state_machine
        .apply([normal(1, 1, set("k", "1", None))])
        .await
        .expect("apply");
    let first = snapshot_of(&mut s.state_machine).await;
    let second = snapshot_of(&mut s.state_machine).await;
    assert_ne!(first.meta.snapshot_id, second.meta.snapshot_id);
}

#[tokio::test]
async fn corrupt_snapshot_file_is_an_error_not_an_absent_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut s = open(dir.path()).expect("open");
        s.state_machine
            .apply([normal(1, 1, set("k", "1", None))])
            .await
            .expect("apply");
        snapshot_of(&mut s.state_machine).await;
    }
    std::fs::write(dir.path().join("snapshot/current"), b"\xff\xff garbage").expect("write");
    // Opening reads the snapshot's meta (to install a snapshot ahead of the state).
    let reopened = open(dir.path());
    assert!(matches!(reopened, Err(kv_store::StoreError::Codec(_))));
}

#[tokio::test]
async fn purged_log_keeps_its_last_purged_id_across_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut s = open(dir.path()).expect("open");
        // The state covers what is purged, as openraft only purges what is applied.
        s.state_machine
            .apply((1..=3).map(|i| normal(i, 900, set("k", "0", None))))
            .await
            .expect("apply");
        let mut log = s.log;
        log.purge(log_id(3)).await.expect("purge");
    }
    let mut log = open(dir.path()).expect("reopen").log;
    let state = log.get_log_state().await.expect("state");
    assert_eq!(state.last_purged_log_id, Some(log_id(3)));
    assert_eq!(state.last_log_id, Some(log_id(3)));
}

#[tokio::test]
async fn idempotency_records_travel_in_snapshots() {
    let (_a_dir, mut a) = fresh_node();
    let (_b_dir, mut b) = fresh_node();
    let keyed = |index: u64| {
        normal(
            index,
            1000,
            Command::Idempotent {
                id: "delivery-1".into(),
                fingerprint: 42,
                retain_ms: 60_000,
                command: Box::new(set("d", "1", None)),
            },
        )
    };
    let first = a.state_machine.apply([keyed(1)]).await.expect("apply");
    let snapshot = snapshot_of(&mut a.state_machine).await;
    install(&mut b.state_machine, snapshot).await;
    // The retry reaches the node that only knows the snapshot: it replays.
    let retry = b.state_machine.apply([keyed(2)]).await.expect("apply");
    let Response::Applied(original) = &first[0] else {
        panic!("{first:?}")
    };
    assert_eq!(
        retry[0],
        Response::Applied(OpResult::Replayed(Box::new(original.clone())))
    );
    assert_eq!(b.reader.get("d").expect("get").map(|e| e.version), Some(1));
    assert!(
        b.reader.has_due(61_000).expect("has_due"),
        "the record's expiry is indexed"
    );
}

#[tokio::test]
async fn digest_agrees_between_applying_and_installing_and_tells_states_apart() {
    let log = || {
        [
            membership_entry(1),
            normal(2, 1000, set("x", "1", Some(5000))),
            normal(3, 1100, set("y", "2", None)),
        ]
    };
    let dirs: Vec<_> = (0..4)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let mut stores: Vec<_> = dirs.iter().map(|d| open(d.path()).expect("open")).collect();
    // 0 and 1 apply the same log, 1 in two calls; 2 installs 0's snapshot; 3 applies a
    // log that differs in one value.
    stores[0].state_machine.apply(log()).await.expect("apply");
    let [a, b, c] = log();
    stores[1].state_machine.apply([a, b]).await.expect("apply");
    stores[1].state_machine.apply([c]).await.expect("apply");
    let snapshot = snapshot_of(&mut stores[0].state_machine).await;
    install(&mut stores[2].state_machine, snapshot).await;
    let [a, b, _] = log();
    stores[3]
        .state_machine
        .apply([a, b, normal(3, 1100, set("y", "3", None))])
        .await
        .expect("apply");

    let digests: Vec<_> = stores
        .iter()
        .map(|s| s.reader.digest().expect("digest"))
        .collect();
    assert_eq!(digests[0].applied_index, Some(3));
    assert_eq!((digests[0].keys, digests[0].records), (2, 0));
    assert_eq!(digests[0], digests[1], "same log, other grouping");
    assert_eq!(digests[0], digests[2], "installed snapshot");
    assert_eq!(digests[3].applied_index, Some(3));
    assert_ne!(digests[0].hash, digests[3].hash, "one value differs");
}

/// A node that stored a received snapshot and crashed before installing it (while its
/// log may already be purged up to the snapshot) installs it when it opens.
#[tokio::test]
async fn a_stored_snapshot_ahead_of_the_state_is_installed_at_open() {
    let (_a_dir, mut a) = fresh_node();
    a.state_machine
        .apply([membership_entry(1), normal(2, 1000, set("x", "1", None))])
        .await
        .expect("apply");
    let snapshot = snapshot_of(&mut a.state_machine).await;

    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut b = open(dir.path()).expect("open");
        b.state_machine
            .apply([normal(1, 900, set("stale", "0", None))])
            .await
            .expect("apply");
        let meta = snapshot.meta.clone();
        let data = bytes_of(snapshot).await;
        b.snapshots.save(&meta, &data).expect("save");
        // The purge openraft runs at once, before the install.
        b.log.purge(log_id(2)).await.expect("purge");
    }
    let mut b = open(dir.path()).expect("reopen");
    let (applied, _) = b.state_machine.applied_state().await.expect("applied");
    assert_eq!(applied, Some(log_id(2)));
    assert!(b.reader.get("x").expect("get").is_some());
    assert_eq!(b.reader.get("stale").expect("get"), None);
}

/// The log's start past the state, with no snapshot to bridge it, is refused by name.
#[tokio::test]
async fn a_log_purged_past_the_state_without_a_snapshot_is_refused_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut s = open(dir.path()).expect("open");
        s.state_machine
            .apply([normal(1, 900, set("k", "0", None))])
            .await
            .expect("apply");
        s.log.purge(log_id(5)).await.expect("purge");
    }
    match open(dir.path()) {
        Err(kv_store::StoreError::Corrupt(why)) => assert!(why.contains("purged"), "{why}"),
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("opened a store whose log starts after its state"),
    }
}

/// After a crash between storing a received snapshot and openraft's truncation of a
/// conflicting log, the log holds another entry at the snapshot's index: it is dropped.
#[tokio::test]
async fn a_log_that_conflicts_with_the_installed_snapshot_is_dropped_at_open() {
    let (_a_dir, mut a) = fresh_node();
    a.state_machine
        .apply([membership_entry(1), normal(2, 1000, set("x", "1", None))])
        .await
        .expect("apply");
    let snapshot = snapshot_of(&mut a.state_machine).await;

    let dir = tempfile::tempdir().expect("tempdir");
    {
        let b = open(dir.path()).expect("open");
        // Entries of another term at the snapshot's indexes, never committed.
        let other = |index| LogEntry {
            log_id: LogId::new(CommittedLeaderId::new(2, 2), index),
            payload: EntryPayload::Blank,
        };
        let mut log = b.log;
        log.blocking_append(vec![other(1), other(2), other(3)])
            .await
            .expect("append");
        let meta = snapshot.meta.clone();
        let data = bytes_of(snapshot).await;
        b.snapshots.save(&meta, &data).expect("save");
    }
    let mut b = open(dir.path()).expect("reopen");
    let state = b.log.get_log_state().await.expect("log state");
    assert_eq!(state.last_log_id, None, "the conflicting entries are gone");
    let (applied, _) = b.state_machine.applied_state().await.expect("applied");
    assert_eq!(applied, Some(log_id(2)));
}

/// A log of a later term that ends before the installed snapshot (a deposed leader's
/// uncommitted entries) is dropped too: openraft's start-up check compares log ids term
/// first and would keep it, leaving a gap before the next append.
#[tokio::test]
async fn a_later_term_log_that_ends_before_the_installed_snapshot_is_dropped_at_open() {
    let (_a_dir, mut a) = fresh_node();
    a.state_machine
        .apply([
            membership_entry(1),
            normal(2, 1000, set("x", "1", None)),
            normal(3, 1000, set("y", "1", None)),
        ])
        .await
        .expect("apply");
    let snapshot = snapshot_of(&mut a.state_machine).await;

    let dir = tempfile::tempdir().expect("tempdir");
    {
        let b = open(dir.path()).expect("open");
        let later = |index| LogEntry {
            log_id: LogId::new(CommittedLeaderId::new(5, 2), index),
            payload: EntryPayload::Blank,
        };
        let mut log = b.log;
        log.blocking_append(vec![later(1), later(2)])
            .await
            .expect("append");
        let meta = snapshot.meta.clone();
        let data = bytes_of(snapshot).await;
        b.snapshots.save(&meta, &data).expect("save");
    }
    let mut b = open(dir.path()).expect("reopen");
    let state = b.log.get_log_state().await.expect("log state");
    assert_eq!(state.last_log_id, None, "the later-term entries are gone");
    let (applied, _) = b.state_machine.applied_state().await.expect("applied");
    assert_eq!(applied, Some(log_id(3)));
}

#[tokio::test]
async fn list_pages_end_at_their_count_or_byte_bound_and_skip_expired_keys() {
    let (_dir, mut s) = fresh_node();
    let big = format!("\"{}\"", "v".repeat(1000));
    s.state_machine
        .apply([
            normal(1, 1000, set("p/a", &big, None)),
            normal(2, 1000, set("p/b", &big, None)),
            normal(3, 1000, set("p/c", "1", Some(500))),
            normal(4, 1000, set("p/d", &big, None)),
            normal(5, 1000, set("q/a", "2", None)),
        ])
        .await
        .expect("apply");
    let page = |after, limit, max_bytes, keys_only| kv_store::Page {
        prefix: "p/",
        after,
        limit,
        max_bytes,
        keys_only,
        within: None,
    };
    let keys = |items: &[(String, kv_core::Entry)]| -> Vec<String> {
        items.iter().map(|(k, _)| k.clone()).collect()
    };
    // p/c expired at 1500.
    let (items, more) = s
        .reader
        .list(&page(None, 10, 1 << 20, false), 2000)
        .expect("list");
    assert_eq!(keys(&items), ["p/a", "p/b", "p/d"]);
    assert!(!more);
    assert_eq!(items[0].1.value, big.as_bytes());
    let (items, more) = s
        .reader
        .list(&page(None, 2, 1 << 20, false), 2000)
        .expect("list");
    assert_eq!(
        (keys(&items), more),
        (vec!["p/a".into(), "p/b".into()], true)
    );
    // Two 1 KB values pass 1,500 bytes: the page ends after one, and the next starts there.
    let (items, more) = s
        .reader
        .list(&page(None, 10, 1500, false), 2000)
        .expect("list");
    assert_eq!((keys(&items), more), (vec!["p/a".to_string()], true));
    let (items, _) = s
        .reader
        .list(&page(Some("p/a"), 10, 1500, false), 2000)
        .expect("list");
    assert_eq!(keys(&items), ["p/b"]);
    // A single entry larger than the bound is still listed.
    let (items, _) = s
        .reader
        .list(&page(None, 10, 10, false), 2000)
        .expect("list");
    assert_eq!(keys(&items), ["p/a"]);
    // Keys only: the same entries and metadata, no values, and no byte bound reached.
    let (full, _) = s
        .reader
        .list(&page(None, 10, 1 << 20, false), 1200)
        .expect("list");
    let (bare, more) = s
        .reader
        .list(&page(None, 10, 1500, true), 1200)
        .expect("list");
    assert!(!more);
    assert_eq!(keys(&bare), ["p/a", "p/b", "p/c", "p/d"]);
    for ((_, f), (_, b)) in full.iter().zip(&bare) {
        assert!(b.value.is_empty());
        assert_eq!(
            (f.revision, f.create_revision, f.version, f.expires_at_ms),
            (b.revision, b.create_revision, b.version, b.expires_at_ms)
        );
    }
}

/// A prefix delete hides its keys from reads and lists at once; its tombstone and the
/// data-byte count survive a reopen and travel in a snapshot; purges then remove the
/// keys, and every copy of the state agrees at every step.
#[tokio::test]
async fn prefix_deletes_hide_at_once_survive_restarts_and_snapshots_and_purge_later() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = kv_core::PURGE_LIMIT as u64 + 5;
    {
        let mut a = open(dir.path()).expect("open");
        let mut entries = vec![membership_entry(1)];
        for i in 0..n {
            entries.push(normal(
                2 + i,
                1000,
                set(&format!("p/{i:05}"), "12", Some(60_000)),
            ));
        }
        entries.push(normal(n + 2, 1000, set("q", "1", None)));
        entries.push(normal(
            n + 3,
            1000,
            Command::DeletePrefix {
                prefix: "p/".into(),
            },
        ));
        entries.push(normal(n + 4, 1000, set("p/00007", "\"new\"", None)));
        a.state_machine.apply(entries).await.expect("apply");
    }
    let mut a = open(dir.path()).expect("reopen");
    // 7 bytes per p/ key with its value, 2 for q, 12 for the rewritten p/00007.
    assert_eq!(
        a.reader.data_bytes(),
        (n - 1) * 9 + 2 + 12,
        "counted, not reset"
    );
    assert_eq!(a.reader.pending_purges(), 1, "the tombstone persisted");
    assert_eq!(a.reader.get("p/00003").expect("get"), None);
    assert!(a.reader.get("p/00007").expect("get").is_some());
    let page = kv_store::Page {
        prefix: "",
        after: None,
        limit: 10,
        max_bytes: 1 << 20,
        keys_only: true,
        within: None,
    };
    let (items, more) = a.reader.list(&page, 1000).expect("list");
    let keys: Vec<_> = items.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!((keys, more), (vec!["p/00007", "q"], false));

    let (_bdir, mut b) = fresh_node();
    install(
        &mut b.state_machine,
        snapshot_of(&mut a.state_machine).await,
    )
    .await;
    assert_eq!(
        b.reader.digest().expect("digest"),
        a.reader.digest().expect("digest")
    );
    assert_eq!(b.reader.data_bytes(), a.reader.data_bytes());
    assert_eq!(
        b.reader.get("p/00003").expect("get"),
        None,
        "installed tombstone"
    );

    let purge = |index| normal(index, 1000, Command::Purge);
    let next = n + 5;
    for s in [&mut a, &mut b] {
        let responses = s
            .state_machine
            .apply([purge(next), purge(next + 1)])
            .await
            .expect("apply");
        assert_eq!(
            responses,
            vec![
                Response::Applied(OpResult::Purged {
                    removed: 999,
                    pending: 1
                }),
                Response::Applied(OpResult::Purged {
                    removed: 5,
                    pending: 0
                }),
            ]
        );
    }
    for s in [&a, &b] {
        let digest = s.reader.digest().expect("digest");
        assert_eq!((digest.keys, s.reader.pending_purges()), (2, 0));
        assert_eq!(s.reader.data_bytes(), 2 + 12);
        assert!(
            !s.reader.has_due(u64::MAX - 1).expect("has_due"),
            "index emptied"
        );
    }
    assert_eq!(
        a.reader.digest().expect("digest"),
        b.reader.digest().expect("digest")
    );
}

/// A snapshot written before tombstones, sessions, tokens and the highest node id
/// existed ends after the records; it installs as one without them. (No membership is
/// applied here, so the source has no highest node id either.)
#[tokio::test]
async fn a_snapshot_from_before_tombstones_sessions_and_tokens_installs() {
    let (_adir, mut a) = fresh_node();
    a.state_machine
        .apply([normal(1, 1000, set("k", "1", None))])
        .await
        .expect("apply");
    let snapshot = snapshot_of(&mut a.state_machine).await;
    let meta = snapshot.meta.clone();
    let mut data = bytes_of(snapshot).await;
    let tail = data.split_off(data.len() - 4);
    assert_eq!(
        tail,
        [0, 0, 0, 0],
        "empty lists of tombstones, sessions and tokens, and no highest node id, end \
         the encoding"
    );
    // With tokens: a snapshot written before the highest node id was kept.
    let (_tdir, mut tokens) = fresh_node();
    install_bytes(
        &mut tokens.state_machine,
        &meta,
        &[data.clone(), vec![0, 0, 0]].concat(),
    )
    .await;
    assert_eq!(
        tokens.reader.digest().expect("digest"),
        a.reader.digest().expect("digest")
    );
    // With tombstones and sessions: a snapshot written before tokens existed.
    let (_sdir, mut sessions) = fresh_node();
    install_bytes(
        &mut sessions.state_machine,
        &meta,
        &[data.clone(), vec![0, 0]].concat(),
    )
    .await;
    assert_eq!(
        sessions.reader.digest().expect("digest"),
        a.reader.digest().expect("digest")
    );
    // With tombstones only: a snapshot written before sessions existed.
    let (_odir, mut older) = fresh_node();
    let tombstones_only = [data.clone(), vec![0]].concat();
    install_bytes(&mut older.state_machine, &meta, &tombstones_only).await;
    assert_eq!(
        older.reader.digest().expect("digest"),
        a.reader.digest().expect("digest")
    );
    let (_bdir, mut b) = fresh_node();
    install_bytes(&mut b.state_machine, &meta, &data).await;
    assert_eq!(
        b.reader.digest().expect("digest"),
        a.reader.digest().expect("digest")
    );
    assert_eq!(b.reader.data_bytes(), 2);
}

/// Sessions and their answers persist, travel in snapshots and count as records.
#[tokio::test]
async fn sessions_survive_reopen_and_travel_in_snapshots() {
    let dir = tempfile::tempdir().expect("tempdir");
    let session = |seq: u64, key: &str| Command::Session {
        id: 42,
        seq,
        ack: 1,
        fingerprint: u128::from(seq),
        idle_ms: 60_000,
        command: Box::new(set(key, "1", None)),
    };
    {
        let mut a = open(dir.path()).expect("open");
        a.state_machine
            .apply([
                membership_entry(1),
                normal(
                    2,
                    1000,
                    Command::OpenSession {
                        id: 42,
                        idle_ms: 60_000,
                    },
                ),
                normal(3, 1000, session(1, "a")),
                normal(4, 1000, session(2, "b")),
            ])
            .await
            .expect("apply");
    }
    let mut a = open(dir.path()).expect("reopen");
    assert_eq!(a.reader.record_count(), 3, "the session and two answers");
    let replay = a
        .state_machine
        .apply([normal(5, 1000, session(2, "b"))])
        .await
        .expect("apply");
    assert!(
        matches!(&replay[0], Response::Applied(OpResult::Replayed(_))),
        "{replay:?}"
    );
    let (_bdir, mut b) = fresh_node();
    install(
        &mut b.state_machine,
        snapshot_of(&mut a.state_machine).await,
    )
    .await;
    let digest = b.reader.digest().expect("digest");
    assert_eq!(digest, a.reader.digest().expect("digest"));
    assert_eq!((digest.sessions, b.reader.record_count()), (1, 3));
    let replay = b
        .state_machine
        .apply([normal(6, 1000, session(1, "a"))])
        .await
        .expect("apply");
    assert!(
        matches!(&replay[0], Response::Applied(OpResult::Replayed(_))),
        "the installed session answers: {replay:?}"
    );
}

fn token(name: &str, grants: &[(&str, kv_core::Access)]) -> kv_core::Token {
    kv_core::Token {
        name: name.into(),
        hash: [7; 32],
        admin: false,
        grants: grants
            .iter()
            .map(|(prefix, access)| kv_core::Grant {
                prefix: (*prefix).into(),
                access: *access,
            })
            .collect(),
        created_ms: 0,
    }
}

/// Tokens persist, travel in snapshots, are in the digest, and a revoke takes effect for
/// the reader as soon as it is applied.
#[tokio::test]
async fn tokens_survive_reopen_travel_in_snapshots_and_are_digested() {
    use kv_core::Access::{Read, Write};
    let dir = tempfile::tempdir().expect("tempdir");
    let put = |id, t| Command::PutToken { id, token: t };
    {
        let mut a = open(dir.path()).expect("open");
        let before = a.reader.digest().expect("digest");
        a.state_machine
            .apply([
                membership_entry(1),
                normal(2, 1000, put(5, token("five", &[("a/", Write)]))),
                normal(3, 1100, put(6, token("six", &[("", Read)]))),
                normal(4, 1200, put(7, token("seven", &[]))),
                normal(5, 1300, Command::RevokeToken { id: 7 }),
            ])
            .await
            .expect("apply");
        assert_eq!(a.reader.tokens().len(), 2);
        assert_eq!(a.reader.token(5).expect("five").created_ms, 1000);
        assert!(a.reader.token(7).is_none(), "revoked");
        assert_ne!(a.reader.digest().expect("digest").hash, before.hash);
    }
    let mut a = open(dir.path()).expect("reopen");
    let ids: Vec<u64> = a.reader.tokens().iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, [5, 6]);
    let written = a
        .state_machine
        .apply([
            normal(
                6,
                1400,
                Command::Authorized {
                    token: 6,
                    command: Box::new(set("a/x", "1", None)),
                },
            ),
            normal(7, 1400, Command::RevokeToken { id: 5 }),
        ])
        .await
        .expect("apply");
    assert!(
        matches!(
            &written[0],
            Response::Applied(OpResult::Failed {
                failure: kv_core::Failure::Forbidden,
                ..
            })
        ),
        "read-only after reopen: {written:?}"
    );
    assert!(a.reader.token(5).is_none(), "the reader sees the revoke");
    let (_bdir, mut b) = fresh_node();
    install(
        &mut b.state_machine,
        snapshot_of(&mut a.state_machine).await,
    )
    .await;
    let digest = b.reader.digest().expect("digest");
    assert_eq!(digest, a.reader.digest().expect("digest"));
    assert_eq!(digest.tokens, 1);
    assert_eq!(b.reader.token(6).expect("six").name, "six");
}

/// A listing narrowed to a token's prefixes reads each in order, one page across them.
#[tokio::test]
async fn a_list_within_prefixes_pages_across_them() {
    let (_dir, mut s) = fresh_node();
    let keys = ["a/1", "b/1", "b/2", "c/1", "d/1", "d/2"];
    let entries: Vec<LogEntry> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| normal(i as u64 + 1, 1000, set(k, "1", None)))
        .collect();
    s.state_machine.apply(entries).await.expect("apply");
    let within = ["b/".to_owned(), "d/".to_owned()];
    let page = |after, limit| kv_store::Page {
        prefix: "",
        after,
        limit,
        max_bytes: 1 << 20,
        keys_only: true,
        within: Some(&within),
    };
    let listed = |after, limit| {
        let (items, more) = s.reader.list(&page(after, limit), 2000).expect("list");
        let keys: Vec<String> = items.into_iter().map(|(k, _)| k).collect();
        (keys, more)
    };
    assert_eq!(
        listed(None, 10),
        (
            vec!["b/1".into(), "b/2".into(), "d/1".into(), "d/2".into()],
            false
        )
    );
    assert_eq!(
        listed(None, 3),
        (vec!["b/1".into(), "b/2".into(), "d/1".into()], true)
    );
    assert_eq!(listed(Some("b/2"), 1), (vec!["d/1".into()], true));
    assert_eq!(
        listed(Some("c/1"), 10),
        (vec!["d/1".into(), "d/2".into()], false)
    );
    assert_eq!(listed(Some("d/2"), 10), (vec![], false));
    let none: [String; 0] = [];
    let empty = kv_store::Page {
        within: Some(&none),
        ..page(None, 10)
    };
    assert!(s.reader.list(&empty, 2000).expect("list").0.is_empty());
}

/// A build reads the state as it was when openraft asked for it, while apply goes on.
#[tokio::test]
async fn a_snapshot_holds_the_state_it_was_asked_for_while_apply_goes_on() {
    let (_dir, mut a) = fresh_node();
    a.state_machine
        .apply([
            membership_entry(1),
            normal(2, 1000, set("before", "1", None)),
        ])
        .await
        .expect("apply");
    let mut builder = a.state_machine.get_snapshot_builder().await;
    a.state_machine
        .apply([normal(3, 1000, set("after", "1", None))])
        .await
        .expect("apply while the build runs");
    let snapshot = builder.build_snapshot().await.expect("build");
    assert_eq!(snapshot.meta.last_log_id, Some(log_id(2)));
    let (_bdir, mut b) = fresh_node();
    install(&mut b.state_machine, snapshot).await;
    assert!(b.reader.get("before").expect("get").is_some());
    assert_eq!(b.reader.get("after").expect("get"), None);
}

/// A build that cannot write its file (a full disk, here a folder gone) hands openraft
/// an older meta, which it ignores, instead of an error that would stop raft.
#[tokio::test]
async fn a_failed_build_keeps_the_state_machine_working() {
    let (dir, mut a) = fresh_node();
    a.state_machine
        .apply([membership_entry(1), normal(2, 1000, set("k", "1", None))])
        .await
        .expect("apply");
    let first = snapshot_of(&mut a.state_machine).await;
    assert_eq!(first.meta.last_log_id, Some(log_id(2)));
    a.state_machine
        .apply([normal(3, 1000, set("k", "2", None))])
        .await
        .expect("apply");
    let folder = dir.path().join("snapshot");
    std::fs::rename(&folder, dir.path().join("elsewhere")).expect("move");
    std::fs::write(&folder, b"not a folder").expect("block");
    let failed = snapshot_of(&mut a.state_machine).await;
    assert_eq!(
        failed.meta.last_log_id, None,
        "no newer meta than the last good one"
    );
    // The next build waits out a pause instead of scanning a full disk again at once.
    std::fs::remove_file(&folder).expect("unblock");
    std::fs::rename(dir.path().join("elsewhere"), &folder).expect("move back");
    let paused = snapshot_of(&mut a.state_machine).await;
    assert_eq!(paused.meta.last_log_id, None, "no build during the pause");
    a.state_machine
        .apply([normal(4, 1000, set("k", "3", None))])
        .await
        .expect("apply after the failed build");
    assert_eq!(
        a.reader.get("k").expect("get").expect("k").value,
        b"3".to_vec()
    );
}

/// Data that does not decode (here, bytes after its end) is refused before the install
/// changes anything: readers go on with the old state, and `open` installs the stored
/// snapshot, which does decode.
#[tokio::test]
async fn an_install_of_data_that_does_not_decode_changes_nothing() {
    let (_adir, mut a) = fresh_node();
    a.state_machine
        .apply([
            membership_entry(1),
            normal(2, 1000, set("x", "1", None)),
            normal(3, 1000, set("y", "2", Some(60_000))),
        ])
        .await
        .expect("apply");
    let snapshot = snapshot_of(&mut a.state_machine).await;
    let meta = snapshot.meta.clone();
    let good = bytes_of(snapshot).await;
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut b = open(dir.path()).expect("open");
        b.state_machine
            .apply([normal(1, 900, set("stale", "0", None))])
            .await
            .expect("apply");
        b.snapshots.save(&meta, &good).expect("save");
        let bad = [good.clone(), vec![9, 9]].concat();
        let data = received(&mut b.state_machine, &bad).await;
        match b.state_machine.install_snapshot(&meta, data).await {
            Err(e) => assert!(e.to_string().contains("follow"), "{e}"),
            Ok(()) => panic!("installed a snapshot with bytes after its end"),
        }
        assert!(
            b.reader.get("stale").expect("get").is_some(),
            "the old state stays"
        );
        assert!(b.reader.digest().is_ok());
    }
    let b = open(dir.path()).expect("reopen");
    assert_eq!(
        b.reader.digest().expect("digest"),
        a.reader.digest().expect("digest")
    );
    assert_eq!(b.reader.get("stale").expect("get"), None);
}

/// A state larger than one install batch travels whole.
#[tokio::test]
async fn a_snapshot_larger_than_an_install_batch_installs_whole() {
    let (_adir, mut a) = fresh_node();
    let mut entries = vec![membership_entry(1)];
    for i in 0..24u64 {
        let value = vec![b'a' + (i % 26) as u8; 1024 * 1024];
        entries.push(normal(
            i + 2,
            1000,
            Command::Set {
                key: format!("big/{i:02}"),
                value,
                ttl: Ttl::Clear,
                precondition: Precondition::Always,
            },
        ));
    }
    a.state_machine.apply(entries).await.expect("apply");
    let snapshot = snapshot_of(&mut a.state_machine).await;
    let (_bdir, mut b) = fresh_node();
    install(&mut b.state_machine, snapshot).await;
    assert_eq!(
        b.reader.digest().expect("digest"),
        a.reader.digest().expect("digest")
    );
    assert_eq!(b.reader.data_bytes(), a.reader.data_bytes());
}

/// The highest node id any membership named survives a smaller membership, a snapshot
/// and a reopen, so an id is never handed out twice.
#[tokio::test]
async fn the_highest_node_id_outlives_its_member() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a = open(dir.path()).expect("open");
    let members = |index: u64, ids: &[u64]| {
        let nodes: std::collections::BTreeMap<u64, kv_store::typ::NodeInfo> = ids
            .iter()
            .map(|id| (*id, kv_store::typ::NodeInfo::default()))
            .collect();
        let voters = ids.iter().copied().collect();
        LogEntry {
            log_id: log_id(index),
            payload: EntryPayload::Membership(Membership::new(vec![voters], nodes)),
        }
    };
    a.state_machine
        .apply([
            members(1, &[1, 2, 3]),
            members(2, &[1, 2, 3, 7]),
            members(3, &[1, 2]),
        ])
        .await
        .expect("apply");
    assert_eq!(a.reader.max_node_id(), 7);
    let snapshot = snapshot_of(&mut a.state_machine).await;
    let (_bdir, mut b) = fresh_node();
    install(&mut b.state_machine, snapshot).await;
    assert_eq!(b.reader.max_node_id(), 7);
    assert_eq!(
        b.reader.digest().expect("digest"),
        a.reader.digest().expect("digest")
    );
    drop(a);
    let a = open(dir.path()).expect("reopen");
    assert_eq!(a.reader.max_node_id(), 7);
}

//! `Store::check` and isolation on a real store: indexes damaged straight in sled (the store
//! dropped, the directory opened with `sled::open`), then found, repaired from the records,
//! and found healthy by a second check; one damaged entry never hides the others.

use std::path::Path;
use std::sync::Arc;

use saga_core::log::{LogLevel, LogLine, LogSource};
use saga_core::store::{CheckReport, Problem, Store, StoreError, FORMAT_VERSION};
use saga_core::OperationId;
use saga_store::SledStore;

use crate::support::*;

/// Opens the store's directory with sled alone, runs `edit` on it and flushes, once the store's
/// write-ahead log holds nothing that the next open would replay over the edit (see
/// `open_sled_to_edit`).
fn edit(path: &Path, edit: impl FnOnce(&sled::Db)) {
    let db = open_sled_to_edit(path);
    edit(&db);
    db.flush().expect("flushes");
}

fn tree(db: &sled::Db, name: &str) -> sled::Tree {
    db.open_tree(name).expect("tree")
}

fn describe(problem: &Problem) -> String {
    match problem {
        Problem::MissingUnfinishedMark => "missing mark".into(),
        Problem::StaleUnfinishedMark => "stale mark".into(),
        Problem::MissingIndexEntry => "missing index entry".into(),
        Problem::DanglingEntry { index } => format!("dangling {index}"),
        Problem::DamagedEntry { index, .. } => format!("damaged {index}"),
        Problem::DamagedRecords(_) => "damaged records".into(),
        other => format!("{other}"),
    }
}

/// The findings as (operation, problem, repaired), sorted.
fn findings(report: &CheckReport) -> Vec<(Option<OperationId>, String, bool)> {
    let mut out: Vec<_> =
        report.findings.iter().map(|f| (f.operation, describe(&f.problem), f.repaired)).collect();
    out.sort();
    out
}

fn found(
    list: &[(Option<OperationId>, &str)],
    repaired: bool,
) -> Vec<(Option<OperationId>, String, bool)> {
    let mut out: Vec<_> = list.iter().map(|(id, p)| (*id, (*p).to_owned(), repaired)).collect();
    out.sort();
    out
}

async fn healthy(store: &SledStore) {
    let report = store.check(false).await.expect("checks");
    assert!(report.findings.is_empty(), "{:?}", report.findings);
}

fn line(id: OperationId, seq: u64) -> LogLine {
    LogLine {
        operation: id,
        seq,
        at_ms: 100 + seq,
        level: LogLevel::Info,
        source: LogSource::Engine,
        step: None,
        message: format!("line {seq}"),
    }
}

#[tokio::test]
async fn a_healthy_store_checks_clean() {
    let (_dir, _path, store) = open_temp();
    let (a, lease) = create(&store, "prod", 10).await;
    create(&store, "dev", 11).await;
    store.append(&lease, &[started(a, 1, "a"), finished(a, 2)]).await.expect("appends");
    store.append_log(&lease, &[line(a, 0), line(a, 1)]).await.expect("logs");
    let report = store.check(true).await.expect("checks");
    assert_eq!(report.operations, 2);
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    assert!(report.is_healthy());
}

#[tokio::test]
async fn a_removed_unfinished_mark_is_found_and_repaired() {
    let (_dir, path, store) = open_temp();
    let (a, _) = create(&store, "prod", 10).await;
    let (b, lease_b) = create(&store, "prod", 11).await;
    store.append(&lease_b, &[finished(b, 1)]).await.expect("finishes");
    drop(store);
    edit(&path, |db| {
        tree(db, "unfinished").remove(op_key(a)).expect("removes");
    });

    let store = SledStore::open(&path).expect("reopens");
    assert!(store.list_unfinished().await.expect("lists").ids.is_empty());
    let report = store.check(false).await.expect("checks");
    assert_eq!(report.operations, 2);
    assert_eq!(findings(&report), found(&[(Some(a), "missing mark")], false));
    assert!(!report.is_healthy());
    assert!(store.list_unfinished().await.expect("lists").ids.is_empty(), "no repair asked");

    let report = store.check(true).await.expect("repairs");
    assert_eq!(findings(&report), found(&[(Some(a), "missing mark")], true));
    assert!(report.is_healthy());
    assert_eq!(store.list_unfinished().await.expect("lists").ids, vec![a]);
    healthy(&store).await;
    drop(store);
    let store = SledStore::open(&path).expect("reopens");
    assert_eq!(store.list_unfinished().await.expect("lists").ids, vec![a]);
}

/// The cut is made once the write-ahead log no longer holds the finish (see
/// `open_sled_to_edit`): the record never comes back at the next open, whenever the close's
/// checkpoint ran.
#[tokio::test]
async fn a_cut_finish_is_an_unfinished_operation_without_a_mark() {
    let (_dir, path, store) = open_temp();
    let (a, lease) = create(&store, "prod", 10).await;
    let records = [started(a, 1, "a"), succeeded(a, 2, "a", b"1"), finished(a, 3)];
    store.append(&lease, &records).await.expect("appends");
    assert!(store.list_unfinished().await.expect("lists").ids.is_empty());
    drop(store);
    edit(&path, |db| {
        let finish = tree(db, "records").get(seq_key(a, 3)).expect("reads");
        assert!(finish.is_some(), "the acknowledged finish is in sled before the cut");
        tree(db, "records").remove(seq_key(a, 3)).expect("cuts");
    });

    let store = SledStore::open(&path).expect("reopens");
    assert_eq!(store.read(a).await.expect("reads").len(), 3);
    assert!(store.list_unfinished().await.expect("lists").ids.is_empty());
    let report = store.check(true).await.expect("repairs");
    assert_eq!(findings(&report), found(&[(Some(a), "missing mark")], true));
    assert_eq!(store.list_unfinished().await.expect("lists").ids, vec![a]);
    healthy(&store).await;
}

/// A finished Operation still marked unfinished is what an unacknowledged finish leaves in
/// sled's files: opening settles it (see `settle_unacknowledged`), before any check.
#[tokio::test]
async fn a_stale_mark_of_a_finished_operation_is_removed_at_open() {
    let (_dir, path, store) = open_temp();
    let (a, lease) = create(&store, "prod", 10).await;
    let (b, _) = create(&store, "prod", 11).await;
    store.append(&lease, &[finished(a, 1)]).await.expect("finishes");
    drop(store);
    edit(&path, |db| {
        tree(db, "unfinished").insert(op_key(a), &[][..]).expect("marks");
    });

    let store = SledStore::open(&path).expect("reopens");
    assert_eq!(store.list_unfinished().await.expect("lists").ids, vec![b]);
    healthy(&store).await;
}

#[tokio::test]
async fn a_malformed_unfinished_key_is_listed_as_damaged_and_removed() {
    let (_dir, path, store) = open_temp();
    let (a, _) = create(&store, "prod", 10).await;
    let (b, _) = create(&store, "prod", 11).await;
    drop(store);
    edit(&path, |db| {
        tree(db, "unfinished").insert(&[1u8, 2, 3, 4, 5][..], &[][..]).expect("inserts");
    });

    let store = SledStore::open(&path).expect("reopens");
    let listing = store.list_unfinished().await.expect("lists the healthy ids");
    assert_eq!(listing.ids, vec![a, b]);
    assert_eq!(listing.damaged.len(), 1, "{:?}", listing.damaged);
    match &listing.damaged[0] {
        StoreError::Corrupt { place, problem } => {
            assert!(place.contains("unfinished"), "{place}");
            assert!(problem.contains("5 bytes"), "{problem}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }

    let report = store.check(false).await.expect("checks");
    assert_eq!(findings(&report), found(&[(None, "damaged unfinished")], false));
    let report = store.check(true).await.expect("repairs");
    assert_eq!(findings(&report), found(&[(None, "damaged unfinished")], true));
    let listing = store.list_unfinished().await.expect("lists");
    assert_eq!(listing.ids, vec![a, b]);
    assert!(listing.damaged.is_empty());
    healthy(&store).await;
}

#[tokio::test]
async fn undecodable_and_newer_leases_are_damaged_entries() {
    let (_dir, path, store) = open_temp();
    let (a, lease_a) = create(&store, "prod", 10).await;
    let (b, _) = create(&store, "prod", 11).await;
    let (c, lease_c) = create(&store, "prod", 12).await;
    drop(store);
    edit(&path, |db| {
        let leases = tree(db, "leases");
        leases.insert(op_key(a), &[FORMAT_VERSION, 0xff, 0xff, 0xff][..]).expect("damages");
        let lease = leases.get(op_key(b)).expect("reads").expect("a lease");
        leases.insert(op_key(b), newer_version(&lease, &op_key(b))).expect("replaces");
    });

    let store = SledStore::open(&path).expect("reopens");
    // Isolation: the damaged leases fail their own Operations only, with typed errors.
    let append = store.append(&lease_a, &[started(a, 1, "a")]).await;
    assert!(matches!(append, Err(StoreError::Corrupt { .. })), "{append:?}");
    assert!(matches!(store.claim(b, "me", TTL).await, Err(StoreError::NewerFormat { .. })));
    store.append(&lease_c, &[started(c, 1, "a")]).await.expect("the others go on");
    assert_eq!(store.read(a).await.expect("records still read").len(), 1);

    let report = store.check(false).await.expect("checks");
    let expected = [(Some(a), "damaged leases"), (Some(b), "damaged leases")];
    assert_eq!(findings(&report), found(&expected, false));
    let report = store.check(true).await.expect("repairs");
    assert_eq!(findings(&report), found(&expected, true));
    healthy(&store).await;
    // With the damaged lease gone, the Operation can be claimed again.
    let claimed = store.claim(a, "me", TTL).await.expect("claims");
    store.append(&claimed, &[started(a, 1, "a")]).await.expect("appends");
}

#[tokio::test]
async fn dangling_and_damaged_index_entries_are_found_and_removed() {
    let (_dir, path, store) = open_temp();
    let (a, _) = create(&store, "prod", 10).await;
    // An Operation with log lines (written under its lease), whose records then go: a ghost.
    let ghost = OperationId::new();
    let ghost_lease =
        store.create(&created(ghost, "s", "prod", 5), "me", TTL).await.expect("creates");
    store.append_log(&ghost_lease, &[line(ghost, 0), line(ghost, 1)]).await.expect("logs");
    drop(store);
    edit(&path, |db| {
        tree(db, "records").remove(seq_key(ghost, 0)).expect("removes the ghost's record");
        let index = tree(db, "by_environment");
        index.insert(env_key("prod", 5, ghost), &[][..]).expect("inserts");
        // An entry of an Operation that exists, at a time it was not created.
        index.insert(env_key("prod", 99, a), &[][..]).expect("inserts");
        // A key cut short, inside the range of "prod".
        let cut = env_key("prod", 50, ghost);
        index.insert(&cut[..cut.len() - 3], &[][..]).expect("inserts");
        tree(db, "unfinished").insert(op_key(ghost), &[][..]).expect("inserts");
        let leases = tree(db, "leases");
        let lease = leases.get(op_key(a)).expect("reads").expect("a lease");
        leases.insert(op_key(ghost), lease).expect("inserts");
    });

    let store = SledStore::open(&path).expect("reopens");
    let listing = store.list_environment("prod", 0, u64::MAX).await.expect("lists");
    // Opening removed the ghost's unfinished mark, its lease and its index entry: what an
    // unacknowledged create leaves (see `settle_unacknowledged`). What names no unfinished
    // Operation is the check's.
    assert_eq!(listing.ids, vec![a, a]);
    assert_eq!(listing.damaged.len(), 1, "{:?}", listing.damaged);
    assert_eq!(store.list_unfinished().await.expect("lists").ids, vec![a]);

    let report = store.check(false).await.expect("checks");
    assert_eq!(report.operations, 1);
    let expected = [
        (Some(a), "dangling by_environment"),
        (None, "damaged by_environment"),
        (Some(ghost), "dangling logs"),
    ];
    assert_eq!(findings(&report), found(&expected, false));
    let report = store.check(true).await.expect("repairs");
    assert_eq!(findings(&report), found(&expected, true));

    let listing = store.list_environment("prod", 0, u64::MAX).await.expect("lists");
    assert_eq!(listing.ids, vec![a]);
    assert!(listing.damaged.is_empty());
    assert_eq!(store.list_unfinished().await.expect("lists").ids, vec![a]);
    assert!(store.read_log(ghost).await.expect("reads").is_empty());
    assert!(matches!(store.claim(ghost, "me", TTL).await, Err(StoreError::NotFound(_))));
    healthy(&store).await;
}

#[tokio::test]
async fn a_missing_index_entry_is_added_from_the_created_record() {
    let (_dir, path, store) = open_temp();
    let (a, _) = create(&store, "prod", 10).await;
    let (b, _) = create(&store, "prod", 20).await;
    drop(store);
    edit(&path, |db| {
        tree(db, "by_environment").remove(env_key("prod", 10, a)).expect("removes");
    });

    let store = SledStore::open(&path).expect("reopens");
    assert_eq!(store.list_environment("prod", 0, u64::MAX).await.expect("lists").ids, vec![b]);
    let report = store.check(true).await.expect("repairs");
    assert_eq!(findings(&report), found(&[(Some(a), "missing index entry")], true));
    assert_eq!(store.list_environment("prod", 0, u64::MAX).await.expect("lists").ids, vec![a, b]);
    healthy(&store).await;
}

#[tokio::test]
async fn damaged_records_are_reported_and_never_changed() {
    let (_dir, path, store) = open_temp();
    let (a, lease) = create(&store, "prod", 10).await;
    let (b, _) = create(&store, "prod", 11).await;
    store.append(&lease, &[started(a, 1, "a"), started(a, 2, "b")]).await.expect("appends");
    drop(store);
    let garbage = [FORMAT_VERSION, 0xff, 0xff, 0xff];
    edit(&path, |db| {
        tree(db, "records").insert(seq_key(a, 1), &garbage[..]).expect("damages");
        tree(db, "records").insert(&[0xffu8, 9, 9][..], &[][..]).expect("inserts");
        tree(db, "unfinished").remove(op_key(b)).expect("removes");
    });

    let store = SledStore::open(&path).expect("reopens");
    let report = store.check(true).await.expect("checks");
    assert_eq!(report.operations, 2);
    let mut expected = found(&[(Some(a), "damaged records"), (None, "damaged records")], false);
    expected.extend(found(&[(Some(b), "missing mark")], true));
    expected.sort();
    assert_eq!(findings(&report), expected);
    assert!(!report.is_healthy());
    let cause = report.findings.iter().find_map(|f| match &f.problem {
        Problem::DamagedRecords(cause) if f.operation == Some(a) => Some(cause),
        _ => None,
    });
    assert!(matches!(cause, Some(StoreError::CorruptRecord { position: 1, .. })), "{cause:?}");

    // The records stay as they were, and still read as damaged; the rest is healthy now.
    let report = store.check(true).await.expect("checks");
    let expected = found(&[(Some(a), "damaged records"), (None, "damaged records")], false);
    assert_eq!(findings(&report), expected);
    assert!(matches!(store.read(a).await, Err(StoreError::CorruptRecord { position: 1, .. })));
    drop(store);
    edit(&path, |db| {
        let stored = tree(db, "records").get(seq_key(a, 1)).expect("reads").expect("kept");
        assert_eq!(&stored[..], &garbage[..]);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_check_while_operations_run_finds_nothing() {
    let (_dir, _path, store) = open_temp();
    let store = Arc::new(store);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..4 {
                let (id, lease) = create(store.as_ref(), "prod", i * 10 + round).await;
                for seq in 1..=10 {
                    store.append(&lease, &[started(id, seq, "a")]).await.expect("appends");
                }
                store.append_log(&lease, &[line(id, 0)]).await.expect("logs");
                store.append(&lease, &[finished(id, 11)]).await.expect("finishes");
            }
        }));
    }
    let mut checks = 0;
    while tasks.iter().any(|t| !t.is_finished()) {
        let report = store.check(checks % 2 == 1).await.expect("checks");
        assert!(report.findings.is_empty(), "check {checks}: {:?}", report.findings);
        checks += 1;
    }
    for task in tasks {
        task.await.expect("joins");
    }
    let report = store.check(false).await.expect("checks");
    assert_eq!(report.operations, 32);
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    assert!(checks > 0);
}

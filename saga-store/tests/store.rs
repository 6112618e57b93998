//! Black-box tests of `SledStore`: the store contract, reopening, bad bytes, the lock, group
//! commit, failing syncs (`faults`), the consistency check (`check`), bytes sled gives back
//! changed (`damage`) and damage to sled's files (`sled_damage`), an interrupted first open
//! (`first_open`), stores written by earlier releases (`format`), and an executor running over
//! it.

mod cancels;
mod check;
mod conformance;
mod damage;
mod faults;
mod first_open;
mod format;
mod sled_damage;
mod support;
mod wal;

use std::sync::Arc;
use std::time::Duration;

use saga_core::log::{LogLevel, LogLine, LogSource, RecordKind};
use saga_core::store::{encode, Store, StoreError, FORMAT_VERSION};
use saga_core::{OperationId, Outcome};
use saga_store::{Durability, SledStore};

use support::*;

// ---------------------------------------------------------------- records and order

#[tokio::test]
async fn creates_appends_and_reads_in_order() {
    let (_dir, _path, store) = open_temp();
    let (id, lease) = create(&store, "prod", 10).await;
    assert_eq!(lease.epoch, 1);
    assert_eq!(lease.owner, "me");
    let batch = vec![started(id, 1, "a"), succeeded(id, 2, "a", b"1"), started(id, 3, "b")];
    store.append(&lease, &batch).await.expect("appends");
    // Past 255 records the big-endian keys still sort by number.
    let mut more = Vec::new();
    for seq in 4..300 {
        more.push(started(id, seq, "b"));
    }
    store.append(&lease, &more).await.expect("appends");
    let records = store.read(id).await.expect("reads");
    assert_eq!(records.len(), 300);
    assert!(records.iter().enumerate().all(|(i, r)| r.seq == i as u64 && r.operation == id));
    assert_eq!(records[1..4], batch[..]);
    store.append(&lease, &[]).await.expect("an empty append is fine");
}

#[tokio::test]
async fn refuses_out_of_sequence_and_duplicates() {
    let (_dir, _path, store) = open_temp();
    let (id, lease) = create(&store, "prod", 10).await;
    let gap = store.append(&lease, &[started(id, 2, "a")]).await;
    assert!(matches!(gap, Err(StoreError::OutOfSequence { expected: 1, got: 2, .. })), "{gap:?}");
    let again = store.append(&lease, &[started(id, 0, "a")]).await;
    assert!(matches!(again, Err(StoreError::OutOfSequence { expected: 1, got: 0, .. })));
    let other = OperationId::new();
    let foreign = store.append(&lease, &[started(other, 1, "a")]).await;
    assert!(matches!(foreign, Err(StoreError::OutOfSequence { .. })));
    let twice = store.create(&created(id, "s", "prod", 10), "me", TTL).await;
    assert!(matches!(twice, Err(StoreError::AlreadyExists(x)) if x == id));
    let not_created = store.create(&started(OperationId::new(), 0, "a"), "me", TTL).await;
    assert!(matches!(not_created, Err(StoreError::OutOfSequence { .. })));
    let missing = store.read(OperationId::new()).await;
    assert!(matches!(missing, Err(StoreError::NotFound(_))));
    // Nothing refused was written.
    assert_eq!(store.read(id).await.expect("reads").len(), 1);
}

// ---------------------------------------------------------------- leases

#[tokio::test]
async fn fences_stale_epochs_and_claims_after_expiry() {
    let (_dir, _path, store) = open_temp();
    let (id, first) = create(&store, "prod", 10).await;

    let owned = store.claim(id, "other", TTL).await;
    assert!(matches!(owned, Err(StoreError::Owned { ref holder, .. }) if holder == "me"));

    // The holder may claim again, and gets a higher epoch; the old lease is fenced.
    let second = store.claim(id, "me", TTL).await.expect("reclaims");
    assert_eq!(second.epoch, 2);
    let fenced = store.append(&first, &[started(id, 1, "a")]).await;
    assert!(matches!(fenced, Err(StoreError::Fenced { epoch: 1, .. })), "{fenced:?}");
    assert!(matches!(store.renew(&first, TTL).await, Err(StoreError::Fenced { .. })));
    store.release(&first).await.expect("releasing a stale lease is harmless");

    // A renewed lease stays current.
    let renewed = store.renew(&second, TTL).await.expect("renews");
    assert_eq!(renewed.epoch, 2);
    store.append(&renewed, &[started(id, 1, "a")]).await.expect("appends");

    // Released (twice, harmlessly): another owner claims at once.
    store.release(&renewed).await.expect("releases");
    store.release(&renewed).await.expect("releases again");
    let third = store.claim(id, "other", TTL).await.expect("claims");
    assert_eq!(third.epoch, 3);
    let fenced = store.append(&renewed, &[succeeded(id, 2, "a", b"1")]).await;
    assert!(matches!(fenced, Err(StoreError::Fenced { ref holder, .. }) if holder == "other"));

    // A lease that expired may be claimed by anyone.
    let short = store.renew(&third, Duration::ZERO).await.expect("renews");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let fourth = store.claim(id, "third", TTL).await.expect("claims after expiry");
    assert_eq!(fourth.epoch, 4);
    assert!(matches!(
        store.append(&short, &[succeeded(id, 2, "a", b"1")]).await,
        Err(StoreError::Fenced { .. })
    ));
    store.append(&fourth, &[succeeded(id, 2, "a", b"1")]).await.expect("appends");

    assert!(matches!(
        store.claim(OperationId::new(), "me", TTL).await,
        Err(StoreError::NotFound(_))
    ));
}

// ---------------------------------------------------------------- unfinished

#[tokio::test]
async fn unfinished_shrinks_and_never_reads_finished_operations() {
    let (_dir, path, store) = open_temp();
    let (a, lease_a) = create(&store, "prod", 10).await;
    let (b, _) = create(&store, "prod", 11).await;
    let (c, _) = create(&store, "prod", 12).await;
    assert_eq!(store.list_unfinished().await.expect("lists").ids, vec![a, b, c]);
    store.append(&lease_a, &[finished(a, 1)]).await.expect("finishes");
    assert_eq!(store.list_unfinished().await.expect("lists").ids, vec![b, c]);
    drop(store);

    // Garbage in the finished Operation's records does not disturb the list: it is never read.
    {
        let db = open_sled_to_edit(&path);
        let records = db.open_tree("records").expect("tree");
        let mut key = a.as_u128().to_be_bytes().to_vec();
        key.extend_from_slice(&0u64.to_be_bytes());
        records.insert(key, &[0xff, 0xff, 0xff][..]).expect("inserts");
        db.flush().expect("flushes");
    }
    let store = SledStore::open(&path).expect("reopens");
    assert_eq!(store.list_unfinished().await.expect("lists").ids, vec![b, c]);
}

// ---------------------------------------------------------------- environment index

#[tokio::test]
async fn lists_an_environment_within_bounds_and_alone() {
    let (_dir, _path, store) = open_temp();
    let (a1, _) = create(&store, "a", 10).await;
    let (a2, _) = create(&store, "a", 20).await;
    let (a3, _) = create(&store, "a", 30).await;
    // Environment names that extend "a" with bytes that sort below a timestamp must not leak in.
    let (x, _) = create(&store, "a\0\0\0\0\0\0\0", 15).await;
    let (y, _) = create(&store, "a\0", 25).await;
    let (b, _) = create(&store, "b", 20).await;

    assert_eq!(
        store.list_environment("a", 0, u64::MAX).await.expect("lists").ids,
        vec![a1, a2, a3]
    );
    assert_eq!(store.list_environment("a", 10, 30).await.expect("lists").ids, vec![a1, a2]);
    assert_eq!(store.list_environment("a", 11, 31).await.expect("lists").ids, vec![a2, a3]);
    assert!(store.list_environment("a", 20, 20).await.expect("lists").ids.is_empty());
    assert!(store.list_environment("a", 30, 10).await.expect("lists").ids.is_empty());
    assert_eq!(
        store.list_environment("a\0\0\0\0\0\0\0", 0, u64::MAX).await.expect("lists").ids,
        vec![x]
    );
    assert_eq!(store.list_environment("a\0", 0, u64::MAX).await.expect("lists").ids, vec![y]);
    assert_eq!(store.list_environment("b", 0, u64::MAX).await.expect("lists").ids, vec![b]);
    assert!(store.list_environment("", 0, u64::MAX).await.expect("lists").ids.is_empty());
}

// ---------------------------------------------------------------- log lines

pub(crate) fn line(id: OperationId, seq: u64, at_ms: u64) -> LogLine {
    LogLine {
        operation: id,
        seq,
        at_ms,
        level: LogLevel::Info,
        source: LogSource::Engine,
        step: Some("a".into()),
        message: format!("line {seq}"),
    }
}

#[tokio::test]
async fn purging_logs_keeps_records() {
    let (_dir, _path, store) = open_temp();
    let (a, lease) = create(&store, "prod", 10).await;
    let (b, lease_b) = create(&store, "prod", 11).await;
    store.append(&lease, &[started(a, 1, "a")]).await.expect("appends");
    store.append_log(&lease, &[line(a, 0, 100), line(a, 1, 200)]).await.expect("logs");
    store.append_log(&lease, &[line(a, 2, 300)]).await.expect("logs");
    store.append_log(&lease_b, &[line(b, 0, 150)]).await.expect("logs");
    assert_eq!(store.read_log(a).await.expect("reads").len(), 3);
    assert!(store.read_log(OperationId::new()).await.expect("reads").is_empty());

    assert_eq!(store.purge_logs(200).await.expect("purges"), 2);
    assert_eq!(store.read_log(a).await.expect("reads"), vec![line(a, 1, 200), line(a, 2, 300)]);
    assert!(store.read_log(b).await.expect("reads").is_empty());
    assert_eq!(store.purge_logs(200).await.expect("purges"), 0);
    assert_eq!(store.read(a).await.expect("records stay").len(), 2);
    assert_eq!(store.read(b).await.expect("records stay").len(), 1);

    // A line rewritten under an old key after a purge is not purged by the old time entry.
    store.append_log(&lease_b, &[line(b, 0, 500)]).await.expect("logs");
    store.append_log(&lease_b, &[line(b, 1, 50)]).await.expect("logs");
    assert_eq!(store.purge_logs(400).await.expect("purges"), 3);
    assert_eq!(store.read_log(b).await.expect("reads"), vec![line(b, 0, 500)]);
    assert!(store.read_log(a).await.expect("reads").is_empty());
}

// ---------------------------------------------------------------- deleting an environment

#[tokio::test]
async fn deleting_an_environment_removes_everything_of_it_only() {
    let (_dir, path, store) = open_temp();
    let (a1, lease) = create(&store, "gone", 10).await;
    let (a2, _) = create(&store, "gone", 20).await;
    let (keep, lease_keep) = create(&store, "kept", 15).await;
    store.append(&lease, &[started(a1, 1, "a")]).await.expect("appends");
    store.append_log(&lease, &[line(a1, 0, 100)]).await.expect("logs");
    store.append_log(&lease_keep, &[line(keep, 0, 100)]).await.expect("logs");

    assert_eq!(store.delete_environment("gone").await.expect("deletes"), 2);
    for id in [a1, a2] {
        assert!(matches!(store.read(id).await, Err(StoreError::NotFound(_))));
        assert!(matches!(store.claim(id, "x", TTL).await, Err(StoreError::NotFound(_))));
        assert!(store.read_log(id).await.expect("reads").is_empty());
    }
    assert!(matches!(
        store.append(&lease, &[succeeded(a1, 2, "a", b"1")]).await,
        Err(StoreError::Fenced { .. })
    ));
    assert!(store.list_environment("gone", 0, u64::MAX).await.expect("lists").ids.is_empty());
    assert_eq!(store.list_unfinished().await.expect("lists").ids, vec![keep]);
    assert_eq!(store.list_environment("kept", 0, u64::MAX).await.expect("lists").ids, vec![keep]);
    assert_eq!(store.read_log(keep).await.expect("reads").len(), 1);
    assert_eq!(store.delete_environment("gone").await.expect("deletes"), 0);
    // The time index of deleted lines went too: a purge finds only the kept line.
    assert_eq!(store.purge_logs(u64::MAX).await.expect("purges"), 1);
    drop(store);
    let store = SledStore::open(&path).expect("reopens");
    assert!(matches!(store.read(a1).await, Err(StoreError::NotFound(_))));
}

// ---------------------------------------------------------------- reopening

#[tokio::test]
async fn reopening_keeps_everything() {
    let (_dir, path, store) = open_temp();
    let (a, lease_a) = create(&store, "prod", 10).await;
    let (b, lease_b) = create(&store, "prod", 20).await;
    store.append(&lease_a, &[started(a, 1, "a"), succeeded(a, 2, "a", b"7")]).await.expect("ok");
    store.append(&lease_b, &[finished(b, 1)]).await.expect("finishes");
    store.append_log(&lease_a, &[line(a, 0, 100)]).await.expect("logs");
    let records_a = store.read(a).await.expect("reads");
    drop(store);

    let store = SledStore::open(&path).expect("reopens");
    assert_eq!(store.read(a).await.expect("reads"), records_a);
    assert_eq!(store.read(b).await.expect("reads").len(), 2);
    assert_eq!(store.list_unfinished().await.expect("lists").ids, vec![a]);
    assert_eq!(store.list_environment("prod", 0, u64::MAX).await.expect("lists").ids, vec![a, b]);
    assert_eq!(store.read_log(a).await.expect("reads"), vec![line(a, 0, 100)]);
    // The lease survived: the old one is still current, and another owner is refused.
    store.append(&lease_a, &[started(a, 3, "b")]).await.expect("appends");
    assert!(matches!(store.claim(a, "other", TTL).await, Err(StoreError::Owned { .. })));
    assert_eq!(store.claim(a, "me", TTL).await.expect("claims").epoch, 2);
}

#[tokio::test]
async fn large_records_round_trip_across_reopen() {
    // Big enough that sled stores it in a blob file, which the store syncs too.
    let (_dir, path, store) = open_temp();
    let (id, lease) = create(&store, "prod", 10).await;
    let output = vec![b'7'; 300 * 1024];
    store.append(&lease, &[started(id, 1, "a"), succeeded(id, 2, "a", &output)]).await.expect("ok");
    drop(store);
    // The checkpoint at close wrote it into sled, which keeps a value this big in a blob file.
    let blobs = std::fs::read_dir(path.join("blobs")).expect("sled's blob directory").count();
    assert!(blobs > 0, "the record should have gone to a blob file");
    let store = SledStore::open(&path).expect("reopens");
    let records = store.read(id).await.expect("reads");
    assert!(
        matches!(&records[2].kind, RecordKind::StepSucceeded { output: o, .. } if *o == output)
    );
}

// ---------------------------------------------------------------- bad bytes

fn record_key(id: OperationId, seq: u64) -> Vec<u8> {
    let mut key = id.as_u128().to_be_bytes().to_vec();
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// Writes `bytes` as record `seq` of `id`, straight into sled.
fn overwrite_record(path: &std::path::Path, id: OperationId, seq: u64, bytes: &[u8]) {
    let db = open_sled_to_edit(path);
    let records = db.open_tree("records").expect("tree");
    records.insert(record_key(id, seq), bytes).expect("inserts");
    db.flush().expect("flushes");
}

#[tokio::test]
async fn corrupt_and_truncated_records_are_typed_errors() {
    let (_dir, path, store) = open_temp();
    let (id, lease) = create(&store, "prod", 10).await;
    let batch = [started(id, 1, "a"), succeeded(id, 2, "a", b"1"), started(id, 3, "b")];
    store.append(&lease, &batch).await.expect("appends");
    drop(store);

    let good = encode(&batch[1]).expect("encodes");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", good[..good.len() / 2].to_vec()),
        ("empty", Vec::new()),
        ("garbage", vec![FORMAT_VERSION, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
        ("version zero", {
            let mut b = good.clone();
            b[0] = 0;
            b
        }),
        ("trailing bytes", {
            let mut b = good.clone();
            b.push(0);
            b
        }),
        (
            "another operation's record",
            encode(&succeeded(OperationId::new(), 2, "a", b"1")).expect("encodes"),
        ),
        ("another position's record", encode(&succeeded(id, 9, "a", b"1")).expect("encodes")),
    ];
    for (what, bytes) in cases {
        overwrite_record(&path, id, 2, &bytes);
        let store = SledStore::open(&path).expect("reopens");
        match store.read(id).await {
            Err(e @ StoreError::CorruptRecord { operation, position: 2, .. })
                if operation == id =>
            {
                assert!(e.to_string().contains(&id.to_string()), "{what}: {e}");
            }
            other => panic!("{what}: expected a corrupt record error, got {other:?}"),
        }
    }

    // A missing record in the middle is named too.
    {
        let db = open_sled_to_edit(&path);
        db.open_tree("records").expect("tree").remove(record_key(id, 2)).expect("removes");
        db.flush().expect("flushes");
    }
    let store = SledStore::open(&path).expect("reopens");
    assert!(matches!(store.read(id).await, Err(StoreError::CorruptRecord { position: 2, .. })));
}

#[tokio::test]
async fn newer_formats_are_refused() {
    let (_dir, path, store) = open_temp();
    let (id, _) = create(&store, "prod", 10).await;
    drop(store);

    // A record written by a newer release, which keeps the checksum trailer.
    let newer = newer_version(&encode(&started(id, 1, "a")).expect("encodes"), &[]);
    overwrite_record(&path, id, 1, &newer);
    let store = SledStore::open(&path).expect("reopens");
    assert!(
        matches!(store.read(id).await, Err(StoreError::NewerFormat { found, .. }) if found == FORMAT_VERSION + 1)
    );
    drop(store);

    // A store written by a newer release.
    for key in ["record_format", "layout"] {
        let (_dir, path, store) = open_temp();
        drop(store);
        {
            let db = open_sled_to_edit(&path);
            db.open_tree("meta").expect("tree").insert(key, &[99u8][..]).expect("inserts");
            db.flush().expect("flushes");
        }
        match SledStore::open(&path) {
            Err(e @ StoreError::NewerFormat { found: 99, .. }) => {
                assert!(e.to_string().contains("newer"), "{e}");
            }
            other => panic!("{key}: expected NewerFormat, got {other:?}"),
        }
    }
}

// ---------------------------------------------------------------- the lock

const LOCK_ENV: &str = "SAGA_STORE_TEST_LOCKED_PATH";

/// Run by `a_second_process_gets_a_lock_error` in a child process: opens the store it is told.
#[test]
fn second_process_helper() {
    let Ok(path) = std::env::var(LOCK_ENV) else { return };
    match SledStore::open(&path) {
        Err(StoreError::Locked { path }) => println!("RESULT locked {path}"),
        other => println!("RESULT unexpected {other:?}"),
    }
}

#[test]
fn a_second_process_gets_a_lock_error() {
    let (_dir, path, store) = open_temp();
    let exe = std::env::current_exe().expect("test binary");
    let mut child = std::process::Command::new(exe)
        .args(["second_process_helper", "--exact", "--nocapture", "--test-threads=1"])
        .env(LOCK_ENV, &path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawns");
    let started = std::time::Instant::now();
    while child.try_wait().expect("waits").is_none() {
        assert!(started.elapsed() < Duration::from_secs(60), "the second open hangs");
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("RESULT locked"), "{stdout}");
    let error = StoreError::Locked { path: path.display().to_string() };
    assert!(error.to_string().contains("in use by another process"));
    // The same process opening it twice gets the same error (the lock is per open file).
    assert!(matches!(SledStore::open(&path), Err(StoreError::Locked { .. })));
    drop(store);
    SledStore::open(&path).expect("opens once the first store is dropped");
}

// ---------------------------------------------------------------- group commit

#[tokio::test]
async fn a_lone_operation_costs_one_sync_per_append() {
    let (_dir, _path, store) = open_temp();
    let before = store.sync_count();
    let (id, lease) = create(&store, "prod", 10).await;
    assert_eq!(store.sync_count(), before + 1);
    for seq in 1..=5 {
        store.append(&lease, &[started(id, seq, "a")]).await.expect("appends");
    }
    assert_eq!(store.sync_count(), before + 6);
    // Log lines and lease changes do not sync on their own.
    store.append_log(&lease, &[line(id, 0, 1)]).await.expect("logs");
    store.renew(&lease, TTL).await.expect("renews");
    assert_eq!(store.sync_count(), before + 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_operations_share_syncs() {
    let (_dir, _path, store) = open_temp();
    let store = Arc::new(store);
    let mut leases = Vec::new();
    for i in 0..32 {
        leases.push(create(store.as_ref(), "prod", i).await);
    }
    let before = store.sync_count();
    let mut tasks = Vec::new();
    for (id, lease) in leases {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for seq in 1..=10 {
                store.append(&lease, &[started(id, seq, "a")]).await.expect("appends");
            }
        }));
    }
    for task in tasks {
        task.await.expect("joins");
    }
    let syncs = store.sync_count() - before;
    eprintln!("320 appends, {syncs} syncs");
    assert!(syncs >= 10, "each Operation waited for its own syncs: {syncs}");
    assert!(syncs < 320, "320 appends should share syncs, made {syncs}");
    for id in store.list_unfinished().await.expect("lists").ids {
        assert_eq!(store.read(id).await.expect("reads").len(), 11);
    }
}

#[tokio::test]
async fn the_store_without_fsync_says_so_and_works() {
    let (_dir, path) = temp_store_path();
    let store = SledStore::open_without_fsync(&path).expect("opens");
    assert_eq!(store.durability(), Durability::NoSync);
    assert_eq!(store.path(), path.as_path());
    let (id, lease) = create(&store, "prod", 10).await;
    store.append(&lease, &[started(id, 1, "a")]).await.expect("appends");
    assert_eq!(store.sync_count(), 0);
    drop(store);
    let store = SledStore::open(&path).expect("reopens");
    assert_eq!(store.durability(), Durability::Fsync);
    assert_eq!(store.read(id).await.expect("reads").len(), 2);
}

/// Run under strace for the crate docs' evidence: one create and one append.
#[tokio::test]
async fn one_append_one_sync() {
    let (_dir, _path, store) = open_temp();
    eprintln!("STRACE-MARK create");
    let (id, lease) = create(&store, "prod", 10).await;
    eprintln!("STRACE-MARK append");
    store.append(&lease, &[started(id, 1, "a")]).await.expect("appends");
    eprintln!("STRACE-MARK done");
}

// ---------------------------------------------------------------- an executor over the store

mod executor {
    use super::*;
    use saga_core::{
        async_trait, Executed, Executor, Resource, Saga, Start, Step, StepContext, StepError,
    };

    /// A request to start an Operation of `saga` in `prod`.
    fn in_prod(saga: &str, app: &str, actor: &str) -> Start {
        Start::new(saga, Resource::new("app", app)).params(&()).environment("prod").actor(actor)
    }

    /// Longer than any step here takes: a shutdown lets them finish on their own.
    const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(60);

    struct Ok1;
    #[async_trait]
    impl Step for Ok1 {
        type Output = u32;
        async fn execute(&self, _: &StepContext) -> Result<u32, StepError> {
            Ok(1)
        }
        async fn compensate(&self, _: &StepContext, _: Executed<u32>) -> Result<(), StepError> {
            Ok(())
        }
    }

    struct Fails;
    #[async_trait]
    impl Step for Fails {
        type Output = ();
        async fn execute(&self, _: &StepContext) -> Result<(), StepError> {
            Err(StepError::permanent("no capacity"))
        }
    }

    fn three() -> Saga {
        Saga::builder("three", 1)
            .step("a", Ok1)
            .step("b", Ok1)
            .step("c", Ok1)
            .build()
            .expect("builds")
    }

    fn failing() -> Saga {
        Saga::builder("failing", 1).step("a", Ok1).step("b", Fails).build().expect("builds")
    }

    fn executor(store: Arc<SledStore>) -> Executor {
        Executor::builder(store)
            .saga(three())
            .saga(failing())
            .owner("executor")
            .build()
            .expect("builds")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_sagas_and_recovers_after_reopening() {
        let (_dir, path, store) = open_temp();
        let store = Arc::new(store);
        let exec = executor(store.clone());

        let ok = exec.start(in_prod("three", "web", "alice")).await;
        let ok = ok.expect("starts");
        assert_eq!(exec.wait(ok).await.expect("waits"), Outcome::Succeeded);

        let bad = exec.start(in_prod("failing", "db", "bob")).await;
        let bad = bad.expect("starts");
        let outcome = exec.wait(bad).await.expect("waits");
        assert_eq!(outcome.status(), saga_core::Status::RolledBack, "{outcome:?}");
        assert!(store.list_unfinished().await.expect("lists").ids.is_empty());
        assert!(!exec.log(bad).await.expect("log").is_empty());
        assert!(exec.shutdown(SHUTDOWN_DEADLINE).await.left.is_empty());
        drop(exec);

        // A half-run Operation, as a crashed executor leaves it: step b started, never finished.
        let half = OperationId::new();
        let lease = store
            .create(&created(half, "three", "prod", half.created_ms()), "crashed", Duration::ZERO)
            .await
            .expect("creates");
        let records = [started(half, 1, "a"), succeeded(half, 2, "a", b"1"), started(half, 3, "b")];
        store.append(&lease, &records).await.expect("appends");
        drop(store);

        let store = Arc::new(SledStore::open(&path).expect("reopens"));
        assert_eq!(store.list_unfinished().await.expect("lists").ids, vec![half]);
        let exec = executor(store.clone());
        tokio::time::sleep(Duration::from_millis(2)).await;
        let report = exec.recover().await.expect("recovers");
        assert_eq!(report.resumed, vec![half], "{report:?}");
        assert_eq!(exec.wait(half).await.expect("waits"), Outcome::Succeeded);
        assert!(store.list_unfinished().await.expect("lists").ids.is_empty());
        let ids = store.list_environment("prod", 0, u64::MAX).await.expect("lists").ids;
        assert_eq!(ids, vec![ok, bad, half]);
        assert!(exec.shutdown(SHUTDOWN_DEADLINE).await.left.is_empty());
    }

    /// On sled the workers are the executors of the same process: an Operation submitted by
    /// one that never runs anything is picked up at once by a worker over the same store (woken
    /// by the store, its own scan a minute away), and the submitter's `wait` follows it there.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_submitted_operation_is_picked_up_at_once_by_a_worker_of_the_process() {
        let (_dir, _path, store) = open_temp();
        let store = Arc::new(store);
        let api = Executor::builder(store.clone())
            .saga(three())
            .owner("api")
            .takeover_interval(None)
            .build()
            .expect("builds");
        let worker = Executor::builder(store.clone())
            .saga(three())
            .owner("worker")
            .takeover_interval(Some(Duration::from_secs(60)))
            .cancel_poll_interval(Duration::from_secs(60))
            .build()
            .expect("builds");
        let _ = worker.recover().await.expect("recovers");
        let id = api.submit(in_prod("three", "web", "alice")).await.expect("submits");
        let outcome = api.wait_timeout(id, Duration::from_secs(10)).await.expect("waits");
        assert_eq!(outcome, Outcome::Succeeded);
        let records = store.read(id).await.expect("reads");
        assert!(!api.is_running(id));
        assert_eq!(
            records.iter().filter(|r| matches!(r.kind, RecordKind::StepSucceeded { .. })).count(),
            3
        );
        assert!(worker.shutdown(SHUTDOWN_DEADLINE).await.left.is_empty());
    }
}

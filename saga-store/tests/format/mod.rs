//! Stores written by earlier releases open and read as they were written: the fixture
//! `tests/fixtures/store-format-2`, a store of record format 2 closed cleanly, made by
//! [`make_store_format_2`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use saga_core::log::{LogLevel, LogLine, LogSource, Record, RecordKind};
use saga_core::store::{CancelRecorded, CancelRequest, Lease, Store};
use saga_core::{OperationId, Outcome, Resource};
use saga_store::SledStore;

use crate::support::*;

/// Where the fixture lives, in the repository.
fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-format-2")
}

/// The owner of every lease of the fixture.
const OWNER: &str = "fixture-writer";
/// The environment of every Operation of the fixture.
const ENVIRONMENT: &str = "fixture";

/// An id created at `at_ms`, as `OperationId::new` makes them, with fixed low bits.
const fn id_at(at_ms: u64, low: u128) -> OperationId {
    OperationId::from_u128(((at_ms as u128) << 80) | low)
}

/// Finished (succeeded), with log lines.
const FINISHED: OperationId = id_at(1_700_000_000_000, 0xf1);
/// Unfinished, its lease claimed a second time, with log lines.
const LEASED: OperationId = id_at(1_700_000_100_000, 0xa2);
/// Unfinished, with a pending cancel request.
const CANCELLING: OperationId = id_at(1_700_000_200_000, 0xc3);

/// The leases as the generator left them: its output, pasted here (the expiry is the time of
/// the generator's run plus the ttl).
fn expected_leases() -> Vec<Lease> {
    let lease =
        |operation, epoch, expires_ms| Lease { operation, owner: OWNER.into(), epoch, expires_ms };
    vec![
        lease(FINISHED, 1, EXPIRES[0]),
        lease(LEASED, 2, EXPIRES[1]),
        lease(CANCELLING, 1, EXPIRES[2]),
    ]
}

/// The leases' expiries printed by the generator.
const EXPIRES: [u64; 3] = [1_796_697_053_233, 1_796_697_053_242, 1_796_697_053_242];

/// The pending cancel request of [`CANCELLING`].
fn cancel() -> CancelRequest {
    CancelRequest {
        operation: CANCELLING,
        actor: "amy".into(),
        reason: "the window closed".into(),
        at_ms: 1_700_000_250_000,
    }
}

fn created_of(id: OperationId, saga: &str, resource: Resource) -> Record {
    Record {
        operation: id,
        seq: 0,
        at_ms: id.created_ms(),
        kind: RecordKind::OperationCreated {
            saga: saga.into(),
            version: 3,
            params: br#"{"image":"web:1.4"}"#.to_vec(),
            environment: ENVIRONMENT.into(),
            resource,
            actor: "alice".into(),
        },
    }
}

/// The records of the fixture's Operations, as the generator wrote them.
fn expected_records() -> Vec<(OperationId, Vec<Record>)> {
    let at = |id: OperationId, seq: u64, kind| Record {
        operation: id,
        seq,
        at_ms: id.created_ms() + 1_000 * seq,
        kind,
    };
    let step = |s: &str| s.to_owned();
    let finished = vec![
        created_of(FINISHED, "deploy", Resource::new("app", "web")),
        at(FINISHED, 1, RecordKind::StepStarted { step: step("build"), attempt: 1 }),
        at(
            FINISHED,
            2,
            RecordKind::StepSucceeded { step: step("build"), output: b"\"ok\"".to_vec() },
        ),
        at(FINISHED, 3, RecordKind::PointOfNoReturnPassed { step: step("switch") }),
        at(FINISHED, 4, RecordKind::StepStarted { step: step("switch"), attempt: 1 }),
        at(
            FINISHED,
            5,
            RecordKind::StepFailed {
                step: step("switch"),
                error: "connection reset".into(),
                retryable: true,
            },
        ),
        at(FINISHED, 6, RecordKind::StepStarted { step: step("switch"), attempt: 2 }),
        at(
            FINISHED,
            7,
            RecordKind::StepSucceeded { step: step("switch"), output: b"null".to_vec() },
        ),
        at(FINISHED, 8, RecordKind::OperationFinished { outcome: Outcome::Succeeded }),
    ];
    let leased = vec![
        created_of(LEASED, "migrate", Resource::new("database", "orders")),
        at(LEASED, 1, RecordKind::StepStarted { step: step("snapshot"), attempt: 1 }),
    ];
    let cancelling = vec![
        created_of(CANCELLING, "deploy", Resource::new("app", "api")),
        at(CANCELLING, 1, RecordKind::StepStarted { step: step("build"), attempt: 1 }),
        at(CANCELLING, 2, RecordKind::StepSucceeded { step: step("build"), output: b"1".to_vec() }),
    ];
    vec![(FINISHED, finished), (LEASED, leased), (CANCELLING, cancelling)]
}

/// The log lines of the fixture's Operations, as the generator wrote them.
fn expected_lines() -> Vec<(OperationId, Vec<LogLine>)> {
    let line =
        |id: OperationId, seq: u64, level, source, step: Option<&str>, message: &str| LogLine {
            operation: id,
            seq,
            at_ms: id.created_ms() + 500 + 1_000 * seq,
            level,
            source,
            step: step.map(str::to_owned),
            message: message.into(),
        };
    use LogLevel::*;
    use LogSource::*;
    let finished = vec![
        line(FINISHED, 0, Info, Engine, None, "operation created"),
        line(FINISHED, 1, Info, Step, Some("build"), "built web:1.4"),
        line(FINISHED, 2, Warn, Engine, Some("switch"), "attempt 1 failed: connection reset"),
        line(FINISHED, 3, Info, Engine, None, "succeeded"),
    ];
    let leased = vec![
        line(LEASED, 0, Info, Engine, None, "operation created"),
        line(LEASED, 1, Debug, Step, Some("snapshot"), "taking a snapshot of orders"),
    ];
    vec![(FINISHED, finished), (LEASED, leased), (CANCELLING, Vec::new())]
}

/// Writes what [`expected_records`], [`expected_lines`] and [`cancel`] say into `store`, and
/// returns the leases it left.
async fn write_fixture(store: &SledStore) -> Vec<Lease> {
    let mut leases = Vec::new();
    let lines = expected_lines();
    for ((id, records), (_, lines)) in expected_records().into_iter().zip(lines) {
        let mut lease = store.create(&records[0], OWNER, TTL).await.expect("creates");
        if id == LEASED {
            lease = store.claim(id, OWNER, TTL).await.expect("claims again");
        }
        // One append with several records, then one record at a time.
        let (first, rest) = records[1..].split_at(records.len().min(3) - 1);
        store.append(&lease, first).await.expect("appends");
        for record in rest {
            store.append(&lease, std::slice::from_ref(record)).await.expect("appends");
        }
        store.append_log(&lease, &lines).await.expect("logs");
        leases.push(lease);
    }
    let recorded = store.request_cancel(&cancel()).await.expect("requests a cancel");
    assert!(matches!(recorded, CancelRecorded::Recorded), "{recorded:?}");
    leases
}

/// Not a test (ignored): remakes the fixture `tests/fixtures/store-format-2` with the code it
/// is built with, which must write record format 2, so only at the commit that made the
/// fixture (or before the format changed):
///
/// ```text
/// cargo test -p saga-store --test store -- --ignored make_store_format_2 --nocapture
/// ```
///
/// It prints the leases' expiries, which `EXPIRES` above holds. The store is durable, with
/// 64 KiB log segments (the default 16 MiB are preallocated, too big for the repository), and
/// closed cleanly (dropped), so that everything is checkpointed into sled's `db`. Copied: sled's
/// `conf` and `db`, the log's `checkpoint` and its segment holding the entries (all before the
/// checkpoint, so nothing is replayed; without it the checkpoint names a missing segment).
/// Left out: the spare segment (all zeros, made again at open) and sled's empty `blobs/`.
#[tokio::test]
#[ignore = "remakes a fixture; see its docs"]
async fn make_store_format_2() {
    assert_eq!(
        saga_core::store::FORMAT_VERSION,
        2,
        "this fixture is a store of record format 2: make it with the release that wrote it"
    );
    let (_dir, path) = temp_store_path();
    let store =
        SledStore::open_with_checkpoints(&path, Duration::from_secs(30), 32 << 20, 64 << 10)
            .expect("opens");
    let leases = write_fixture(&store).await;
    drop(store);
    let target = fixture_dir();
    if target.exists() {
        std::fs::remove_dir_all(&target).expect("removes the old fixture");
    }
    std::fs::create_dir_all(target.join("wal")).expect("creates the fixture's directories");
    let mut files =
        vec![PathBuf::from("conf"), PathBuf::from("db"), Path::new("wal").join("checkpoint")];
    for entry in std::fs::read_dir(path.join("wal")).expect("lists the log") {
        let name = Path::new("wal").join(entry.expect("an entry").file_name());
        let bytes = std::fs::read(path.join(&name)).expect("reads a log file");
        // A spare segment (all zeros) is made again at open: left out.
        if name.extension().is_some_and(|e| e == "seg") && bytes.iter().any(|&b| b != 0) {
            files.push(name);
        }
    }
    for name in files {
        std::fs::copy(path.join(&name), target.join(&name)).expect("copies a file");
    }
    for lease in leases {
        println!(
            "lease of {}: epoch {}, expires_ms {}",
            lease.operation, lease.epoch, lease.expires_ms
        );
    }
}

/// Copies the files of `from` into `to`, recursively.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("creates a directory");
    for entry in std::fs::read_dir(from).expect("lists a directory") {
        let entry = entry.expect("an entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("a file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copies a file");
        }
    }
}

/// A copy of the fixture in a temporary directory.
fn copy_of_fixture() -> (tempfile::TempDir, PathBuf) {
    let (dir, path) = temp_store_path();
    copy_dir(&fixture_dir(), &path);
    (dir, path)
}

/// Everything the generator wrote reads back as it was written.
async fn reads_as_written(store: &SledStore) {
    for (id, records) in expected_records() {
        assert_eq!(store.read(id).await.expect("reads"), records, "the records of {id}");
    }
    for (id, lines) in expected_lines() {
        assert_eq!(store.read_log(id).await.expect("reads its log"), lines, "the log of {id}");
    }
    for lease in expected_leases() {
        let stored = store.lease(lease.operation).await.expect("reads a lease");
        assert_eq!(stored, Some(lease));
    }
    assert_eq!(store.pending_cancel(CANCELLING).await.expect("reads"), Some(cancel()));
    assert_eq!(store.pending_cancel(LEASED).await.expect("reads"), None);
    assert_eq!(store.cancel_requests().await.expect("lists"), vec![cancel()]);
    let unfinished = store.list_unfinished().await.expect("lists");
    assert_eq!(unfinished.ids, vec![LEASED, CANCELLING]);
    assert!(unfinished.damaged.is_empty(), "{:?}", unfinished.damaged);
    let listing = store.list_environment(ENVIRONMENT, 0, u64::MAX).await.expect("lists");
    assert_eq!(listing.ids, vec![FINISHED, LEASED, CANCELLING]);
    assert!(listing.damaged.is_empty(), "{:?}", listing.damaged);
    let queue = store.resource_queue(&Resource::new("database", "orders")).await.expect("queue");
    assert_eq!(queue, vec![LEASED]);
    assert!(store.resource_queue(&Resource::new("app", "web")).await.expect("queue").is_empty());
    let report = store.check(false).await.expect("checks");
    assert_eq!(report.operations, 3);
    assert!(report.findings.is_empty(), "{:?}", report.findings);
}

#[tokio::test]
async fn a_store_of_format_2_reads_as_written_and_takes_new_writes() {
    let (_dir, path) = copy_of_fixture();
    let store = SledStore::open(&path).expect("opens the fixture");
    reads_as_written(&store).await;

    // New writes beside the old ones: a record, a log line, a finish answering the request.
    let lease = store.claim(LEASED, OWNER, TTL).await.expect("claims");
    assert_eq!(lease.epoch, 3);
    let record = Record {
        operation: LEASED,
        seq: 2,
        at_ms: 1_800_000_000_000,
        kind: RecordKind::StepSucceeded { step: "snapshot".into(), output: b"7".to_vec() },
    };
    store.append(&lease, std::slice::from_ref(&record)).await.expect("appends");
    let line = LogLine {
        operation: LEASED,
        seq: 2,
        at_ms: 1_800_000_000_500,
        level: LogLevel::Info,
        source: LogSource::Step,
        step: Some("snapshot".into()),
        message: "snapshot taken".into(),
    };
    store.append_log(&lease, std::slice::from_ref(&line)).await.expect("logs");
    drop(store);
    {
        // Side by side in sled: the old values in format 2, the new ones in format 3 (the
        // Operation's bundles rewritten as one key per entry, to read each by its key).
        let db = open_sled(&path);
        saga_store::unbundle(&db).expect("rewrites the bundles as keys");
        let version = |tree: &str, key: &[u8]| {
            let value = db.open_tree(tree).expect("a tree").get(key).expect("reads");
            value.expect("the entry is there")[0]
        };
        let id = LEASED.as_u128().to_be_bytes();
        let seq = |n: u64| [&id[..], &n.to_be_bytes()[..]].concat();
        assert_eq!(version("records", &seq(1)), 2);
        assert_eq!(version("records", &seq(2)), saga_core::store::FORMAT_VERSION);
        assert_eq!(version("logs", &seq(1)), 2);
        assert_eq!(version("logs", &seq(2)), saga_core::store::FORMAT_VERSION);
        assert_eq!(version("leases", &id), saga_core::store::FORMAT_VERSION, "claimed again");
    }

    for _ in 0..2 {
        let store = SledStore::open(&path).expect("reopens");
        let mut records = expected_records()[1].1.clone();
        records.push(record.clone());
        assert_eq!(store.read(LEASED).await.expect("reads"), records);
        let mut lines = expected_lines()[1].1.clone();
        lines.push(line.clone());
        assert_eq!(store.read_log(LEASED).await.expect("reads its log"), lines);
        assert_eq!(store.lease(LEASED).await.expect("reads").map(|l| l.epoch), Some(3));
        assert_eq!(store.read(FINISHED).await.expect("reads"), expected_records()[0].1);
        assert_eq!(store.read_log(FINISHED).await.expect("reads"), expected_lines()[0].1);
        assert_eq!(store.pending_cancel(CANCELLING).await.expect("reads"), Some(cancel()));
        let report = store.check(false).await.expect("checks");
        assert!(report.findings.is_empty(), "{:?}", report.findings);
    }
}

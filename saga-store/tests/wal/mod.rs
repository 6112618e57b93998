//! The store's write-ahead log, seen from outside: a process killed at any instant loses no
//! acknowledged write, damage to the log is a typed error naming the file and the offset, and
//! what sled leaves behind never makes a store unopenable.
//!
//! The killed process is this test binary itself, run again on [`child_workload`] with
//! `SAGA_WAL_CHILD` naming the store: it writes until it is killed, printing every write it got
//! acknowledged.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use saga_core::store::{Store, StoreError};
use saga_core::OperationId;
use saga_store::SledStore;

use crate::support::*;

const CHILD: &str = "SAGA_WAL_CHILD";
/// Set for a child whose store checkpoints all the time.
const CHILD_CHECKPOINTING: &str = "SAGA_WAL_CHILD_CHECKPOINTING";

/// Not a test of its own (ignored; the tests below run it with `--ignored`): the workload of the
/// killed process. Eight writers, each creating Operations and appending records to
/// them; every acknowledged write is printed as `<id> <records>` once it is acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "the workload of a child process that the tests kill"]
async fn child_workload() {
    let Ok(path) = std::env::var(CHILD) else { return };
    let store = if std::env::var_os(CHILD_CHECKPOINTING).is_some() {
        // A checkpoint every 5 ms or 16 KiB of log, in 8 KiB segments: the kill lands during
        // checkpoints and segment recycling as often as between them.
        SledStore::open_with_checkpoints(&path, Duration::from_millis(5), 16 << 10, 8 << 10)
    } else {
        SledStore::open(&path)
    };
    let store = Arc::new(store.expect("the child opens the store"));
    let stop_after: u64 = std::env::var("SAGA_WAL_CHILD_WRITES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(u64::MAX);
    let mut writers = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            let mut written = 0;
            while written < stop_after {
                let (id, lease) = create(store.as_ref(), "prod", 10).await;
                print_acked(id, 1);
                for seq in 1..6 {
                    store.append(&lease, &[started(id, seq, "a")]).await.expect("appends");
                    print_acked(id, seq + 1);
                }
                store.append(&lease, &[finished(id, 6)]).await.expect("finishes");
                print_acked(id, 7);
                written += 1;
            }
        }));
    }
    for writer in writers {
        writer.await.expect("a writer");
    }
    // Done: die without closing the store (no checkpoint, no destructor), as a kill would.
    std::process::abort();
}

fn print_acked(id: OperationId, records: u64) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{id} {records}");
    let _ = out.flush();
}

/// Runs the child on `path`; kills it after `kill_after` (or lets it write `writes` Operations
/// per writer and abort). Returns every acknowledged write: (id, records acknowledged).
fn run_child(path: &Path, kill_after: Option<Duration>, writes: Option<u64>) -> Vec<(String, u64)> {
    run_child_with(path, kill_after, writes, false)
}

/// As [`run_child`]; with `checkpointing`, the child's store checkpoints every few milliseconds.
fn run_child_with(
    path: &Path,
    kill_after: Option<Duration>,
    writes: Option<u64>,
    checkpointing: bool,
) -> Vec<(String, u64)> {
    let exe = std::env::current_exe().expect("the test binary");
    let mut command = Command::new(exe);
    command
        .args(["wal::child_workload", "--exact", "--ignored", "--nocapture", "--test-threads", "1"])
        .env(CHILD, path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(writes) = writes {
        command.env("SAGA_WAL_CHILD_WRITES", writes.to_string());
    }
    if checkpointing {
        command.env(CHILD_CHECKPOINTING, "1");
    }
    let mut child = command.spawn().expect("the child starts");
    let stdout = child.stdout.take().expect("its stdout");
    let (seen, acks) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .filter_map(|line| {
                // The last two words: the test harness may have begun the line with its own.
                let mut words = line.split_whitespace().rev();
                let n = words.next()?.parse().ok()?;
                let ack = (words.next()?.to_owned(), n);
                let _ = seen.send(());
                Some(ack)
            })
            .collect::<Vec<(String, u64)>>()
    });
    if let Some(after) = kill_after {
        // Killed `after` past its first acknowledgements, however slowly a loaded machine let
        // it start: the kill lands amid its writes, never before them.
        for _ in 0..KILL_AFTER_ACKS {
            if acks.recv_timeout(Duration::from_secs(60)).is_err() {
                break;
            }
        }
        std::thread::sleep(after);
        // SIGKILL: no destructor, no checkpoint, nothing runs after it.
        let _ = child.kill();
    }
    let _ = child.wait();
    reader.join().expect("the reader")
}

/// How many acknowledged writes a child makes before the timer of its kill starts.
const KILL_AFTER_ACKS: usize = 10;

/// Every acknowledged write is in the reopened store; every Operation ends with at most one
/// outcome, and those listed unfinished have none (their finish was not acknowledged, or undone
/// whole), so that nothing wedges a resource queue.
async fn assert_all_there(path: &Path, acked: &[(String, u64)]) -> SledStore {
    let store = SledStore::open(path).expect("reopens after the kill");
    for (id, records) in acked {
        let id: OperationId = id.parse().expect("an id");
        let stored = store.read(id).await.expect("an acknowledged operation is there");
        assert!(
            stored.len() as u64 >= *records,
            "operation {id}: {records} records were acknowledged, {} are stored",
            stored.len()
        );
    }
    let unfinished = store.list_unfinished().await.expect("lists");
    assert!(unfinished.damaged.is_empty(), "{:?}", unfinished.damaged);
    let listed = store.list_environment("prod", 0, u64::MAX).await.expect("lists");
    for id in &listed.ids {
        let records = store.read(*id).await.expect("a listed operation reads");
        let outcomes = records
            .iter()
            .filter(|r| matches!(r.kind, saga_core::log::RecordKind::OperationFinished { .. }))
            .count();
        assert!(outcomes <= 1, "operation {id}: {outcomes} outcomes");
        assert_eq!(
            unfinished.ids.contains(id),
            outcomes == 0,
            "operation {id}: listed unfinished with {outcomes} outcome(s)"
        );
    }
    store
}

/// Six rounds of a child killed 0 to 400 ms after its tenth acknowledged write, each followed by a
/// reopen that finds every acknowledged write and a healthy store. Returns how many writes were
/// acknowledged.
async fn kill_rounds(path: &Path, checkpointing: bool) -> usize {
    let mut total = 0;
    for round in 0..6u64 {
        let jitter = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::from(d.subsec_nanos()) % 400);
        let after = Duration::from_millis(jitter);
        let acked = run_child_with(path, Some(after), None, checkpointing);
        total += acked.len();
        let store = assert_all_there(path, &acked).await;
        assert!(store.check(false).await.expect("checks").is_healthy(), "round {round}");
        drop(store);
    }
    assert!(total > 50, "the children wrote something before they were killed: {total}");
    total
}

#[tokio::test]
async fn a_process_killed_at_random_instants_loses_no_acknowledged_write() {
    let (_dir, path) = temp_store_path();
    kill_rounds(&path, false).await;
}

/// The same, with a store that checkpoints every few milliseconds in tiny segments: the kills
/// land during checkpoints (sled's flush, the checkpoint file's rename) and segment recycling.
#[tokio::test]
async fn a_process_killed_during_checkpoints_and_segment_recycling_loses_no_acknowledged_write() {
    let (_dir, path) = temp_store_path();
    let total = kill_rounds(&path, true).await;
    let segments = std::fs::read_dir(path.join("wal")).expect("the log").count();
    println!("{total} acknowledged writes in 6 rounds; {segments} files in the log directory");
}

/// The first segment of the log, and the bytes of its first frame's payload.
fn first_segment(path: &Path) -> std::path::PathBuf {
    let mut segments: Vec<_> = std::fs::read_dir(path.join("wal"))
        .expect("the log directory")
        .map(|e| e.expect("an entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segments.sort();
    segments.into_iter().next().expect("a segment")
}

#[tokio::test]
async fn a_damaged_frame_before_acknowledged_ones_is_corruption_naming_the_file_and_offset() {
    let (_dir, path) = temp_store_path();
    let acked = run_child(&path, None, Some(3));
    assert!(acked.len() >= 8 * 3 * 6, "every write was acknowledged: {}", acked.len());
    let segment = first_segment(&path);
    let mut bytes = std::fs::read(&segment).expect("reads the segment");
    // The first frame's payload starts after its 24-byte header.
    bytes[30] ^= 0x40;
    std::fs::write(&segment, &bytes).expect("damages it");
    match SledStore::open(&path) {
        Err(StoreError::Corrupt { place, problem }) => {
            assert!(place.contains(".seg at offset 0"), "{place}: {problem}");
        }
        other => panic!("expected a corrupt log, got {other:?}"),
    }
    // Undone, it opens with everything.
    bytes[30] ^= 0x40;
    std::fs::write(&segment, &bytes).expect("repairs it");
    assert_all_there(&path, &acked).await;
}

#[tokio::test]
async fn a_leftover_sled_snapshot_never_makes_the_store_unopenable() {
    let (_dir, path, store) = open_temp();
    let (id, _) = create(&store, "prod", 10).await;
    drop(store);
    // What an open killed (or out of space) while sled wrote its snapshot leaves behind.
    std::fs::write(path.join("snap.0000000000001234.generating"), b"").expect("writes");
    let store = SledStore::open(&path).expect("opens despite the leftover");
    assert_eq!(store.read(id).await.expect("reads").len(), 1);
    assert!(!path.join("snap.0000000000001234.generating").exists(), "the leftover is gone");
}

#[tokio::test]
async fn a_store_written_before_the_log_existed_opens_with_everything() {
    // Written by the quickstart of the release before the write-ahead log: one Operation that
    // succeeded, in the environment "quickstart".
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-before-the-log");
    let (_dir, path) = temp_store_path();
    std::fs::create_dir_all(&path).expect("creates the store's directory");
    for file in ["conf", "db"] {
        std::fs::copy(fixture.join(file), path.join(file)).expect("copies the fixture");
    }
    let id: OperationId = "01M8SY3GCAZ2237XPESVP2ZK0M".parse().expect("an id");
    for _ in 0..2 {
        let store = SledStore::open(&path).expect("opens the older store");
        assert_eq!(
            store.list_environment("quickstart", 0, u64::MAX).await.expect("lists").ids,
            [id]
        );
        let records = store.read(id).await.expect("reads its records");
        assert!(matches!(
            records.last().map(|r| &r.kind),
            Some(saga_core::log::RecordKind::OperationFinished {
                outcome: saga_core::Outcome::Succeeded
            })
        ));
        assert!(store.list_unfinished().await.expect("lists").ids.is_empty());
        assert!(store.check(false).await.expect("checks").is_healthy());
    }
    assert!(path.join("wal").is_dir(), "it has a log now");
}

/// The keys and values of `trees` under the Operation `id` (keys containing its 16 bytes), read
/// with sled alone from a closed store.
fn raw_entries(path: &Path, trees: &[&str], id: OperationId) -> Vec<(String, Vec<u8>, Vec<u8>)> {
    let db = open_sled(path);
    let needle = id.as_u128().to_be_bytes();
    let mut out = Vec::new();
    for name in trees {
        let tree = db.open_tree(name).expect("a tree");
        for entry in tree.iter() {
            let (key, value) = entry.expect("an entry");
            if key.windows(16).any(|w| w == needle) {
                out.push(((*name).to_owned(), key.to_vec(), value.to_vec()));
            }
        }
    }
    out
}

/// Writes entries back with sled alone into a closed store.
fn write_raw(path: &Path, entries: &[(String, Vec<u8>, Vec<u8>)], remove: &[(&str, Vec<u8>)]) {
    let db = open_sled_to_edit(path);
    for (name, key, value) in entries {
        db.open_tree(name).expect("a tree").insert(key, value.as_slice()).expect("inserts");
    }
    for (name, key) in remove {
        db.open_tree(name).expect("a tree").remove(key).expect("removes");
    }
    db.flush().expect("flushes");
}

/// What an unacknowledged finish or create can leave in sled's files (sled writes its buffers
/// out on its own, and at close, whatever the log acknowledged): opening completes it, so that
/// no stale mark lists a finished Operation as unfinished or keeps its resource's queue waiting.
#[tokio::test]
async fn opening_settles_what_an_unacknowledged_finish_or_create_left_half_made() {
    let (_dir, path) = temp_store_path();
    let store = SledStore::open(&path).expect("opens");
    let (finishing, lease) = create(&store, "prod", 10).await;
    let (creating, _) = create(&store, "prod", 20).await;
    drop(store);
    let marks = ["unfinished", "by_resource", "cancels", "leases", "by_environment"];
    let before_finish = raw_entries(&path, &marks[..3], finishing);
    assert_eq!(before_finish.len(), 2, "an unfinished mark and a queue entry: {before_finish:?}");

    let store = SledStore::open(&path).expect("reopens");
    store.append(&lease, &[finished(finishing, 1)]).await.expect("finishes");
    drop(store);
    // The finish's record reached sled's files, its mark removals did not; and the create's
    // marks did, its record did not.
    let mut first_record = id_bytes(creating);
    first_record.extend_from_slice(&0u64.to_be_bytes());
    write_raw(&path, &before_finish, &[("records", first_record)]);
    assert!(!raw_entries(&path, &marks, creating).is_empty());

    let store = SledStore::open(&path).expect("reopens");
    assert_eq!(store.list_unfinished().await.expect("lists").ids, Vec::<OperationId>::new());
    let resource = saga_core::Resource::new("app", "web");
    assert_eq!(store.resource_queue(&resource).await.expect("lists"), Vec::<OperationId>::new());
    assert_eq!(store.list_environment("prod", 0, u64::MAX).await.expect("lists").ids, [finishing]);
    assert_eq!(store.read(finishing).await.expect("reads").len(), 2);
    assert!(matches!(store.read(creating).await, Err(StoreError::NotFound(_))));
    assert!(store.check(false).await.expect("checks").is_healthy());
    drop(store);
    assert!(raw_entries(&path, &marks, creating).is_empty(), "no mark of the create is left");
}

fn id_bytes(id: OperationId) -> Vec<u8> {
    id.as_u128().to_be_bytes().to_vec()
}

/// Set for the child of [`replaying_the_log_replays_a_removal_with_its_answer`]: the store and
/// the Operation (`<path>|<id>`) whose pending request the child answers.
const ANSWER_CHILD: &str = "SAGA_WAL_ANSWER_CHILD";

/// Not a test of its own (ignored; run by the test below): answers the pending cancel request of
/// the Operation it is told (created by the parent with owner `me`, whose lease is current),
/// prints `ANSWERED` once the answer is acknowledged, and dies without closing the store.
#[tokio::test]
#[ignore = "the workload of a child process"]
async fn answer_child() {
    let Ok(told) = std::env::var(ANSWER_CHILD) else { return };
    let Some((path, id)) = told.split_once('|') else { panic!("told {told}") };
    let id: OperationId = id.parse().expect("an id");
    let store = SledStore::open(path).expect("the child opens the store");
    let lease = saga_core::store::Lease {
        operation: id,
        owner: "me".into(),
        epoch: 1,
        expires_ms: u64::MAX,
    };
    store.append(&lease, &[cancelled(id, 1, "amy")]).await.expect("answers");
    println!("ANSWERED");
    let _ = std::io::stdout().flush();
    // No checkpoint, no destructor: the answer is in the write-ahead log only (and in sled's
    // memory, which dies here).
    std::process::abort();
}

/// An answer acknowledged and then lost with the process (never checkpointed) comes back
/// whole from the write-ahead log: its records and the removal of the request they answer, so
/// that a request is never left pending beside its answer, nor removed without it.
#[tokio::test]
async fn replaying_the_log_replays_a_removal_with_its_answer() {
    let (_dir, path) = temp_store_path();
    let store = SledStore::open(&path).expect("opens");
    let (id, _) = create(&store, "prod", 10).await;
    let (other, _) = create(&store, "prod", 11).await;
    let request = cancel_request(id, "amy");
    let kept = cancel_request(other, "bob");
    store.request_cancel(&request).await.expect("requests");
    store.request_cancel(&kept).await.expect("requests");
    // Closed: sled's files hold both requests.
    drop(store);

    let exe = std::env::current_exe().expect("the test binary");
    let output = Command::new(exe)
        .args(["wal::answer_child", "--exact", "--ignored", "--nocapture", "--test-threads", "1"])
        .env(ANSWER_CHILD, format!("{}|{id}", path.display()))
        .stderr(Stdio::null())
        .output()
        .expect("the child runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("ANSWERED"), "the child answered: {stdout}");

    let store = SledStore::open(&path).expect("reopens, replaying the log");
    let records = store.read(id).await.expect("reads");
    assert_eq!(records.len(), 2, "the acknowledged answer is there: {records:?}");
    assert_eq!(records[1], cancelled(id, 1, "amy"));
    assert_eq!(store.pending_cancel(id).await.expect("reads"), None, "and its request gone");
    assert_eq!(store.pending_cancel(other).await.expect("reads"), Some(kept.clone()));
    assert_eq!(store.cancel_requests().await.expect("lists"), vec![kept]);
    assert!(store.check(false).await.expect("checks").is_healthy());
}

#[tokio::test]
async fn sled_files_older_than_the_logs_checkpoint_are_refused_not_read() {
    // sled's files that lost writes the log no longer holds (sled reading damage as a torn tail
    // of its own log, or files restored from an older copy) would make acknowledged Operations
    // vanish, or read as running and run again. Here: sled's files from before a checkpoint,
    // beside the log of after it.
    let (dir, path) = temp_store_path();
    // Each session is closed, then opened and closed once more: that open replays whatever the
    // close's checkpoint left in the log and checkpoints it (see `open_sled_to_edit`), so sled's
    // files hold every write, and the log none.
    let store = SledStore::open(&path).expect("opens");
    let (first, _) = create(&store, "prod", 10).await;
    drop(store);
    drop(SledStore::open(&path).expect("reopens"));
    let older = dir.path().join("older");
    std::fs::create_dir_all(&older).expect("creates a directory");
    // sled's files: `conf`, `db` and its snapshot `snap.*` (not the log, in `wal/`).
    let sled_files = |dir: &Path| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(dir)
            .expect("lists")
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.path())
            .collect()
    };
    for file in sled_files(&path) {
        let name = file.file_name().expect("a name");
        std::fs::copy(&file, older.join(name)).expect("copies sled's files");
    }
    let store = SledStore::open(&path).expect("opens again");
    let (second, _) = create(&store, "prod", 20).await;
    drop(store);
    drop(SledStore::open(&path).expect("reopens"));
    for file in sled_files(&path) {
        std::fs::remove_file(file).expect("removes sled's newer files");
    }
    for file in sled_files(&older) {
        let name = file.file_name().expect("a name");
        std::fs::copy(&file, path.join(name)).expect("puts the older files back");
    }
    match SledStore::open(&path) {
        Err(StoreError::Corrupt { place, problem }) => {
            assert!(place.contains("sled's files in"), "{place}");
            assert!(problem.contains("checkpointed at position"), "{problem}");
            assert!(!problem.contains("Some("), "a sentence, not debug formatting: {problem}");
        }
        Ok(store) => panic!(
            "opened sled's older files: {first} reads {:?}, {second} reads {:?}",
            store.read(first).await.map(|r| r.len()),
            store.read(second).await.map(|r| r.len())
        ),
        Err(other) => panic!("not the typed corruption: {other}"),
    }
}

#[tokio::test]
async fn a_cut_torn_tail_is_said_by_check_never_silent() {
    let (_dir, path) = temp_store_path();
    // Killed without closing: its last writes are in the log only.
    let acked = run_child(&path, None, Some(1));
    assert!(!acked.is_empty(), "the child wrote");
    // Sectors of the last write lost, as in a crash during its write.
    let segment = path.join("wal").join(format!("{:020}.seg", 0));
    let mut bytes = std::fs::read(&segment).expect("reads the segment");
    let last = bytes.iter().rposition(|&b| b != 0).expect("the segment has frames");
    bytes[last.saturating_sub(40)..=last].fill(0);
    std::fs::write(&segment, &bytes).expect("writes the segment back");
    let store = SledStore::open(&path).expect("opens, cutting the torn tail");
    let report = store.check(false).await.expect("checks");
    let cut = report
        .findings
        .iter()
        .find(|f| matches!(f.problem, saga_core::store::Problem::TornTailCut { .. }))
        .unwrap_or_else(|| panic!("no finding says the cut: {:?}", report.findings));
    let said = cut.to_string();
    assert!(said.contains("torn write") && said.contains(".seg"), "{said}");
    assert!(cut.repaired, "the cut repaired it at open");
    assert!(report.is_healthy(), "nothing left to repair: {:?}", report.findings);
}

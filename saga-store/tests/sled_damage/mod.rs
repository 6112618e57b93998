//! One flipped byte, a lost sector or a lost tail in sled's files of a cleanly closed store, at
//! offsets spread over what sled wrote: the store either refuses (a typed error when it opens or when it reads) or reads
//! back exactly what it acknowledged. An acknowledged Operation never vanishes, never reads
//! otherwise, and a finished one is never listed as unfinished (which `resume` would run again).

use std::collections::BTreeMap;
use std::path::Path;

use saga_core::log::{LogLine, Record};
use saga_core::store::Store;
use saga_core::OperationId;
use saga_store::SledStore;

use crate::support::*;

/// What the store acknowledged: each Operation's records and log lines, and the unfinished ones.
struct Acknowledged {
    records: BTreeMap<OperationId, Vec<Record>>,
    logs: BTreeMap<OperationId, Vec<LogLine>>,
    unfinished: Vec<OperationId>,
}

async fn write_store(path: &Path) -> Acknowledged {
    let store = SledStore::open(path).expect("opens");
    let mut acknowledged =
        Acknowledged { records: BTreeMap::new(), logs: BTreeMap::new(), unfinished: Vec::new() };
    for n in 0..12u64 {
        let (id, lease) = create(&store, "prod", 10 + n).await;
        let mut batch = vec![started(id, 1, "a"), succeeded(id, 2, "a", b"output")];
        if n % 3 != 0 {
            batch.push(finished(id, 3));
        }
        store.append(&lease, &batch).await.expect("appends");
        let lines: Vec<LogLine> = (0..3).map(|i| crate::line(id, i, 100 + n)).collect();
        store.append_log(&lease, &lines).await.expect("logs");
        acknowledged.records.insert(id, store.read(id).await.expect("reads"));
        acknowledged.logs.insert(id, store.read_log(id).await.expect("reads the log"));
        if n % 3 == 0 {
            acknowledged.unfinished.push(id);
        }
    }
    acknowledged.unfinished.sort_unstable();
    acknowledged
}

/// Reads `path` as a store; `Err` with what went wrong if it read anything other than
/// `acknowledged` without an error.
async fn reads_truthfully(path: &Path, acknowledged: &Acknowledged) -> Result<String, String> {
    let store = match SledStore::open(path) {
        Ok(store) => store,
        Err(e) => return Ok(format!("open refused: {e}")),
    };
    let mut refused = 0;
    for (id, records) in &acknowledged.records {
        match store.read(*id).await {
            Ok(read) if &read == records => {}
            Ok(read) => {
                return Err(format!("{id} read {} records, not the {}", read.len(), records.len()))
            }
            Err(saga_core::store::StoreError::NotFound(_)) => {
                return Err(format!("{id} vanished"));
            }
            Err(_) => refused += 1,
        }
        match store.read_log(*id).await {
            Ok(read) if read == acknowledged.logs[id] => {}
            Ok(read) => return Err(format!("{id}'s log read {} lines, not 3", read.len())),
            Err(_) => refused += 1,
        }
    }
    match store.list_unfinished().await {
        Ok(listing) => {
            let finished_listed: Vec<_> = listing
                .ids
                .iter()
                .filter(|id| !acknowledged.unfinished.contains(id))
                .filter(|id| acknowledged.records.contains_key(id))
                .collect();
            if !finished_listed.is_empty() {
                return Err(format!("finished Operations listed unfinished: {finished_listed:?}"));
            }
            let missing: Vec<_> =
                acknowledged.unfinished.iter().filter(|id| !listing.ids.contains(id)).collect();
            if !missing.is_empty() && listing.damaged.is_empty() {
                return Err(format!("unfinished Operations not listed, silently: {missing:?}"));
            }
        }
        Err(_) => refused += 1,
    }
    Ok(format!("opened; {refused} reads refused"))
}

#[tokio::test]
async fn damage_to_sleds_files_never_reads_as_other_acknowledged_state() {
    let (dir, path) = temp_store_path();
    let acknowledged = write_store(&path).await;
    // Replay and checkpoint whatever the log held, so that sled's files hold everything.
    drop(open_sled_to_edit(&path));
    let mut files: Vec<String> = std::fs::read_dir(&path)
        .expect("lists the store")
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut outcomes = BTreeMap::<String, usize>::new();
    let mut wrong = Vec::new();
    let mut cases = 0;
    for file in &files {
        let bytes = std::fs::read(path.join(file)).expect("reads a file of sled's");
        // Spread over the bytes sled wrote (most of `db` is preallocated zeros).
        let written: Vec<usize> = (0..bytes.len()).filter(|&i| bytes[i] != 0).collect();
        let flips = 100.min(written.len());
        for case in 0..flips {
            let offset = written[case * written.len() / flips];
            let copy = dir.path().join(format!("flip-{file}-{case}"));
            std::fs::create_dir_all(&copy).expect("creates a directory");
            copy_dir(&path, &copy);
            // A flipped byte; and for every fourth case, a sector lost (zeros) or the file
            // cut there (a lost tail), which sled may read as a torn end of its own log.
            let mut damaged = bytes.clone();
            match case % 4 {
                1 => {
                    damaged[offset / 512 * 512..(offset / 512 * 512 + 512).min(bytes.len())].fill(0)
                }
                3 => damaged.truncate(offset),
                _ => damaged[offset] ^= 0x5a,
            }
            std::fs::write(copy.join(file), &damaged).expect("writes the damaged copy");
            cases += 1;
            match reads_truthfully(&copy, &acknowledged).await {
                Ok(outcome) => {
                    let kind = outcome.chars().take(60).collect::<String>();
                    *outcomes.entry(format!("{file}: {kind}")).or_default() += 1;
                }
                Err(why) => wrong.push(format!("byte {offset} of {file}: {why}")),
            }
            std::fs::remove_dir_all(&copy).expect("removes the copy");
        }
    }
    println!("{cases} damaged copies of sled's files {files:?}:");
    for (outcome, n) in &outcomes {
        println!("  {n:>4}  {outcome}");
    }
    assert!(
        wrong.is_empty(),
        "{} of {cases} flips read wrongly:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("lists") {
        let entry = entry.expect("an entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("a type").is_dir() {
            std::fs::create_dir_all(&target).expect("creates");
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copies");
        }
    }
}

#[tokio::test]
async fn a_damaged_bundle_is_a_typed_error_naming_it_and_check_finds_it() {
    let (_dir, path) = temp_store_path();
    let store = SledStore::open(&path).expect("opens");
    let (id, lease) = create(&store, "prod", 10).await;
    let records = [started(id, 1, "a"), succeeded(id, 2, "a", b"out"), finished(id, 3)];
    store.append(&lease, &records).await.expect("appends");
    drop(store);
    // Replayed and checkpointed: the records are one bundle under the Operation's id.
    drop(SledStore::open(&path).expect("reopens"));
    {
        let db = open_sled(&path);
        let tree = db.open_tree("records").expect("the records tree");
        let key = id.as_u128().to_be_bytes();
        let mut bundle = tree.get(key).expect("reads").expect("the bundle").to_vec();
        assert_eq!(tree.len(), 1, "one sled key for the Operation's four records");
        let middle = bundle.len() / 2;
        bundle[middle] ^= 0x01;
        tree.insert(key, bundle).expect("writes the damage");
        db.flush().expect("flushes");
    }
    let store = SledStore::open(&path).expect("opens: the damage is in one value");
    match store.read(id).await {
        Err(saga_core::store::StoreError::Corrupt { place, problem }) => {
            assert!(place.contains("bundle of operation") && place.contains("records"), "{place}");
            assert!(problem.contains("checksum mismatch"), "{problem}");
        }
        other => panic!("not the typed corruption: {other:?}"),
    }
    let report = store.check(false).await.expect("checks");
    assert!(!report.is_healthy(), "check finds it: {:?}", report.findings);
}

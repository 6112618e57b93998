//! Tests of the log, mostly over the in-memory file system ([`MemIo`]) with faults and crashes
//! injected ([`FaultIo`]), and a few over the real disk.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::frame::{self, frame_size};
use super::io::{RealIo, WalIo};
use super::testio::{Crash, FaultIo, MemIo, Op, Rng};
use super::{Lsn, Replayed, Wal, WalError, WalOptions};

const EIO: i32 = 5;
const ENOSPC: i32 = 28;

/// Every LSN `apply` saw, in the order it saw them.
type Applied = Arc<Mutex<Vec<Lsn>>>;

fn store_dir() -> PathBuf {
    PathBuf::from("/mem/store")
}

fn log_dir(dir: &Path) -> PathBuf {
    dir.join("wal")
}

fn segment(dir: &Path, index: u64) -> PathBuf {
    log_dir(dir).join(format!("{index:020}.seg"))
}

fn small(segment_bytes: u64) -> WalOptions {
    WalOptions { segment_bytes, ..WalOptions::default() }
}

/// The payload of append number `i`: its own bytes, of a length that varies.
fn payload(i: u64) -> Vec<u8> {
    let mut bytes = format!("payload-{i}-").into_bytes();
    bytes.resize(bytes.len() + (i as usize * 7) % 61, b'a' + (i % 26) as u8);
    bytes
}

fn open(
    dir: &Path,
    options: WalOptions,
    io: Arc<dyn WalIo>,
) -> Result<(Wal<u64>, Replayed, Applied), WalError> {
    let applied = Applied::default();
    let seen = applied.clone();
    let apply = Box::new(move |group: Vec<(Lsn, u64)>| {
        let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
        for (lsn, tag) in group {
            assert_eq!(tag, lsn, "apply got the wrong entry");
            seen.push(lsn);
        }
        Ok(())
    });
    let (wal, replayed) = Wal::open(dir, options, io, apply)?;
    Ok((wal, replayed, applied))
}

fn must_open(dir: &Path, options: WalOptions, io: Arc<dyn WalIo>) -> (Wal<u64>, Replayed, Applied) {
    open(dir, options, io).unwrap_or_else(|e| panic!("open failed: {e}"))
}

/// Waits for an append's answer, failing the test instead of hanging.
async fn answer(
    receiver: tokio::sync::oneshot::Receiver<Result<Lsn, WalError>>,
) -> Result<Lsn, WalError> {
    match tokio::time::timeout(Duration::from_secs(20), receiver).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(WalError::Stopped),
        Err(_) => panic!("an append was never answered"),
    }
}

/// Appends payload(i) with tag i, where i is the LSN it is expected to get.
async fn append_expecting(wal: &Wal<u64>, i: u64) -> Result<Lsn, WalError> {
    answer(wal.append(payload(i), i)).await
}

/// Appends `count` payloads one after the other, from the LSN after `durable_lsn`.
async fn append_sequentially(wal: &Wal<u64>, count: u64) {
    for _ in 0..count {
        let next = wal.durable_lsn() + 1;
        assert_eq!(append_expecting(wal, next).await.ok(), Some(next));
    }
}

fn assert_replayed(replayed: &[(Lsn, Vec<u8>)], lsns: std::ops::RangeInclusive<Lsn>) {
    let got: Vec<Lsn> = replayed.iter().map(|(lsn, _)| *lsn).collect();
    assert_eq!(got, lsns.collect::<Vec<_>>());
    for (lsn, bytes) in replayed {
        assert_eq!(bytes, &payload(*lsn), "payload of LSN {lsn}");
    }
}

fn applied(applied: &Applied) -> Vec<Lsn> {
    applied.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Appends from `tasks` tasks, `each` per task, concurrently; returns LSN -> payload.
async fn append_concurrently(wal: &Arc<Wal<u64>>, tasks: u64, each: u64) -> BTreeMap<Lsn, Vec<u8>> {
    let mut joins = Vec::new();
    for t in 0..tasks {
        let wal = wal.clone();
        joins.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for j in 0..each {
                let bytes = format!("task {t} append {j}").into_bytes();
                // The tag is unknown before the LSN is: use 0 and check apply's order only.
                let lsn = answer(wal.append(bytes.clone(), 0)).await.expect("append failed");
                got.push((lsn, bytes));
            }
            got
        }));
    }
    let mut all = BTreeMap::new();
    for join in joins {
        for (lsn, bytes) in join.await.expect("task panicked") {
            assert!(all.insert(lsn, bytes).is_none(), "LSN {lsn} given twice");
        }
    }
    all
}

fn open_untagged(
    dir: &Path,
    options: WalOptions,
    io: Arc<dyn WalIo>,
) -> (Arc<Wal<u64>>, Replayed, Applied) {
    let applied = Applied::default();
    let seen = applied.clone();
    let apply = Box::new(move |group: Vec<(Lsn, u64)>| {
        seen.lock().unwrap_or_else(|p| p.into_inner()).extend(group.iter().map(|(lsn, _)| *lsn));
        Ok(())
    });
    let (wal, replayed) =
        Wal::open(dir, options, io, apply).unwrap_or_else(|e| panic!("open failed: {e}"));
    (Arc::new(wal), replayed, applied)
}

fn unwrap_arc(wal: Arc<Wal<u64>>) {
    // Dropping the last handle stops the writer.
    drop(wal);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn round_trip_concurrent_in_memory_and_on_disk() {
    let temp = tempfile::tempdir().expect("tempdir");
    let cases: Vec<(PathBuf, Arc<dyn WalIo>)> =
        vec![(store_dir(), Arc::new(MemIo::new())), (temp.path().to_owned(), Arc::new(RealIo))];
    for (dir, io) in cases {
        let (wal, replayed, seen) = open_untagged(&dir, small(64 << 10), io.clone());
        assert!(replayed.is_empty());
        let all = append_concurrently(&wal, 8, 50).await;
        assert_eq!(all.keys().copied().collect::<Vec<_>>(), (1..=400).collect::<Vec<_>>());
        assert_eq!(applied(&seen), (1..=400).collect::<Vec<_>>());
        assert_eq!(wal.durable_lsn(), 400);
        unwrap_arc(wal);
        let (wal, replayed, _) = open_untagged(&dir, small(64 << 10), io);
        let expected: Vec<(Lsn, Vec<u8>)> = all.into_iter().collect();
        assert_eq!(replayed, expected);
        assert_eq!(wal.durable_lsn(), 400);
        assert_eq!(answer(wal.append(b"next".to_vec(), 0)).await.ok(), Some(401));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_share_syncs() {
    let io = FaultIo::new(Arc::new(MemIo::new()));
    let (wal, _, seen) = open_untagged(&store_dir(), small(1 << 20), Arc::new(io.clone()));
    io.set_sync_delay(Duration::from_millis(10));
    io.reset_counts();
    let all = append_concurrently(&wal, 100, 1).await;
    assert_eq!(all.len(), 100);
    let (writes, syncs) = (io.count(Op::Write), io.count(Op::Sync));
    assert!(syncs < 20, "{syncs} syncs for 100 concurrent appends");
    assert_eq!(writes, syncs, "one write per group");
    assert_eq!(applied(&seen), (1..=100).collect::<Vec<_>>());
    eprintln!("100 concurrent appends: {writes} writes, {syncs} syncs");
}

#[tokio::test]
async fn a_lone_append_costs_one_write_and_one_sync() {
    for preallocate in [true, false] {
        let io = FaultIo::new(Arc::new(MemIo::new()));
        let options = WalOptions { preallocate, ..small(1 << 20) };
        let (wal, _, _) = must_open(&store_dir(), options, Arc::new(io.clone()));
        for i in 1..=3 {
            io.reset_counts();
            assert_eq!(append_expecting(&wal, i).await.ok(), Some(i));
            assert_eq!((io.count(Op::Write), io.count(Op::Sync)), (1, 1), "append {i}");
            assert_eq!(io.count(Op::SyncDir) + io.count(Op::Allocate), 0);
        }
    }
}

#[tokio::test]
async fn without_sync_there_is_no_fdatasync() {
    let io = FaultIo::new(Arc::new(MemIo::new()));
    let options = WalOptions { sync: false, ..small(1 << 20) };
    let (wal, _, _) = must_open(&store_dir(), options, Arc::new(io.clone()));
    io.reset_counts();
    append_sequentially(&wal, 3).await;
    assert_eq!((io.count(Op::Write), io.count(Op::Sync)), (3, 0));
}

/// A log of `count` payloads, each its own group, in one segment; returns the file system and
/// the offsets where frames start.
async fn sequential_log(count: u64, preallocate: bool) -> (MemIo, Vec<usize>) {
    let mem = MemIo::new();
    let options = WalOptions { preallocate, ..small(64 << 10) };
    let (wal, _, _) = must_open(&store_dir(), options, Arc::new(mem.clone()));
    append_sequentially(&wal, count).await;
    drop(wal);
    let mut offsets = vec![0];
    for i in 1..=count {
        let last = *offsets.last().unwrap_or(&0);
        offsets.push(last + frame_size(payload(i).len()));
    }
    (mem, offsets)
}

#[tokio::test]
async fn a_torn_last_frame_is_cut_at_every_offset() {
    for preallocate in [false, true] {
        let (mem, offsets) = sequential_log(5, preallocate).await;
        let seg = segment(&store_dir(), 0);
        let options = WalOptions { preallocate, ..small(64 << 10) };
        for cut in offsets[4]..offsets[5] {
            let image = mem.crash(Crash::SyncedOnly);
            image.edit(&seg, |bytes| {
                if preallocate {
                    bytes[cut..].fill(0); // the rest of the write never reached the disk
                } else {
                    bytes.truncate(cut);
                }
            });
            let (wal, replayed, _) = open(&store_dir(), options.clone(), Arc::new(image.clone()))
                .unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
            // Zeroing the (zero) padding changes nothing.
            let intact = preallocate && cut >= offsets[4] + frame::HEADER + payload(5).len();
            let kept = if intact { 5 } else { 4 };
            assert_replayed(&replayed, 1..=kept);
            assert_eq!(wal.durable_lsn(), kept);
            assert_eq!(append_expecting(&wal, kept + 1).await.ok(), Some(kept + 1), "cut {cut}");
            drop(wal);
            let (_, replayed, _) = must_open(&store_dir(), options.clone(), Arc::new(image));
            assert_replayed(&replayed, 1..=kept + 1);
        }
    }
}

#[tokio::test]
async fn one_flipped_bit_in_the_last_frame_is_corrupt_never_a_silent_cut() {
    // The last frame was acknowledged (synced): a bit flipped in it afterwards is damage. Cutting
    // it as a torn write would lose an acknowledged write without a word.
    let (mem, offsets) = sequential_log(5, true).await;
    let seg = segment(&store_dir(), 0);
    let options = WalOptions { preallocate: true, ..small(64 << 10) };
    for bit in offsets[4] * 8..offsets[5] * 8 {
        let image = mem.crash(Crash::SyncedOnly);
        image.edit(&seg, |bytes| bytes[bit / 8] ^= 1 << (bit % 8));
        match open(&store_dir(), options.clone(), Arc::new(image)) {
            Err(WalError::Corrupt { path, offset, problem }) => {
                assert_eq!((path, offset), (seg.clone(), offsets[4] as u64), "bit {bit}");
                assert!(problem.contains("one flipped bit"), "bit {bit}: {problem}");
            }
            Ok((wal, replayed, _)) => panic!(
                "bit {bit} of the last frame flipped: opened with {} frames, cut {:?}",
                replayed.len(),
                wal.cut_at_open()
            ),
            Err(other) => panic!("bit {bit}: {other}"),
        }
    }
}

#[tokio::test]
async fn a_damaged_older_frame_is_corrupt() {
    let (mem, offsets) = sequential_log(5, true).await;
    let seg = segment(&store_dir(), 0);
    // Every byte of frame 2 (header, payload, padding).
    for at in offsets[1]..offsets[2] {
        let image = mem.crash(Crash::SyncedOnly);
        image.edit(&seg, |bytes| bytes[at] ^= 0x40);
        match open(&store_dir(), small(64 << 10), Arc::new(image)) {
            Err(WalError::Corrupt { path, offset, .. }) => {
                assert_eq!((path, offset), (seg.clone(), offsets[1] as u64), "byte {at}");
            }
            other => panic!("byte {at}: {other:?}"),
        }
    }
}

/// Builds a segment by hand: groups of (LSN, payload), each group's frames in a row.
fn build_segment(groups: &[&[Lsn]], size: usize) -> (Vec<u8>, Vec<usize>) {
    let mut buf = Vec::new();
    let mut offsets = Vec::new();
    for group in groups {
        for &lsn in *group {
            offsets.push(buf.len());
            let index = u32::try_from(lsn - group[0]).unwrap_or(u32::MAX);
            frame::encode(&mut buf, lsn, index, &payload(lsn));
        }
    }
    offsets.push(buf.len());
    buf.resize(size.max(buf.len()), 0);
    (buf, offsets)
}

#[tokio::test]
async fn a_torn_last_group_with_valid_frames_after_the_tear_is_a_crash_artefact() {
    let groups: &[&[Lsn]] = &[&[1], &[2, 3], &[4, 5, 6, 7, 8]];
    let (bytes, offsets) = build_segment(groups, 4096);
    let seg = segment(&store_dir(), 0);
    // A sector of the last write lost (zeros) while later ones reached the disk.
    for lost in 3..8 {
        let mem = MemIo::new();
        let mut torn = bytes.clone();
        torn[offsets[lost]..offsets[lost + 1]].fill(0);
        mem.put(&seg, torn);
        let (wal, replayed, _) = must_open(&store_dir(), small(4096), Arc::new(mem.clone()));
        assert_replayed(&replayed, 1..=lost as u64);
        // Cut only where frames of the torn group follow the tear.
        let cut = (lost < 7).then(|| (seg.clone(), offsets[lost] as u64));
        assert_eq!(wal.cut_at_open().map(|c| (c.path.clone(), c.offset)), cut);
        if let Some(c) = wal.cut_at_open() {
            assert_eq!(c.bytes as usize, offsets[8] - offsets[lost], "the torn group's bytes");
        }
        assert_eq!(append_expecting(&wal, lost as u64 + 1).await.ok(), Some(lost as u64 + 1));
        drop(wal);
        // The cut removed the leftovers of the torn group: they never pass for data.
        let (_, replayed, _) = must_open(&store_dir(), small(4096), Arc::new(mem));
        assert_replayed(&replayed, 1..=lost as u64 + 1);
    }
    // The same damage in a group followed by another is corruption.
    for lost in 1..3 {
        let mem = MemIo::new();
        let mut damaged = bytes.clone();
        damaged[offsets[lost]..offsets[lost + 1]].fill(0);
        mem.put(&seg, damaged);
        match open(&store_dir(), small(4096), Arc::new(mem)) {
            Err(WalError::Corrupt { path, offset, .. }) => {
                assert_eq!((path, offset), (seg.clone(), offsets[lost] as u64));
            }
            other => panic!("frame {lost}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn an_lsn_gap_is_corrupt() {
    let (bytes, offsets) = build_segment(&[&[1], &[2], &[4], &[5]], 4096);
    let mem = MemIo::new();
    let seg = segment(&store_dir(), 0);
    mem.put(&seg, bytes);
    match open(&store_dir(), small(4096), Arc::new(mem)) {
        Err(WalError::Corrupt { path, offset, .. }) => {
            assert_eq!((path, offset), (seg, offsets[2] as u64));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn damage_in_an_older_segment_is_corrupt() {
    let mem = MemIo::new();
    let (wal, _, _) = must_open(&store_dir(), small(4096), Arc::new(mem.clone()));
    append_sequentially(&wal, 300).await;
    drop(wal);
    let segments: Vec<PathBuf> =
        mem.files(&log_dir(&store_dir())).into_iter().filter(|p| mem.read(p)[0] != 0).collect();
    assert!(segments.len() > 5, "{} segments", segments.len());
    for (n, seg) in segments[..segments.len() - 1].iter().enumerate() {
        // A byte in the first frame, and one in the last frame, of the segment.
        let bytes = mem.read(seg);
        let last_frame = (0..bytes.len())
            .step_by(8)
            .rfind(|&at| matches!(frame::probe(&bytes, at), frame::Probe::Frame(_)))
            .unwrap_or(0);
        for at in [30, last_frame + 20] {
            let image = mem.crash(Crash::SyncedOnly);
            image.edit(seg, |b| b[at] ^= 1);
            match open(&store_dir(), small(4096), Arc::new(image)) {
                Err(WalError::Corrupt { path, .. }) => assert_eq!(&path, seg, "segment {n}"),
                other => panic!("segment {n} byte {at}: {other:?}"),
            }
        }
    }
}

/// One scenario of a failing write or sync: `op` fails at its `nth` call with `errno`.
async fn failing_io(op: Op, nth: u64, errno: i32) {
    let mem = MemIo::new();
    let io = FaultIo::new(Arc::new(mem.clone()));
    let (wal, _, seen) = open_untagged(&store_dir(), small(4096), Arc::new(io.clone()));
    io.fail_on(op, nth, errno, ".seg");
    // Batches of 3 concurrent appends, at least one group each.
    let mut results = Vec::new();
    for _ in 0..5 {
        let receivers: Vec<_> = (0..3).map(|_| wal.append(b"x".to_vec(), 0)).collect();
        for receiver in receivers {
            results.push(answer(receiver).await);
        }
    }
    let acked: Vec<Lsn> = results.iter().filter_map(|r| r.as_ref().ok().copied()).collect();
    let first_error = results.iter().position(|r| r.is_err()).expect("no append failed");
    assert!(
        results[first_error..].iter().all(|r| r.is_err()),
        "an append succeeded after one failed"
    );
    assert_eq!(acked, (1..=first_error as u64).collect::<Vec<_>>());
    for r in &results[first_error..] {
        match r {
            Err(WalError::Io { path, source, .. }) => {
                assert_eq!(source.raw_os_error(), Some(errno));
                assert!(path.to_string_lossy().ends_with(".seg"));
            }
            Err(WalError::Failed(first)) => assert!(matches!(**first, WalError::Io { .. })),
            other => panic!("{other:?}"),
        }
    }
    assert!(matches!(results[first_error], Err(WalError::Io { .. })));
    assert!(matches!(wal.failure(), Some(WalError::Io { .. })));
    assert!(matches!(answer(wal.append(vec![], 0)).await, Err(WalError::Failed(_))));
    assert_eq!(applied(&seen), acked, "apply saw a failed group");
    assert_eq!(wal.durable_lsn(), acked.len() as u64);
    // A crash now, or a clean reopen: every acknowledged payload is there.
    for image in [mem.crash(Crash::SyncedOnly), mem.crash(Crash::Everything)] {
        drop(mem.clone());
        let (_, replayed, _) = open_untagged(&store_dir(), small(4096), Arc::new(image));
        assert!(replayed.len() >= acked.len());
        let lsns: Vec<Lsn> = replayed.iter().map(|(lsn, _)| *lsn).collect();
        assert_eq!(lsns, (1..=lsns.len() as u64).collect::<Vec<_>>());
    }
    drop(wal);
}

#[tokio::test]
async fn failed_syncs_and_writes_fail_the_log() {
    for errno in [EIO, ENOSPC] {
        for nth in [1, 2, 3, 5] {
            failing_io(Op::Sync, nth, errno).await;
            failing_io(Op::Write, nth, errno).await;
        }
    }
}

#[tokio::test]
async fn a_failing_apply_fails_the_log_but_the_group_is_durable() {
    let mem = MemIo::new();
    let calls = Arc::new(Mutex::new(0));
    let counter = calls.clone();
    let apply = Box::new(move |_: Vec<(Lsn, u64)>| {
        let mut calls = counter.lock().unwrap_or_else(|p| p.into_inner());
        *calls += 1;
        if *calls == 3 {
            Err("sled said no".to_string())
        } else {
            Ok(())
        }
    });
    let (wal, _) =
        Wal::open(&store_dir(), small(4096), Arc::new(mem.clone()), apply).expect("open");
    for i in 1..=2 {
        assert_eq!(append_expecting(&wal, i).await.ok(), Some(i));
    }
    assert!(matches!(append_expecting(&wal, 3).await, Err(WalError::Apply(_))));
    assert!(matches!(append_expecting(&wal, 4).await, Err(WalError::Failed(_))));
    assert_eq!(wal.durable_lsn(), 2);
    drop(wal);
    let (_, replayed, _) = must_open(&store_dir(), small(4096), Arc::new(mem));
    assert_replayed(&replayed, 1..=3);
}

#[tokio::test]
async fn a_panicking_apply_fails_the_log_without_hanging() {
    let apply = Box::new(|_: Vec<(Lsn, u64)>| -> Result<(), String> { panic!("boom") });
    let (wal, _) =
        Wal::open(&store_dir(), small(4096), Arc::new(MemIo::new()), apply).expect("open");
    assert!(matches!(append_expecting(&wal, 1).await, Err(WalError::Apply(_))));
    assert!(matches!(append_expecting(&wal, 2).await, Err(WalError::Failed(_))));
}

#[tokio::test]
async fn too_large_payloads_are_refused_without_failing_the_log() {
    let (wal, _, _) = must_open(&store_dir(), small(4096), Arc::new(MemIo::new()));
    let max = 4096 - 24;
    assert!(matches!(
        answer(wal.append(vec![1; max + 1], 0)).await,
        Err(WalError::TooLarge { len, max: 4072 }) if len == max + 1
    ));
    assert!(wal.failure().is_none());
    // The largest payload fills a segment of its own.
    assert_eq!(answer(wal.append(vec![1; max], 1)).await.ok(), Some(1));
    assert_eq!(answer(wal.append(vec![2; 10], 2)).await.ok(), Some(2));
}

#[tokio::test]
async fn drop_answers_everything_queued() {
    let mem = MemIo::new();
    let (wal, _, _) = must_open(&store_dir(), small(4096), Arc::new(mem.clone()));
    let receivers: Vec<_> = (1..=200).map(|i| wal.append(payload(i), i)).collect();
    drop(wal);
    for (i, receiver) in (1..).zip(receivers) {
        assert_eq!(answer(receiver).await.ok(), Some(i));
    }
    let (_, replayed, _) = must_open(&store_dir(), small(4096), Arc::new(mem));
    assert_replayed(&replayed, 1..=200);
}

/// How a crash scenario runs.
struct Scenario {
    seed: u64,
    segment_bytes: u64,
    /// Repeats of a short text per payload: at least this many...
    payload_base: usize,
    /// ...plus up to this many.
    payload_repeats: usize,
    min_sync_delay_us: u64,
    max_sync_delay_us: u64,
    checkpoints: bool,
    torn_only: bool,
}

/// Appends from 4 tasks (and checkpoints, if asked), crashes at a random moment, reopens the
/// crash image and checks it; returns whether a torn tail was cut and how many unacknowledged
/// frames survived.
async fn crash_scenario(scenario: Scenario) -> (bool, usize) {
    let seed = scenario.seed;
    let mut rng = Rng::new(seed);
    let mem = MemIo::new();
    let io = FaultIo::new(Arc::new(mem.clone()));
    let spread = scenario.max_sync_delay_us - scenario.min_sync_delay_us;
    io.set_sync_delay(Duration::from_micros(scenario.min_sync_delay_us + rng.below(spread)));
    let options = small(scenario.segment_bytes);
    let (wal, _, _) = open_untagged(&store_dir(), options.clone(), Arc::new(io.clone()));
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let checkpointed = Arc::new(Mutex::new(0));
    let mut joins = Vec::new();
    for t in 0..4 {
        let (wal, acked) = (wal.clone(), acked.clone());
        let (base, repeats) = (scenario.payload_base, scenario.payload_repeats);
        joins.push(tokio::spawn(async move {
            for j in 0..60 {
                let bytes = format!("{t}/{j};").repeat(base + j % repeats).into_bytes();
                let lsn = answer(wal.append(bytes.clone(), 0)).await.expect("append");
                acked.lock().unwrap_or_else(|p| p.into_inner()).insert(lsn, bytes);
            }
        }));
    }
    if scenario.checkpoints {
        // Checkpoints now and then, as the store would after flushing sled.
        let (wal, checkpointed) = (wal.clone(), checkpointed.clone());
        joins.push(tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(3)).await;
                let lsn = wal.durable_lsn().saturating_sub(20);
                let wal = wal.clone();
                if let Ok(Ok(())) = tokio::task::spawn_blocking(move || wal.checkpoint(lsn)).await {
                    let mut done = checkpointed.lock().unwrap_or_else(|p| p.into_inner());
                    *done = (*done).max(lsn);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(rng.below(25))).await;
    let acked_before = acked.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let checkpoint_before = *checkpointed.lock().unwrap_or_else(|p| p.into_inner());
    let how = match seed % 3 {
        _ if scenario.torn_only => Crash::Torn(Rng::new(rng.next())),
        0 => Crash::SyncedOnly,
        1 => Crash::Torn(Rng::new(rng.next())),
        _ => Crash::Everything,
    };
    let image = mem.crash(how.clone());
    for join in joins {
        join.await.expect("task");
    }
    let all = acked.lock().unwrap_or_else(|p| p.into_inner()).clone();
    unwrap_arc(wal);
    let (wal, replayed, _) = match open(&store_dir(), options, Arc::new(image)) {
        Ok(opened) => opened,
        Err(e) => panic!("seed {seed}, {how:?}: reopen failed: {e}"),
    };
    let lsns: Vec<Lsn> = replayed.iter().map(|(lsn, _)| *lsn).collect();
    let first = lsns.first().copied().unwrap_or(wal.durable_lsn() + 1);
    assert!(first > checkpoint_before, "seed {seed}: replay starts before a checkpoint");
    assert_eq!(lsns, (first..first + lsns.len() as u64).collect::<Vec<_>>(), "seed {seed}");
    for (lsn, bytes) in &replayed {
        assert_eq!(Some(bytes), all.get(lsn), "seed {seed}: LSN {lsn}");
    }
    for lsn in acked_before.keys().filter(|&&lsn| lsn >= first) {
        assert!(lsns.contains(lsn), "seed {seed}, {how:?}: acknowledged LSN {lsn} lost");
    }
    assert!(wal.durable_lsn() >= acked_before.keys().last().copied().unwrap_or(0));
    let kept = lsns.iter().filter(|l| !acked_before.contains_key(l)).count();
    (wal.cut_at_open().is_some(), kept)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_keeps_every_acknowledged_payload() {
    let (mut cuts, mut unacknowledged_kept) = (0, 0);
    for seed in 0..24u64 {
        let (cut, kept) = crash_scenario(Scenario {
            seed,
            segment_bytes: 2048,
            payload_base: 1,
            payload_repeats: 9,
            min_sync_delay_us: 0,
            max_sync_delay_us: 400,
            checkpoints: true,
            torn_only: false,
        })
        .await;
        cuts += usize::from(cut);
        unacknowledged_kept += kept;
    }
    eprintln!("crashes: {cuts} torn tails cut, {unacknowledged_kept} unacknowledged frames kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn torn_writes_of_large_groups_are_crash_artefacts() {
    let (mut cuts, mut unacknowledged_kept) = (0, 0);
    for seed in 100..124u64 {
        let (cut, kept) = crash_scenario(Scenario {
            seed,
            segment_bytes: 64 << 10,
            payload_base: 100,
            payload_repeats: 100,
            min_sync_delay_us: 2000,
            max_sync_delay_us: 3000,
            checkpoints: seed % 2 == 0,
            torn_only: true,
        })
        .await;
        cuts += usize::from(cut);
        unacknowledged_kept += kept;
    }
    eprintln!("torn crashes: {cuts} torn tails cut, {unacknowledged_kept} unacknowledged kept");
    assert!(cuts > 0, "no crash tore a group: the test tests nothing");
}

#[tokio::test]
async fn checkpoints_trim_and_recycle_segments() {
    let mem = MemIo::new();
    let dir = store_dir();
    let (wal, _, _) = must_open(&dir, small(4096), Arc::new(mem.clone()));
    append_sequentially(&wal, 300).await;
    let before = mem.files(&log_dir(&dir)).len();
    let kept_before = wal.bytes_since_checkpoint();
    assert!(matches!(
        wal.checkpoint(301),
        Err(WalError::CheckpointAhead { lsn: 301, durable: 300 })
    ));
    wal.checkpoint(200).expect("checkpoint");
    assert!(wal.bytes_since_checkpoint() < kept_before);
    wal.checkpoint(100).expect("an older checkpoint does nothing");
    drop(wal);
    let files = mem.files(&log_dir(&dir));
    assert!(files.len() < before, "{} files, {before} before", files.len());
    let (wal, replayed, _) = must_open(&dir, small(4096), Arc::new(mem.clone()));
    assert_replayed(&replayed, 201..=300);
    // Onwards through the recycled segments (stale frames in them read as the end of the log).
    append_sequentially(&wal, 300).await;
    drop(wal);
    let (wal, replayed, _) = must_open(&dir, small(4096), Arc::new(mem.clone()));
    assert_replayed(&replayed, 201..=600);
    wal.checkpoint(600).expect("checkpoint");
    drop(wal);
    let (wal, replayed, _) = must_open(&dir, small(4096), Arc::new(mem.clone()));
    assert!(replayed.is_empty());
    assert_eq!(wal.durable_lsn(), 600);
    assert_eq!(wal.bytes_since_checkpoint(), 0);
    assert_eq!(append_expecting(&wal, 601).await.ok(), Some(601));
    // Every segment file is one of: the active one, the spares.
    assert!(mem.files(&log_dir(&dir)).len() <= 1 + 1 + 3, "{:?}", mem.files(&log_dir(&dir)));
}

#[tokio::test]
async fn a_recycled_segment_with_stale_frames_reads_as_end_of_log() {
    let mem = MemIo::new();
    let dir = store_dir();
    let (wal, _, _) = must_open(&dir, small(1024), Arc::new(mem.clone()));
    append_sequentially(&wal, 60).await;
    wal.checkpoint(60).expect("checkpoint");
    // Fill the active segment so the next append rolls into a recycled one, then crash at
    // once: the recycled segment holds one new frame and stale ones behind it.
    let mut rolled_into = None;
    for _ in 0..40 {
        let next = wal.durable_lsn() + 1;
        assert_eq!(append_expecting(&wal, next).await.ok(), Some(next));
        let files = mem.files(&log_dir(&dir));
        let stale = files.iter().find(|p| {
            let bytes = mem.read(p);
            let first = frame::probe(&bytes, 0);
            let later = frame::probe(&bytes, frame_size(payload(next).len()));
            matches!((first, later), (frame::Probe::Frame(a), frame::Probe::Frame(b))
                if a.lsn == next && b.lsn < 60)
        });
        if let Some(path) = stale {
            rolled_into = Some((path.clone(), next));
            break;
        }
    }
    let (path, last) = rolled_into.expect("never rolled into a recycled segment");
    let image = mem.crash(Crash::SyncedOnly);
    drop(wal);
    let (wal, replayed, _) = must_open(&dir, small(1024), Arc::new(image));
    assert_replayed(&replayed, 61..=last);
    assert!(wal.cut_at_open().is_none(), "stale frames are no torn tail: {path:?}");
}

/// A checkpoint failing at `op` (on a path containing `part`): it returns an error and reopening
/// replays at least everything after the previous checkpoint.
async fn failing_checkpoint(op: Op, part: &str, before_rename: bool, previous: Lsn) {
    let mem = MemIo::new();
    let io = FaultIo::new(Arc::new(mem.clone()));
    let dir = store_dir();
    let (wal, _, _) = must_open(&dir, small(2048), Arc::new(io.clone()));
    append_sequentially(&wal, 200).await;
    wal.checkpoint(previous).expect("first checkpoint");
    io.fail_on(op, 1, EIO, part);
    let result = wal.checkpoint(150);
    assert!(matches!(result, Err(WalError::Io { .. })), "{op:?} on {part}: {result:?}");
    for image in [mem.crash(Crash::SyncedOnly), mem.crash(Crash::Everything)] {
        let (_, replayed, _) = must_open(&dir, small(2048), Arc::new(image));
        let first = replayed.first().map_or(0, |(lsn, _)| *lsn);
        if before_rename {
            assert_eq!(first, previous + 1, "{op:?}");
        } else {
            assert!(first == previous + 1 || first == 151, "{op:?}: replay from {first}");
        }
        assert_replayed(&replayed, first..=200);
    }
    // The log goes on, and so do checkpoints.
    append_sequentially(&wal, 10).await;
    wal.checkpoint(205).expect("a later checkpoint");
    drop(wal);
    let (_, replayed, _) = must_open(&dir, small(2048), Arc::new(mem));
    assert_replayed(&replayed, 206..=210);
}

#[tokio::test]
async fn a_failed_checkpoint_loses_nothing() {
    failing_checkpoint(Op::Create, "checkpoint", true, 50).await;
    failing_checkpoint(Op::Write, "checkpoint", true, 50).await;
    failing_checkpoint(Op::Sync, "checkpoint", true, 50).await;
    failing_checkpoint(Op::Rename, "checkpoint", true, 50).await;
    failing_checkpoint(Op::SyncDir, "wal", false, 50).await;
    // Recycling (no spares yet) and deleting (spares full after the first checkpoint).
    failing_checkpoint(Op::Rename, ".seg", false, 0).await;
    failing_checkpoint(Op::Remove, ".seg", false, 50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_segments_on_a_real_disk() {
    let temp = tempfile::tempdir().expect("tempdir");
    let options = WalOptions { sync: false, ..small(4096) };
    let (wal, _, seen) = open_untagged(temp.path(), options.clone(), Arc::new(RealIo));
    let all = append_concurrently(&wal, 8, 250).await;
    assert_eq!(applied(&seen), (1..=2000).collect::<Vec<_>>());
    unwrap_arc(wal);
    let segments = std::fs::read_dir(temp.path().join("wal")).expect("list").count();
    assert!(segments > 20, "{segments} segments");
    let (_, replayed, _) = open_untagged(temp.path(), options, Arc::new(RealIo));
    assert_eq!(replayed, all.into_iter().collect::<Vec<_>>());
}

#[tokio::test]
async fn garbage_never_panics() {
    let dir = store_dir();
    let (mem, _) = sequential_log(40, true).await;
    let good = mem.read(&segment(&dir, 0));
    let mut rng = Rng::new(7);
    for round in 0..300 {
        let image = mem.crash(Crash::SyncedOnly);
        let seg = segment(&dir, 0);
        match round % 3 {
            0 => image.edit(&seg, |b| {
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(b.len() as u64) as usize;
                    b[at] = rng.next() as u8;
                }
            }),
            1 => image.edit(&seg, |b| {
                let len = rng.below(4096) as usize;
                *b = (0..len).map(|_| rng.next() as u8).collect();
            }),
            _ => image.put(
                &log_dir(&dir).join("checkpoint"),
                (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
            ),
        }
        match open(&dir, small(64 << 10), Arc::new(image)) {
            Ok((_, replayed, _)) => {
                // Whatever is replayed is what was written.
                for (lsn, bytes) in &replayed {
                    assert_eq!(bytes, &payload(*lsn), "round {round}");
                }
            }
            Err(WalError::Corrupt { .. }) => {}
            Err(e) => panic!("round {round}: {e}"),
        }
    }
    assert!(!good.is_empty());
}

#[tokio::test]
async fn invalid_options_are_refused() {
    for segment_bytes in [0, 63, 4100] {
        let result = open(&store_dir(), small(segment_bytes), Arc::new(MemIo::new()));
        assert!(matches!(result, Err(WalError::InvalidOptions(_))));
    }
}

/// An ad-hoc measurement on the real disk, with fdatasync: `cargo test -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore]
async fn measure_real_disk() {
    let temp = tempfile::tempdir_in(".").expect("tempdir");
    for tasks in [1u64, 8, 64] {
        let io = FaultIo::new(Arc::new(RealIo));
        let dir = temp.path().join(format!("t{tasks}"));
        let (wal, _, _) = open_untagged(&dir, WalOptions::default(), Arc::new(io.clone()));
        io.reset_counts();
        let each = 2000 / tasks;
        let start = Instant::now();
        let all = append_concurrently(&wal, tasks, each).await;
        let elapsed = start.elapsed();
        eprintln!(
            "{tasks:>3} concurrent writers: {} appends in {elapsed:.2?} = {:.0}/s, {} syncs ({:.1} \
             appends per sync)",
            all.len(),
            all.len() as f64 / elapsed.as_secs_f64(),
            io.count(Op::Sync),
            all.len() as f64 / io.count(Op::Sync) as f64
        );
        let unique: HashSet<_> = all.keys().collect();
        assert_eq!(unique.len(), all.len());
    }
}

/// For `strace`: three lone appends on the real disk, with a marker line on stderr before each
/// (`cargo test -- --ignored --nocapture strace_lone_appends`).
#[tokio::test]
#[ignore]
async fn strace_lone_appends() {
    let temp = tempfile::tempdir_in(".").expect("tempdir");
    let (wal, _, _) = must_open(temp.path(), WalOptions::default(), Arc::new(RealIo));
    for i in 1..=3 {
        eprintln!("MARK append {i}");
        assert_eq!(append_expecting(&wal, i).await.ok(), Some(i));
    }
    eprintln!("MARK done");
}

//! Opening a log: reading the checkpoint and the segments, telling a torn tail (a crash
//! artefact, cut off) from corruption (an error naming the file and the offset).
//!
//! Replay starts at the checkpoint's first segment expecting its first LSN, and accepts frames
//! while each is valid and has the expected LSN. At the first position `P` where that fails (in
//! segment `k`, expecting LSN `E`), the rest of `k` is scanned, at every 8-byte-aligned offset,
//! for whole valid frames with an LSN >= `E` (skipping over the extent of any valid header with an
//! LSN >= `E`: that range is its payload; frames with lower LSNs are stale, from a recycled
//! segment's earlier life, and never count):
//!
//! - one whose group started after `E` proves that the group holding `E` was synced (the writer
//!   writes a group only after the previous one's sync succeeded): `Corrupt` at `k`, `P`;
//! - frames of `E`'s own group only: that group's write was torn (pages reach the disk in any
//!   order before `fdatasync`), so it ends the log, provided no later segment holds a valid frame
//!   with an LSN >= `E` (else `Corrupt`). The segment is cut at `P`: truncated, extended again
//!   when preallocated, and synced, so that no leftover of the torn group can ever pass for data;
//! - nothing: `k` ended cleanly (zeros, stale frames, end of file, a torn header). The log goes
//!   on in segment `k + 1` if that segment has frames, else it ends at `P` (and the later
//!   segments are spares; they must not hold a valid frame with an LSN >= `E`, else `Corrupt`).
//!
//! Before a cut, the frame at `P` is tried for **one flipped bit** ([`flipped_bit`]): a frame
//! with LSN `E` that one bit (of its header, payload, CRC or padding) would make whole reached the
//! disk whole and was damaged after, so it is `Corrupt`, never cut. A cut is returned as a [`Cut`]
//! (segment, offset, bytes) for the store to report.
//!
//! An LSN gap is a frame whose LSN is above the expected one: it is never accepted, and where a
//! later group follows it, it is `Corrupt`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::checkpoint::{self, Checkpoint};
use super::frame::{probe, FrameAt, Probe, ALIGN, HEADER};
use super::io::{read_all, WalIo};
use super::{io_error, Lsn, WalError, WalOptions};

/// The file name of segment `index`.
pub(super) fn segment_name(index: u64) -> String {
    format!("{index:020}.seg")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// What the log knows of one segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct SegmentInfo {
    /// Its index (the file name).
    pub(super) index: u64,
    /// The LSN of its first frame (or of the first frame it will get); 0 for a spare.
    pub(super) first_lsn: Lsn,
    /// The LSN of its last frame; `first_lsn - 1` when it has none.
    pub(super) last_lsn: Lsn,
    /// Bytes of frames in it.
    pub(super) end: u64,
}

impl SegmentInfo {
    /// A segment not used yet (prepared or recycled).
    pub(super) fn spare(index: u64) -> Self {
        SegmentInfo { index, first_lsn: 0, last_lsn: 0, end: 0 }
    }
}

/// The outcome of reading a log at open.
#[derive(Debug)]
pub(super) struct Recovery {
    /// Every frame with an LSN above the checkpoint, in LSN order.
    pub(super) frames: Vec<(Lsn, Vec<u8>)>,
    /// The checkpoint in force.
    pub(super) checkpoint: Checkpoint,
    /// From the checkpoint's first segment on: the used ones, the active one, then the spares.
    pub(super) segments: Vec<SegmentInfo>,
    /// The position in `segments` of the segment the next group goes to.
    pub(super) active: usize,
    /// The LSN the next append gets.
    pub(super) next_lsn: Lsn,
    /// Where a torn tail was cut, if one was.
    pub(super) cut: Option<Cut>,
}

/// A torn tail that opening cut off the log: the end of a group whose write the process did not
/// live to finish (its `fdatasync` never returned, so nothing in it was acknowledged).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Cut {
    /// The segment.
    pub(crate) path: PathBuf,
    /// Where the log now ends in it.
    pub(crate) offset: u64,
    /// How many bytes after that held pieces of the torn group (zeroed by the cut).
    pub(crate) bytes: u64,
}

/// One pass over a segment from its start.
struct Walk {
    /// The accepted frames: LSN and payload range.
    frames: Vec<(Lsn, (usize, usize))>,
    /// The LSN expected after them.
    next: Lsn,
    /// Where the accepted frames end.
    stop: usize,
    /// Valid frames with an LSN >= `next` after `stop`.
    found: Vec<FrameAt>,
    /// The end of the furthest valid header with an LSN >= `next` (at least `stop`).
    dirty_end: usize,
    /// Whether a valid header with LSN `next` is at `stop` (its payload being what is wrong).
    header_at_stop: bool,
}

fn walk(data: &[u8], mut expected: Lsn) -> Walk {
    let mut frames = Vec::new();
    let mut pos = 0;
    while let Probe::Frame(f) = probe(data, pos) {
        if f.lsn != expected {
            break;
        }
        frames.push((f.lsn, f.payload));
        expected += 1;
        pos = f.end;
    }
    let (found, dirty_end) = scan(data, pos, expected);
    let header_at_stop = matches!(probe(data, pos), Probe::BrokenPayload(f) if f.lsn == expected);
    Walk { frames, next: expected, stop: pos, found, dirty_end, header_at_stop }
}

/// Valid frames with an LSN >= `expected` at or after `from`, and where the furthest valid
/// header with such an LSN ends.
fn scan(data: &[u8], from: usize, expected: Lsn) -> (Vec<FrameAt>, usize) {
    let mut found = Vec::new();
    let mut dirty_end = from;
    let mut pos = from;
    while pos.saturating_add(HEADER) <= data.len() {
        // Preallocated space is zeros: skip it a block at a time (a slice comparison, which is
        // a `memcmp`, keeps opening a large segment fast even in a debug build).
        const ZEROS: [u8; 4096] = [0; 4096];
        if data.len() - pos >= ZEROS.len() && data[pos..pos + ZEROS.len()] == ZEROS {
            // A header starting in the last HEADER - 1 bytes of the block may hold non-zero
            // bytes after it: resume there.
            pos += ZEROS.len() - (HEADER - 1) / ALIGN * ALIGN;
            continue;
        }
        if data[pos..pos + HEADER].iter().all(|&b| b == 0) {
            pos += ALIGN;
            continue;
        }
        match probe(data, pos) {
            Probe::Frame(f) | Probe::BrokenPayload(f) if f.lsn >= expected => {
                if matches!(probe(data, pos), Probe::Frame(_)) {
                    found.push(f);
                }
                dirty_end = dirty_end.max(f.end.min(data.len()));
                // The header is ours (this generation): what it covers is its payload.
                pos = f.end.max(pos + ALIGN);
            }
            _ => pos += ALIGN,
        }
    }
    (found, dirty_end)
}

struct Segment {
    index: u64,
    path: PathBuf,
}

fn read_segment(io: &dyn WalIo, segment: &Segment) -> Result<Vec<u8>, WalError> {
    let file = io.open(&segment.path).map_err(io_error("opening a segment", &segment.path))?;
    read_all(file.as_ref()).map_err(io_error("reading a segment", &segment.path))
}

/// Reads the log in `dir` (its `wal` directory, created if missing), cuts a torn tail, removes
/// leftovers of an interrupted checkpoint, and creates the first segment of a new log.
pub(super) fn recover(
    io: &dyn WalIo,
    dir: &Path,
    options: &WalOptions,
) -> Result<Recovery, WalError> {
    io.create_dir_all(dir).map_err(io_error("creating the log directory", dir))?;
    let mut segments = BTreeMap::new();
    for name in io.list(dir).map_err(io_error("listing the log directory", dir))? {
        let Some(name) = name.to_str() else { continue };
        if name == checkpoint::TEMP_NAME {
            let path = dir.join(name);
            io.remove(&path).map_err(io_error("removing a checkpoint left half-written", &path))?;
        } else if let Some(index) = parse_segment_name(name) {
            segments.insert(index, Segment { index, path: dir.join(name) });
        }
    }
    let checkpoint = match checkpoint::read(io, dir)? {
        Some(checkpoint) => {
            if !segments.contains_key(&checkpoint.first_segment) {
                return Err(WalError::Corrupt {
                    path: dir.join(segment_name(checkpoint.first_segment)),
                    offset: 0,
                    problem: "the segment the checkpoint starts at is missing".into(),
                });
            }
            checkpoint
        }
        None => Checkpoint {
            lsn: 0,
            first_segment: segments.keys().next().copied().unwrap_or(0),
            first_lsn: 1,
            marked: false,
        },
    };
    let later = segments.split_off(&checkpoint.first_segment);
    let mut removed = false;
    for old in segments.values() {
        // Wholly checkpointed: an earlier checkpoint stopped before removing it.
        io.remove(&old.path).map_err(io_error("removing a checkpointed segment", &old.path))?;
        removed = true;
    }
    if removed {
        io.sync_dir(dir).map_err(io_error("fsync of the log directory", dir))?;
    }
    let list: Vec<Segment> = later.into_values().collect();
    if list.is_empty() {
        return Ok(Recovery {
            frames: Vec::new(),
            checkpoint,
            segments: vec![SegmentInfo {
                index: checkpoint.first_segment,
                first_lsn: checkpoint.first_lsn,
                last_lsn: checkpoint.first_lsn - 1,
                end: 0,
            }],
            active: 0,
            next_lsn: checkpoint.first_lsn,
            cut: None,
        });
    }

    let mut frames = Vec::new();
    let mut infos: Vec<SegmentInfo> = Vec::new();
    let mut dirty: Vec<bool> = Vec::new();
    let mut dirty_end: Vec<u64> = Vec::new();
    let mut expected = checkpoint.first_lsn;
    let mut k = 0;
    // The bytes of the segment read last and of the one before: the active one is either.
    let mut data = Vec::new();
    let active = loop {
        let segment = &list[k];
        let previous = std::mem::replace(&mut data, read_segment(io, segment)?);
        let w = walk(&data, expected);
        let first_lsn = expected;
        for &(lsn, (start, end)) in &w.frames {
            if lsn > checkpoint.lsn {
                frames.push((lsn, data[start..end].to_vec()));
            }
        }
        expected = w.next;
        if let Some(f) = w.found.iter().find(|f| f.group_first > expected) {
            let later = format!(
                "a later group follows (LSN {} at offset {} of {})",
                f.lsn,
                f.payload.0 - HEADER,
                segment.path.display()
            );
            // With no frame at all here (not even a header), the missing one was at the end of
            // the previous segment or at the start of this one: name the first, mention both.
            let (path, offset, problem) = match k.checked_sub(1) {
                Some(prev) if w.frames.is_empty() && !w.header_at_stop => (
                    list[prev].path.clone(),
                    infos[prev].end,
                    format!(
                        "no valid frame with LSN {expected} here nor at the start of {}, but {later}",
                        segment.path.display()
                    ),
                ),
                _ => (
                    segment.path.clone(),
                    w.stop as u64,
                    format!("no valid frame with LSN {expected} here, but {later}"),
                ),
            };
            return Err(WalError::Corrupt { path, offset, problem });
        }
        if w.frames.is_empty() && w.found.is_empty() && k > 0 {
            // Nothing in this segment: the log ended at the previous one's end.
            check_later(io, &list[k + 1..], expected, &list[k - 1].path, infos[k - 1].end)?;
            data = previous;
            break k - 1;
        }
        infos.push(SegmentInfo {
            index: segment.index,
            first_lsn,
            last_lsn: expected - 1,
            end: w.stop as u64,
        });
        dirty.push(w.dirty_end > w.stop);
        dirty_end.push(w.dirty_end as u64);
        if !w.found.is_empty() || k + 1 == list.len() {
            check_later(io, &list[k + 1..], expected, &segment.path, w.stop as u64)?;
            break k;
        }
        k += 1;
    };
    let end = &infos[active];
    let active_path = &list[active].path;
    if expected - 1 < checkpoint.lsn {
        return Err(WalError::Corrupt {
            path: active_path.clone(),
            offset: end.end,
            problem: format!(
                "the log ends at LSN {}, before its checkpoint at LSN {}",
                expected - 1,
                checkpoint.lsn
            ),
        });
    }
    if let Some(damage) = flipped_bit(&data, end.end as usize, expected) {
        return Err(WalError::Corrupt {
            path: active_path.clone(),
            offset: end.end,
            problem: format!(
                "the frame of LSN {expected} here is whole but for one flipped bit ({damage}): \
                 damage to a written frame, not a torn write, so it is not cut"
            ),
        });
    }
    let mut cut = None;
    if dirty[active] {
        let file = io.open(active_path).map_err(io_error("opening a segment", active_path))?;
        file.set_len(end.end).map_err(io_error("cutting a torn tail", active_path))?;
        if options.preallocate {
            file.allocate(options.segment_bytes)
                .map_err(io_error("allocating a segment again", active_path))?;
        }
        file.sync_data().map_err(io_error("fdatasync after cutting a torn tail", active_path))?;
        let bytes = dirty_end[active].saturating_sub(end.end);
        cut = Some(Cut { path: active_path.clone(), offset: end.end, bytes });
    }
    infos.truncate(active + 1);
    infos.extend(list[active + 1..].iter().map(|s| SegmentInfo::spare(s.index)));
    Ok(Recovery { frames, checkpoint, segments: infos, active, next_lsn: expected, cut })
}

/// The unit a disk writes whole: a write torn by a crash loses whole sectors, never a bit.
const SECTOR: usize = 512;

/// Whether the bytes at `pos` of `data` are the frame of LSN `expected`, whole but for one flipped
/// bit: in its header (which then fails its CRC), in its payload or its payload's CRC, or in its
/// padding. Such a frame reached the disk whole, so it is damage, never a torn write (whose lost
/// pages leave whole sectors of old bytes, not one wrong bit); `Some` says where the bit is. A
/// torn write passes for one only if one of its bit patterns matches a CRC32C by chance (a chance
/// of about 2^-32 for each bit of the frame).
fn flipped_bit(data: &[u8], pos: usize, expected: Lsn) -> Option<String> {
    let header = data.get(pos..pos.checked_add(HEADER)?)?;
    if header.iter().all(|&b| b == 0) {
        return None;
    }
    let mut fixed = header.to_vec();
    let mut header_bit = None;
    if let Probe::Nothing = probe(data, pos) {
        // Find the one bit of the header whose flip makes it valid with LSN `expected`.
        header_bit = (0..HEADER * 8).find(|&bit| {
            let mut h = header.to_vec();
            h[bit / 8] ^= 1 << (bit % 8);
            let crc = u32::from_le_bytes([h[20], h[21], h[22], h[23]]);
            let lsn = u64::from_le_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]);
            crc32c::crc32c(&h[..20]) == crc && lsn == expected
        });
        let bit = header_bit?;
        fixed[bit / 8] ^= 1 << (bit % 8);
    }
    let word =
        |at: usize| u32::from_le_bytes([fixed[at], fixed[at + 1], fixed[at + 2], fixed[at + 3]]);
    let lsn = u64::from_le_bytes(fixed[8..16].try_into().ok()?);
    if lsn != expected {
        return None;
    }
    let start = pos + HEADER;
    let len = word(0) as usize;
    let payload = data.get(start..start.checked_add(len)?)?;
    let padding = data.get(start + len..pos.checked_add(super::frame::frame_size(len))?)?;
    let stored = word(4);
    let syndrome = crc32c::crc32c(payload) ^ stored;
    let nonzero_padding: Vec<usize> =
        padding.iter().enumerate().filter(|(_, &b)| b != 0).map(|(i, _)| i).collect();
    let at = |offset: usize| format!("offset {offset}");
    match (header_bit, syndrome, nonzero_padding.as_slice()) {
        (Some(bit), 0, []) => Some(format!("header bit {bit}")),
        (Some(_), _, _) => None,
        (None, 0, [i]) if padding[*i].count_ones() == 1 => Some(at(start + len + i)),
        (None, s, []) if s.count_ones() == 1 => Some(format!("the payload's CRC, {}", at(pos + 4))),
        (None, s, []) => {
            let byte = start + single_bit_error(payload, s)? / 8;
            // The bit's sector must hold something of the frame now: a sector of zeros may be one
            // the torn write never reached, whose only byte of the frame had one bit set.
            let sector = byte / SECTOR * SECTOR;
            let written =
                data[sector.max(pos)..(sector + SECTOR).min(start + len)].iter().any(|&b| b != 0);
            written.then(|| at(byte))
        }
        _ => None,
    }
}

/// The bit of `payload` whose flip changes its CRC32C by `syndrome`, if one does. CRC32C is
/// linear: flipping bit `b` of a byte `d` bytes before the end changes the CRC by the CRC
/// register of that one bit followed by `d` zero bytes, whatever the other bytes are.
fn single_bit_error(payload: &[u8], syndrome: u32) -> Option<usize> {
    const POLY: u32 = 0x82F6_3B78; // CRC32C, reflected
    let step = |mut crc: u32| {
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ POLY } else { crc >> 1 };
        }
        crc
    };
    // The register after one byte holding only bit `b`, then after each zero byte.
    let mut regs: Vec<u32> = (0..8).map(|b| step(1u32 << b)).collect();
    for from_end in 0..payload.len() {
        if let Some(b) = regs.iter().position(|&r| r == syndrome) {
            return Some((payload.len() - 1 - from_end) * 8 + b);
        }
        for r in &mut regs {
            *r = step(*r);
        }
    }
    None
}

/// Fails if any of `later` holds a valid frame with an LSN >= `expected`: frames after the end
/// of the log, so some before them are missing.
fn check_later(
    io: &dyn WalIo,
    later: &[Segment],
    expected: Lsn,
    end_path: &Path,
    end_offset: u64,
) -> Result<(), WalError> {
    for segment in later {
        let data = read_segment(io, segment)?;
        let (found, _) = scan(&data, 0, expected);
        if let Some(f) = found.first() {
            return Err(WalError::Corrupt {
                path: end_path.to_owned(),
                offset: end_offset,
                problem: format!(
                    "no valid frame with LSN {expected} here, but {} holds LSN {} at offset {}",
                    segment.path.display(),
                    f.lsn,
                    f.payload.0 - HEADER
                ),
            });
        }
    }
    Ok(())
}

//! The frame format: one appended payload in a segment.
//!
//! Little-endian, every frame starting at a multiple of 8 bytes:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | payload length `len` (u32) |
//! | 4..8 | CRC32C of the payload (u32) |
//! | 8..16 | LSN (u64, >= 1) |
//! | 16..20 | index of the frame in its group: LSN minus the group's first LSN (u32) |
//! | 20..24 | CRC32C of bytes 0..20 (u32) |
//! | 24..24+len | payload |
//! | then | zeros up to the next multiple of 8 (checked: a frame with other padding is invalid) |
//!
//! A header of 24 zero bytes never validates (the CRC32C of 20 zero bytes is not zero), so a
//! preallocated, never written region reads as "no frame".

use super::Lsn;

/// Bytes of a frame header.
pub(super) const HEADER: usize = 24;
/// Frames start at multiples of this.
pub(super) const ALIGN: usize = 8;

/// Bytes a frame of a `len`-byte payload takes, header and padding included.
pub(super) fn frame_size(len: usize) -> usize {
    HEADER.saturating_add(len.div_ceil(ALIGN).saturating_mul(ALIGN))
}

/// Appends the frame of `payload` to `buf`, which must end at a multiple of 8.
/// `payload.len()` must fit in u32 (checked by the caller).
pub(super) fn encode(buf: &mut Vec<u8>, lsn: Lsn, index_in_group: u32, payload: &[u8]) {
    debug_assert_eq!(buf.len() % ALIGN, 0);
    let start = buf.len();
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    buf.extend_from_slice(&lsn.to_le_bytes());
    buf.extend_from_slice(&index_in_group.to_le_bytes());
    let header_crc = crc32c::crc32c(&buf[start..start + 20]);
    buf.extend_from_slice(&header_crc.to_le_bytes());
    buf.extend_from_slice(payload);
    buf.resize(start + frame_size(payload.len()), 0);
}

/// What lies at one position of a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Probe {
    /// A whole, valid frame.
    Frame(FrameAt),
    /// A valid header whose payload is cut by the end of the file or fails its CRC.
    BrokenPayload(FrameAt),
    /// No valid header here (zeros, garbage, a torn header, the end of the file).
    Nothing,
}

/// The header fields of a frame found at `pos`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct FrameAt {
    /// The frame's LSN.
    pub(super) lsn: Lsn,
    /// The first LSN of the frame's group.
    pub(super) group_first: Lsn,
    /// Where its payload starts and ends (unpadded), as offsets in the segment.
    pub(super) payload: (usize, usize),
    /// Where the next frame starts (padding included).
    pub(super) end: usize,
}

/// Reads the frame at `pos` of `data` (a whole segment), never panicking on any bytes.
pub(super) fn probe(data: &[u8], pos: usize) -> Probe {
    let Some(header) = pos.checked_add(HEADER).and_then(|end| data.get(pos..end)) else {
        return Probe::Nothing;
    };
    let word = |at: usize| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&header[at..at + 4]);
        u32::from_le_bytes(b)
    };
    if crc32c::crc32c(&header[..20]) != word(20) {
        return Probe::Nothing;
    }
    let mut lsn_bytes = [0u8; 8];
    lsn_bytes.copy_from_slice(&header[8..16]);
    let lsn = u64::from_le_bytes(lsn_bytes);
    let Some(group_first) = lsn.checked_sub(u64::from(word(16))).filter(|&first| first >= 1) else {
        return Probe::Nothing;
    };
    let len = word(0) as usize;
    let start = pos + HEADER;
    let end = start.saturating_add(frame_size(len) - HEADER);
    let at = FrameAt { lsn, group_first, payload: (start, start.saturating_add(len)), end };
    match data.get(start..at.payload.1) {
        Some(payload)
            if end <= data.len()
                && crc32c::crc32c(payload) == word(4)
                && data[at.payload.1..end].iter().all(|&b| b == 0) =>
        {
            Probe::Frame(at)
        }
        _ => Probe::BrokenPayload(at),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_then_probe() {
        let mut buf = Vec::new();
        encode(&mut buf, 7, 0, b"hello");
        encode(&mut buf, 8, 1, b"");
        assert_eq!(buf.len(), frame_size(5) + frame_size(0));
        let Probe::Frame(first) = probe(&buf, 0) else { panic!("no frame") };
        assert_eq!((first.lsn, first.group_first), (7, 7));
        assert_eq!(&buf[first.payload.0..first.payload.1], b"hello");
        let Probe::Frame(second) = probe(&buf, first.end) else { panic!("no frame") };
        assert_eq!((second.lsn, second.group_first, second.end), (8, 7, buf.len()));
        assert_eq!(probe(&buf, buf.len()), Probe::Nothing);
        assert_eq!(probe(&[0u8; 64], 0), Probe::Nothing);
        assert!(matches!(probe(&buf[..HEADER + 2], 0), Probe::BrokenPayload(_)));
        let mut flipped = buf.clone();
        flipped[HEADER] ^= 1;
        assert!(matches!(probe(&flipped, 0), Probe::BrokenPayload(_)));
        flipped[3] ^= 1;
        assert_eq!(probe(&flipped, 0), Probe::Nothing);
    }

    #[test]
    fn probe_never_panics_on_bad_lengths() {
        let mut buf = Vec::new();
        encode(&mut buf, 1, 0, b"x");
        // A valid header claiming u32::MAX bytes.
        buf[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let crc = crc32c::crc32c(&buf[..20]);
        buf[20..24].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(probe(&buf, 0), Probe::BrokenPayload(_)));
        assert_eq!(probe(&buf, usize::MAX - 3), Probe::Nothing);
    }
}

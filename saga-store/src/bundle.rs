//! Bundles: how the `records` and `logs` trees keep an Operation's entries in sled's files.
//!
//! Their keys are `id (16) ++ seq (8)`. The writer's path never sees sled (see
//! [`crate::overlay::Logged`]); at a checkpoint, every Operation whose entries changed gets them all
//! in **one sled value** under its 16-byte id, instead of one sled key per record or line: sled's
//! cost is per key (its node copies, allocation and epoch reclamation dominated the store's
//! CPU), so a 10-step Operation's 22 records cost it one insert, not 22.
//!
//! A bundle is `[BUNDLE_VERSION] ++ postcard(Vec<(suffix, value)>) ++ CRC32C(id ++ the bytes
//! before it)`, the entries in suffix order; each value keeps its own checksum (record format
//! 3). Entries under full 24-byte keys (a store written before bundles, or opened without fsync,
//! which writes sled directly) read as before and take precedence over the bundle's; the next
//! checkpoint that touches their Operation moves them into its bundle, in the same sled batch
//! that removes them.

use std::collections::BTreeMap;
use std::ops::Bound;

use sled::IVec;

/// The length of the keys the `records` and `logs` trees' bundles are stored under: an
/// Operation's id.
pub(crate) const PREFIX: usize = 16;

/// The length of the keys the `logs_by_time` tree's bundles are stored under: the first 7 bytes
/// of a line's time (Unix ms, big-endian), so one bundle per 256 ms of lines.
pub(crate) const TIME_PREFIX: usize = 7;

const BUNDLE_VERSION: u8 = 1;

/// A bundle's entries as encoded: (suffix, value) in suffix order.
type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// A bundle that does not read: carried inside a `sled::Error::Io` through sled's iterators, and
/// turned back into `StoreError::Corrupt` by [`crate::codec::sled_error`].
#[derive(Debug)]
pub(crate) struct Damaged {
    /// The tree and the key.
    pub(crate) place: String,
    /// What is wrong.
    pub(crate) problem: String,
}

impl std::fmt::Display for Damaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.place, self.problem)
    }
}

impl std::error::Error for Damaged {}

fn damaged(tree: &str, prefix: &[u8], problem: String) -> sled::Error {
    let place = format!("the bundle of operation {} in tree {tree}", crate::keys::hex(prefix));
    sled::Error::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        Damaged { place, problem },
    ))
}

/// Encodes the entries of the Operation `prefix` as one bundle.
pub(crate) fn encode(prefix: &[u8], entries: &BTreeMap<Vec<u8>, IVec>) -> Vec<u8> {
    let list: Vec<(&[u8], &[u8])> =
        entries.iter().map(|(k, v)| (k.as_slice(), v.as_ref())).collect();
    // Encoding slices of bytes into a Vec cannot fail.
    let mut bytes = postcard::to_extend(&list, vec![BUNDLE_VERSION]).unwrap_or_default();
    let crc = crc32c::crc32c_append(crc32c::crc32c(prefix), &bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes
}

/// Decodes the bundle of the Operation `prefix` in `tree`: its entries by suffix.
pub(crate) fn decode(
    tree: &str,
    prefix: &[u8],
    bytes: &[u8],
) -> sled::Result<BTreeMap<Vec<u8>, IVec>> {
    let fail = |problem: String| damaged(tree, prefix, problem);
    let Some(split) = bytes.len().checked_sub(4).filter(|&at| at >= 1) else {
        return Err(fail(format!("{} bytes are too few for a bundle", bytes.len())));
    };
    let (covered, trailer) = bytes.split_at(split);
    let stored = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
    let computed = crc32c::crc32c_append(crc32c::crc32c(prefix), covered);
    if stored != computed {
        return Err(fail(format!(
            "checksum mismatch (stored CRC32C {stored:#010x}, computed {computed:#010x})"
        )));
    }
    if covered[0] != BUNDLE_VERSION {
        return Err(fail(format!(
            "bundle version {}, which this release does not know",
            covered[0]
        )));
    }
    let (list, rest): (Entries, &[u8]) =
        postcard::take_from_bytes(&covered[1..]).map_err(|e| fail(e.to_string()))?;
    if !rest.is_empty() {
        return Err(fail(format!("{} trailing bytes", rest.len())));
    }
    Ok(list.into_iter().map(|(k, v)| (k, IVec::from(v))).collect())
}

/// What sled holds under one bundle key.
pub(crate) struct Stored {
    /// Every entry, by full key: the bundle's, and over them those under full keys.
    pub(crate) entries: BTreeMap<Vec<u8>, IVec>,
    /// The entries sled keeps under their full key (not in the bundle).
    pub(crate) full_keys: Vec<Vec<u8>>,
}

/// What sled holds under the bundle key `prefix` of `tree` (named `name`): read from sled.
pub(crate) fn entries(tree: &sled::Tree, name: &str, prefix: &[u8]) -> sled::Result<Stored> {
    let bundle = tree.get(prefix)?;
    entries_with(tree, name, prefix, bundle.as_deref())
}

/// What sled holds under the bundle key `prefix`, whose bundle (if any) the caller read already.
fn entries_with(
    tree: &sled::Tree,
    name: &str,
    prefix: &[u8],
    bundle: Option<&[u8]>,
) -> sled::Result<Stored> {
    let mut stored = Stored { entries: BTreeMap::new(), full_keys: Vec::new() };
    if let Some(bytes) = bundle {
        for (suffix, value) in decode(name, prefix, bytes)? {
            let mut key = prefix.to_vec();
            key.extend_from_slice(&suffix);
            stored.entries.insert(key, value);
        }
    }
    for entry in tree.scan_prefix(prefix) {
        let (key, value) = entry?;
        if key.len() > prefix.len() {
            stored.full_keys.push(key.to_vec());
            stored.entries.insert(key.to_vec(), value);
        }
    }
    Ok(stored)
}

/// sled's entries of a bundled tree within bounds, in key order, bundles expanded.
pub(crate) struct Expanded {
    tree: sled::Tree,
    name: &'static str,
    /// The length of the bundles' keys.
    prefix: usize,
    inner: sled::Iter,
    lower: Bound<Vec<u8>>,
    upper: Bound<Vec<u8>>,
    /// The entries of the Operation being read, in key order.
    buffered: std::collections::VecDeque<(IVec, IVec)>,
    /// That Operation: full keys under it were read with its bundle, and are skipped.
    current: Option<IVec>,
}

impl Expanded {
    /// The entries of `tree` (named `name`) within the bounds.
    pub(crate) fn new(
        tree: sled::Tree,
        name: &'static str,
        prefix: usize,
        lower: Bound<Vec<u8>>,
        upper: Bound<Vec<u8>>,
    ) -> Self {
        // A bundle's key (the id) sorts before every full key under it: start at the lower
        // bound's id.
        let start = match &lower {
            Bound::Included(k) | Bound::Excluded(k) => {
                Bound::Included(k[..k.len().min(prefix)].to_vec())
            }
            Bound::Unbounded => Bound::Unbounded,
        };
        let inner = tree.range::<Vec<u8>, _>((start, upper.clone()));
        let buffered = Default::default();
        Expanded { tree, name, prefix, inner, lower, upper, buffered, current: None }
    }

    fn within(&self, key: &[u8]) -> bool {
        let above = match &self.lower {
            Bound::Included(k) => key >= k.as_slice(),
            Bound::Excluded(k) => key > k.as_slice(),
            Bound::Unbounded => true,
        };
        let below = match &self.upper {
            Bound::Included(k) => key <= k.as_slice(),
            Bound::Excluded(k) => key < k.as_slice(),
            Bound::Unbounded => true,
        };
        above && below
    }
}

impl Iterator for Expanded {
    type Item = sled::Result<(IVec, IVec)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(entry) = self.buffered.pop_front() {
                return Some(Ok(entry));
            }
            let (key, value) = match self.inner.next()? {
                Ok(entry) => entry,
                Err(e) => return Some(Err(e)),
            };
            if key.len() == self.prefix {
                // A bundle: its entries and the full keys under it, merged.
                let all = match entries_with(&self.tree, self.name, &key, Some(&value)) {
                    Ok(all) => all,
                    Err(e) => return Some(Err(e)),
                };
                self.buffered = all
                    .entries
                    .into_iter()
                    .filter(|(k, _)| self.within(k))
                    .map(|(k, v)| (IVec::from(k), v))
                    .collect();
                self.current = Some(key);
                continue;
            }
            let under_current =
                self.current.as_ref().is_some_and(|c| key.len() > c.len() && key.starts_with(c));
            if under_current || !self.within(&key) {
                continue;
            }
            return Some(Ok((key, value)));
        }
    }
}

/// **For tests and tools** (hidden from the docs; not part of the stable API): rewrites the
/// bundles of the `records`, `logs` and `logs_by_time` trees of `db` (a store's
/// database opened with sled alone, the store closed) as one sled key per entry, the layout of a
/// store written before bundles, which the store reads as well; so that a test can damage one
/// record or line by its key. Fails on a damaged bundle.
pub fn unbundle(db: &sled::Db) -> sled::Result<()> {
    let trees = [
        (crate::keys::RECORDS, PREFIX),
        (crate::keys::LOGS, PREFIX),
        (crate::keys::LOGS_BY_TIME, TIME_PREFIX),
    ];
    for (name, prefix) in trees {
        let tree = db.open_tree(name)?;
        let bundles: Vec<(IVec, IVec)> = tree
            .iter()
            .filter(|entry| entry.as_ref().map_or(true, |(key, _)| key.len() == prefix))
            .collect::<sled::Result<_>>()?;
        for (prefix, bytes) in bundles {
            for (suffix, value) in decode(name, &prefix, &bytes)? {
                let mut key = prefix.to_vec();
                key.extend_from_slice(&suffix);
                if !tree.contains_key(&key)? {
                    tree.insert(key, value)?;
                }
            }
            tree.remove(&prefix)?;
        }
    }
    db.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundles_round_trip_and_every_damage_is_an_error() {
        let prefix = [7u8; PREFIX];
        let entries: BTreeMap<Vec<u8>, IVec> = (0..5u64)
            .map(|seq| (seq.to_be_bytes().to_vec(), IVec::from(vec![seq as u8; 3])))
            .collect();
        let bytes = encode(&prefix, &entries);
        assert_eq!(decode("records", &prefix, &bytes).expect("decodes"), entries);
        for at in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 0x20;
            assert!(decode("records", &prefix, &bad).is_err(), "byte {at}");
        }
        assert!(decode("records", &[8u8; PREFIX], &bytes).is_err(), "another id's bundle");
        assert!(decode("records", &prefix, &bytes[..3]).is_err());
    }
}

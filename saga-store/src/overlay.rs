//! The trees' changes since the last checkpoint, held in memory over sled: [`Logged`] (one
//! tree: its overlay, merged reads, and writes recorded for the write-ahead log), [`Iter`] (a
//! merged read), [`Memtable`] (every tree's overlay, which the checkpointer moves into sled) and
//! [`Batch`].

use std::collections::BTreeMap;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use sled::IVec;

use saga_core::store::StoreError;

use crate::codec::sled_error;
use crate::contain::Contained;
use crate::redo::{Op, Redo};

/// The changes of one tree not yet in sled, by key: `None` is a removal.
type Changes = BTreeMap<Vec<u8>, Option<IVec>>;

/// What a tree holds beyond sled's own copy: every change since the last checkpoint began
/// (`active`), and the changes that checkpoint is applying to sled (`frozen`). Reads look in
/// `active`, then `frozen`, then sled. See [`Logged`].
#[derive(Debug, Default)]
pub(crate) struct Overlay {
    active: Changes,
    frozen: Option<Arc<Changes>>,
}

/// A sled tree whose changes are recorded in the store's [`Redo`] buffer.
///
/// With the write-ahead log (`Redo` enabled), a change never touches sled on the writer's path:
/// it goes to the tree's [`Overlay`] in memory, and reads merge the overlay over sled. The
/// checkpointer moves the overlay into sled ([`Memtable`]): it freezes every tree's changes at
/// once, applies each tree's as one sled batch (a key changed many times, or made and removed,
/// between two checkpoints costs sled one write, or none), makes sled durable, and only then
/// forgets them. Without the log, changes go to sled directly.
#[derive(Clone, Debug)]
pub(crate) struct Logged {
    tree: Contained<sled::Tree>,
    number: u8,
    redo: Arc<Redo>,
    overlay: Arc<RwLock<Overlay>>,
    /// The tree's name and the length of the key prefix its entries are bundled by, when sled
    /// keeps them in bundles ([`crate::bundle`]).
    bundled: Option<(&'static str, usize)>,
}

/// sled's side of a merged read.
type SledEntries = Box<dyn Iterator<Item = sled::Result<(IVec, IVec)>> + Send>;

impl Logged {
    /// The tree `tree`, recorded as number `number`.
    pub(crate) fn new(tree: sled::Tree, number: u8, redo: Arc<Redo>) -> Self {
        Logged {
            tree: Contained::new(tree, "a sled tree"),
            number,
            redo,
            overlay: Arc::default(),
            bundled: None,
        }
    }

    /// The tree `tree`, named `name`, whose entries sled keeps in one bundle per key prefix of
    /// `prefix` bytes (an Operation's id, or a time bucket; see [`crate::bundle`]).
    pub(crate) fn bundled(
        tree: sled::Tree,
        name: &'static str,
        prefix: usize,
        number: u8,
        redo: Arc<Redo>,
    ) -> Self {
        Logged { bundled: Some((name, prefix)), ..Logged::new(tree, number, redo) }
    }

    /// sled's value of `key` (in its Operation's bundle, for a bundled tree).
    fn sled_get(&self, key: &[u8]) -> sled::Result<Option<IVec>> {
        let Some((name, plen)) = self.bundled else { return self.tree.get(key) };
        if key.len() <= plen {
            return self.tree.get(key);
        }
        if let Some(value) = self.tree.get(key)? {
            return Ok(Some(value));
        }
        let prefix = &key[..plen];
        match self.tree.get(prefix)? {
            Some(bytes) => {
                let entries = crate::bundle::decode(name, prefix, &bytes)?;
                Ok(entries.get(&key[plen..]).cloned())
            }
            None => Ok(None),
        }
    }

    /// sled's entries within the bounds, in key order (bundles expanded).
    fn sled_range(&self, lower: Bound<Vec<u8>>, upper: Bound<Vec<u8>>) -> SledEntries {
        match self.bundled {
            Some((name, plen)) => Box::new(crate::bundle::Expanded::new(
                (*self.tree).clone(),
                name,
                plen,
                lower,
                upper,
            )),
            None => Box::new(self.tree.range::<Vec<u8>, _>((lower, upper))),
        }
    }

    /// Inserts into sled itself (no overlay): replay, and stores without the log.
    fn direct_insert(&self, key: &[u8], value: &[u8]) -> sled::Result<Option<IVec>> {
        let old = self.sled_get(key)?;
        self.tree.insert(key, value)?;
        Ok(old)
    }

    /// Removes from sled itself (no overlay), from its Operation's bundle too.
    fn direct_remove(&self, key: &[u8]) -> sled::Result<Option<IVec>> {
        let old = self.sled_get(key)?;
        self.tree.remove(key)?;
        if let Some((name, plen)) = self.bundled.filter(|(_, plen)| key.len() > *plen) {
            let prefix = &key[..plen];
            if let Some(bytes) = self.tree.get(prefix)? {
                let mut entries = crate::bundle::decode(name, prefix, &bytes)?;
                if entries.remove(&key[plen..]).is_some() {
                    if entries.is_empty() {
                        self.tree.remove(prefix)?;
                    } else {
                        self.tree.insert(prefix, crate::bundle::encode(prefix, &entries))?;
                    }
                }
            }
        }
        Ok(old)
    }

    /// The tree's number, for [`Op::tree`].
    pub(crate) fn number(&self) -> u8 {
        self.number
    }

    /// An [`Op`] on this tree.
    pub(crate) fn op(&self, key: &[u8], value: Option<&[u8]>) -> Op {
        Op { tree: self.number, key: key.to_vec(), value: value.map(<[u8]>::to_vec) }
    }

    fn overlay(&self) -> RwLockReadGuard<'_, Overlay> {
        self.overlay.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn overlay_mut(&self) -> RwLockWriteGuard<'_, Overlay> {
        self.overlay.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The overlay's word on `key`: `Some(None)` if it removed it, `None` if it says nothing.
    fn overlaid(&self, key: &[u8]) -> Option<Option<IVec>> {
        let overlay = self.overlay();
        if let Some(change) = overlay.active.get(key) {
            return Some(change.clone());
        }
        overlay.frozen.as_ref().and_then(|frozen| frozen.get(key).cloned())
    }

    /// The value of `key`.
    pub(crate) fn get(&self, key: impl AsRef<[u8]>) -> sled::Result<Option<IVec>> {
        let key = key.as_ref();
        match self.overlaid(key) {
            Some(change) => Ok(change),
            None => self.sled_get(key),
        }
    }

    /// Whether `key` has a value.
    pub(crate) fn contains_key(&self, key: impl AsRef<[u8]>) -> sled::Result<bool> {
        self.get(key).map(|value| value.is_some())
    }

    /// Every entry whose key starts with `prefix`, in key order.
    pub(crate) fn scan_prefix(&self, prefix: impl AsRef<[u8]>) -> Iter {
        let prefix = prefix.as_ref();
        let end = prefix_end(prefix);
        let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
        let sled = self.sled_range(Bound::Included(prefix.to_vec()), upper.clone());
        self.merged(Bound::Included(prefix), as_slice(&upper), sled)
    }

    /// The last entry whose key starts with `prefix`: sled's last one not changed by the
    /// overlay, or the overlay's last value, whichever key is greater.
    pub(crate) fn last_with_prefix(
        &self,
        prefix: impl AsRef<[u8]>,
    ) -> sled::Result<Option<(IVec, IVec)>> {
        let prefix = prefix.as_ref();
        let end = prefix_end(prefix);
        let upper = end.as_ref().map_or(Bound::Unbounded, |end| Bound::Excluded(end.as_slice()));
        let bounds = (Bound::Included(prefix), upper);
        let overlay = self.overlay();
        let changed = |key: &[u8]| {
            overlay.active.contains_key(key)
                || overlay.frozen.as_ref().is_some_and(|f| f.contains_key(key))
        };
        let mut from_sled = None;
        if self.bundled.is_some() {
            let lower = Bound::Included(prefix.to_vec());
            let upper = end.clone().map_or(Bound::Unbounded, Bound::Excluded);
            for entry in self.sled_range(lower, upper) {
                let (key, value) = entry?;
                if !changed(&key) {
                    from_sled = Some((key, value));
                }
            }
        } else {
            for entry in self.tree.scan_prefix(prefix).rev() {
                let (key, value) = entry?;
                if !changed(&key) {
                    from_sled = Some((key, value));
                    break;
                }
            }
        }
        // The overlay's last value in range (`active`'s word on a key before `frozen`'s).
        let from_active =
            overlay.active.range::<[u8], _>(bounds).rev().find(|(_, value)| value.is_some());
        let from_frozen = overlay.frozen.as_ref().and_then(|frozen| {
            frozen.range::<[u8], _>(bounds).rev().find(|(key, value)| {
                value.is_some() && !overlay.active.contains_key(key.as_slice())
            })
        });
        let mut best = from_sled;
        for (key, value) in from_active.into_iter().chain(from_frozen) {
            if let Some(value) = value {
                if best.as_ref().is_none_or(|(k, _)| key.as_slice() > k.as_ref()) {
                    best = Some((IVec::from(key.as_slice()), value.clone()));
                }
            }
        }
        Ok(best)
    }

    /// The first key at or after `from`, to walk a tree one Operation at a time: in a bundled
    /// tree, the first key of the first Operation at or after `from` that holds an entry (a
    /// bundle that does not read counts: its Operation is given, for its reader to find the
    /// damage, instead of an error here).
    pub(crate) fn next_key(&self, from: &[u8]) -> sled::Result<Option<IVec>> {
        let Some((_, plen)) = self.bundled else {
            return self.range(from..).keys().next().transpose();
        };
        let mut from = from.to_vec();
        loop {
            let Some(candidate) = self.next_candidate(&from, plen)? else { return Ok(None) };
            let prefix = candidate[..candidate.len().min(plen)].to_vec();
            match self.scan_prefix(&prefix).next() {
                Some(Ok((key, _))) => return Ok(Some(key)),
                Some(Err(_)) => return Ok(Some(IVec::from(prefix))),
                // Every entry removed (in the overlay): the next Operation.
                None => match prefix_end(&prefix) {
                    Some(next) => from = next,
                    None => return Ok(None),
                },
            }
        }
    }

    /// The smallest key at or after `from` in the overlay or in sled (a bundle's key, its
    /// Operation's id, standing for its entries), unread.
    fn next_candidate(&self, from: &[u8], plen: usize) -> sled::Result<Option<Vec<u8>>> {
        let overlay = self.overlay();
        let in_overlay = |changes: &Changes| {
            changes
                .range::<[u8], _>((Bound::Included(from), Bound::Unbounded))
                .next()
                .map(|(k, _)| k.clone())
        };
        let mut best = in_overlay(&overlay.active);
        if let Some(frozen) = overlay.frozen.as_ref().and_then(|f| in_overlay(f)) {
            best = Some(best.map_or(frozen.clone(), |b| b.min(frozen)));
        }
        drop(overlay);
        // A bundle's key is its Operation's id, which sorts before the Operation's full keys.
        let start = from[..from.len().min(plen)].to_vec();
        for entry in self.tree.range(start..) {
            let (key, _) = entry?;
            let stands_for_from = key.len() == plen && from.starts_with(&key);
            if key.as_ref() >= from || stands_for_from {
                if best.as_ref().is_none_or(|b| key.as_ref() < b.as_slice()) {
                    best = Some(key.to_vec());
                }
                break;
            }
        }
        Ok(best)
    }

    /// Every entry in `range`, in key order.
    pub(crate) fn range<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, range: R) -> Iter {
        let bound = |b: Bound<&K>| match b {
            Bound::Included(k) => Bound::Included(k.as_ref().to_vec()),
            Bound::Excluded(k) => Bound::Excluded(k.as_ref().to_vec()),
            Bound::Unbounded => Bound::Unbounded,
        };
        let (lower, upper) = (bound(range.start_bound()), bound(range.end_bound()));
        let sled = self.sled_range(lower.clone(), upper.clone());
        self.merged(as_slice(&lower), as_slice(&upper), sled)
    }

    /// Every entry, in key order.
    pub(crate) fn iter(&self) -> Iter {
        let sled = self.sled_range(Bound::Unbounded, Bound::Unbounded);
        self.merged(Bound::Unbounded, Bound::Unbounded, sled)
    }

    /// The overlay's changes within the bounds, merged over `sled`'s entries there.
    fn merged(&self, lower: Bound<&[u8]>, upper: Bound<&[u8]>, sled: SledEntries) -> Iter {
        let overlay = self.overlay();
        let mut changes: BTreeMap<&[u8], &Option<IVec>> = BTreeMap::new();
        if let Some(frozen) = &overlay.frozen {
            changes.extend(frozen.range::<[u8], _>((lower, upper)).map(|(k, v)| (k.as_slice(), v)));
        }
        changes.extend(
            overlay.active.range::<[u8], _>((lower, upper)).map(|(k, v)| (k.as_slice(), v)),
        );
        let changes: Vec<(IVec, Option<IVec>)> =
            changes.into_iter().map(|(k, v)| (IVec::from(k), v.clone())).collect();
        Iter { sled, sled_next: None, changes: changes.into_iter(), change_next: None }
    }

    /// Inserts and records. (The old value is not read: no caller needs it, and in a bundled
    /// tree it would cost sled two lookups.)
    pub(crate) fn insert(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> sled::Result<()> {
        let (key, value) = (key.as_ref(), value.as_ref());
        if !self.redo.enabled() {
            return self.direct_insert(key, value).map(drop);
        }
        // Recorded under the buffer's lock with the change, so that the buffer's order is the
        // order of the changes (and a checkpoint's freeze, under the same lock, never splits a
        // write).
        let mut ops = self.redo.lock();
        self.overlay_mut().active.insert(key.to_vec(), Some(IVec::from(value)));
        ops.push(self.op(key, Some(value)));
        Ok(())
    }

    /// Removes and records.
    pub(crate) fn remove(&self, key: impl AsRef<[u8]>) -> sled::Result<()> {
        let key = key.as_ref();
        if !self.redo.enabled() {
            return self.direct_remove(key).map(drop);
        }
        let mut ops = self.redo.lock();
        self.overlay_mut().active.insert(key.to_vec(), None);
        ops.push(self.op(key, None));
        Ok(())
    }

    /// Applies a batch and records its changes.
    pub(crate) fn apply_batch(&self, batch: Batch) -> sled::Result<()> {
        if !self.redo.enabled() {
            if self.bundled.is_none() {
                return self.tree.apply_batch(batch.sled);
            }
            for (key, value) in &batch.ops {
                match value {
                    Some(value) => self.direct_insert(key, value).map(drop)?,
                    None => self.direct_remove(key).map(drop)?,
                }
            }
            return Ok(());
        }
        let mut ops = self.redo.lock();
        let mut overlay = self.overlay_mut();
        for (key, value) in &batch.ops {
            overlay.active.insert(key.clone(), value.as_deref().map(IVec::from));
        }
        drop(overlay);
        ops.extend(batch.ops.into_iter().map(|(key, value)| Op { tree: self.number, key, value }));
        Ok(())
    }

    /// Makes one change of the write-ahead log again (replay at open): in the overlay, without
    /// recording it (the log holds it), so that the checkpoint after the replay writes it into
    /// sled as any other (bundled); in sled directly for a store without the log.
    pub(crate) fn redo(&self, op: &Op) -> Result<(), StoreError> {
        if self.redo.enabled() {
            let value = op.value.as_deref().map(IVec::from);
            self.overlay_mut().active.insert(op.key.clone(), value);
            return Ok(());
        }
        match &op.value {
            Some(value) => self.direct_insert(&op.key, value).map(drop),
            None => self.direct_remove(&op.key).map(drop),
        }
        .map_err(|e| sled_error("replaying the write-ahead log", e))
    }

    /// Moves the active changes to `frozen` (after those of a checkpoint that failed to apply
    /// them, if any). The caller holds the redo lock.
    fn freeze(&self) {
        let mut overlay = self.overlay_mut();
        let active = std::mem::take(&mut overlay.active);
        let frozen = match overlay.frozen.take() {
            Some(earlier) => {
                let mut merged = Arc::unwrap_or_clone(earlier);
                merged.extend(active);
                merged
            }
            None => active,
        };
        overlay.frozen = Some(Arc::new(frozen));
    }

    /// Writes the frozen changes into sled (in memory: the caller flushes), as one batch; returns
    /// how many sled keys it wrote (a bundle counts once).
    fn apply_frozen(&self) -> Result<usize, StoreError> {
        let Some(frozen) = self.overlay().frozen.clone() else { return Ok(0) };
        let mut batch = sled::Batch::default();
        let mut keys = 0;
        let mut changes = frozen.iter().peekable();
        while let Some((key, value)) = changes.next() {
            let bundling = self.bundled.filter(|(_, plen)| key.len() > *plen);
            let Some((name, plen)) = bundling else {
                match value {
                    Some(value) => batch.insert(key.as_slice(), value.clone()),
                    None => batch.remove(key.as_slice()),
                }
                keys += 1;
                continue;
            };
            // Every change under this prefix (the map is in key order), into its bundle with
            // what sled holds of it; full keys under it are moved into the bundle.
            let prefix = &key[..plen];
            let read = |e| sled_error("reading a bundle for a checkpoint", e);
            let stored = crate::bundle::entries(&self.tree, name, prefix).map_err(read)?;
            for full in &stored.full_keys {
                batch.remove(full.as_slice());
            }
            let mut entries = stored.entries;
            let mut change = Some((key, value));
            while let Some((key, value)) = change {
                match value {
                    Some(value) => entries.insert(key.clone(), value.clone()),
                    None => entries.remove(key),
                };
                change = changes.next_if(|(next, _)| next.starts_with(prefix) && next.len() > plen);
            }
            let suffixes: BTreeMap<Vec<u8>, IVec> =
                entries.into_iter().map(|(k, v)| (k[plen..].to_vec(), v)).collect();
            if suffixes.is_empty() {
                batch.remove(prefix);
            } else {
                batch.insert(prefix, crate::bundle::encode(prefix, &suffixes));
            }
            keys += 1;
        }
        self.tree
            .apply_batch(batch)
            .map_err(|e| sled_error("checkpointing a tree into sled", e))?;
        Ok(keys)
    }

    /// Forgets the frozen changes, once sled's files hold them.
    fn thaw(&self) {
        self.overlay_mut().frozen = None;
    }
}

/// The first key after every key starting with `prefix` (`None`: no such key, all `0xff`).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

fn as_slice(bound: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match bound {
        Bound::Included(k) => Bound::Included(k.as_slice()),
        Bound::Excluded(k) => Bound::Excluded(k.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// The entries of a tree in key order: the overlay's changes merged over sled's entries (a
/// change shadows sled's entry of its key; a removal hides it).
pub(crate) struct Iter {
    sled: SledEntries,
    sled_next: Option<sled::Result<(IVec, IVec)>>,
    changes: std::vec::IntoIter<(IVec, Option<IVec>)>,
    change_next: Option<(IVec, Option<IVec>)>,
}

impl Iter {
    /// The keys alone.
    pub(crate) fn keys(self) -> impl Iterator<Item = sled::Result<IVec>> {
        self.map(|entry| entry.map(|(key, _)| key))
    }
}

impl Iterator for Iter {
    type Item = sled::Result<(IVec, IVec)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.sled_next.is_none() {
                self.sled_next = self.sled.next();
            }
            if self.change_next.is_none() {
                self.change_next = self.changes.next();
            }
            let (change_first, shadowed) = match (&self.sled_next, &self.change_next) {
                (None, None) => return None,
                (Some(Err(_)), _) | (Some(Ok(_)), None) => (false, false),
                (None, Some(_)) => (true, false),
                (Some(Ok((sled_key, _))), Some((change_key, _))) => {
                    (change_key <= sled_key, change_key == sled_key)
                }
            };
            if shadowed {
                self.sled_next = None;
            }
            if !change_first {
                return self.sled_next.take();
            }
            if let Some((key, Some(value))) = self.change_next.take() {
                return Some(Ok((key, value)));
            }
            // A removal: nothing to yield for its key.
        }
    }
}

/// Every tree's overlay, for the checkpointer: freezes them at once, moves them into sled, and
/// forgets them once sled is durable.
#[derive(Debug, Clone)]
pub(crate) struct Memtable {
    trees: Vec<Logged>,
    redo: Arc<Redo>,
}

impl Memtable {
    /// The overlays of `trees`, whose changes `redo` records.
    pub(crate) fn new(trees: Vec<Logged>, redo: Arc<Redo>) -> Self {
        Memtable { trees, redo }
    }

    /// Freezes every tree's changes made so far (under the redo lock: no write is split) and
    /// writes them into sled's memory; the caller then makes sled durable and calls
    /// [`Memtable::thaw`]. Returns how many keys it wrote.
    pub(crate) fn apply(&self) -> Result<usize, StoreError> {
        {
            let _writes = self.redo.lock();
            for tree in &self.trees {
                tree.freeze();
            }
        }
        let mut keys = 0;
        for tree in &self.trees {
            keys += tree.apply_frozen()?;
        }
        Ok(keys)
    }

    /// Forgets what [`Memtable::apply`] wrote, once sled's files hold it.
    pub(crate) fn thaw(&self) {
        for tree in &self.trees {
            tree.thaw();
        }
    }
}

/// A [`sled::Batch`] that remembers its changes, for [`Logged::apply_batch`].
#[derive(Debug, Default)]
pub(crate) struct Batch {
    sled: sled::Batch,
    ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Batch {
    /// Removes `key` when applied.
    pub(crate) fn remove(&mut self, key: impl AsRef<[u8]>) {
        let key = key.as_ref();
        self.sled.remove(key);
        self.ops.push((key.to_vec(), None));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random inserts and removals, with checkpoints (freeze, apply, thaw) and checkpoints that
    /// stop halfway (frozen but not applied, applied but not thawed) between them: every read
    /// of the overlaid tree equals a plain map's.
    #[test]
    fn the_overlay_over_sled_reads_as_one_map() {
        overlay_reads_as_one_map(false);
    }

    #[test]
    fn the_overlay_over_bundles_reads_as_one_map() {
        overlay_reads_as_one_map(true);
    }

    fn overlay_reads_as_one_map(bundled: bool) {
        let db = sled::Config::new().temporary(true).open().expect("a temporary sled");
        let redo = Arc::new(Redo::new(true));
        let sled_tree = db.open_tree("t").expect("a tree");
        let tree = if bundled {
            Logged::bundled(sled_tree, "t", crate::bundle::PREFIX, 1, redo.clone())
        } else {
            Logged::new(sled_tree, 1, redo.clone())
        };
        let memtable = Memtable::new(vec![tree.clone()], redo.clone());
        let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let mut rng = fastrand::Rng::with_seed(7);
        // Bundled: an Operation's 16-byte id, then a number; else two short bytes.
        let key = |rng: &mut fastrand::Rng| {
            let (op, seq) = (rng.u8(0..3), rng.u8(0..4));
            if bundled {
                let mut key = vec![op; crate::bundle::PREFIX];
                key.push(seq);
                key
            } else {
                vec![op, seq]
            }
        };
        for step in 0..4_000 {
            match rng.u8(0..20) {
                0 => {
                    memtable.apply().expect("applies");
                    if rng.bool() {
                        memtable.thaw();
                    }
                }
                1 => {
                    let _writes = redo.lock();
                    tree.freeze();
                }
                2..=11 => {
                    let (k, v) = (key(&mut rng), vec![rng.u8(..)]);
                    let old = tree.get(&k).expect("reads");
                    tree.insert(&k, &v).expect("inserts");
                    assert_eq!(old.as_deref(), model.insert(k, v).as_deref(), "step {step}");
                }
                _ => {
                    let k = key(&mut rng);
                    let old = tree.get(&k).expect("reads");
                    tree.remove(&k).expect("removes");
                    assert_eq!(old.as_deref(), model.remove(&k).as_deref(), "step {step}");
                }
            }
            let all: Vec<(Vec<u8>, Vec<u8>)> = tree
                .iter()
                .map(|e| e.map(|(k, v)| (k.to_vec(), v.to_vec())))
                .collect::<Result<_, _>>()
                .expect("iterates");
            let expected: Vec<(Vec<u8>, Vec<u8>)> =
                model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            assert_eq!(all, expected, "step {step}");
            let prefix = if bundled {
                vec![rng.u8(0..3); crate::bundle::PREFIX]
            } else {
                vec![rng.u8(0..3)]
            };
            let scanned: Vec<Vec<u8>> = tree
                .scan_prefix(&prefix)
                .keys()
                .map(|k| k.map(|k| k.to_vec()))
                .collect::<Result<_, _>>()
                .expect("scans");
            let in_prefix: Vec<Vec<u8>> =
                model.keys().filter(|k| k.starts_with(&prefix)).cloned().collect();
            assert_eq!(scanned, in_prefix, "step {step}");
            let last = tree.last_with_prefix(&prefix).expect("reads").map(|(k, _)| k.to_vec());
            assert_eq!(last.as_ref(), in_prefix.last(), "step {step}");
            let from = key(&mut rng);
            let ranged: Vec<Vec<u8>> = tree
                .range(from.clone()..)
                .keys()
                .map(|k| k.map(|k| k.to_vec()))
                .collect::<Result<_, _>>()
                .expect("ranges");
            let expected: Vec<Vec<u8>> = model.range(from..).map(|(k, _)| k.clone()).collect();
            assert_eq!(ranged, expected, "step {step}");
        }
        // A last checkpoint leaves everything in sled alone (in one bundle per Operation).
        memtable.apply().expect("applies");
        memtable.thaw();
        let raw = db.open_tree("t").expect("the tree");
        let in_sled: BTreeMap<Vec<u8>, Vec<u8>> = tree
            .sled_range(Bound::Unbounded, Bound::Unbounded)
            .map(|e| e.map(|(k, v)| (k.to_vec(), v.to_vec())))
            .collect::<Result<_, _>>()
            .expect("iterates sled");
        assert_eq!(in_sled, model);
        if bundled {
            let operations = model.keys().map(|k| k[0]).collect::<std::collections::BTreeSet<_>>();
            assert_eq!(raw.len(), operations.len(), "one sled key per Operation");
        }
    }

    /// A store without the log writes sled directly: over a bundle, an insert shadows its entry
    /// and a removal takes it out of the bundle.
    #[test]
    fn direct_writes_over_a_bundle_read_as_written() {
        let db = sled::Config::new().temporary(true).open().expect("a temporary sled");
        let redo = Arc::new(Redo::new(true));
        let tree = Logged::bundled(
            db.open_tree("t").expect("a tree"),
            "t",
            crate::bundle::PREFIX,
            1,
            redo.clone(),
        );
        let key = |seq: u8| [vec![9u8; crate::bundle::PREFIX], vec![seq]].concat();
        for seq in 0..4 {
            tree.insert(key(seq), [seq]).expect("inserts");
        }
        let memtable = Memtable::new(vec![tree.clone()], redo);
        memtable.apply().expect("applies");
        memtable.thaw();
        tree.direct_remove(&key(1)).expect("removes");
        tree.direct_insert(&key(2), &[42]).expect("inserts");
        tree.direct_insert(&key(7), &[7]).expect("inserts");
        let read: Vec<(Vec<u8>, Vec<u8>)> = tree
            .scan_prefix(vec![9u8; crate::bundle::PREFIX])
            .map(|e| e.map(|(k, v)| (k.to_vec(), v.to_vec())))
            .collect::<Result<_, _>>()
            .expect("scans");
        let expected =
            vec![(key(0), vec![0]), (key(2), vec![42]), (key(3), vec![3]), (key(7), vec![7])];
        assert_eq!(read, expected);
        assert_eq!(tree.get(key(1)).expect("reads"), None);
        assert_eq!(tree.get(key(2)).expect("reads").as_deref(), Some(&[42][..]));
        assert_eq!(
            tree.last_with_prefix(vec![9u8; crate::bundle::PREFIX])
                .expect("reads")
                .map(|(k, _)| k.to_vec()),
            Some(key(7))
        );
    }

    #[test]
    fn prefix_end_is_the_first_key_after_the_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        assert_eq!(prefix_end(b""), None);
    }
}

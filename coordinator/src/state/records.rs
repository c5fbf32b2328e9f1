//! Maps of records that remember which keys changed, so the state machine
//! writes what an applied batch changed and nothing else.
//!
//! ```text
//!   apply ──► records.get_mut / insert / remove / retain ──► changed keys
//!                                                             │
//!   state machine: take_changed() ─► write those keys' values ┘ (or delete them)
//! ```
//!
//! Reads go through `Deref` to the map; every way to change a record goes
//! through a method here, which notes its key. The encoding is a plain
//! map's (as `BTreeMap` wrote it), so snapshots and golden bytes are as
//! before.
//!
//! The maps are persistent (`imbl::OrdMap`): a clone shares every record
//! and costs O(1), and a change copies only the path to the changed key.
//! Each record sits behind an `Arc`, so copying a path copies pointers
//! (not the 64 records of a leaf), and a change clones only the record it
//! changes, and only while a reader's snapshot still holds it.
//! That is what lets the state machine hand readers a snapshot after every
//! applied batch ([`Records::frozen`]), and the planner find what changed
//! between two snapshots without a pass over every record
//! (`OrdMap::diff` skips what the two share).

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Deref;
use std::sync::Arc;

use gantry_common::workload::Allocation;
use imbl::{OrdMap, OrdSet};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Keys noted as changed, in the order they changed (with repeats), so a
/// command that changed nothing can drop what it noted in O(1).
#[derive(Clone)]
pub struct Records<K, V> {
    map: OrdMap<K, Arc<V>>,
    changed: Vec<K>,
}

impl<K, V> Default for Records<K, V> {
    fn default() -> Self {
        Records { map: OrdMap::new(), changed: Vec::new() }
    }
}

/// The read side, as a map's.
impl<K: Ord, V> Records<K, V> {
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.map.get(key).map(|v| &**v)
    }

    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.map.contains_key(key)
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&K, &V)> + '_ {
        self.map.iter().map(|(k, v)| (k, &**v))
    }

    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &K> + '_ {
        self.map.keys()
    }

    pub fn values(&self) -> impl DoubleEndedIterator<Item = &V> + '_ {
        self.map.values().map(|v| &**v)
    }

    /// The records whose keys are in `range`, in key order.
    pub fn range<R>(&self, range: R) -> impl DoubleEndedIterator<Item = (&K, &V)> + '_
    where
        R: std::ops::RangeBounds<K>,
    {
        self.map.range(range).map(|(k, v)| (k, &**v))
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The underlying persistent map, to diff two snapshots
    /// (`OrdMap::diff` skips what they share).
    pub fn map(&self) -> &OrdMap<K, Arc<V>> {
        &self.map
    }
}

impl<K, V, Q> std::ops::Index<&Q> for Records<K, V>
where
    K: Ord + Borrow<Q>,
    Q: Ord + ?Sized,
{
    type Output = V;
    fn index(&self, key: &Q) -> &V {
        &self.map[key]
    }
}

/// The records, as a map: what changed since the last write is not state.
impl<K: std::fmt::Debug + Ord, V: std::fmt::Debug> std::fmt::Debug for Records<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl std::fmt::Debug for AllocTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.records.fmt(f)
    }
}

/// Equal when the records are; what changed since the last write is not state.
impl<K: Ord + PartialEq, V: PartialEq> PartialEq for Records<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.map == other.map
    }
}

impl<K: Ord + Clone, V: Clone> Records<K, V> {
    /// The records as they are now, sharing them (O(1)), without the
    /// changes noted for the state machine: what a reader's snapshot holds.
    pub fn frozen(&self) -> Self {
        Records { map: self.map.clone(), changed: Vec::new() }
    }

    /// The record, to change it; its key is noted.
    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let (k, _) = self.map.get_key_value(key)?;
        self.changed.push(k.clone());
        // Clones the record only while a snapshot shares it.
        self.map.get_mut(key).map(Arc::make_mut)
    }

    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        self.changed.push(key.clone());
        self.map.insert(key, Arc::new(value)).map(Arc::unwrap_or_clone)
    }

    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let (k, v) = self.map.remove_with_key(key)?;
        self.changed.push(k);
        Some(Arc::unwrap_or_clone(v))
    }

    /// Keeps the records `keep` says yes to; the others' keys are noted.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &V) -> bool) {
        let gone: Vec<K> = self.iter().filter(|(k, v)| !keep(k, v)).map(|(k, _)| k.clone()).collect();
        for k in gone {
            self.map.remove(&k);
            self.changed.push(k);
        }
    }

    /// How many changes are noted (a mark for [`Records::forget_changes_since`]).
    pub fn change_mark(&self) -> usize {
        self.changed.len()
    }

    /// Drops the keys noted after `mark`: the command that noted them
    /// changed nothing (a refusal or a repeat).
    pub fn forget_changes_since(&mut self, mark: usize) {
        self.changed.truncate(mark);
    }

    /// The keys noted after `mark`, with repeats (what one applied batch
    /// changed, when `mark` was taken before it).
    pub fn changed_since(&self, mark: usize) -> &[K] {
        self.changed.get(mark..).unwrap_or(&[])
    }

    /// The keys changed since the last call, each once, in key order.
    pub fn take_changed(&mut self) -> BTreeSet<K> {
        std::mem::take(&mut self.changed).into_iter().collect()
    }

    /// Whether any key is noted as changed.
    pub fn has_changes(&self) -> bool {
        !self.changed.is_empty()
    }
}

impl<'a, K: Ord, V> IntoIterator for &'a Records<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = Box<dyn DoubleEndedIterator<Item = (&'a K, &'a V)> + 'a>;
    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

impl<K: Ord + Clone, V: Clone> FromIterator<(K, V)> for Records<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Records { map: iter.into_iter().map(|(k, v)| (k, Arc::new(v))).collect(), changed: Vec::new() }
    }
}

/// As a map of the entries in key order, as `BTreeMap` writes it.
impl<K: Serialize + Ord, V: Serialize> Serialize for Records<K, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de, K: Deserialize<'de> + Ord + Clone, V: Deserialize<'de> + Clone> Deserialize<'de> for Records<K, V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(BTreeMap::<K, V>::deserialize(deserializer)?.into_iter().collect())
    }
}

/// The allocations by id, with an index by node kept beside them (never
/// stored: it is derived from the records, so it cannot disagree with them).
/// An allocation's node never changes after it is placed.
#[derive(Clone, Default)]
pub struct AllocTable {
    records: Records<String, Allocation>,
    by_node: OrdMap<String, OrdSet<String>>,
}

impl Deref for AllocTable {
    type Target = Records<String, Allocation>;
    fn deref(&self) -> &Records<String, Allocation> {
        &self.records
    }
}

impl PartialEq for AllocTable {
    fn eq(&self, other: &Self) -> bool {
        self.records == other.records
    }
}

impl AllocTable {
    /// The table as it is now, sharing its records (see [`Records::frozen`]).
    pub fn frozen(&self) -> Self {
        AllocTable { records: self.records.frozen(), by_node: self.by_node.clone() }
    }

    /// Allocations placed on `node`, by id.
    pub fn on_node<'a>(&'a self, node: &str) -> impl Iterator<Item = &'a Allocation> + 'a {
        self.by_node.get(node).into_iter().flat_map(|ids| ids.iter()).filter_map(|id| self.records.get(id))
    }

    /// The allocation, to change it (never its node).
    pub fn get_mut(&mut self, id: &str) -> Option<&mut Allocation> {
        self.records.get_mut(id)
    }

    pub fn insert(&mut self, id: String, alloc: Allocation) -> Option<Allocation> {
        let node = alloc.node.clone();
        let old = self.records.insert(id.clone(), alloc);
        if let Some(old) = &old {
            self.unindex(&old.node, &id);
        }
        self.by_node.entry(node).or_default().insert(id);
        old
    }

    pub fn remove(&mut self, id: &str) -> Option<Allocation> {
        let old = self.records.remove(id)?;
        self.unindex(&old.node, id);
        Some(old)
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&Allocation) -> bool) {
        let gone: Vec<String> =
            self.records.iter().filter(|(_, a)| !keep(a)).map(|(id, _)| id.clone()).collect();
        for id in gone {
            self.remove(&id);
        }
    }

    pub fn forget_changes_since(&mut self, mark: usize) {
        self.records.forget_changes_since(mark);
    }

    pub fn take_changed(&mut self) -> BTreeSet<String> {
        self.records.take_changed()
    }

    fn unindex(&mut self, node: &str, id: &str) {
        if let Some(ids) = self.by_node.get_mut(node) {
            ids.remove(id);
            if ids.is_empty() {
                self.by_node.remove(node);
            }
        }
    }
}

impl FromIterator<(String, Allocation)> for AllocTable {
    fn from_iter<I: IntoIterator<Item = (String, Allocation)>>(iter: I) -> Self {
        let mut table = AllocTable::default();
        for (id, a) in iter {
            table.insert(id, a);
        }
        table.records.take_changed();
        table
    }
}

impl Serialize for AllocTable {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.records.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for AllocTable {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(BTreeMap::<String, Allocation>::deserialize(deserializer)?.into_iter().collect())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use gantry_common::workload::NewAlloc;

    use super::*;

    fn alloc(id: &str, node: &str) -> Allocation {
        let new = NewAlloc {
            workload: "w".into(),
            version: 1,
            replica: 0,
            node: node.into(),
            gpus: vec![],
            cpu_milli: 0,
            memory_mib: 0,
        };
        Allocation::pending(id.into(), new)
    }

    #[test]
    fn every_change_is_noted_once_and_a_noop_can_be_forgotten() {
        let mut r: Records<String, u32> = [("a".to_string(), 1), ("b".to_string(), 2)].into_iter().collect();
        assert!(!r.has_changes(), "loading is not a change");
        *r.get_mut("a").unwrap() += 1;
        *r.get_mut("a").unwrap() += 1;
        assert!(r.get_mut("zz").is_none());
        r.insert("c".into(), 3);
        r.remove("b");
        assert_eq!(r.take_changed(), BTreeSet::from(["a".into(), "b".into(), "c".into()]));
        assert!(r.take_changed().is_empty());
        let mark = r.change_mark();
        r.get_mut("a");
        r.forget_changes_since(mark);
        assert!(!r.has_changes());
        r.retain(|k, _| k != "c");
        assert_eq!(r.take_changed(), BTreeSet::from(["c".into()]));
        assert_eq!(r.keys().collect::<Vec<_>>(), ["a"]);
    }

    #[test]
    fn the_node_index_follows_inserts_removes_and_retain() {
        let mut t = AllocTable::default();
        t.insert("x.0.1".into(), alloc("x.0.1", "n1"));
        t.insert("x.1.2".into(), alloc("x.1.2", "n1"));
        t.insert("x.2.3".into(), alloc("x.2.3", "n2"));
        let on = |t: &AllocTable, n: &str| t.on_node(n).map(|a| a.id.clone()).collect::<Vec<_>>();
        assert_eq!(on(&t, "n1"), ["x.0.1", "x.1.2"]);
        t.remove("x.0.1");
        assert_eq!(on(&t, "n1"), ["x.1.2"]);
        t.retain(|a| a.node != "n1");
        assert!(on(&t, "n1").is_empty());
        assert!(!t.by_node.contains_key("n1"), "empty index entries go");
        // Decoding rebuilds the index.
        let bytes = gantry_common::schema::encode(&t).unwrap();
        let back: AllocTable = gantry_common::schema::decode(&bytes).unwrap();
        assert_eq!(on(&back, "n2"), ["x.2.3"]);
        assert_eq!(back, t);
    }
}

//! Group keys in Arrow's row format: a hash table from the key's bytes to a dense group id, and back
//! from group ids to key columns. Snapshot-ready (the keys are plain bytes) and splittable by key
//! group ([`key_group`]) for a later scale-out.

use datafusion::common::HashMap;

use datafusion::arrow::array::{Array, ArrayRef, BinaryArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::row::{RowConverter, SortField};

use crate::error::{Error, Result};

/// Key bytes → group id; ids of removed groups are reused.
pub struct GroupTable {
    converter: RowConverter,
    nkeys: usize,
    map: HashMap<Box<[u8]>, u32>,
    /// Key bytes by group id (`None`: free).
    keys: Vec<Option<Box<[u8]>>>,
    free: Vec<u32>,
}

impl GroupTable {
    pub fn new(types: &[DataType]) -> Result<GroupTable> {
        Ok(GroupTable {
            converter: RowConverter::new(types.iter().map(|t| SortField::new(t.clone())).collect())?,
            nkeys: types.len(),
            map: HashMap::new(),
            keys: Vec::new(),
            free: Vec::new(),
        })
    }

    /// Group ids of each row of `cols` (new groups are added).
    pub fn intern(&mut self, cols: &[ArrayRef], num_rows: usize) -> Result<Vec<u32>> {
        if cols.is_empty() {
            // No key columns: one group.
            let g = self.intern_bytes(&[]);
            return Ok(vec![g; num_rows]);
        }
        let rows = self.converter.convert_columns(cols)?;
        let mut out = Vec::with_capacity(rows.num_rows());
        for row in rows.iter() {
            out.push(self.intern_bytes(row.as_ref()));
        }
        Ok(out)
    }

    /// The group id of a key given as row bytes (of a table with the same key types), added if new.
    pub fn intern_bytes(&mut self, bytes: &[u8]) -> u32 {
        if let Some(g) = self.map.get(bytes) {
            return *g;
        }
        let b: Box<[u8]> = bytes.into();
        let g = match self.free.pop() {
            Some(g) => {
                self.keys[g as usize] = Some(b.clone());
                g
            }
            None => {
                self.keys.push(Some(b.clone()));
                (self.keys.len() - 1) as u32
            }
        };
        self.map.insert(b, g);
        g
    }

    /// Group ids of each row, `None` for keys not present (nothing is added).
    pub fn lookup(&self, cols: &[ArrayRef], num_rows: usize) -> Result<Vec<Option<u32>>> {
        if cols.is_empty() {
            return Ok(vec![self.map.get(&[][..]).copied(); num_rows]);
        }
        let rows = self.converter.convert_columns(cols)?;
        Ok(rows.iter().map(|r| self.map.get(r.as_ref()).copied()).collect())
    }

    /// The key bytes of a group.
    pub fn key_bytes(&self, gid: u32) -> Option<&[u8]> {
        self.keys.get(gid as usize).and_then(|k| k.as_deref())
    }

    /// Key columns of the given groups, in order.
    pub fn keys_of(&self, gids: &[u32]) -> Result<Vec<ArrayRef>> {
        if self.nkeys == 0 {
            return Ok(Vec::new());
        }
        let parser = self.converter.parser();
        let rows: Vec<_> = gids
            .iter()
            .map(|g| parser.parse(self.key_bytes(*g).unwrap_or_default()))
            .collect();
        Ok(self.converter.convert_rows(rows)?)
    }

    /// Drop a group; its id may be handed out again.
    pub fn remove(&mut self, gid: u32) {
        if let Some(Some(k)) = self.keys.get_mut(gid as usize).map(Option::take) {
            self.map.remove(&k);
            self.free.push(gid);
        }
    }

    /// Upper bound of group ids handed out so far (accumulators are sized to it).
    pub fn capacity(&self) -> usize {
        self.keys.len()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// For a checkpoint: the live group ids in ascending order, with their key bytes.
    pub fn snapshot(&self) -> (Vec<u32>, Vec<&[u8]>) {
        self.keys
            .iter()
            .enumerate()
            .filter_map(|(i, k)| k.as_deref().map(|k| (i as u32, k)))
            .unzip()
    }

    /// Restoring: add the keys (row bytes, as [`GroupTable::snapshot`] gave them) in order, each a
    /// new group; their ids, in the same order. A key twice is an error. Added in ascending order
    /// of their old ids, groups keep their relative order (which orders output rows).
    pub fn restore(&mut self, keys: &BinaryArray) -> Result<Vec<u32>> {
        if keys.null_count() > 0 {
            return Err(Error::Internal("a state table has NULL keys".into()));
        }
        let mut out = Vec::with_capacity(keys.len());
        for k in keys.iter().flatten() {
            if self.nkeys == 0 && !k.is_empty() {
                return Err(Error::Internal(
                    "a state table has keys for an aggregate without keys".into(),
                ));
            }
            if self.map.contains_key(k) {
                return Err(Error::Internal("a state table has a key twice".into()));
            }
            out.push(self.intern_bytes(k));
        }
        Ok(out)
    }

    /// Live group ids.
    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.keys
            .iter()
            .enumerate()
            .filter(|(_, k)| k.is_some())
            .map(|(i, _)| i as u32)
    }
}

/// Number of key groups state is split into (a later scale-out moves whole key groups).
pub const KEY_GROUPS: u32 = 128;

/// The key group of a key's bytes (a stable hash, the same in every process).
pub fn key_group(key: &[u8]) -> u32 {
    (twox_hash::XxHash64::oneshot(0, key) % u64::from(KEY_GROUPS)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{AsArray, Int64Array, StringArray};
    use datafusion::arrow::datatypes::Int64Type;
    use std::sync::Arc;

    #[test]
    fn interns_looks_up_and_reuses_ids() {
        let mut t = GroupTable::new(&[DataType::Utf8, DataType::Int64]).expect("table");
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec![Some("a"), None, Some("a")])),
            Arc::new(Int64Array::from(vec![1, 2, 1])),
        ];
        let g = t.intern(&cols, 3).expect("intern");
        assert_eq!(g, vec![0, 1, 0]);
        let keys = t.keys_of(&[1, 0]).expect("keys");
        assert!(keys[0].is_null(0));
        assert_eq!(keys[1].as_primitive::<Int64Type>().value(1), 1);
        t.remove(0);
        assert_eq!(t.lookup(&cols, 3).expect("lookup"), vec![None, Some(1), None]);
        let g = t.intern(&cols, 3).expect("intern");
        assert_eq!(g, vec![0, 1, 0], "the freed id is reused");
        assert!(key_group(t.key_bytes(1).expect("key")) < KEY_GROUPS);
    }

    #[test]
    fn a_snapshot_restores_keys_in_order() {
        let mut t = GroupTable::new(&[DataType::Utf8]).expect("table");
        let cols: Vec<ArrayRef> = vec![Arc::new(StringArray::from(vec!["a", "b", "c"]))];
        t.intern(&cols, 3).expect("intern");
        t.remove(0);
        let (ids, keys) = t.snapshot();
        assert_eq!(ids, vec![1, 2]);
        let mut r = GroupTable::new(&[DataType::Utf8]).expect("table");
        let gids = r.restore(&BinaryArray::from_vec(keys.clone())).expect("restore");
        assert_eq!(gids, vec![0, 1]);
        let back = r.keys_of(&gids).expect("keys");
        assert_eq!(
            back[0].as_string::<i32>().iter().collect::<Vec<_>>(),
            vec![Some("b"), Some("c")]
        );
        let twice = BinaryArray::from_vec(vec![keys[0], keys[0]]);
        let mut r = GroupTable::new(&[DataType::Utf8]).expect("table");
        assert!(r.restore(&twice).is_err(), "a key twice");
        let mut none = GroupTable::new(&[]).expect("table");
        assert!(
            none.restore(&BinaryArray::from_vec(vec![b"x"])).is_err(),
            "a key without key columns"
        );
    }
}

//! Operator state at a checkpoint: named Arrow tables.
//!
//! Each stateful operator writes what it holds as one or more [`RecordBatch`]es ([`OpState`]) and
//! can be rebuilt from them ([`super::Operator::restore`]): a fresh operator of the same plan,
//! restored, then fed the same input, emits exactly what the original would have. Keyed tables
//! start with a `key_group` column (`UInt16`, [`super::groups::key_group`] of the key's bytes in
//! Arrow's row format) and a `key` column (`Binary`, those bytes), so a later scale-out can hand key
//! groups to other processes by filtering rows. The checkpoint code ([`crate::state`]) writes each
//! table as an Arrow IPC file; nothing here knows about files.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BinaryArray, RecordBatch, UInt16Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::ipc::reader::FileReader;
use datafusion::arrow::ipc::writer::FileWriter;

use super::groups::key_group;
use crate::error::{Error, Result};

/// An operator's state: named tables, in the order the operator wrote them.
#[derive(Debug, Clone, Default)]
pub struct OpState {
    pub tables: Vec<(String, RecordBatch)>,
}

impl OpState {
    pub fn new() -> OpState {
        OpState::default()
    }

    /// Add table `name`.
    pub fn put(&mut self, name: &str, table: RecordBatch) {
        self.tables.push((name.to_string(), table));
    }

    /// Table `name` (removed from the state), or an error naming it.
    pub fn take(&mut self, name: &str) -> Result<RecordBatch> {
        match self.tables.iter().position(|(n, _)| n == name) {
            Some(i) => Ok(self.tables.remove(i).1),
            None => Err(Error::Internal(format!(
                "operator state has no table '{name}' (it has: {})",
                self.tables
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// Table `name` (removed from the state), which must have exactly one row: an operator's
    /// scalars.
    pub fn take_single_row(&mut self, name: &str) -> Result<RecordBatch> {
        let t = self.take(name)?;
        if t.num_rows() != 1 {
            return Err(Error::Internal(format!(
                "state table '{name}' has {} rows, not 1",
                t.num_rows()
            )));
        }
        Ok(t)
    }

    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// Rows over all tables.
    pub fn num_rows(&self) -> usize {
        self.tables.iter().map(|(_, t)| t.num_rows()).sum()
    }
}

/// A keyed table: `key_group`, `key` (the key bytes), then `cols` (name, values), one row per key.
pub fn keyed_table<'a>(keys: impl IntoIterator<Item = &'a [u8]>, cols: Vec<(&str, ArrayRef)>) -> Result<RecordBatch> {
    let keys: Vec<&[u8]> = keys.into_iter().collect();
    let groups = UInt16Array::from_iter_values(keys.iter().map(|k| key_group(k) as u16));
    let mut fields = vec![
        Field::new("key_group", DataType::UInt16, false),
        Field::new("key", DataType::Binary, false),
    ];
    let mut arrays: Vec<ArrayRef> = vec![Arc::new(groups), Arc::new(BinaryArray::from_vec(keys))];
    for (name, a) in cols {
        fields.push(Field::new(name, a.data_type().clone(), true));
        arrays.push(a);
    }
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?)
}

/// A table of `cols` (name, values), not keyed (an operator's scalars: one row).
pub fn plain_table(cols: Vec<(&str, ArrayRef)>) -> Result<RecordBatch> {
    let fields: Vec<Field> = cols
        .iter()
        .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
        .collect();
    let arrays = cols.into_iter().map(|(_, a)| a).collect();
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?)
}

/// Column `name` of a state table as `T`, or an error naming the table's column and type.
pub fn column<'a, T: Array + 'static>(table: &'a RecordBatch, name: &str) -> Result<&'a T> {
    let c = table
        .column_by_name(name)
        .ok_or_else(|| Error::Internal(format!("state table has no column '{name}'")))?;
    c.as_any().downcast_ref::<T>().ok_or_else(|| {
        Error::Internal(format!(
            "state column '{name}' has type {}, not the one this operator writes",
            c.data_type()
        ))
    })
}

/// [`column`], which must hold no NULLs (`table` names the state table in the error).
pub fn dense_column<'a, T: Array + 'static>(table: &str, t: &'a RecordBatch, name: &str) -> Result<&'a T> {
    let c = column::<T>(t, name)?;
    if c.null_count() > 0 {
        return Err(Error::Internal(format!(
            "state table '{table}': column '{name}' has NULLs"
        )));
    }
    Ok(c)
}

/// That every row of a keyed table (see [`keyed_table`]) has its key's `key_group`; the error
/// names table `table` and the first row that does not.
pub fn check_key_groups(table: &str, t: &RecordBatch) -> Result<()> {
    let groups = column::<UInt16Array>(t, "key_group")?;
    let keys = keys(t)?;
    for i in 0..t.num_rows() {
        if groups.is_null(i) || keys.is_null(i) || u32::from(groups.value(i)) != key_group(keys.value(i)) {
            return Err(Error::Internal(format!(
                "state table '{table}': row {i}'s key_group is not its key's"
            )));
        }
    }
    Ok(())
}

/// The key bytes of a keyed table (see [`keyed_table`]).
pub fn keys(table: &RecordBatch) -> Result<&BinaryArray> {
    column::<BinaryArray>(table, "key")
}

/// A table as Arrow IPC file bytes.
pub fn to_ipc(table: &RecordBatch) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut w = FileWriter::try_new(&mut out, &table.schema())?;
        w.write(table)?;
        w.finish()?;
    }
    Ok(out)
}

/// A table from Arrow IPC file bytes (several batches are concatenated). Bytes that are no such
/// file are an error.
pub fn from_ipc(bytes: &[u8]) -> Result<RecordBatch> {
    // Arrow's IPC reader trusts the buffer offsets and lengths in the file's metadata and panics
    // (slicing a buffer past its end) on some that are wrong, before any validation it offers
    // runs; found by fuzzing a checkpoint whose table file has a matching CRC (tests/fuzz.rs).
    // Only the reader is inside: nothing it leaves behind is used after a panic.
    let read = std::panic::catch_unwind(|| -> Result<RecordBatch> {
        check_ipc_blocks(bytes)?;
        let r = FileReader::try_new(std::io::Cursor::new(bytes), None)?;
        let schema = r.schema();
        let batches = r.collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(datafusion::arrow::compute::concat_batches(&schema, &batches)?)
    });
    read.unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("no message");
        Err(Error::External(format!("Arrow's IPC reader failed on it: {why}")))
    })
}

/// The blocks an IPC file's footer lists lie inside the file. Arrow's reader allocates what a
/// block claims to hold before reading it, so a wrong length in a damaged footer is an allocation
/// of up to terabytes, which aborts the process (found by fuzzing, as the panics above).
fn check_ipc_blocks(bytes: &[u8]) -> Result<()> {
    use datafusion::arrow::ipc::reader::read_footer_length;
    use datafusion::arrow::ipc::root_as_footer;
    let bad = |why: &str| Error::External(format!("not an Arrow IPC file: {why}"));
    let len = bytes.len();
    let trailer: [u8; 10] = len
        .checked_sub(10)
        .and_then(|start| bytes.get(start..))
        .and_then(|t| t.try_into().ok())
        .ok_or_else(|| bad("too short"))?;
    let footer_len = read_footer_length(trailer)?;
    let footer_start = (len - 10)
        .checked_sub(footer_len)
        .ok_or_else(|| bad("its footer is longer than the file"))?;
    let footer = root_as_footer(&bytes[footer_start..len - 10]).map_err(|e| bad(&e.to_string()))?;
    let blocks = footer
        .recordBatches()
        .into_iter()
        .flatten()
        .chain(footer.dictionaries().into_iter().flatten());
    for block in blocks {
        let end = u64::try_from(block.offset())
            .ok()
            .and_then(|o| o.checked_add(u64::try_from(block.metaDataLength()).ok()?))
            .and_then(|o| o.checked_add(u64::try_from(block.bodyLength()).ok()?));
        if end.is_none_or(|end| end > len as u64) {
            return Err(bad("a block reaches past the end of the file"));
        }
    }
    Ok(())
}

/// Test support: does an operator restored from a snapshot behave as the original?
#[cfg(test)]
pub mod testing {
    use super::*;
    use crate::operator::{ChangeBatch, Context, Operator};

    /// One step of an operator's input.
    #[derive(Clone)]
    #[allow(clippy::large_enum_variant)] // test input, built once per case
    pub enum Step {
        /// Rows on input `port`, then `flush`.
        Rows(usize, ChangeBatch),
        /// The watermark advanced.
        Advance(i64),
    }

    fn run(op: &mut dyn Operator, steps: &[Step]) -> Vec<String> {
        let mut out = Vec::new();
        let mut cx = Context::default();
        for s in steps {
            let produced = match s {
                Step::Rows(port, b) => {
                    let mut p = op.process(*port, b.clone(), &mut cx).expect("process");
                    p.extend(op.flush(&mut cx).expect("flush"));
                    p
                }
                Step::Advance(w) => op.advance(*w, &mut cx).expect("advance"),
            };
            for b in produced {
                let text = datafusion::arrow::util::pretty::pretty_format_batches(std::slice::from_ref(&b.batch))
                    .expect("format")
                    .to_string();
                let lines: Vec<&str> = text.lines().skip(3).filter(|l| !l.starts_with('+')).collect();
                for (i, l) in lines.iter().enumerate() {
                    out.push(format!("{} {l}", b.kind(i).short()));
                }
            }
        }
        for l in cx.late {
            out.push(format!("late {} rows: {}", l.rows.num_rows(), l.reason));
        }
        out
    }

    /// `st` with column `col` of table `table` replaced by `with` (a corrupted state, for the tests
    /// of what `restore` refuses).
    pub fn replace_column(st: &OpState, table: &str, col: &str, with: ArrayRef) -> OpState {
        let mut out = OpState::new();
        for (n, t) in &st.tables {
            if n != table {
                out.put(n, t.clone());
                continue;
            }
            let i = t.schema().index_of(col).expect("column");
            let mut fields: Vec<Field> = t.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
            fields[i] = Field::new(col, with.data_type().clone(), true);
            let mut cols = t.columns().to_vec();
            cols[i] = with.clone();
            out.put(
                n,
                RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).expect("table"),
            );
        }
        out
    }

    /// [`assert_restores_identically`] at every split point of `steps`, from before the first step
    /// to after the last; returns the rows compared over all of them.
    pub fn assert_restores_at_every_split<O: Operator + 'static>(make: impl Fn() -> O, steps: &[Step]) -> usize {
        (0..=steps.len())
            .map(|split| assert_restores_identically(|| Box::new(make()) as Box<dyn Operator>, steps, split))
            .sum()
    }

    /// Run `steps` through one operator; and through another that is snapshotted after `split`
    /// steps, the snapshot written as Arrow IPC and read back, restored into a third (fresh)
    /// operator that takes the rest. Both must emit the same rows after the split (the restored one
    /// is compared with the original's output from the split on). Returns the rows compared.
    pub fn assert_restores_identically(make: impl Fn() -> Box<dyn Operator>, steps: &[Step], split: usize) -> usize {
        let mut whole = make();
        let before = run(whole.as_mut(), &steps[..split]);
        let after = run(whole.as_mut(), &steps[split..]);

        let mut first = make();
        assert_eq!(run(first.as_mut(), &steps[..split]), before);
        let state = first.snapshot().expect("snapshot");
        let mut copy = OpState::new();
        for (name, t) in &state.tables {
            let back = from_ipc(&to_ipc(t).expect("to ipc")).expect("from ipc");
            assert_eq!(&back, t, "table '{name}' survives Arrow IPC");
            copy.put(name, back);
        }
        let mut restored = make();
        restored.restore(copy).expect("restore");
        assert_eq!(restored.state_size(), first.state_size(), "state size after restore");
        let got = run(restored.as_mut(), &steps[split..]);
        assert_eq!(got, after, "the restored operator emits what the original did");
        after.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;

    #[test]
    fn keyed_tables_carry_key_groups_and_survive_ipc() {
        let keys: Vec<&[u8]> = vec![b"a", b"bb"];
        let t = keyed_table(
            keys.clone(),
            vec![("n", Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef)],
        )
        .expect("table");
        let back = from_ipc(&to_ipc(&t).expect("ipc")).expect("read");
        assert_eq!(back, t);
        let g = column::<UInt16Array>(&back, "key_group").expect("groups");
        assert_eq!(g.value(1) as u32, key_group(b"bb"));
        assert_eq!(self::keys(&back).expect("keys").value(0), b"a");
        assert!(column::<Int64Array>(&back, "missing").is_err());
        assert!(column::<UInt16Array>(&back, "n").is_err(), "wrong type is an error");
    }

    /// Found by fuzzing (tests/fuzz.rs, checkpoint): a footer whose block claims a terabyte made
    /// Arrow's reader allocate it and the process abort; the blocks are checked first now. The
    /// input's first byte is the fuzz target's mode byte.
    #[test]
    fn ipc_bytes_that_make_arrow_allocate_a_terabyte_are_an_error() {
        let input = include_bytes!("../../tests/fuzz-regressions/checkpoint/ipc-block-of-a-terabyte");
        let e = from_ipc(&input[1..]).expect_err("not a valid IPC file");
        assert!(
            e.to_string().contains("a block reaches past the end of the file"),
            "{e}"
        );
        let good = to_ipc(&keyed_table(vec![&b"k"[..]], vec![]).expect("table")).expect("ipc");
        check_ipc_blocks(&good).expect("a file Arrow wrote passes");
    }

    /// Found by fuzzing (tests/fuzz.rs, checkpoint): IPC metadata with a buffer length past the
    /// end of the body made Arrow's reader panic; it is an error now, which makes the checkpoint
    /// loader skip that checkpoint. The input's first byte is the fuzz target's mode byte.
    #[test]
    fn ipc_bytes_that_make_arrow_panic_are_an_error() {
        let input = include_bytes!("../../tests/fuzz-regressions/checkpoint/ipc-buffer-offset-past-end");
        let e = from_ipc(&input[1..]).expect_err("not a valid IPC file");
        assert!(e.to_string().contains("Arrow's IPC reader failed on it"), "{e}");
    }
}

//! In-memory result tables: what a `CREATE MATERIALIZED VIEW` maintains and a plain `SELECT` reads.
//! Rows with an identity (window results) are upserted by it; rows without one are appended.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{ArrayRef, new_empty_array};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::ScalarValue;

use super::{Output, Sink, SinkMode};
use crate::error::Result;

#[derive(Debug, Default)]
struct Rows {
    rows: Vec<Vec<ScalarValue>>,
    index: HashMap<String, usize>,
}

#[derive(Debug, Clone)]
pub struct MemoryTable {
    schema: SchemaRef,
    rows: Arc<Mutex<Rows>>,
}

impl MemoryTable {
    pub fn new(schema: SchemaRef) -> Self {
        MemoryTable {
            schema,
            rows: Arc::new(Mutex::new(Rows::default())),
        }
    }

    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    pub fn len(&self) -> usize {
        self.lock().rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Rows> {
        self.rows.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn apply(&self, out: &Output) -> Result<()> {
        let b = &out.batch;
        let mut rows = self.lock();
        for r in 0..b.num_rows() {
            let row: Vec<ScalarValue> = b
                .columns()
                .iter()
                .map(|c| ScalarValue::try_from_array(c, r))
                .collect::<Result<_, _>>()?;
            match out.ids.as_ref().and_then(|ids| ids.get(r)) {
                Some(id) => match rows.index.get(id) {
                    Some(&i) => rows.rows[i] = row,
                    None => {
                        let i = rows.rows.len();
                        rows.rows.push(row);
                        rows.index.insert(id.clone(), i);
                    }
                },
                None => rows.rows.push(row),
            }
        }
        Ok(())
    }

    /// Forget every row (a restarted process starts with empty in-memory tables).
    pub fn clear(&self) {
        *self.lock() = Rows::default();
    }

    /// The current contents as one batch.
    pub fn snapshot(&self) -> Result<RecordBatch> {
        let rows = self.lock();
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        for (i, f) in self.schema.fields().iter().enumerate() {
            if rows.rows.is_empty() {
                cols.push(new_empty_array(f.data_type()));
            } else {
                cols.push(ScalarValue::iter_to_array(rows.rows.iter().map(|r| r[i].clone()))?);
            }
        }
        Ok(RecordBatch::try_new(self.schema.clone(), cols)?)
    }
}

/// The sink side of a materialized view (or a live REPL query).
pub struct MemorySink(pub MemoryTable);

impl Sink for MemorySink {
    fn mode(&self) -> SinkMode {
        SinkMode::Upsert
    }
    fn write(&mut self, out: &Output) -> Result<()> {
        self.0.apply(out)
    }
    fn commit(&mut self) -> Result<()> {
        Ok(())
    }
}

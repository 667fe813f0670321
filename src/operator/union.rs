//! UNION ALL of streams: rows of every input, in the union's column names and types.

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};

use super::{ChangeBatch, Context, Operator};
use crate::error::Result;

pub struct Union {
    schema: SchemaRef,
}

impl Union {
    pub fn new(schema: SchemaRef) -> Union {
        Union { schema }
    }
}

impl Operator for Union {
    fn process(&mut self, _port: usize, input: ChangeBatch, _cx: &mut Context) -> Result<Vec<ChangeBatch>> {
        if input.is_empty() {
            return Ok(Vec::new());
        }
        let cols: Vec<ArrayRef> = input
            .batch
            .columns()
            .iter()
            .zip(self.schema.fields())
            .map(|(c, f)| {
                if c.data_type() == f.data_type() {
                    Ok(c.clone())
                } else {
                    cast(c, f.data_type())
                }
            })
            .collect::<std::result::Result<_, _>>()?;
        let b = RecordBatch::try_new_with_options(
            self.schema.clone(),
            cols,
            &RecordBatchOptions::new().with_row_count(Some(input.num_rows())),
        )?;
        Ok(vec![input.with_batch(b)])
    }
}

//! UNION ALL of streams: rows of every input, in the union's column names and types.

use datafusion::arrow::datatypes::SchemaRef;

use super::{ChangeBatch, Context, Operator, conformed_batch};
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
    /// Stateless: nothing to checkpoint.
    fn snapshot(&self) -> Result<super::state::OpState> {
        Ok(super::state::OpState::new())
    }

    fn restore(&mut self, _state: super::state::OpState) -> Result<()> {
        Ok(())
    }

    fn process(&mut self, _port: usize, input: ChangeBatch, _cx: &mut Context) -> Result<Vec<ChangeBatch>> {
        if input.is_empty() {
            return Ok(Vec::new());
        }
        let b = conformed_batch(&self.schema, input.batch.columns().to_vec(), input.num_rows())?;
        Ok(vec![input.with_batch(b)])
    }
}

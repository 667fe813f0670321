//! Calc: the stateless part of a query — filters and projections (Flink's name for the fused node),
//! as DataFusion physical expressions prepared once and evaluated on each batch.
//!
//! Row by row, so a changelog passes through with its row kinds. On an *upsert* edge (rows replace
//! earlier rows with the same key, without before-images), a row that fails a filter becomes a
//! delete of its key instead of vanishing, so a `HAVING` that stops matching removes the row.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int8Array};
use datafusion::arrow::compute::{and, is_not_null};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::physical_expr::PhysicalExpr;

use super::{ChangeBatch, Context, Operator, RowKind};
use crate::error::{Error, Result};

/// One step of a Calc.
#[derive(Debug, Clone)]
pub enum Step {
    Filter(Arc<dyn PhysicalExpr>),
    Project {
        exprs: Vec<Arc<dyn PhysicalExpr>>,
        schema: SchemaRef,
    },
}

/// A compiled Calc.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub steps: Vec<Step>,
    /// The input is an upsert stream: filtered-out rows become deletes of their key.
    pub upsert: bool,
    /// The steps as SQL, for EXPLAIN.
    pub text: Vec<String>,
}

impl Config {
    pub fn describe(&self) -> String {
        self.text.join(" → ")
    }
}

pub struct Calc {
    steps: Vec<Step>,
    upsert: bool,
}

/// A projection of columns by index (a source's columns that the query uses).
pub struct Project;

impl Project {
    pub fn columns(projection: Option<Vec<usize>>, schema: SchemaRef) -> Calc {
        let steps = match projection {
            None => Vec::new(),
            Some(p) => vec![Step::Project {
                exprs: p
                    .iter()
                    .zip(schema.fields())
                    .map(|(i, f)| {
                        Arc::new(datafusion::physical_expr::expressions::Column::new(f.name(), *i))
                            as Arc<dyn PhysicalExpr>
                    })
                    .collect(),
                schema,
            }],
        };
        Calc { steps, upsert: false }
    }
}

impl Calc {
    pub fn new(cfg: Config) -> Calc {
        Calc {
            steps: cfg.steps,
            upsert: cfg.upsert,
        }
    }

    /// Run the steps over one batch.
    pub fn apply(&self, input: ChangeBatch) -> Result<ChangeBatch> {
        let mut cur = input;
        for step in &self.steps {
            if cur.is_empty() {
                // Still give the batch the right columns.
                if let Step::Project { schema, .. } = step {
                    cur = cur.with_batch(RecordBatch::new_empty(schema.clone()));
                }
                continue;
            }
            match step {
                Step::Filter(pred) => {
                    let v = pred.evaluate(&cur.batch)?.into_array(cur.num_rows())?;
                    let b = v
                        .as_boolean_opt()
                        .ok_or_else(|| Error::plan("a WHERE or HAVING condition must be boolean"))?;
                    // NULL is not true.
                    let keep = match b.nulls() {
                        Some(_) => and(b, &is_not_null(b)?)?,
                        None => b.clone(),
                    };
                    if keep.true_count() == keep.len() {
                        continue;
                    }
                    cur = if self.upsert {
                        to_deletes(&cur, &keep)?
                    } else {
                        cur.filter(&keep)?
                    };
                }
                Step::Project { exprs, schema } => {
                    let n = cur.num_rows();
                    let cols: Vec<ArrayRef> = exprs
                        .iter()
                        .map(|e| e.evaluate(&cur.batch).and_then(|v| v.into_array(n)))
                        .collect::<std::result::Result<_, _>>()?;
                    let batch = RecordBatch::try_new_with_options(
                        schema.clone(),
                        cols,
                        &RecordBatchOptions::new().with_row_count(Some(n)),
                    )?;
                    cur = cur.with_batch(batch);
                }
            }
        }
        Ok(cur)
    }
}

/// Rows not in `keep` become deletes (`-D`); deletes that were filtered stay deletes.
fn to_deletes(cur: &ChangeBatch, keep: &BooleanArray) -> Result<ChangeBatch> {
    let ops: Int8Array = (0..cur.num_rows())
        .map(|i| {
            Some(if keep.value(i) {
                cur.kind(i) as i8
            } else {
                RowKind::Delete as i8
            })
        })
        .collect();
    Ok(ChangeBatch {
        batch: cur.batch.clone(),
        ops: Some(ops),
        wm: cur.wm.clone(),
        origin: cur.origin.clone(),
    })
}

impl Operator for Calc {
    /// Stateless: nothing to checkpoint.
    fn snapshot(&self) -> Result<super::state::OpState> {
        Ok(super::state::OpState::new())
    }

    fn restore(&mut self, _state: super::state::OpState) -> Result<()> {
        Ok(())
    }

    fn process(&mut self, _port: usize, input: ChangeBatch, _cx: &mut Context) -> Result<Vec<ChangeBatch>> {
        let out = self.apply(input)?;
        Ok(if out.is_empty() { Vec::new() } else { vec![out] })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::logical_expr::Operator as Op;
    use datafusion::physical_expr::expressions::{BinaryExpr, col, lit};

    #[test]
    fn filters_and_projects_keeping_kinds_and_turns_upsert_misses_into_deletes() {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let b = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![1, 5, 9]))]).expect("b");
        let x = col("x", &schema).expect("col");
        let gt: Arc<dyn PhysicalExpr> = Arc::new(BinaryExpr::new(x.clone(), Op::Gt, lit(3i64)));
        let doubled: Arc<dyn PhysicalExpr> = Arc::new(BinaryExpr::new(x, Op::Multiply, lit(2i64)));
        let out_schema = Arc::new(Schema::new(vec![Field::new("y", DataType::Int64, false)]));
        let steps = vec![
            Step::Filter(gt),
            Step::Project {
                exprs: vec![doubled],
                schema: out_schema,
            },
        ];
        let input = ChangeBatch::changes(b, vec![RowKind::Insert, RowKind::UpdateAfter, RowKind::Delete], 0);
        let cfg = |upsert| Config {
            steps: steps.clone(),
            upsert,
            text: vec![],
        };
        let out = Calc::new(cfg(false)).apply(input.clone()).expect("calc");
        assert_eq!(out.num_rows(), 2);
        assert_eq!(
            out.batch
                .column(0)
                .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                .value(1),
            18
        );
        assert_eq!((out.kind(0), out.kind(1)), (RowKind::UpdateAfter, RowKind::Delete));
        let out = Calc::new(cfg(true)).apply(input).expect("calc");
        assert_eq!(out.num_rows(), 3);
        assert_eq!(
            out.kind(0),
            RowKind::Delete,
            "an upsert row that stops matching is deleted"
        );
    }
}

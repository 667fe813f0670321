//! Lookup join: a stream joined to a bounded relation (a `CREATE TABLE`, a materialized view's
//! snapshot, `_errors`/`_late`, or a query over them). The bounded side is small and changes rarely,
//! so it is not a second stream to keep state for: DataFusion runs its plan when the query starts, and
//! again when one of its tables is due for a refresh (`refresh_interval_ms`), and the operator keeps
//! the rows hashed on the join key. Each stream row is joined to the table as it is at that moment,
//! which is Flink's processing-time lookup join.
//!
//! Stateless per row: an output row keeps its stream row's kind (a changelog stays a changelog), the
//! watermark it arrived under and its origin, so lateness is decided above as if the join were not
//! there.

use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{ArrayRef, UInt32Array};
use datafusion::arrow::compute::{concat_batches, take};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::{SessionConfig, SessionContext};

use super::groups::GroupTable;
use super::state::OpState;
use super::stream_join::{eval_keys, filter_mask, left_first, no_other_tables};
use super::{ChangeBatch, Context, Operator};
use super::{batch_of, conformed_batch};
use crate::error::{Error, Result};

/// Which stream rows come out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Each match.
    Inner,
    /// Each match, or the stream row NULL-padded when it has none.
    Outer,
    /// The stream row if it has a match (`IN`, `EXISTS`).
    Semi,
    /// The stream row if it has none (`NOT EXISTS`, `NOT IN`).
    Anti,
}

#[derive(Clone)]
pub struct Config {
    pub kind: Kind,
    /// The stream is the join's left input (its columns come first).
    pub stream_left: bool,
    pub stream_keys: Vec<Arc<dyn PhysicalExpr>>,
    pub table_keys: Vec<Arc<dyn PhysicalExpr>>,
    pub key_types: Vec<DataType>,
    /// `NULL = NULL` matches.
    pub null_equal: bool,
    /// `NOT IN` (an anti join without a residual condition): against a table that is not empty, a
    /// NULL key on either side means "unknown", which is not true, so the row does not pass.
    pub null_aware: bool,
    /// The residual condition, over `pair_schema`.
    pub filter: Option<Arc<dyn PhysicalExpr>>,
    /// Left columns, then right columns.
    pub pair_schema: SchemaRef,
    /// The output: `pair_schema` with the padded side nullable, or the stream's columns (semi, anti).
    pub schema: SchemaRef,
    /// The bounded side, run by DataFusion (its scans carry their tables).
    pub table: Arc<LogicalPlan>,
    pub table_schema: SchemaRef,
    /// Run `table` again this often (the shortest `refresh_interval_ms` of its tables).
    pub refresh: Option<Duration>,
}

/// The bounded side's rows, hashed on the join key.
struct Table {
    rows: RecordBatch,
    keys: GroupTable,
    /// Key id → rows with that key.
    by_key: Vec<Vec<u32>>,
    /// Some row's key has a NULL (it matches nothing).
    null_keys: bool,
}

impl Table {
    fn build(cfg: &Config, rows: RecordBatch) -> Result<Table> {
        let n = rows.num_rows();
        let (cols, matchable) = eval_keys(&cfg.table_keys, &cfg.key_types, cfg.null_equal, &rows)?;
        let mut keys = GroupTable::new(&cfg.key_types)?;
        let gids = keys.intern(&cols, n)?;
        let mut by_key: Vec<Vec<u32>> = vec![Vec::new(); keys.capacity()];
        for (i, g) in gids.iter().enumerate() {
            if matchable[i] {
                by_key[*g as usize].push(i as u32);
            }
        }
        let null_keys = matchable.contains(&false);
        Ok(Table {
            rows,
            keys,
            by_key,
            null_keys,
        })
    }

    fn matches(&self, gid: Option<u32>) -> &[u32] {
        gid.and_then(|g| self.by_key.get(g as usize)).map_or(&[], Vec::as_slice)
    }
}

/// Run the bounded side's plan. On a thread of its own, with its own runtime: the operator is called
/// from inside the query's runtime, which must not be blocked waiting for tasks DataFusion spawns.
pub fn run_plan(plan: &LogicalPlan, schema: &SchemaRef) -> Result<RecordBatch> {
    let plan = plan.clone();
    let batches = std::thread::Builder::new()
        .name("freshet-lookup".into())
        .spawn(move || -> Result<Vec<RecordBatch>> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .map_err(|e| Error::Internal(format!("lookup runtime: {e}")))?;
            rt.block_on(async move {
                let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
                Ok(ctx.execute_logical_plan(plan).await?.collect().await?)
            })
        })
        .map_err(|e| Error::Internal(format!("starting a lookup table read: {e}")))?
        .join()
        .map_err(|_| Error::Internal("reading a lookup table panicked".into()))??;
    // The plan's declared types (an execution may differ in nullability or view types).
    let conformed = batches
        .iter()
        .map(|b| conformed_batch(schema, b.columns().to_vec(), b.num_rows()))
        .collect::<Result<Vec<_>>>()?;
    Ok(concat_batches(schema, &conformed)?)
}

pub struct LookupJoin {
    cfg: Config,
    table: Table,
    loaded: Instant,
}

impl LookupJoin {
    pub fn new(cfg: Config) -> Result<LookupJoin> {
        let rows = run_plan(&cfg.table, &cfg.table_schema)?;
        Ok(LookupJoin {
            table: Table::build(&cfg, rows)?,
            loaded: Instant::now(),
            cfg,
        })
    }

    /// Re-run the bounded side if a refresh is due; a failed refresh keeps the previous rows.
    fn refresh_if_due(&mut self) -> Result<()> {
        let Some(every) = self.cfg.refresh else { return Ok(()) };
        if self.loaded.elapsed() < every {
            return Ok(());
        }
        match run_plan(&self.cfg.table, &self.cfg.table_schema) {
            Ok(rows) => self.table = Table::build(&self.cfg, rows)?,
            Err(e) => eprintln!("lookup join: refreshing the table failed, keeping the previous rows: {e}"),
        }
        self.loaded = Instant::now();
        Ok(())
    }

    /// Stream rows paired with table rows (`None`: no table row, for a padded row); per stream row in
    /// order.
    fn pairs(&self, input: &ChangeBatch) -> Result<(Vec<u32>, Vec<Option<u32>>)> {
        let n = input.num_rows();
        let (cols, matchable) = eval_keys(
            &self.cfg.stream_keys,
            &self.cfg.key_types,
            self.cfg.null_equal,
            &input.batch,
        )?;
        let gids = self.table.keys.lookup(&cols, n)?;
        let mut rows: Vec<u32> = Vec::new();
        let mut found: Vec<u32> = Vec::new();
        for i in 0..n {
            if matchable[i] {
                for t in self.table.matches(gids[i]) {
                    rows.push(i as u32);
                    found.push(*t);
                }
            }
        }
        if let Some(f) = &self.cfg.filter
            && !rows.is_empty()
        {
            let both = self.joined(input, &rows, &found.iter().map(|t| Some(*t)).collect::<Vec<_>>())?;
            let ok = filter_mask(f, &batch_of(&self.cfg.pair_schema, both, rows.len())?)?;
            (rows, found) = rows
                .iter()
                .zip(&found)
                .zip(&ok)
                .filter(|(_, ok)| **ok)
                .map(|((r, t), _)| (*r, *t))
                .unzip();
        }
        let mut per_row: Vec<u32> = vec![0; n];
        for r in &rows {
            per_row[*r as usize] += 1;
        }
        Ok(match self.cfg.kind {
            Kind::Inner => (rows, found.into_iter().map(Some).collect()),
            Kind::Semi | Kind::Anti => {
                let want = self.cfg.kind == Kind::Semi;
                // NOT IN a non-empty set: a NULL in it, or a NULL probe, is never "not in".
                let unknown = self.cfg.null_aware && self.table.rows.num_rows() > 0;
                let keep: Vec<u32> = (0..n as u32)
                    .filter(|i| (per_row[*i as usize] > 0) == want)
                    .filter(|i| !unknown || (!self.table.null_keys && matchable[*i as usize]))
                    .collect();
                let none = vec![None; keep.len()];
                (keep, none)
            }
            Kind::Outer => {
                let mut out_rows = Vec::with_capacity(rows.len());
                let mut out_found = Vec::with_capacity(rows.len());
                let mut p = 0;
                for i in 0..n as u32 {
                    if per_row[i as usize] == 0 {
                        out_rows.push(i);
                        out_found.push(None);
                    }
                    while p < rows.len() && rows[p] == i {
                        out_rows.push(i);
                        out_found.push(Some(found[p]));
                        p += 1;
                    }
                }
                (out_rows, out_found)
            }
        })
    }

    /// Columns of the stream rows `rows` next to the table rows `found` (NULLs for `None`).
    fn joined(&self, input: &ChangeBatch, rows: &[u32], found: &[Option<u32>]) -> Result<Vec<ArrayRef>> {
        let r = UInt32Array::from(rows.to_vec());
        let f = UInt32Array::from(found.to_vec());
        let stream: Vec<ArrayRef> = input
            .batch
            .columns()
            .iter()
            .map(|c| take(c, &r, None))
            .collect::<std::result::Result<_, _>>()?;
        let table: Vec<ArrayRef> = self
            .table
            .rows
            .columns()
            .iter()
            .map(|c| take(c, &f, None))
            .collect::<std::result::Result<_, _>>()?;
        Ok(left_first(self.cfg.stream_left, stream, table))
    }
}

impl Operator for LookupJoin {
    fn process(&mut self, _port: usize, input: ChangeBatch, _cx: &mut Context) -> Result<Vec<ChangeBatch>> {
        if input.is_empty() {
            return Ok(Vec::new());
        }
        self.refresh_if_due()?;
        let (rows, found) = self.pairs(&input)?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let taken = input.take(&UInt32Array::from(rows.clone()))?;
        let cols = match self.cfg.kind {
            Kind::Semi | Kind::Anti => taken.batch.columns().to_vec(),
            Kind::Inner | Kind::Outer => self.joined(&input, &rows, &found)?,
        };
        let batch = batch_of(&self.cfg.schema, cols, rows.len())?;
        Ok(vec![taken.with_batch(batch)])
    }

    fn state_size(&self) -> usize {
        self.table.rows.num_rows()
    }

    /// Nothing: the table is read from its source when the operator is built (a restored query reads
    /// it again, as a refresh would), and each stream row is joined on its own.
    fn snapshot(&self) -> Result<OpState> {
        Ok(OpState::new())
    }

    fn restore(&mut self, state: OpState) -> Result<()> {
        no_other_tables("a lookup join", &state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::RowKind::{self, Delete as D, Insert as I, UpdateAfter as UA, UpdateBefore as UB};
    use crate::operator::state::testing::{Step, assert_restores_at_every_split};
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::datasource::{MemTable, provider_as_source};
    use datafusion::logical_expr::LogicalPlanBuilder;
    use datafusion::physical_expr::expressions::col;

    fn stream_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, true),
            Field::new("v", DataType::Int64, false),
        ]))
    }

    /// `stream(k, v) JOIN t(tk, name) ON k = tk`; `t` holds 1/one, 2/two, 2/deux and a NULL key.
    fn op(kind: Kind) -> LookupJoin {
        let s = stream_schema();
        let t: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("tk", DataType::Int64, true),
            Field::new("name", DataType::Utf8, false),
        ]));
        let rows = RecordBatch::try_new(
            t.clone(),
            vec![
                Arc::new(Int64Array::from(vec![Some(1), Some(2), Some(2), None])),
                Arc::new(StringArray::from(vec!["one", "two", "deux", "none"])),
            ],
        )
        .expect("table");
        let mem = MemTable::try_new(t.clone(), vec![vec![rows]]).expect("mem");
        let plan = LogicalPlanBuilder::scan("t", provider_as_source(Arc::new(mem)), None)
            .expect("scan")
            .build()
            .expect("plan");
        let pair = Arc::new(Schema::new(
            s.fields().iter().chain(t.fields()).cloned().collect::<Vec<_>>(),
        ));
        let schema = match kind {
            Kind::Semi | Kind::Anti => s.clone(),
            Kind::Inner => pair.clone(),
            Kind::Outer => Arc::new(Schema::new(
                s.fields()
                    .iter()
                    .cloned()
                    .chain(
                        t.fields()
                            .iter()
                            .map(|f| Arc::new(f.as_ref().clone().with_nullable(true))),
                    )
                    .collect::<Vec<_>>(),
            )),
        };
        LookupJoin::new(Config {
            kind,
            stream_left: true,
            stream_keys: vec![col("k", &s).expect("k")],
            table_keys: vec![col("tk", &t).expect("tk")],
            key_types: vec![DataType::Int64],
            null_equal: false,
            null_aware: false,
            filter: None,
            pair_schema: pair,
            schema,
            table: Arc::new(plan),
            table_schema: t,
            refresh: None,
        })
        .expect("lookup join")
    }

    fn rows(k: &[Option<i64>], v: &[i64], kinds: &[RowKind]) -> Step {
        let b = RecordBatch::try_new(
            stream_schema(),
            vec![
                Arc::new(Int64Array::from(k.to_vec())),
                Arc::new(Int64Array::from(v.to_vec())),
            ],
        )
        .expect("batch");
        Step::Rows(0, ChangeBatch::changes(b, kinds.to_vec(), 0))
    }

    #[test]
    fn a_lookup_join_restores_from_an_empty_state() {
        // A changelog stream: inserts, updates and retractions, rows with no match and a NULL key.
        let steps = vec![
            rows(&[Some(1), Some(2), Some(3)], &[10, 20, 30], &[I, I, I]),
            Step::Advance(100),
            rows(&[Some(2), Some(2)], &[20, 21], &[UB, UA]),
            rows(&[None, Some(1)], &[40, 10], &[I, D]),
            Step::Advance(200),
            rows(&[Some(3), Some(2)], &[30, 21], &[D, D]),
        ];
        for kind in [Kind::Inner, Kind::Outer, Kind::Semi, Kind::Anti] {
            assert!(assert_restores_at_every_split(|| op(kind), &steps) > 0, "{kind:?}");
        }
        let j = op(Kind::Outer);
        assert!(j.snapshot().expect("snapshot").is_empty());
        assert_eq!(j.state_size(), 4, "the table is read when the operator is built");
    }

    #[test]
    fn a_state_with_tables_is_refused() {
        let mut st = OpState::new();
        st.put("left_rows", RecordBatch::new_empty(stream_schema()));
        let e = op(Kind::Inner).restore(st).expect_err("a lookup join keeps no state");
        assert!(e.to_string().contains("left_rows"), "{e}");
    }
}

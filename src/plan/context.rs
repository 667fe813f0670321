//! The DataFusion context a continuous query is planned in: stream sources and bounded tables as
//! marker tables the converter recognises, views registered from their (window-rewritten) plans,
//! window function calls as placeholder tables.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session as CatalogSession;
use datafusion::common::TableReference;
use datafusion::datasource::{MemTable, TableProvider, ViewTable};
use datafusion::execution::SessionStateBuilder;
use datafusion::logical_expr::{Expr, LogicalPlan, TableType};
use datafusion::optimizer::Optimizer;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{self, Query};

use super::tvf::{self, TvfTable, WindowTvfNode};
use crate::engine::query::SystemTables;
use crate::error::{Error, Result};
use crate::sql::catalog::{Catalog, Object};
use crate::sql::parser::SourceKind;

/// A stream source, for planning (never scanned in batch).
#[derive(Debug)]
pub struct StreamTable {
    pub name: String,
    pub schema: SchemaRef,
    /// The WATERMARK FOR column.
    pub rowtime: Option<usize>,
    /// A materialized view read as a stream: a changelog.
    pub changelog: bool,
}

#[async_trait]
impl TableProvider for StreamTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
    fn table_type(&self) -> TableType {
        TableType::Base
    }
    async fn scan(
        &self,
        _state: &dyn CatalogSession,
        _projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        Err(datafusion::error::DataFusionError::Plan(format!(
            "'{}' is a stream: it is read by a continuous query, not in batch",
            self.name
        )))
    }
}

/// A bounded relation: a table (`CREATE TABLE`), a materialized view's snapshot, `_errors`/`_late`.
/// `inner` is the data (absent when only planning).
#[derive(Debug)]
pub struct BoundedTable {
    pub name: String,
    pub schema: SchemaRef,
    pub inner: Option<Arc<dyn TableProvider>>,
}

#[async_trait]
impl TableProvider for BoundedTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
    fn table_type(&self) -> TableType {
        TableType::Base
    }
    async fn scan(
        &self,
        state: &dyn CatalogSession,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        match &self.inner {
            Some(t) => t.scan(state, projection, filters, limit).await,
            None => Err(datafusion::error::DataFusionError::Plan(format!(
                "table '{}' is not loaded (planning only)",
                self.name
            ))),
        }
    }
}

/// What a context reads as streams rather than as bounded snapshots.
#[derive(Debug, Clone, Copy, Default)]
pub struct Streams {
    /// Materialized views: as changelog streams.
    pub views: bool,
    /// `_errors` and `_late`: as append-only streams without event time, over the side logs of
    /// queries with checkpoints ([`crate::connector::system_stream`]).
    pub system: bool,
}

/// A context for planning continuous queries over `catalog`. With `load`, bounded tables are read
/// (for running); without, they stand in with their schema only (`freshet check`, EXPLAIN).
pub struct PlanContext {
    pub ctx: SessionContext,
    next_tvf: usize,
}

impl PlanContext {
    pub async fn new(
        catalog: &Catalog,
        system: &SystemTables,
        load: bool,
        wanted: &super::Inputs,
    ) -> Result<PlanContext> {
        Self::build(catalog, system, load, wanted, Streams::default(), None).await
    }

    /// [`Self::new`], with DataFusion's operators (sorts, joins, aggregates) held to `memory_limit`
    /// bytes: past it a query fails with "Resources exhausted" instead of growing (a bounded SELECT
    /// sent to the server).
    pub async fn with_memory_limit(
        catalog: &Catalog,
        system: &SystemTables,
        load: bool,
        wanted: &super::Inputs,
        memory_limit: usize,
    ) -> Result<PlanContext> {
        Self::build(catalog, system, load, wanted, Streams::default(), Some(memory_limit)).await
    }

    /// [`Self::new`], reading as streams what `streams` says (a continuous query), not as snapshots
    /// (a bounded query).
    pub async fn with_streams(
        catalog: &Catalog,
        system: &SystemTables,
        load: bool,
        wanted: &super::Inputs,
        streams: Streams,
    ) -> Result<PlanContext> {
        Self::build(catalog, system, load, wanted, streams, None).await
    }

    async fn build(
        catalog: &Catalog,
        system: &SystemTables,
        load: bool,
        wanted: &super::Inputs,
        streams: Streams,
        memory_limit: Option<usize>,
    ) -> Result<PlanContext> {
        let mv_streams = streams.views;
        let config = SessionConfig::new()
            .with_target_partitions(1)
            .with_information_schema(false);
        // Every default rule but the one that turns `COUNT(DISTINCT x)` into two aggregates: a
        // streaming aggregate keeps distinct values itself.
        let rules = Optimizer::new()
            .rules
            .into_iter()
            .filter(|r| r.name() != "single_distinct_aggregation_to_group_by")
            .collect();
        let mut state = SessionStateBuilder::new()
            .with_config(config)
            .with_default_features()
            .with_optimizer_rules(rules);
        if let Some(bytes) = memory_limit {
            let runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
                .with_memory_limit(bytes, 1.0)
                .build_arc()?;
            state = state.with_runtime_env(runtime);
        }
        let state = state.build();
        let ctx = SessionContext::new_with_state(state);
        let mut pc = PlanContext { ctx, next_tvf: 0 };
        // Before the catalog's views, which may read them.
        for name in crate::sql::catalog::SYSTEM_TABLES {
            if streams.system {
                pc.register(
                    name,
                    Arc::new(StreamTable {
                        name: name.to_string(),
                        schema: SystemTables::schema(),
                        rowtime: None,
                        changelog: false,
                    }),
                )?;
                continue;
            }
            let snap = system.snapshot(name)?;
            pc.register(
                name,
                Arc::new(BoundedTable {
                    name: name.to_string(),
                    schema: snap.schema(),
                    inner: Some(Arc::new(MemTable::try_new(snap.schema(), vec![vec![snap]])?)),
                }),
            )?;
        }
        for (name, obj) in catalog.ordered() {
            match obj {
                Object::Source(def) if def.kind == SourceKind::Stream => {
                    let rowtime = def.watermark.as_ref().and_then(|w| def.schema.index_of(&w.column).ok());
                    pc.register(
                        name,
                        Arc::new(StreamTable {
                            name: name.to_string(),
                            schema: def.schema.clone(),
                            rowtime,
                            changelog: false,
                        }),
                    )?;
                }
                Object::Source(def) => {
                    let inner: Option<Arc<dyn TableProvider>> = if load && wanted.tables.contains(name) {
                        Some(Arc::new(crate::engine::lookup::LookupTable::load(def)?))
                    } else {
                        None
                    };
                    pc.register(
                        name,
                        Arc::new(BoundedTable {
                            name: name.to_string(),
                            schema: def.schema.clone(),
                            inner,
                        }),
                    )?;
                }
                Object::MaterializedView(mv) if mv_streams => {
                    pc.register(
                        name,
                        Arc::new(StreamTable {
                            name: name.to_string(),
                            schema: mv.table.schema(),
                            rowtime: None,
                            changelog: true,
                        }),
                    )?;
                }
                Object::MaterializedView(mv) => {
                    let snap = mv.table.snapshot()?;
                    pc.register(
                        name,
                        Arc::new(BoundedTable {
                            name: name.to_string(),
                            schema: snap.schema(),
                            inner: Some(Arc::new(MemTable::try_new(snap.schema(), vec![vec![snap]])?)),
                        }),
                    )?;
                }
                Object::View(v) => {
                    // A view that no longer plans fails where it is used, with its own error.
                    if let Ok(plan) = pc.plan_query(&v.query).await {
                        pc.register(name, Arc::new(ViewTable::new(plan, Some(v.sql.clone()))))?;
                    }
                }
                Object::Sink(_) => {}
            }
        }
        Ok(pc)
    }

    fn register(&self, name: &str, t: Arc<dyn TableProvider>) -> Result<()> {
        self.ctx.register_table(TableReference::bare(name), t)?;
        Ok(())
    }

    /// The optimized logical plan of `query`, window functions planned as [`WindowTvfNode`]s.
    pub async fn plan_query(&mut self, query: &Query) -> Result<LogicalPlan> {
        let mut q = query.clone();
        let calls = tvf::replace_tvfs(&mut q, &mut self.next_tvf)?;
        for (placeholder, call) in calls {
            let input_sql = input_query(&q, &call.input);
            let input = self.plan_sql(input_sql).await.map_err(|e| match e {
                Error::DataFusion(d) => Error::Sql {
                    line: call.at.0,
                    col: call.at.1,
                    message: format!("{}: {}", call.function, super::clean(&d.to_string())),
                },
                other => other,
            })?;
            let id: usize = placeholder.trim_start_matches("__tvf_").parse().unwrap_or_default();
            let node = WindowTvfNode::new(id, call, input)?;
            self.register(&placeholder, Arc::new(TvfTable::new(node)))?;
        }
        let plan = self.plan_sql(q).await?;
        Ok(self.ctx.state().optimize(&plan)?)
    }

    async fn plan_sql(&self, q: Query) -> Result<LogicalPlan> {
        let stmt = DfStatement::Statement(Box::new(ast::Statement::Query(Box::new(q))));
        Ok(self.ctx.state().statement_to_plan(stmt).await?)
    }
}

/// `SELECT * FROM input`, with the CTEs of `q` in scope when `input` names one of them.
fn input_query(q: &Query, input: &str) -> Query {
    let mut ctes: Vec<ast::Cte> = Vec::new();
    let mut found = false;
    collect_ctes(q, input, &mut ctes, &mut found);
    let sql = format!("SELECT * FROM \"{}\"", input.replace('"', "\"\""));
    let mut out = match crate::sql::parser::parse_one(&sql) {
        Ok(crate::sql::parser::Statement::Query(q)) => *q,
        _ => q.clone(),
    };
    if found {
        out.with = Some(ast::With {
            with_token: ast::helpers::attached_token::AttachedToken::empty(),
            recursive: false,
            cte_tables: ctes,
        });
    }
    out
}

/// The CTEs of `q` up to and including `name` (none when `name` is not one of them).
fn collect_ctes(q: &Query, name: &str, out: &mut Vec<ast::Cte>, found: &mut bool) {
    let Some(w) = &q.with else { return };
    for c in &w.cte_tables {
        out.push(c.clone());
        if crate::sql::parser::normalize(&c.alias.name) == name {
            *found = true;
            return;
        }
    }
    out.clear();
}

//! The streaming planner: a query → DataFusion's optimized `LogicalPlan` → a graph of streaming
//! operators ([`graph`]), or a refusal naming the construct and its position.
//!
//! - [`tvf`]: window functions (both spellings) as plan nodes;
//! - [`context`]: the DataFusion context queries are planned in (streams and tables as markers);
//! - [`convert`]: one rule per plan node (projections and filters fuse into Calc; aggregates become
//!   window, session or updating aggregates); [`join`] and [`over`] hold the rules for joins and for
//!   `… OVER (…)` (Top-N, deduplication, OVER aggregates);
//! - [`finalize`]: what the sink accepts — early window results for upsert sinks, and the rule that
//!   an append-only sink refuses an updating result.
//!
//! DataFusion executes the stateless pieces (expressions, per-batch work) as physical expressions
//! prepared once; the operators in [`crate::operator`] keep the state.

pub mod context;
pub mod convert;
pub mod graph;
pub mod join;
pub mod join_time;
pub mod locate;
pub mod over;
pub mod tvf;

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::sql::sqlparser::ast::{self, Query, TableFactor};

use crate::engine::query::SystemTables;
use crate::error::{Error, Result};
use crate::sql::catalog::{Catalog, Object, SYSTEM_TABLES};
use crate::sql::parser::{SourceKind, normalize};
use graph::{Graph, Mode, Op};

/// Where a query's rows come from.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// Stream sources read, directly or through views.
    pub streams: BTreeSet<String>,
    /// Bounded tables (lookup joins).
    pub tables: BTreeSet<String>,
    pub views: BTreeSet<String>,
    pub mviews: BTreeSet<String>,
    pub system: BTreeSet<String>,
}

/// A planned query.
#[derive(Clone)]
pub struct Compiled {
    pub graph: Graph,
    pub inputs: Inputs,
    /// `ORDER BY … LIMIT …` of the original query, applied only when a result is displayed.
    pub presentation: String,
    /// The result's columns.
    pub schema: SchemaRef,
    /// The query reads no stream: it runs once, in batch.
    pub bounded: bool,
    /// The query as written (refusals name their position in it).
    pub query: Box<Query>,
}

impl Compiled {
    /// Forget groups of updating aggregates unchanged for `ttl` (see `EngineConfig::state_ttl`).
    pub fn set_state_ttl(&mut self, ttl: Option<std::time::Duration>) {
        for n in &mut self.graph.nodes {
            if let Op::UpdatingAgg(c) = &mut n.op {
                c.state_ttl = ttl;
            }
        }
    }

    /// Whether the query reads no stream (it runs once, in batch).
    pub fn bounded(&self) -> bool {
        self.bounded
    }
}

/// How a query is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reads {
    /// `CREATE SINK`, `CREATE MATERIALIZED VIEW`, `INSERT INTO`: materialized views it reads are
    /// changelog streams.
    Continuous,
    /// A `SELECT`: over tables and materialized views only, a snapshot in batch; with a stream,
    /// continuous.
    Interactive,
}

/// What a sink takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepts {
    /// Inserts only (Parquet, files, Kafka JSON).
    Append,
    /// Rows keyed by their key: inserts, updates and deletes (materialized views, HBase).
    Upsert,
    /// Any changelog, written with its row kinds (`format = 'changelog'`).
    Changelog,
}

pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A DataFusion message without its error-kind prefixes.
pub fn clean(message: &str) -> String {
    let mut m = message.trim();
    for p in [
        "Error during planning: ",
        "Schema error: ",
        "This feature is not implemented: ",
        "Optimizer rule",
    ] {
        if let Some(rest) = m.strip_prefix(p) {
            m = rest;
        }
    }
    m.to_string()
}

/// Collect what `query` reads, expanding views.
pub fn inputs_of(query: &Query, catalog: &Catalog) -> Result<Inputs> {
    let mut inputs = Inputs::default();
    collect_inputs(query, catalog, &mut inputs, 0)?;
    Ok(inputs)
}

fn collect_inputs(query: &Query, catalog: &Catalog, inputs: &mut Inputs, depth: usize) -> Result<()> {
    if depth > 16 {
        return Err(Error::plan("views nest too deeply"));
    }
    let mut names: Vec<String> = Vec::new();
    let _ = ast::visit_relations(query, |rel| {
        if let Some(last) = rel.0.last().and_then(|p| p.as_ident()) {
            names.push(normalize(last));
        }
        ControlFlow::<()>::Continue(())
    });
    // Window functions name their input as an argument.
    struct TvfInputs<'a>(&'a mut Vec<String>);
    impl ast::Visitor for TvfInputs<'_> {
        type Break = ();
        fn pre_visit_table_factor(&mut self, tf: &TableFactor) -> ControlFlow<()> {
            if let Ok(Some(t)) = tvf::tvf_call(tf) {
                self.0.push(t.input);
            }
            ControlFlow::Continue(())
        }
    }
    let mut tvf_inputs = Vec::new();
    let _ = ast::Visit::visit(query, &mut TvfInputs(&mut tvf_inputs));
    let mut ctes: BTreeSet<String> = BTreeSet::new();
    struct Ctes<'a>(&'a mut BTreeSet<String>);
    impl ast::Visitor for Ctes<'_> {
        type Break = ();
        fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
            if let Some(w) = &q.with {
                for c in &w.cte_tables {
                    self.0.insert(normalize(&c.alias.name));
                }
            }
            ControlFlow::Continue(())
        }
    }
    let _ = ast::Visit::visit(query, &mut Ctes(&mut ctes));
    for name in names.into_iter().chain(tvf_inputs) {
        if tvf::WINDOW_FUNCTIONS.contains(&name.as_str()) || ctes.contains(&name) {
            continue;
        }
        match catalog.get(&name) {
            Some(Object::Source(s)) if s.kind == SourceKind::Table => {
                inputs.tables.insert(name);
            }
            Some(Object::Source(_)) => {
                inputs.streams.insert(name);
            }
            Some(Object::View(v)) => {
                if inputs.views.insert(name) {
                    let q = v.query.clone();
                    collect_inputs(&q, catalog, inputs, depth + 1)?;
                }
            }
            Some(Object::MaterializedView(_)) => {
                inputs.mviews.insert(name);
            }
            Some(Object::Sink(_)) => return Err(Error::plan(format!("'{name}' is a sink; it cannot be queried"))),
            None if SYSTEM_TABLES.contains(&name.as_str()) => {
                inputs.system.insert(name);
            }
            None => return Err(Error::plan(format!("table, source or view '{name}' not found"))),
        }
    }
    Ok(())
}

fn presentation(q: &Query) -> String {
    let mut s = String::new();
    if let Some(o) = &q.order_by {
        s.push_str(&format!(" {o}"));
    }
    if let Some(l) = &q.limit_clause {
        s.push_str(&format!(" {}", l.to_string().trim()));
    }
    s
}

/// Plan `query` over `catalog`. With `load`, bounded tables are read now (to run the query); without,
/// only their schemas are used (checking, EXPLAIN). A query that reads no stream gets no graph.
pub async fn compile(
    query: &Query,
    catalog: &Catalog,
    system: &SystemTables,
    load: bool,
    reads: Reads,
) -> Result<Compiled> {
    let inputs = inputs_of(query, catalog)?;
    let presentation = presentation(query);
    let mut q = query.clone();
    q.order_by = None;
    q.limit_clause = None;
    // A continuous query (a sink, a materialized view) reads materialized views as changelogs and
    // `_errors`/`_late` as streams (the side logs of queries with checkpoints); a SELECT reads their
    // snapshots (the newest rows kept in memory), unless it reads a stream too.
    let continuous = reads == Reads::Continuous;
    let streaming =
        !inputs.streams.is_empty() || (continuous && (!inputs.mviews.is_empty() || !inputs.system.is_empty()));
    let mut pc = context::PlanContext::with_streams(
        catalog,
        system,
        load && streaming,
        &inputs,
        context::Streams {
            views: streaming,
            system: continuous,
        },
    )
    .await?;
    if !streaming {
        // Bounded: the session runs it in batch; only the schema is needed here.
        let plan = pc.plan_query(query).await?;
        return Ok(Compiled {
            graph: Graph::default(),
            inputs,
            presentation,
            schema: std::sync::Arc::new(plan.schema().as_arrow().clone()),
            bounded: true,
            query: Box::new(query.clone()),
        });
    }
    let plan = pc.plan_query(&q).await?;
    let locator = locate::Locator::new(query);
    let mut conv = convert::Converter::new(&locator);
    let root = conv.convert(&plan)?;
    conv.finish()?;
    if root + 1 != conv.graph.nodes.len() {
        return Err(Error::Internal("the operator graph's root is not its last node".into()));
    }
    let graph = conv.graph;
    // Results are written with every column nullable: an outer join pads, a sink or view may see
    // NULLs a source declared NOT NULL never had.
    let schema = std::sync::Arc::new(datafusion::arrow::datatypes::Schema::new(
        graph.nodes[root]
            .schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    ));
    Ok(Compiled {
        graph,
        inputs,
        presentation,
        schema,
        bounded: false,
        query: Box::new(query.clone()),
    })
}

/// Fit the plan to its sink: an upsert sink gets early window results (the window aggregate feeding
/// it emits its changed rows after every micro-batch); an append-only sink refuses an updating result.
/// `sink` names the sink in messages.
pub fn finalize(c: &mut Compiled, accepts: Accepts, sink: &str) -> Result<()> {
    let Ok(root) = c.graph.root() else { return Ok(()) };
    match accepts {
        Accepts::Upsert => {
            let mut path = Vec::new();
            let mut id = root;
            while let Op::Calc(_) = c.graph.nodes[id].op {
                path.push(id);
                id = c.graph.nodes[id].inputs[0];
            }
            let keyed = c.graph.nodes[root].props.key.is_some();
            if keyed && let Op::WindowAgg(cfg) = &mut c.graph.nodes[id].op {
                cfg.early_fire = true;
                c.graph.nodes[id].props.mode = Mode::Upsert;
                for p in path {
                    if let Op::Calc(cfg) = &mut c.graph.nodes[p].op {
                        cfg.upsert = true;
                    }
                    c.graph.nodes[p].props.mode = Mode::Upsert;
                }
            }
            Ok(())
        }
        Accepts::Changelog => Ok(()),
        Accepts::Append => {
            let mode = c.graph.nodes[root].props.mode;
            if mode == Mode::Append {
                return Ok(());
            }
            let first = c.graph.nodes.iter().find(|n| {
                n.props.mode != Mode::Append && n.inputs.iter().all(|i| c.graph.nodes[*i].props.mode == Mode::Append)
            });
            let why = first
                .map(|n| n.op_name())
                .unwrap_or_else(|| "an updating operator".into());
            let site = match first.map(|n| &n.op) {
                Some(Op::UpdatingAgg(cfg)) if cfg.calls.is_empty() => {
                    let l = locate::Locator::new(&c.query);
                    if l.find(&locate::Site::Distinct).is_some() {
                        locate::Site::Distinct
                    } else {
                        locate::Site::GroupBy
                    }
                }
                Some(Op::UpdatingAgg(_)) => locate::Site::GroupBy,
                Some(Op::Custom(f)) if f.describe().contains("Join") => locate::Site::Join(0),
                Some(Op::Custom(_)) => locate::Site::Over,
                _ => locate::Site::Query,
            };
            Err(locate::Locator::new(&c.query).refuse(
                site,
                format!(
                    "{sink} takes an append-only stream, but this query's result updates rows ({why}); write it to an upsert sink (a materialized view, HBase), ask for the changelog (format = 'changelog'), or use a window so rows are final when emitted"
                ),
            ))
        }
    }
}

impl graph::Node {
    /// A short name of what this node does, for messages.
    pub fn op_name(&self) -> String {
        match &self.op {
            Op::UpdatingAgg(c) if c.calls.is_empty() => "SELECT DISTINCT or GROUP BY without a window".into(),
            Op::UpdatingAgg(_) => "GROUP BY without a window".into(),
            Op::Custom(f) => f.describe(),
            Op::Union => "UNION ALL of an updating input".into(),
            _ => "an updating operator".into(),
        }
    }
}

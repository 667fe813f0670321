//! The operator graph of a continuous query: nodes in topological order (inputs before the nodes
//! that read them), each with what its output edge carries.

use std::fmt::Write;

use datafusion::arrow::datatypes::SchemaRef;

use crate::error::{Error, Result};
use crate::operator::partition::PartitionKeys;
use crate::operator::window::WindowSpec;
use crate::operator::{self, Operator};

/// What an edge carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Inserts only.
    Append,
    /// Rows replace earlier rows with the same key (`+U`), or delete them (`-D`); no before-images.
    Upsert,
    /// A full changelog: `+I`, `-U`/`+U` pairs, `-D`.
    Retract,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Append => "append",
            Mode::Upsert => "upsert",
            Mode::Retract => "changelog",
        }
    }

    /// The mode of a stream merged from inputs of these modes.
    pub fn merge(self, other: Mode) -> Mode {
        match (self, other) {
            (Mode::Append, m) | (m, Mode::Append) => m,
            (Mode::Retract, _) | (_, Mode::Retract) => Mode::Retract,
            _ => Mode::Upsert,
        }
    }
}

/// Window columns a stream carries (after a window function or a window aggregate), by index.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowCols {
    pub spec: WindowSpec,
    pub start: Option<usize>,
    pub end: Option<usize>,
    pub time: Option<usize>,
    /// The node that assigned the windows (a window function), while no aggregate consumed it.
    pub assigned_by: Option<usize>,
}

/// Properties of a node's output edge.
#[derive(Debug, Clone, PartialEq)]
pub struct Props {
    pub mode: Mode,
    /// Columns that identify a row (the upsert key of a changelog, a unique key otherwise).
    pub key: Option<Vec<usize>>,
    /// The column that is a watermarked event time (a time attribute).
    pub rowtime: Option<usize>,
    pub window: Option<WindowCols>,
}

impl Props {
    pub fn append() -> Props {
        Props {
            mode: Mode::Append,
            key: None,
            rowtime: None,
            window: None,
        }
    }
}

/// What a node runs.
pub enum Op {
    /// Rows of a stream source (`projection`: the columns used, by index in the source's schema).
    Source {
        name: String,
        projection: Option<Vec<usize>>,
    },
    Calc(operator::calc::Config),
    WindowTvf(operator::window_tvf::Config),
    WindowAgg(operator::window_agg::Config),
    SessionAgg(operator::session_agg::Config),
    UpdatingAgg(operator::updating_agg::Config),
    Union,
    /// An operator built by a planning rule in its own module (joins, Top-N, OVER, lookups).
    Custom(Box<dyn OpFactory>),
}

/// Builds a fresh operator (with empty state) for each run of a query.
pub trait OpFactory: Send + Sync {
    fn build(&self) -> Result<Box<dyn Operator>>;
    /// One line for EXPLAIN: the operator and its parameters.
    fn describe(&self) -> String;
    /// What the operator keeps, for EXPLAIN.
    fn state(&self) -> String;
    fn clone_box(&self) -> Box<dyn OpFactory>;
    /// The key each input is split by when the operator runs as several instances
    /// ([`operator::partition`]): an operator whose state and output are per key of it. `None`
    /// (the default): one instance.
    fn partition_keys(&self) -> Option<PartitionKeys> {
        None
    }
}

impl Clone for Op {
    fn clone(&self) -> Op {
        match self {
            Op::Source { name, projection } => Op::Source {
                name: name.clone(),
                projection: projection.clone(),
            },
            Op::Calc(c) => Op::Calc(c.clone()),
            Op::WindowTvf(c) => Op::WindowTvf(c.clone()),
            Op::WindowAgg(c) => Op::WindowAgg(c.clone()),
            Op::SessionAgg(c) => Op::SessionAgg(c.clone()),
            Op::UpdatingAgg(c) => Op::UpdatingAgg(c.clone()),
            Op::Union => Op::Union,
            Op::Custom(f) => Op::Custom(f.clone_box()),
        }
    }
}

#[derive(Clone)]
pub struct Node {
    pub op: Op,
    pub inputs: Vec<usize>,
    pub schema: SchemaRef,
    pub props: Props,
    /// How the node came about, for EXPLAIN (e.g. the SQL it stands for).
    pub note: String,
}

#[derive(Clone, Default)]
pub struct Graph {
    pub nodes: Vec<Node>,
}

impl Graph {
    pub fn add(&mut self, node: Node) -> usize {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// The last node: what the query returns.
    pub fn root(&self) -> Result<usize> {
        if self.nodes.is_empty() {
            return Err(Error::Internal("an empty operator graph".into()));
        }
        Ok(self.nodes.len() - 1)
    }

    /// Nodes reading node `id`.
    pub fn consumers(&self, id: usize) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|n| self.nodes[*n].inputs.contains(&id))
            .collect()
    }

    /// Stream sources read, by name (a source read twice appears once).
    pub fn sources(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .nodes
            .iter()
            .filter_map(|n| match &n.op {
                Op::Source { name, .. } => Some(name.clone()),
                _ => None,
            })
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Whether any operator keeps state bounded by the watermark (needs sources with watermarks).
    pub fn needs_watermark(&self) -> bool {
        self.nodes.iter().any(|n| {
            matches!(n.op, Op::WindowAgg(_) | Op::SessionAgg(_) | Op::WindowTvf(_))
                || matches!(&n.op, Op::Custom(f) if f.state().contains("watermark"))
        })
    }

    /// The graph as text: one line per node, inputs indented below, each edge's mode, key and
    /// time attribute, and the state each operator keeps.
    pub fn explain(&self) -> String {
        let mut out = String::new();
        if let Ok(root) = self.root() {
            self.explain_node(root, 0, &mut out);
        }
        out
    }

    fn explain_node(&self, id: usize, depth: usize, out: &mut String) {
        let n = &self.nodes[id];
        let pad = "  ".repeat(depth);
        let name = |i: usize| n.schema.field(i).name().clone();
        let (what, state) = describe(&n.op);
        let _ = write!(out, "{pad}{what}");
        if !n.note.is_empty() {
            let _ = write!(out, "  -- {}", n.note);
        }
        out.push('\n');
        let mut edge = format!("{pad}  ⇒ {}", n.props.mode.name());
        if let Some(k) = &n.props.key {
            let _ = write!(
                edge,
                ", key ({})",
                k.iter().map(|i| name(*i)).collect::<Vec<_>>().join(", ")
            );
        }
        if let Some(t) = n.props.rowtime {
            let _ = write!(edge, ", time attribute {}", name(t));
        }
        let _ = write!(
            edge,
            "; columns: {}",
            n.schema
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        out.push_str(&edge);
        out.push('\n');
        if !state.is_empty() {
            let _ = writeln!(out, "{pad}  state: {state}");
        }
        for i in &n.inputs {
            self.explain_node(*i, depth + 1, out);
        }
    }

    /// A node's operator as EXPLAIN names it (its first word): checkpoints record it per node.
    pub fn op_name(&self, id: usize) -> String {
        let (what, _) = describe(&self.nodes[id].op);
        what.split(|c: char| !c.is_alphanumeric())
            .next()
            .unwrap_or_default()
            .to_string()
    }

    /// Build the operators, in node order; each keyed one as `workers` instances, each owning a
    /// range of keys ([`operator::partition`]).
    pub fn build(&self, workers: usize) -> Result<Vec<Box<dyn Operator>>> {
        self.nodes
            .iter()
            .map(|n| match n.op.partition_keys() {
                Some(keys) => {
                    let (op, schema) = (n.op.clone(), n.schema.clone());
                    let build = std::sync::Arc::new(move || build_one(&op, &schema));
                    let split = operator::partition::Partitioned::new(instances_for(workers), keys, build)?;
                    Ok(Box::new(split) as Box<dyn Operator>)
                }
                None => build_one(&n.op, &n.schema),
            })
            .collect()
    }
}

impl Op {
    /// The key the operator is split by over several instances ([`operator::partition`]): the
    /// aggregates' group keys, and what a [`OpFactory`] names. `None`: it runs as one instance.
    pub fn partition_keys(&self) -> Option<PartitionKeys> {
        let one = |keys: &[std::sync::Arc<dyn datafusion::physical_plan::PhysicalExpr>], types| {
            (!keys.is_empty()).then(|| PartitionKeys::one(keys, types))
        };
        match self {
            Op::WindowAgg(c) => one(&c.keys, &c.key_types),
            Op::SessionAgg(c) => one(&c.keys, &c.key_types),
            Op::UpdatingAgg(c) => one(&c.keys, &c.key_types),
            Op::Custom(f) => f.partition_keys(),
            Op::Source { .. } | Op::Calc(_) | Op::WindowTvf(_) | Op::Union => None,
        }
    }
}

/// A fresh operator (one instance) for a node running `op` with output `schema`.
fn build_one(op: &Op, schema: &SchemaRef) -> Result<Box<dyn Operator>> {
    Ok(match op {
        Op::Source { projection, .. } => Box::new(operator::calc::Project::columns(projection.clone(), schema.clone())),
        Op::Calc(c) => Box::new(operator::calc::Calc::new(c.clone())),
        Op::WindowTvf(c) => Box::new(operator::window_tvf::WindowTvf::new(c.clone())),
        Op::WindowAgg(c) => Box::new(operator::window_agg::WindowAgg::new(c.clone())?),
        Op::SessionAgg(c) => Box::new(operator::session_agg::SessionAgg::new(c.clone())?),
        Op::UpdatingAgg(c) => Box::new(operator::updating_agg::UpdatingAgg::new(c.clone())?),
        Op::Union => Box::new(operator::union::Union::new(schema.clone())),
        Op::Custom(f) => f.build()?,
    })
}

/// How many instances a keyed operator runs as on `workers` (at most one per key group).
pub fn instances_for(workers: usize) -> usize {
    workers.clamp(1, operator::groups::KEY_GROUPS as usize)
}

/// One line for the operator and one for its state (saying whether it is split by key,
/// [`operator::partition`]).
fn describe(op: &Op) -> (String, String) {
    let (what, mut state) = describe_op(op);
    if op.partition_keys().is_some() {
        state.push_str("; split by key over --workers instances");
    }
    (what, state)
}

/// [`describe`] without the split.
fn describe_op(op: &Op) -> (String, String) {
    match op {
        Op::Source { name, .. } => (format!("Source {name}"), String::new()),
        Op::Calc(c) => (format!("Calc {}", c.describe()), String::new()),
        Op::WindowTvf(c) => (
            format!(
                "WindowAssign {} on {}{}",
                c.window.describe(),
                c.time_name,
                if c.panes {
                    " (panes, for the aggregate above)"
                } else {
                    ""
                }
            ),
            String::new(),
        ),
        Op::WindowAgg(c) => (
            format!(
                "WindowAggregate {} keys [{}] aggregates [{}]{}",
                c.window.describe(),
                c.key_names.join(", "),
                c.calls.iter().map(|a| a.display.clone()).collect::<Vec<_>>().join(", "),
                if c.early_fire {
                    ", early results after every micro-batch"
                } else {
                    ", emits when the watermark passes window_end"
                }
            ),
            format!(
                "per pane ({}): group key → partial aggregates; a pane is dropped when the watermark passes its last window",
                crate::operator::window::dur(c.window.pane()),
            ),
        ),
        Op::SessionAgg(c) => (
            format!(
                "SessionAggregate SESSION(gap {}) keys [{}] aggregates [{}], emits when the watermark passes a session's end",
                crate::operator::window::dur(c.gap),
                c.key_names.join(", "),
                c.calls.iter().map(|a| a.display.clone()).collect::<Vec<_>>().join(", ")
            ),
            "per key: open sessions (start, end, partial aggregates), bounded by the watermark".into(),
        ),
        Op::UpdatingAgg(c) => (
            format!(
                "GroupAggregate keys [{}] aggregates [{}]",
                c.key_names.join(", "),
                c.calls.iter().map(|a| a.display.clone()).collect::<Vec<_>>().join(", ")
            ),
            "per group key: aggregates and a row count; kept until the group's rows are retracted (not bounded by time)"
                .into(),
        ),
        Op::Union => ("Union".into(), String::new()),
        Op::Custom(f) => (f.describe(), f.state()),
    }
}

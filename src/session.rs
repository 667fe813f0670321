//! A session: one catalog, the continuous queries it started, and statement execution. `freshet run`
//! and the REPL both go through [`Session::execute`], so they share one set of semantics.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::sql::sqlparser::ast::Query;
use tokio::sync::watch;

use crate::connector::memory::{MemorySink, MemoryTable};
use crate::connector::{self, Sink};
use crate::engine::query::{EngineConfig, Metrics, QueryRuntime, QueryTask, Report, SystemTables};
use crate::error::{Error, Result};
use crate::plan::{self, Accepts, Compiled};
use crate::sql::catalog::{Catalog, MaterializedViewDef, Object, SinkDef, ViewDef};
use crate::sql::parser::{ObjectKind, ShowKind, SourceKind, Statement};

/// A continuous query started by `CREATE SINK` or `CREATE MATERIALIZED VIEW`.
pub struct RunningQuery {
    pub name: String,
    pub kind: ObjectKind,
    pub metrics: Arc<Metrics>,
    pub bounded: bool,
    stop: watch::Sender<bool>,
    handle: Option<QueryTask>,
    pub outcome: Option<std::result::Result<Report, String>>,
    /// Stopped by `pause` (or registered paused); `resume` starts it again.
    pub paused: bool,
}

impl RunningQuery {
    /// A query known to the catalog but not started (paused, or restored as finished/failed).
    fn held(name: &str, kind: ObjectKind, outcome: Option<std::result::Result<Report, String>>) -> RunningQuery {
        RunningQuery {
            name: name.to_string(),
            kind,
            // No watermark yet (a default `Metrics` would say 1970).
            metrics: Arc::new(Metrics {
                watermark: std::sync::atomic::AtomicI64::new(i64::MIN),
                ..Metrics::default()
            }),
            // A finished query is a bounded one, so that `persist` keeps it `finished`.
            bounded: matches!(outcome, Some(Ok(_))),
            stop: watch::channel(false).0,
            handle: None,
            paused: outcome.is_none(),
            outcome,
        }
    }

    pub fn status(&self) -> &'static str {
        match (&self.outcome, &self.handle) {
            _ if self.paused => "paused",
            (Some(Ok(_)), _) => "finished",
            (Some(Err(_)), _) => "failed",
            (None, Some(h)) if h.is_finished() => "finishing",
            _ => "running",
        }
    }

    async fn join(&mut self) {
        if let Some(h) = self.handle.take() {
            self.outcome = Some(match h.await {
                Ok(Ok(r)) => Ok(r),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(format!("query task failed: {e}")),
            });
        }
    }
}

/// A continuous SELECT: its rows are kept in `table`, which updates until `stop`.
pub struct LiveQuery {
    pub table: MemoryTable,
    pub presentation: String,
    pub metrics: Arc<Metrics>,
    pub stop: watch::Sender<bool>,
    pub handle: QueryTask,
}

pub enum Outcome {
    /// A statement that changed the catalog or started a query.
    Done(String),
    Rows(Vec<RecordBatch>, SchemaRef),
    Text(String),
    Live(LiveQuery),
}

pub struct Session {
    pub catalog: Catalog,
    pub system: Arc<SystemTables>,
    pub config: EngineConfig,
    pub queries: Vec<RunningQuery>,
    /// In `freshet run`, a bounded SELECT first waits for the bounded queries started before it.
    pub wait_for_bounded: bool,
    /// Plan only (`freshet check`): every statement is planned and its connector options validated,
    /// but nothing is opened or started — no source read, no lookup table loaded, no sink created, no
    /// query run. Continuous queries are added to the catalog (a materialized view as an empty table)
    /// so later statements plan against them.
    pub plan_only: bool,
    /// Caps on bounded SELECTs (the server's `/v1/query`); `None`: none.
    pub result_limits: Option<ResultLimits>,
    live_seq: u64,
    /// The data directory the catalog is persisted in (`--data-dir`), if any.
    store: Option<crate::store::Store>,
    /// While restoring: continuous queries to register without starting, with the outcome to show.
    hold: std::collections::BTreeMap<String, Option<std::result::Result<Report, String>>>,
    /// Stored objects that could not be restored (kept, so they are not lost from the catalog file).
    pub unrestored: Vec<crate::store::StoredObject>,
}

fn text_batch(columns: &[&str], rows: Vec<Vec<String>>) -> Result<(Vec<RecordBatch>, SchemaRef)> {
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|c| Field::new(*c, DataType::Utf8, false))
            .collect::<Vec<_>>(),
    ));
    let cols: Vec<ArrayRef> = (0..columns.len())
        .map(|i| Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r[i].as_str()))) as ArrayRef)
        .collect();
    Ok((vec![RecordBatch::try_new(schema.clone(), cols)?], schema))
}

fn schema_rows(schema: &Schema) -> Vec<Vec<String>> {
    schema
        .fields()
        .iter()
        .map(|f| {
            vec![
                f.name().clone(),
                f.data_type().to_string(),
                if f.is_nullable() { "YES".into() } else { "NO".into() },
            ]
        })
        .collect()
}

impl Default for Session {
    fn default() -> Self {
        Session::new(EngineConfig::default())
    }
}

impl Session {
    pub fn new(config: EngineConfig) -> Self {
        Session {
            catalog: Catalog::default(),
            system: Arc::new(SystemTables::default()),
            config,
            queries: Vec::new(),
            wait_for_bounded: false,
            plan_only: false,
            result_limits: None,
            live_seq: 0,
            store: None,
            hold: Default::default(),
            unrestored: Vec::new(),
        }
    }

    /// A session over a data directory: restore its catalog, start the queries stored as running (the
    /// others are registered paused/finished/failed), and persist every later change. Objects that
    /// cannot be restored are kept in the file and listed in `unrestored` (with the error).
    pub async fn open(config: EngineConfig, dir: &std::path::Path) -> Result<Session> {
        let store = crate::store::Store::open(dir)?;
        let stored = store.load()?;
        let mut session = Session::new(config);
        for obj in stored {
            let stmt = match crate::sql::parser::parse_one(&obj.sql) {
                Ok(s) => s,
                Err(e) => {
                    session.unrestored.push(crate::store::StoredObject {
                        error: Some(e.to_string()),
                        ..obj
                    });
                    continue;
                }
            };
            let held = match obj.state.as_deref() {
                Some("paused") => Some(None),
                Some("finished") => Some(Some(Ok(Report::default()))),
                Some("failed") => Some(Some(Err(obj.error.clone().unwrap_or_else(|| "failed".into())))),
                _ => None,
            };
            if let Some(h) = held.clone() {
                session.hold.insert(obj.name.clone(), h);
            }
            let mut result = session.execute(&stmt).await;
            if let Err(e) = &result
                && held.is_none()
                && matches!(
                    stmt,
                    Statement::CreateSink { .. } | Statement::CreateView { materialized: true, .. }
                )
            {
                // Could not start (a service down?): register it as failed, so it can be resumed.
                session.hold.insert(obj.name.clone(), Some(Err(e.to_string())));
                result = session.execute(&stmt).await;
            }
            session.hold.remove(&obj.name);
            if let Err(e) = result {
                session.unrestored.push(crate::store::StoredObject {
                    error: Some(e.to_string()),
                    ..obj
                });
            }
        }
        session.store = Some(store);
        session.persist()?;
        Ok(session)
    }

    /// What `DROP kind name` drops (a `TABLE` that is a source is the source), or why it cannot:
    /// another object uses it.
    fn drop_blockers(&self, kind: ObjectKind, name: &str) -> Result<ObjectKind> {
        let kind =
            if kind == ObjectKind::Table && self.catalog.get(name).is_some_and(|o| o.kind() == ObjectKind::Source) {
                ObjectKind::Source
            } else {
                kind
            };
        for (n, o) in self.catalog.ordered() {
            let uses = match o {
                Object::View(v) => plan::inputs_of(&v.query, &self.catalog).ok(),
                Object::Sink(s) => plan::inputs_of(&s.query, &self.catalog).ok(),
                Object::MaterializedView(m) => plan::inputs_of(&m.query, &self.catalog).ok(),
                Object::Source(_) => None,
            };
            if let Some(i) = uses
                && n != name
                && (i.streams.contains(name)
                    || i.tables.contains(name)
                    || i.views.contains(name)
                    || i.mviews.contains(name))
                // A view always depends on what it names; a sink or materialized view only while
                // its query still runs (in plan-only mode, as if it did).
                && (matches!(o, Object::View(_))
                    || self.plan_only
                    || self.queries.iter().any(|q| {
                        // Paused queries resume from their definition; with a data directory,
                        // finished ones are planned again at every start.
                        q.name == n && (matches!(q.status(), "running" | "paused") || self.store.is_some())
                    }))
            {
                return Err(Error::plan(format!(
                    "cannot drop '{name}': '{n}' uses it; drop '{n}' first"
                )));
            }
        }
        Ok(kind)
    }

    /// Write the catalog to the data directory, if there is one.
    pub fn persist(&self) -> Result<()> {
        self.persist_without(None)
    }

    /// [`Session::persist`], leaving out object `except` (a DROP written before it takes effect).
    fn persist_without(&self, except: Option<&str>) -> Result<()> {
        let Some(store) = &self.store else { return Ok(()) };
        let mut objects: Vec<crate::store::StoredObject> = self
            .catalog
            .ordered()
            .filter(|(name, _)| Some(*name) != except)
            .map(|(name, o)| {
                let q = self.queries.iter().find(|q| q.name == name);
                crate::store::StoredObject {
                    name: name.to_string(),
                    kind: o.kind().to_string(),
                    sql: o.sql().to_string(),
                    state: q.map(|q| {
                        match q.status() {
                            "failed" => "failed",
                            "finished" if q.bounded => "finished",
                            "paused" => "paused",
                            _ => "running",
                        }
                        .to_string()
                    }),
                    error: q.and_then(|q| match &q.outcome {
                        Some(Err(e)) => Some(e.clone()),
                        _ => None,
                    }),
                }
            })
            .collect();
        objects.extend(self.unrestored.iter().cloned());
        store.save(&objects)
    }

    /// Collect the outcome of queries that ended by themselves (bounded sources, failures) and persist
    /// their state, so a finished query is not run again after a restart.
    pub async fn reap(&mut self) -> Result<()> {
        let mut changed = false;
        for q in self.queries.iter_mut() {
            if q.handle.as_ref().is_some_and(|h| h.is_finished()) {
                q.join().await;
                changed = true;
            }
        }
        if changed { self.persist() } else { Ok(()) }
    }

    /// Stop a running continuous query, keeping its definition (and a materialized view's rows).
    pub async fn pause(&mut self, name: &str) -> Result<()> {
        let q = self.query_mut(name)?;
        if q.paused {
            return Err(Error::plan(format!("'{name}' is already paused")));
        }
        if q.handle.is_none() {
            return Err(Error::plan(format!("'{name}' is not running ({})", q.status())));
        }
        let _ = q.stop.send(true);
        q.join().await;
        q.paused = true;
        self.persist()
    }

    /// Start a paused (or finished/failed) continuous query again from its definition. A materialized
    /// view starts over with an empty table; a Kafka source with `startup = 'group'` resumes from its
    /// committed offsets.
    pub async fn resume(&mut self, name: &str) -> Result<()> {
        let q = self.query_mut(name)?;
        if q.handle.is_some() && !q.paused {
            return Err(Error::plan(format!("'{name}' is already running")));
        }
        let (query, sink_options) = match self.catalog.get(name) {
            Some(Object::Sink(s)) => (s.query.clone(), Some(s.options.clone())),
            Some(Object::MaterializedView(m)) => (m.query.clone(), None),
            _ => return Err(Error::plan(format!("'{name}' is not a sink or materialized view"))),
        };
        let compiled = self.compile(&query).await?;
        let mut table = None;
        let (metrics, bounded, stop, handle) = match sink_options {
            Some(opts) => {
                let what = sink_label(name, &opts);
                let opts = sink_identity(name, &opts);
                self.start(name, &compiled, connector::sink_accepts(&opts), &what, |schema| {
                    connector::open_sink(&opts, schema)
                })
                .await?
            }
            None => {
                self.start(name, &compiled, Accepts::Upsert, name, |schema| {
                    let t = MemoryTable::new(schema);
                    table = Some(t.clone());
                    Ok(Box::new(MemorySink(t)))
                })
                .await?
            }
        };
        if let (Some(t), Some(Object::MaterializedView(m))) = (table, self.catalog.get_mut(name)) {
            t.set_bounded(bounded);
            m.table = t;
        }
        let q = self.query_mut(name)?;
        q.metrics = metrics;
        q.bounded = bounded;
        q.stop = stop;
        q.handle = Some(handle);
        q.outcome = None;
        q.paused = false;
        self.persist()
    }

    /// Record a continuous query just created: started, or held (paused/finished/failed while restoring).
    fn register(
        &mut self,
        name: &str,
        kind: ObjectKind,
        running: Option<(Arc<Metrics>, bool, watch::Sender<bool>, QueryTask)>,
        hold: Option<Option<std::result::Result<Report, String>>>,
    ) {
        if let Some((metrics, bounded, stop, handle)) = running {
            self.queries.push(RunningQuery {
                name: name.to_string(),
                kind,
                metrics,
                bounded,
                stop,
                handle: Some(handle),
                outcome: None,
                paused: false,
            });
        } else if let Some(outcome) = hold {
            self.queries.push(RunningQuery::held(name, kind, outcome));
        }
    }

    fn query_mut(&mut self, name: &str) -> Result<&mut RunningQuery> {
        self.queries
            .iter_mut()
            .find(|q| q.name == name)
            .ok_or_else(|| Error::plan(format!("no continuous query '{name}'")))
    }

    async fn compile(&self, q: &Query) -> Result<Compiled> {
        plan::compile(q, &self.catalog, &self.system, !self.plan_only, plan::Reads::Continuous).await
    }

    /// Plan-only stand-in for [`Self::start`]: the checks it and the query runtime make before
    /// anything runs, with nothing opened. Returns the output schema.
    fn plan_continuous(&self, name: &str, compiled: &Compiled, accepts: Accepts, sink: &str) -> Result<SchemaRef> {
        needs_a_stream(name, compiled)?;
        let mut c = compiled.clone();
        plan::finalize(&mut c, accepts, sink)?;
        if c.graph.needs_watermark()
            && let Some(s) = c
                .graph
                .sources()
                .iter()
                .find(|s| self.catalog.source(s).is_some_and(|d| d.watermark.is_none()))
        {
            // The same rule (and words) as `QueryRuntime::new`.
            return Err(Error::plan(format!(
                "source '{s}' has no WATERMARK; windows need one: WATERMARK FOR col AS col - INTERVAL '5' SECOND"
            )));
        }
        Ok(c.schema)
    }

    async fn start(
        &mut self,
        name: &str,
        compiled: &Compiled,
        accepts: Accepts,
        sink: &str,
        make_sink: impl FnOnce(SchemaRef) -> Result<Box<dyn Sink>>,
    ) -> Result<(Arc<Metrics>, bool, watch::Sender<bool>, QueryTask)> {
        needs_a_stream(name, compiled)?;
        let mut c = compiled.clone();
        plan::finalize(&mut c, accepts, sink)?;
        c.set_state_ttl(self.config.state_ttl);
        let rt = QueryRuntime::new(
            name,
            &c,
            &self.catalog,
            self.system.clone(),
            self.config.clone(),
            make_sink,
        )
        .await?;
        let metrics = rt.metrics();
        let bounded = rt.bounded();
        let (tx, rx) = watch::channel(false);
        let handle = QueryTask::spawn(rt, rx)?;
        Ok((metrics, bounded, tx, handle))
    }

    /// Wait for the bounded continuous queries to finish (their sources end by themselves).
    pub async fn wait_bounded(&mut self) {
        for q in self.queries.iter_mut().filter(|q| q.bounded) {
            q.join().await;
        }
    }

    /// Wait for every query: bounded ones finish, unbounded ones run until `stop` fires.
    pub async fn wait_all(&mut self, mut stop: impl std::future::Future<Output = ()> + Unpin) {
        for q in self.queries.iter_mut() {
            if let Some(h) = &mut q.handle {
                tokio::select! {
                    r = h => {
                        q.handle = None;
                        q.outcome = Some(match r { Ok(Ok(r)) => Ok(r), Ok(Err(e)) => Err(e.to_string()), Err(e) => Err(e.to_string()) });
                    }
                    _ = &mut stop => { break; }
                }
            }
        }
        self.stop_all().await;
    }

    /// Start the shared Kafka readers the queries started since the last call have joined (see
    /// [`crate::connector::kafka_shared`]; nothing without them). Called before anything waits on
    /// those queries. Returns each reader's source and how many queries it serves.
    pub fn start_shared_readers(&self) -> Vec<(String, usize)> {
        match &self.config.shared_kafka {
            Some(shared) => shared.start(),
            None => vec![],
        }
    }

    /// When every query of this session finished by itself (a `freshet run` job over bounded
    /// sources done), forget their checkpoints: there is nothing left to resume, and the next run
    /// of the job starts over. Otherwise they stay, so a restart resumes each query — one that had
    /// finished finishes again with nothing new, rather than writing its output twice.
    pub fn forget_finished(&self) -> Result<bool> {
        let all = self
            .queries
            .iter()
            .all(|q| matches!(&q.outcome, Some(Ok(r)) if r.finished));
        if all {
            for q in &self.queries {
                crate::engine::query::remove_checkpoints(&self.config, &q.name)?;
            }
        }
        Ok(all)
    }

    /// Stop every query, letting each commit its sink.
    pub async fn stop_all(&mut self) {
        for q in &self.queries {
            let _ = q.stop.send(true);
        }
        for q in self.queries.iter_mut() {
            q.join().await;
        }
    }

    pub async fn execute(&mut self, stmt: &Statement) -> Result<Outcome> {
        // A stored object that could not be restored keeps its name until it is dropped.
        let created = match stmt {
            Statement::CreateSource(def) => Some(def.name.as_str()),
            Statement::CreateView { name, .. } | Statement::CreateSink { name, .. } => Some(name.as_str()),
            _ => None,
        };
        if let Some(name) = created
            && let Some(o) = self.unrestored.iter().find(|o| o.name == name)
        {
            return Err(Error::plan(format!(
                "'{name}' is in the catalog file but could not be restored ({}); DROP {} {name} first",
                o.error.as_deref().unwrap_or("?"),
                o.kind.to_uppercase()
            )));
        }
        if let Statement::Drop { name, .. } = stmt
            && self.catalog.get(name).is_none()
            && let Some(i) = self.unrestored.iter().position(|o| &o.name == name)
        {
            let o = self.unrestored.remove(i);
            self.persist()?;
            return Ok(Outcome::Done(format!(
                "dropped {} {name} (it could not be restored)",
                o.kind
            )));
        }
        // The catalog file and the session agree whatever fails: a DROP is written out before
        // it takes effect (a failed write leaves the object where it was), a CREATE after, and is
        // undone when the write fails.
        if let Statement::Drop { kind, name, .. } = stmt
            && self.store.is_some()
            && self.catalog.get(name).is_some()
        {
            self.drop_blockers(*kind, name)?;
            self.persist_without(Some(name))?;
        }
        let outcome = self.execute_statement(stmt).await?;
        let created = match stmt {
            Statement::CreateSource(def) if def.kind == SourceKind::Table => Some((ObjectKind::Table, &def.name)),
            Statement::CreateSource(def) => Some((ObjectKind::Source, &def.name)),
            Statement::CreateView {
                name,
                materialized: true,
                ..
            } => Some((ObjectKind::MaterializedView, name)),
            Statement::CreateView { name, .. } => Some((ObjectKind::View, name)),
            Statement::CreateSink { name, .. } => Some((ObjectKind::Sink, name)),
            _ => None,
        };
        if (created.is_some() || matches!(stmt, Statement::Drop { .. }))
            && let Err(e) = self.persist()
        {
            if let Some((kind, name)) = created {
                let undo = Statement::Drop {
                    kind,
                    name: name.clone(),
                    if_exists: true,
                };
                let _ = Box::pin(self.execute_statement(&undo)).await;
            }
            return Err(e);
        }
        Ok(outcome)
    }

    async fn execute_statement(&mut self, stmt: &Statement) -> Result<Outcome> {
        match stmt {
            Statement::CreateSource(def) => {
                self.config.policy.check_options(&def.options)?;
                connector::validate_source(def)?;
                let what = if def.kind == SourceKind::Table {
                    "table"
                } else {
                    "source"
                };
                self.catalog.add(&def.name, Object::Source(def.clone()))?;
                Ok(Outcome::Done(format!("created {what} {}", def.name)))
            }
            Statement::CreateView {
                name,
                materialized: false,
                query,
                sql,
            } => {
                plan::inputs_of(query, &self.catalog)?;
                // Plan it now, so a mistake shows where the view is defined.
                plan::context::PlanContext::new(&self.catalog, &self.system, false, &Default::default())
                    .await?
                    .plan_query(query)
                    .await?;
                self.catalog.add(
                    name,
                    Object::View(ViewDef {
                        name: name.clone(),
                        query: query.clone(),
                        sql: sql.clone(),
                    }),
                )?;
                Ok(Outcome::Done(format!("created view {name}")))
            }
            Statement::CreateView {
                name,
                materialized: true,
                query,
                sql,
            } => {
                if self.catalog.get(name).is_some() {
                    return Err(Error::plan(format!("'{name}' already exists")));
                }
                let compiled = self.compile(query).await?;
                let hold = self.hold.get(name).cloned();
                let (table, running) = if self.plan_only || hold.is_some() {
                    (
                        MemoryTable::new(self.plan_continuous(name, &compiled, Accepts::Upsert, name)?),
                        None,
                    )
                } else {
                    let mut table = None;
                    let running = self
                        .start(name, &compiled, Accepts::Upsert, name, |schema| {
                            let t = MemoryTable::new(schema);
                            table = Some(t.clone());
                            Ok(Box::new(MemorySink(t)))
                        })
                        .await?;
                    let table = table.ok_or_else(|| Error::Internal("no table".into()))?;
                    table.set_bounded(running.1);
                    (table, Some(running))
                };
                self.catalog.add(
                    name,
                    Object::MaterializedView(MaterializedViewDef {
                        name: name.clone(),
                        query: query.clone(),
                        sql: sql.clone(),
                        table,
                    }),
                )?;
                self.register(name, ObjectKind::MaterializedView, running, hold);
                Ok(Outcome::Done(format!("created materialized view {name}")))
            }
            Statement::CreateSink {
                name,
                options,
                query,
                sql,
            } => {
                if self.catalog.get(name).is_some() {
                    return Err(Error::plan(format!("'{name}' already exists")));
                }
                self.config.policy.check_options(options)?;
                connector::validate_sink(options)?;
                let compiled = self.compile(query).await?;
                if !compiled.presentation.is_empty() {
                    return Err(Error::plan("ORDER BY and LIMIT have no meaning for a sink; drop them"));
                }
                let hold = self.hold.get(name).cloned();
                let accepts = connector::sink_accepts(options);
                let what = sink_label(name, options);
                let running = if self.plan_only || hold.is_some() {
                    let schema = self.plan_continuous(name, &compiled, accepts, &what)?;
                    connector::validate_sink_schema(options, &schema)?;
                    None
                } else {
                    let opts = sink_identity(name, options);
                    Some(
                        self.start(name, &compiled, accepts, &what, |schema| {
                            connector::open_sink(&opts, schema)
                        })
                        .await?,
                    )
                };
                self.catalog.add(
                    name,
                    Object::Sink(SinkDef {
                        name: name.clone(),
                        options: options.clone(),
                        query: query.clone(),
                        sql: sql.clone(),
                    }),
                )?;
                self.register(name, ObjectKind::Sink, running, hold);
                Ok(Outcome::Done(format!("created sink {name}")))
            }
            Statement::Show(kind) => self.show(*kind),
            Statement::Describe(name) => self.describe(name).await,
            Statement::Drop { kind, name, if_exists } => {
                let kind = self.drop_blockers(*kind, name)?;
                match self.catalog.remove(kind, name, *if_exists)? {
                    None => Ok(Outcome::Done(format!("{kind} {name} does not exist, skipped"))),
                    Some(_) => {
                        if let Some(i) = self.queries.iter().position(|q| &q.name == name) {
                            let mut q = self.queries.remove(i);
                            let _ = q.stop.send(true);
                            q.join().await;
                        }
                        // A dropped query has nothing to resume.
                        crate::engine::query::remove_checkpoints(&self.config, name)?;
                        Ok(Outcome::Done(format!("dropped {kind} {name}")))
                    }
                }
            }
            Statement::Explain(query) => Ok(Outcome::Text(self.explain(query).await?)),
            Statement::Set { key, value } => self.set(key, value),
            Statement::Insert { .. } => {
                let sink = self.insert_as_sink(stmt)?;
                Box::pin(self.execute_statement(&sink)).await
            }
            Statement::Query(query) => self.select(query).await,
        }
    }

    /// `SET key = value`, for the queries started after it.
    fn set(&mut self, key: &str, value: &str) -> Result<Outcome> {
        match key {
            "execution.checkpointing.interval" | "checkpoint_interval" => {
                let ms = crate::sql::parser::duration_ms(value)
                    .filter(|ms| *ms > 0)
                    .ok_or_else(|| {
                        Error::option(
                            key,
                            format!("'{value}' is not a duration (e.g. '10 s', '1 min', '500 ms')"),
                        )
                    })?;
                self.config.commit_interval = std::time::Duration::from_millis(ms as u64);
                Ok(Outcome::Done(format!(
                    "{key} = {value}: queries started from now on checkpoint that often"
                )))
            }
            "table.exec.state.ttl" | "state_ttl" => {
                let ttl = crate::sql::parser::duration_ms(value).ok_or_else(|| {
                    Error::option(
                        key,
                        format!("'{value}' is not a duration (e.g. '1 h', '30 min', '0' for none)"),
                    )
                })?;
                self.config.state_ttl = (ttl > 0).then(|| std::time::Duration::from_millis(ttl as u64));
                Ok(Outcome::Done(match self.config.state_ttl {
                    Some(_) => format!(
                        "state ttl {value}: groups of a GROUP BY without a window are forgotten when unchanged that long"
                    ),
                    None => "state ttl off: groups are kept while they have rows".into(),
                }))
            }
            "table.exec.emit.early-fire.delay" | "early_fire_delay" => {
                let ms = crate::sql::parser::duration_ms(value).ok_or_else(|| {
                    Error::option(
                        key,
                        format!("'{value}' is not a duration (e.g. '1 s', '500 ms', '0' for every micro-batch)"),
                    )
                })?;
                self.config.early_fire_delay = std::time::Duration::from_millis(ms.max(0) as u64);
                Ok(Outcome::Done(if ms > 0 {
                    format!(
                        "early fire delay {value}: window aggregates into upsert sinks of queries started from now on send early results at most that often (each window's final result when it closes)"
                    )
                } else {
                    "early fire delay off: early window results after every micro-batch".into()
                }))
            }
            "parallelism.default" | "workers" => {
                let n = value
                    .trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| Error::option(key, format!("'{value}' is not a positive number of threads")))?;
                self.config.workers = n;
                Ok(Outcome::Done(format!(
                    "{key} = {n}: sources of queries started from now on decode on {n} thread(s)"
                )))
            }
            other => Err(Error::option(
                other,
                "unknown setting; valid: 'table.exec.state.ttl' (or state_ttl), 'table.exec.emit.early-fire.delay' (or early_fire_delay), 'execution.checkpointing.interval' (or checkpoint_interval), 'parallelism.default' (or workers)",
            )),
        }
    }

    /// `INSERT INTO t …` as the sink it starts: named `insert_into_t` (`_2`, … if taken), writing to
    /// the table's connector, the query's columns cast to the table's by position (Flink's rule).
    pub fn insert_as_sink(&self, stmt: &Statement) -> Result<Statement> {
        let Statement::Insert {
            table,
            columns,
            query,
            sql,
        } = stmt
        else {
            return Err(Error::Internal("not an INSERT".into()));
        };
        let def = match self.catalog.get(table) {
            Some(Object::Source(d)) => d.clone(),
            Some(o) => {
                return Err(Error::plan(format!(
                    "INSERT INTO {table}: '{table}' is a {}, not a table",
                    o.kind()
                )));
            }
            None => return Err(Error::plan(format!("INSERT INTO {table}: table '{table}' not found"))),
        };
        let options = crate::connector::table_as_sink(&def)?;
        let target: Vec<usize> = if columns.is_empty() {
            (0..def.schema.fields().len()).collect()
        } else {
            columns
                .iter()
                .map(|c| {
                    def.schema
                        .index_of(c)
                        .map_err(|_| Error::plan(format!("INSERT INTO {table}: no column '{c}' in '{table}'")))
                })
                .collect::<Result<_>>()?
        };
        let n = target.len();
        let aliases: Vec<String> = (0..n).map(|i| format!("__c{i}")).collect();
        let items: Vec<String> = def
            .schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let t = sql_type(f.data_type());
                match target.iter().position(|x| *x == i) {
                    Some(j) => format!("CAST(\"__c{j}\" AS {t}) AS {}", plan::quote(f.name())),
                    None => format!("CAST(NULL AS {t}) AS {}", plan::quote(f.name())),
                }
            })
            .collect();
        let wrapped = format!(
            "SELECT {} FROM ({query}) AS \"__insert\"({})",
            items.join(", "),
            aliases
                .iter()
                .map(|a| format!("\"{a}\""))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let Statement::Query(q) = crate::sql::parser::parse_one(&wrapped)? else {
            return Err(Error::Internal("INSERT wrapper".into()));
        };
        let mut name = format!("insert_into_{table}");
        let mut k = 1;
        while self.catalog.get(&name).is_some() {
            k += 1;
            name = format!("insert_into_{table}_{k}");
        }
        Ok(Statement::CreateSink {
            name,
            options,
            query: q,
            sql: sql.clone(),
        })
    }

    fn show(&self, kind: ShowKind) -> Result<Outcome> {
        let (b, s) = match kind {
            ShowKind::Queries => text_batch(
                &[
                    "name",
                    "kind",
                    "status",
                    "rows_in",
                    "rows_out",
                    "errors",
                    "late",
                    "watermark",
                ],
                self.queries
                    .iter()
                    .map(|q| {
                        let m = &q.metrics;
                        let wm = m.watermark.load(std::sync::atomic::Ordering::Relaxed);
                        let wm = match wm {
                            i64::MIN => "-".to_string(),
                            i64::MAX => "end".to_string(),
                            w => crate::time::format_ms(w),
                        };
                        vec![
                            q.name.clone(),
                            q.kind.to_string(),
                            match &q.outcome {
                                Some(Err(e)) => format!("failed: {e}"),
                                _ => q.status().to_string(),
                            },
                            Metrics::get(&m.rows_in).to_string(),
                            Metrics::get(&m.rows_out).to_string(),
                            Metrics::get(&m.errors).to_string(),
                            Metrics::get(&m.late).to_string(),
                            wm,
                        ]
                    })
                    .collect(),
            )?,
            other => {
                let kinds: &[ObjectKind] = match other {
                    ShowKind::Sources => &[ObjectKind::Source],
                    ShowKind::Tables => &[ObjectKind::Table],
                    ShowKind::Sinks => &[ObjectKind::Sink],
                    _ => &[ObjectKind::View, ObjectKind::MaterializedView],
                };
                let rows = self
                    .catalog
                    .ordered()
                    .filter(|(_, o)| kinds.contains(&o.kind()))
                    .map(|(n, o)| {
                        let detail = match o {
                            Object::Source(s) => s.options.get("connector").unwrap_or_default().to_string(),
                            Object::Sink(s) => s.options.get("connector").unwrap_or_default().to_string(),
                            Object::MaterializedView(m) => format!("{} rows", m.table.len()),
                            Object::View(_) => String::new(),
                        };
                        vec![n.to_string(), o.kind().to_string(), detail]
                    })
                    .collect();
                text_batch(&["name", "kind", "detail"], rows)?
            }
        };
        Ok(Outcome::Rows(b, s))
    }

    async fn describe(&self, name: &str) -> Result<Outcome> {
        let schema: SchemaRef = match self.catalog.get(name) {
            Some(Object::Source(s)) => s.schema.clone(),
            Some(Object::MaterializedView(m)) => m.table.schema(),
            Some(Object::View(v)) => self.output_schema(&v.query).await?,
            Some(Object::Sink(s)) => self.output_schema(&s.query).await?,
            None if crate::sql::catalog::SYSTEM_TABLES.contains(&name) => SystemTables::schema(),
            None => return Err(Error::plan(format!("'{name}' not found"))),
        };
        let (mut b, s) = text_batch(&["column", "type", "nullable"], schema_rows(&schema))?;
        if let Some(Object::Source(src)) = self.catalog.get(name)
            && let Some(w) = &src.watermark
        {
            let (extra, _) = text_batch(
                &["column", "type", "nullable"],
                vec![vec![
                    format!("WATERMARK FOR {}", w.column),
                    format!("{} - {} ms", w.column, w.delay_ms),
                    String::new(),
                ]],
            )?;
            b.extend(extra);
        }
        Ok(Outcome::Rows(b, s))
    }

    async fn output_schema(&self, q: &Query) -> Result<SchemaRef> {
        Ok(
            plan::compile(q, &self.catalog, &self.system, false, plan::Reads::Continuous)
                .await?
                .schema,
        )
    }

    async fn explain(&self, q: &Query) -> Result<String> {
        let mut compiled = plan::compile(q, &self.catalog, &self.system, false, plan::Reads::Interactive).await?;
        let mut out = String::new();
        let i = &compiled.inputs;
        let list = |s: &std::collections::BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(", ");
        if compiled.bounded() {
            out.push_str("a bounded query: it runs once, in batch (DataFusion)\n");
            let mut pc = plan::context::PlanContext::new(&self.catalog, &self.system, false, i).await?;
            let plan = pc.plan_query(q).await?;
            out.push_str(&plan.display_indent().to_string());
            out.push_str(&format!("\noutput: {}\n", compiled.schema));
            return Ok(out);
        }
        out.push_str(&format!("streams: {}\n", list(&i.streams)));
        if !i.tables.is_empty() {
            out.push_str(&format!("lookup tables: {}\n", list(&i.tables)));
        }
        // As a live SELECT (or a materialized view) would run it: into an upsert table.
        plan::finalize(&mut compiled, Accepts::Upsert, "a live SELECT")?;
        out.push_str("operators (each reads the ones indented below it; ⇒ what its output carries):\n");
        out.push_str(&compiled.graph.explain());
        out.push_str(&format!("output: {}\n", compiled.schema));
        Ok(out)
    }

    /// What a bounded SELECT needs, to run it without the session (see [`ReadView`]).
    pub fn read_view(&self) -> ReadView {
        ReadView {
            catalog: self.catalog.clone(),
            system: self.system.clone(),
            limits: self.result_limits,
        }
    }

    async fn select(&mut self, q: &Query) -> Result<Outcome> {
        let compiled = plan::compile(
            q,
            &self.catalog,
            &self.system,
            !self.plan_only,
            plan::Reads::Interactive,
        )
        .await?;
        if compiled.bounded() {
            if self.wait_for_bounded {
                self.wait_bounded().await;
            }
            let (rows, schema) = bounded_rows(
                &self.catalog,
                &self.system,
                &compiled,
                q,
                !self.plan_only,
                self.result_limits.as_ref(),
            )
            .await?;
            return Ok(Outcome::Rows(rows, schema));
        }
        if self.plan_only {
            self.plan_continuous("SELECT", &compiled, Accepts::Upsert, "a live SELECT")?;
            return Ok(Outcome::Done("planned a continuous SELECT".into()));
        }
        self.live_seq += 1;
        let name = format!("live-{}", self.live_seq);
        let mut table = None;
        let (metrics, _bounded, stop, handle) = self
            .start(&name, &compiled, Accepts::Upsert, "a live SELECT", |schema| {
                let t = MemoryTable::new(schema);
                table = Some(t.clone());
                Ok(Box::new(MemorySink(t)))
            })
            .await?;
        let table = table.ok_or_else(|| Error::Internal("no table".into()))?;
        Ok(Outcome::Live(LiveQuery {
            table,
            presentation: compiled.presentation,
            metrics,
            stop,
            handle,
        }))
    }
}

/// SQL for a column type (to cast into a table's columns).
fn sql_type(t: &DataType) -> String {
    match t {
        DataType::Int64 => "BIGINT".into(),
        DataType::Int32 => "INT".into(),
        DataType::Int16 => "SMALLINT".into(),
        DataType::Int8 => "TINYINT".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Float32 => "REAL".into(),
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Date32 => "DATE".into(),
        DataType::Utf8 => "VARCHAR".into(),
        DataType::Timestamp(_, _) => "TIMESTAMP(3)".into(),
        other => other.to_string(),
    }
}

/// A sink as messages name it: `sink 'x' (parquet)`.
fn sink_label(name: &str, options: &crate::sql::parser::Options) -> String {
    format!("sink '{name}' ({})", options.get("connector").unwrap_or_default())
}

fn needs_a_stream(name: &str, compiled: &Compiled) -> Result<()> {
    if compiled.bounded() {
        return Err(Error::plan(format!(
            "'{name}' reads no source: a continuous query needs a CREATE SOURCE input"
        )));
    }
    Ok(())
}

/// The rows of a bounded SELECT already compiled against `catalog` (none, only the schema, when not
/// `load`: plan only), within `limits`.
async fn bounded_rows(
    catalog: &Catalog,
    system: &SystemTables,
    compiled: &Compiled,
    q: &Query,
    load: bool,
    limits: Option<&ResultLimits>,
) -> Result<(Vec<RecordBatch>, SchemaRef)> {
    let mut pc = match limits {
        Some(l) => {
            plan::context::PlanContext::with_memory_limit(catalog, system, load, &compiled.inputs, l.memory_bytes)
                .await?
        }
        None => plan::context::PlanContext::new(catalog, system, load, &compiled.inputs).await?,
    };
    let plan = pc.plan_query(q).await?;
    let schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
    if !load {
        return Ok((Vec::new(), schema));
    }
    let frame = pc.ctx.execute_logical_plan(plan).await?;
    let rows = match limits {
        Some(l) => l.collect(frame).await?,
        None => frame.collect().await?,
    };
    Ok((rows, schema))
}

/// What a bounded SELECT reads, taken from a session — a clone of its catalog (tables and views
/// are shared, not copied) — so that the query runs without it: the server's `/v1/query` holds the
/// session's lock only while taking this.
pub struct ReadView {
    catalog: Catalog,
    system: Arc<SystemTables>,
    limits: Option<ResultLimits>,
}

impl ReadView {
    /// The rows of a bounded SELECT; one over a stream is refused (it has no end to answer with).
    pub async fn select(&self, q: &Query) -> Result<(Vec<RecordBatch>, SchemaRef)> {
        let compiled = plan::compile(q, &self.catalog, &self.system, true, plan::Reads::Interactive).await?;
        if !compiled.bounded() {
            return Err(Error::plan(
                "a continuous SELECT has no end to answer with; register it with CREATE MATERIALIZED VIEW … AS \
                 SELECT … and read it with POST /v1/query",
            ));
        }
        bounded_rows(&self.catalog, &self.system, &compiled, q, true, self.limits.as_ref()).await
    }
}

/// Caps on a bounded SELECT (set by the server for `/v1/query`): rows and bytes of the answer, and
/// the memory DataFusion's operators may take to compute it.
#[derive(Debug, Clone, Copy)]
pub struct ResultLimits {
    pub rows: usize,
    pub bytes: usize,
    pub memory_bytes: usize,
}

impl ResultLimits {
    /// The answer's batches, read as they come; stops with [`Error::Limit`] once past a cap (the
    /// rest is never computed) and turns DataFusion's "resources exhausted" into one too.
    async fn collect(&self, frame: datafusion::dataframe::DataFrame) -> Result<Vec<RecordBatch>> {
        use futures::StreamExt;
        let exhausted = |e: datafusion::error::DataFusionError| match e.find_root() {
            datafusion::error::DataFusionError::ResourcesExhausted(m) => Error::Limit(format!(
                "the query needs more than the server's {} bytes of memory ({m}); narrow it or add a LIMIT",
                self.memory_bytes
            )),
            _ => Error::DataFusion(e),
        };
        let mut stream = frame.execute_stream().await.map_err(exhausted)?;
        let (mut out, mut rows, mut bytes) = (Vec::new(), 0usize, 0usize);
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(exhausted)?;
            rows += batch.num_rows();
            bytes += batch.get_array_memory_size();
            if rows > self.rows {
                return Err(Error::Limit(format!(
                    "the answer has more than {} rows, the server's cap; add a LIMIT or a WHERE",
                    self.rows
                )));
            }
            if bytes > self.bytes {
                return Err(Error::Limit(format!(
                    "the answer is over {} bytes, the server's cap; select fewer columns or rows",
                    self.bytes
                )));
            }
            out.push(batch);
        }
        Ok(out)
    }
}

/// Apply a live query's `ORDER BY … LIMIT …` to a snapshot of its table.
pub async fn present(table: &MemoryTable, presentation: &str) -> Result<Vec<RecordBatch>> {
    let snap = table.snapshot()?;
    if presentation.is_empty() {
        return Ok(vec![snap]);
    }
    let ctx = datafusion::prelude::SessionContext::new();
    ctx.register_batch("__live", snap)?;
    Ok(ctx
        .sql(&format!("SELECT * FROM __live{presentation}"))
        .await?
        .collect()
        .await?)
}

/// A sink's options with what identifies it across restarts: an exactly-once Kafka sink's
/// `transactional.id` is `freshet-sink-<sink name>-<topic>` unless the user set one, so two sinks
/// writing one topic never share it (nor do sinks of one name writing other topics).
fn sink_identity(name: &str, options: &crate::sql::parser::Options) -> crate::sql::parser::Options {
    let mut o = options.clone();
    let exactly_once = o.get("sink.delivery-guarantee").is_none_or(|g| g == "exactly-once");
    if o.get("connector") == Some("kafka") && exactly_once && o.get("properties.transactional.id").is_none() {
        let topic = o.get("topic").unwrap_or_default().to_string();
        o.0.insert(
            "properties.transactional.id".into(),
            format!("freshet-sink-{name}-{topic}"),
        );
    }
    o
}

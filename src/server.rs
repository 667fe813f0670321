//! `freshet serve`: the HTTP API over one [`Session`] with a persisted catalog (docs/server.md,
//! docs/openapi.yaml). Statements registered here keep running across restarts of the server.
//!
//! Every answer is JSON (except `/metrics`, Prometheus text, and `/openapi.yaml`); errors are
//! `{"error": "…"}` with a 4xx status (5xx only for faults of the server itself), plus `line`/`column`
//! for SQL that does not parse.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::rejection::{PathRejection, StringRejection};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use datafusion::arrow::record_batch::RecordBatch;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::engine::query::Metrics;
use crate::error::Error;
use crate::session::{Outcome, Session};
use crate::sql::parser::{ObjectKind, Statement};

/// The OpenAPI description of this API, served at `/openapi.yaml`.
pub const OPENAPI: &str = include_str!("../docs/openapi.yaml");

pub struct AppState {
    /// Statements, pause, resume and drop take it, one at a time (they may open connectors: I/O).
    /// Reads never wait for it: see `views`.
    pub session: Mutex<Session>,
    /// Who may call and what a request may carry ([`crate::guard`]): the bearer token (every
    /// request but `/health` needs it when set), `Host` names, body size, timeouts, concurrency.
    pub limits: crate::guard::Limits,
    /// The session as of the last time it was free: its queries with their live counters, and
    /// what a bounded SELECT reads (a copy of the catalog, taken only when the catalog may have
    /// changed). `GET /v1/queries[/{name}]`, `/metrics` and `POST /v1/query`
    /// answer from it while a statement holds the session (a status, or a view created meanwhile,
    /// may then lag by as long as that statement takes).
    views: std::sync::RwLock<Kept>,
}

/// See [`AppState::views`].
#[derive(Clone)]
struct Kept {
    queries: Arc<Vec<QueryView>>,
    reads: Arc<crate::session::ReadView>,
}

impl Kept {
    fn of(session: &Session) -> Kept {
        Kept {
            queries: Arc::new(views_of(session)),
            reads: Arc::new(session.read_view()),
        }
    }
}

impl AppState {
    pub fn new(session: Session, limits: crate::guard::Limits) -> Arc<AppState> {
        let views = std::sync::RwLock::new(Kept::of(&session));
        Arc::new(AppState {
            session: Mutex::new(session),
            limits,
            views,
        })
    }

    /// Remember the queries as `session` has them now (their status; the counters are live).
    fn keep_queries(&self, session: &Session) {
        let queries = Arc::new(views_of(session));
        match self.views.write() {
            Ok(mut v) => v.queries = queries,
            Err(poisoned) => poisoned.into_inner().queries = queries,
        }
    }

    /// Remember the session as it is now: its queries, and — after a statement, pause, resume or
    /// drop, the only requests that change the catalog — what a bounded SELECT reads.
    fn keep_all(&self, session: &Session) {
        let kept = Kept::of(session);
        match self.views.write() {
            Ok(mut v) => *v = kept,
            Err(poisoned) => *poisoned.into_inner() = kept,
        }
    }

    /// The session now if it is free (reaping the queries that ended), else as last kept.
    async fn current(&self) -> Kept {
        if let Ok(mut session) = self.session.try_lock() {
            let _ = session.reap().await;
            self.keep_queries(&session);
        }
        match self.views.read() {
            Ok(v) => v.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    async fn current_views(&self) -> Arc<Vec<QueryView>> {
        self.current().await.queries
    }
}

/// A query as the read endpoints show it.
#[derive(Debug, Clone)]
struct QueryView {
    name: String,
    kind: String,
    status: &'static str,
    sql: String,
    last_error: Option<String>,
    metrics: Arc<Metrics>,
}

fn views_of(session: &Session) -> Vec<QueryView> {
    session
        .queries
        .iter()
        .map(|q| QueryView {
            name: q.name.clone(),
            kind: q.kind.to_string(),
            status: q.status(),
            sql: session
                .catalog
                .get(&q.name)
                .map(|o| o.sql().to_string())
                .unwrap_or_default(),
            last_error: match &q.outcome {
                Some(Err(e)) => Some(e.clone()),
                _ => None,
            },
            metrics: q.metrics.clone(),
        })
        .collect()
}

type Shared = Arc<AppState>;

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

/// The status of a statement that failed: 403 when the policy refused it, else 400.
fn status_of(e: &Error) -> StatusCode {
    match e {
        Error::Forbidden { .. } => StatusCode::FORBIDDEN,
        Error::Limit(_) => StatusCode::UNPROCESSABLE_ENTITY,
        // The server's own fault (its catalog could not be written), not the statement's.
        Error::Io { .. } | Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    }
}

/// A statement error as JSON: SQL errors keep their line and column.
fn statement_error(e: &Error, line: u64) -> Value {
    match e {
        Error::Sql { line, col, message } => json!({ "error": message, "line": line, "column": col }),
        other => json!({ "error": other.to_string(), "line": line }),
    }
}

fn rows_json(batches: &[RecordBatch]) -> std::result::Result<Value, String> {
    let mut buf = Vec::new();
    {
        let mut w = datafusion::arrow::json::ArrayWriter::new(&mut buf);
        for b in batches {
            w.write(b).map_err(|e| e.to_string())?;
        }
        w.finish().map_err(|e| e.to_string())?;
    }
    if buf.is_empty() {
        return Ok(json!([]));
    }
    serde_json::from_slice(&buf).map_err(|e| e.to_string())
}

fn columns_json(schema: &datafusion::arrow::datatypes::Schema) -> Value {
    schema
        .fields()
        .iter()
        .map(|f| json!({ "name": f.name(), "type": f.data_type().to_string() }))
        .collect()
}

/// Turn a statement's outcome into JSON; a continuous SELECT is stopped and refused.
async fn outcome_json(outcome: Outcome) -> std::result::Result<Value, String> {
    Ok(match outcome {
        Outcome::Done(message) => json!({ "kind": "done", "message": message }),
        Outcome::Text(text) => json!({ "kind": "text", "text": text }),
        Outcome::Rows(batches, schema) => json!({
            "kind": "rows",
            "columns": columns_json(&schema),
            "rows": rows_json(&batches)?,
        }),
        Outcome::Live(live) => {
            let _ = live.stop.send(true);
            let _ = live.handle.await;
            return Err(
                "a continuous SELECT has no end to answer with; register it with CREATE MATERIALIZED \
                        VIEW … AS SELECT … and read it with POST /v1/query"
                    .into(),
            );
        }
    })
}

async fn statements(State(st): State<Shared>, body: Result<String, StringRejection>) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(r) => return error(r.status(), r.body_text()),
    };
    let parsed = match crate::sql::parser::parse_script(&body) {
        Ok(p) => p,
        Err(e) => return (StatusCode::BAD_REQUEST, axum::Json(statement_error(&e, 1))).into_response(),
    };
    if parsed.is_empty() {
        return error(StatusCode::BAD_REQUEST, "no statements in the body");
    }
    let mut session = st.session.lock().await;
    let mut results = Vec::new();
    for (i, located) in parsed.iter().enumerate() {
        let result = match session.execute(&located.statement).await {
            Ok(outcome) => outcome_json(outcome)
                .await
                .map_err(|e| (StatusCode::BAD_REQUEST, json!({ "error": e }))),
            Err(e) => Err((status_of(&e), statement_error(&e, located.line))),
        };
        st.keep_all(&session);
        match result {
            Ok(v) => results.push(v),
            Err((status, mut err)) => {
                err["statement"] = json!(i + 1);
                if err.get("line").is_none() {
                    err["line"] = json!(located.line);
                }
                err["results"] = json!(results);
                return (status, axum::Json(err)).into_response();
            }
        }
    }
    axum::Json(json!({ "results": results })).into_response()
}

fn query_json(q: &QueryView) -> Value {
    let m = &q.metrics;
    let wm = m.watermark.load(Ordering::Relaxed);
    let watermark = match wm {
        i64::MIN | i64::MAX => Value::Null,
        w => json!(crate::time::format_ms(w)),
    };
    let lag_ms = match wm {
        i64::MIN | i64::MAX => Value::Null,
        w => json!(crate::time::now_ms() - w),
    };
    json!({
        "name": q.name,
        "kind": q.kind,
        "status": q.status,
        "sql": q.sql,
        "rows_in": Metrics::get(&m.rows_in),
        "rows_out": Metrics::get(&m.rows_out),
        "errors": Metrics::get(&m.errors),
        "late": Metrics::get(&m.late),
        "batches": Metrics::get(&m.batches),
        "watermark": watermark,
        "lag_ms": lag_ms,
        "last_error": q.last_error,
    })
}

async fn list_queries(State(st): State<Shared>) -> Response {
    let views = st.current_views().await;
    let queries: Vec<Value> = views.iter().map(query_json).collect();
    axum::Json(json!({ "queries": queries })).into_response()
}

fn not_found(name: &str) -> Response {
    error(StatusCode::NOT_FOUND, format!("no continuous query '{name}'"))
}

/// A query name from the path; a path that cannot be one (not UTF-8) is a JSON 400 like any error.
type NamePath = Result<Path<String>, PathRejection>;

fn name_of(path: NamePath) -> Result<String, (StatusCode, String)> {
    path.map(|Path(n)| n).map_err(|r| (r.status(), r.body_text()))
}

async fn get_query(State(st): State<Shared>, path: NamePath) -> Response {
    let name = match name_of(path) {
        Ok(n) => n,
        Err((status, why)) => return error(status, why),
    };
    let views = st.current_views().await;
    match views.iter().find(|q| q.name == name) {
        Some(q) => axum::Json(query_json(q)).into_response(),
        None => not_found(&name),
    }
}

async fn pause_or_resume(st: Shared, name: String, pause: bool) -> Response {
    let mut session = st.session.lock().await;
    if !session.queries.iter().any(|q| q.name == name) {
        return not_found(&name);
    }
    let result = if pause {
        session.pause(&name).await
    } else {
        session.resume(&name).await
    };
    st.keep_all(&session);
    match result {
        Ok(()) => match views_of(&session).iter().find(|q| q.name == name) {
            Some(q) => axum::Json(query_json(q)).into_response(),
            None => not_found(&name),
        },
        Err(e @ Error::Plan(_)) => error(StatusCode::CONFLICT, e.to_string()),
        Err(e @ (Error::Io { .. } | Error::Internal(_))) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::BAD_GATEWAY, e.to_string()),
    }
}

async fn pause(State(st): State<Shared>, path: NamePath) -> Response {
    match name_of(path) {
        Ok(name) => pause_or_resume(st, name, true).await,
        Err((status, why)) => error(status, why),
    }
}

async fn resume(State(st): State<Shared>, path: NamePath) -> Response {
    match name_of(path) {
        Ok(name) => pause_or_resume(st, name, false).await,
        Err((status, why)) => error(status, why),
    }
}

async fn delete_query(State(st): State<Shared>, path: NamePath) -> Response {
    let name = match name_of(path) {
        Ok(n) => n,
        Err((status, why)) => return error(status, why),
    };
    let mut session = st.session.lock().await;
    let Some(kind) = session.queries.iter().find(|q| q.name == name).map(|q| q.kind) else {
        return not_found(&name);
    };
    let kind = if kind == ObjectKind::MaterializedView {
        ObjectKind::MaterializedView
    } else {
        ObjectKind::Sink
    };
    let drop = Statement::Drop {
        kind,
        name: name.clone(),
        if_exists: false,
    };
    let result = session.execute(&drop).await;
    st.keep_all(&session);
    match result {
        Ok(outcome) => match outcome_json(outcome).await {
            Ok(v) => axum::Json(v).into_response(),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        },
        Err(e @ (Error::Io { .. } | Error::Internal(_))) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::CONFLICT, e.to_string()),
    }
}

/// A bounded SELECT (over materialized views and tables), answered with its rows.
async fn query(State(st): State<Shared>, body: Result<String, StringRejection>) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(r) => return error(r.status(), r.body_text()),
    };
    let stmt = match crate::sql::parser::parse_one(&body) {
        Ok(s) => s,
        Err(e) => return (StatusCode::BAD_REQUEST, axum::Json(statement_error(&e, 1))).into_response(),
    };
    if !matches!(stmt, Statement::Query(_)) {
        return error(
            StatusCode::BAD_REQUEST,
            "POST /v1/query takes one SELECT; send other statements to /v1/statements",
        );
    }
    let Statement::Query(q) = stmt else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "not a query");
    };
    // What the query reads, taken without waiting for a statement in progress; the query itself
    // runs without the session.
    let reads = st.current().await.reads;
    match reads.select(&q).await {
        Ok((rows, schema)) => match outcome_json(Outcome::Rows(rows, schema)).await {
            Ok(v) => axum::Json(v).into_response(),
            Err(e) => error(StatusCode::BAD_REQUEST, e),
        },
        Err(e) => (status_of(&e), axum::Json(statement_error(&e, 1))).into_response(),
    }
}

async fn metrics(State(st): State<Shared>) -> Response {
    let views = st.current_views().await;
    let states = views
        .iter()
        .map(|q| crate::metrics::QueryState {
            name: q.name.clone(),
            running: q.status == "running",
            metrics: q.metrics.clone(),
        })
        .collect();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render_states(states),
    )
        .into_response()
}

pub fn router(state: Shared) -> Router {
    let guard = crate::guard::Guard::new(state.limits.clone());
    let api = Router::new()
        .route("/v1/statements", post(statements))
        .route("/v1/queries", get(list_queries))
        .route("/v1/queries/{name}", get(get_query).delete(delete_query))
        .route("/v1/queries/{name}/pause", post(pause))
        .route("/v1/queries/{name}/resume", post(resume))
        .route("/v1/query", post(query))
        .route_layer(middleware::from_fn(crate::guard::csrf))
        .route("/metrics", get(metrics))
        .route(
            "/openapi.yaml",
            get(|| async { ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI) }),
        );
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .merge(api)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint; see /openapi.yaml") })
        .method_not_allowed_fallback(|| async { error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here") })
        // The guard caps bodies at `--max-body-bytes`; the extractors take what it let through
        // (their own default, 2 MB, would otherwise cap a larger setting).
        .layer(axum::extract::DefaultBodyLimit::max(state.limits.max_body))
        .layer(middleware::from_fn_with_state(guard, crate::guard::check))
        .with_state(state)
}

/// Serve until `shutdown` resolves; then stop every query (each commits its sink) and keep the catalog
/// as it was, so the queries start again with the next server.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Shared,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> crate::Result<()> {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    let reaper = {
        let state = state.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                let mut session = state.session.lock().await;
                if let Err(e) = session.reap().await {
                    eprintln!("serve: saving the catalog: {e}");
                }
                state.keep_queries(&session);
            }
        })
    };
    // Headers get as long as a whole request; connections: four per request served at once.
    let limits = &state.limits;
    let served = crate::guard::serve(
        listener,
        router(state.clone()),
        limits.request_timeout,
        limits.max_concurrent.saturating_mul(4),
        shutdown,
    )
    .await
    .map_err(|e| Error::External(format!("http server {addr:?}: {e}")));
    reaper.abort();
    let mut session = state.session.lock().await;
    // Record what ended by itself; then stop the rest without recording it (they run again next time).
    let reaped = session.reap().await;
    session.stop_all().await;
    served.and(reaped)
}

//! `freshet repl --server URL`: the client side of `freshet serve`'s HTTP API (docs/openapi.yaml).
//!
//! A small blocking HTTP/1.1 client (ureq, plain HTTP, no TLS) run on Tokio's blocking pool. Answers
//! are turned into what a local session gives — messages, text, Arrow record batches and errors with
//! their line and column — so the REPL prints remote results with the same code as local ones.

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{ArrayRef, RecordBatchOptions, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::json::ReaderBuilder;
use datafusion::arrow::record_batch::RecordBatch;
use serde_json::Value;

use crate::error::{Error, Result};

/// The most a server's answer may hold (a large SELECT result).
const MAX_BODY: u64 = 1 << 30;

/// What one statement gave on the server.
#[derive(Debug)]
pub enum RemoteOutcome {
    Done(String),
    Text(String),
    Rows(Vec<RecordBatch>, SchemaRef),
}

/// The statement that failed on the server: its error (an [`Error::Sql`] when the server gave a
/// column) and the line of the request body where it starts.
#[derive(Debug)]
pub struct StatementError {
    pub error: Error,
    pub line: Option<u64>,
}

/// The answer to `POST /v1/statements`: the outcome of each statement that ran, and the error of
/// the one that stopped the run, if any.
#[derive(Debug)]
pub struct Reply {
    pub results: Vec<RemoteOutcome>,
    pub error: Option<StatementError>,
}

/// A connection to one `freshet serve`.
#[derive(Clone)]
pub struct Remote {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

enum Method {
    Get,
    Post(String),
}

impl Remote {
    /// `url` is the server's address, e.g. `http://127.0.0.1:8080` (`http://` may be left out).
    pub fn new(url: &str, token: Option<String>) -> Result<Remote> {
        let url = url.trim().trim_end_matches('/');
        let base = match url.split_once("://") {
            None => format!("http://{url}"),
            Some(("http", rest)) if !rest.is_empty() => url.to_string(),
            Some(("https", _)) => {
                return Err(Error::External(format!(
                    "--server {url}: this build speaks plain HTTP only; use http:// (freshet serve \
                     listens on loopback; put a TLS proxy in front of it for remote access)"
                )));
            }
            Some(_) => return Err(Error::External(format!("--server {url}: expected http://HOST:PORT"))),
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .user_agent(concat!("freshet-repl/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        Ok(Remote {
            base,
            token: token.filter(|t| !t.is_empty()),
            agent,
        })
    }

    /// The server's base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// One request; the answer's status and JSON body. A 401, a connection failure or an answer
    /// that is not JSON is an error that names the server.
    async fn call(&self, method: Method, path: &str) -> Result<(u16, Value)> {
        let agent = self.agent.clone();
        let url = format!("{}{path}", self.base);
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let sent = tokio::task::spawn_blocking(move || -> std::result::Result<(u16, String), ureq::Error> {
            let mut response = match method {
                Method::Get => {
                    let mut request = agent.get(&url);
                    if let Some(a) = &auth {
                        request = request.header("Authorization", a);
                    }
                    request.call()?
                }
                Method::Post(body) => {
                    let mut request = agent.post(&url).content_type("application/sql; charset=utf-8");
                    if let Some(a) = &auth {
                        request = request.header("Authorization", a);
                    }
                    request.send(body)?
                }
            };
            let status = response.status().as_u16();
            let body = response.body_mut().with_config().limit(MAX_BODY).read_to_string()?;
            Ok((status, body))
        })
        .await
        .map_err(|e| Error::Internal(format!("HTTP request task: {e}")))?;
        let (status, body) = sent.map_err(|e| self.transport_error(e))?;
        if status == 401 {
            let refused = if self.token.is_some() {
                " (it refused the token given)"
            } else {
                ""
            };
            return Err(Error::External(format!(
                "the server wants a token: --token or FRESHET_TOKEN{refused}"
            )));
        }
        match serde_json::from_str::<Value>(&body) {
            Ok(v) if v.is_object() => Ok((status, v)),
            _ => {
                let snippet: String = body.chars().take(120).collect();
                Err(Error::External(format!(
                    "{} answered {status} without Freshet's JSON (is it a freshet serve?): {snippet}",
                    self.base
                )))
            }
        }
    }

    fn transport_error(&self, e: ureq::Error) -> Error {
        let reason = match e {
            ureq::Error::Io(io) => io.to_string(),
            ureq::Error::HostNotFound => "host not found".to_string(),
            ureq::Error::Timeout(t) => format!("timed out ({t})"),
            other => other.to_string(),
        };
        Error::External(format!("cannot reach the freshet server at {}: {reason}", self.base))
    }

    /// Check that the server answers and takes our token (`GET /v1/queries`).
    pub async fn check(&self) -> Result<()> {
        let (status, body) = self.call(Method::Get, "/v1/queries").await?;
        if status == 200 {
            Ok(())
        } else {
            Err(self.status_error(status, &body))
        }
    }

    fn status_error(&self, status: u16, body: &Value) -> Error {
        match body.get("error").and_then(Value::as_str) {
            Some(message) if (400..500).contains(&status) => Error::External(message.to_string()),
            Some(message) => Error::External(format!("server error ({status}): {message}")),
            None => Error::External(format!("{} answered {status}: {body}", self.base)),
        }
    }

    /// `POST /v1/statements`: run `sql` (one or more statements) on the server.
    pub async fn statements(&self, sql: &str) -> Result<Reply> {
        let (status, body) = self.call(Method::Post(sql.to_string()), "/v1/statements").await?;
        match status {
            200 => Ok(Reply {
                results: outcomes(&body["results"])?,
                error: None,
            }),
            400 if body.get("error").is_some() => {
                let message = body["error"].as_str().unwrap_or_default().to_string();
                let line = body.get("line").and_then(Value::as_u64);
                let error = match (line, body.get("column").and_then(Value::as_u64)) {
                    (Some(line), Some(col)) => Error::Sql { line, col, message },
                    _ => Error::External(message),
                };
                Ok(Reply {
                    results: outcomes(&body["results"])?,
                    error: Some(StatementError { error, line }),
                })
            }
            _ => Err(self.status_error(status, &body)),
        }
    }

    /// `POST /v1/queries/NAME/pause` (or `resume`); the query's status after it.
    pub async fn pause_or_resume(&self, name: &str, pause: bool) -> Result<String> {
        let path = format!(
            "/v1/queries/{}/{}",
            percent_encode(name),
            if pause { "pause" } else { "resume" }
        );
        let (status, body) = self.call(Method::Post(String::new()), &path).await?;
        if status == 200 {
            Ok(body["status"].as_str().unwrap_or("unknown").to_string())
        } else {
            Err(self.status_error(status, &body))
        }
    }
}

/// A path segment: everything but unreserved characters percent-encoded.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn outcomes(results: &Value) -> Result<Vec<RemoteOutcome>> {
    let Some(results) = results.as_array() else {
        return Ok(Vec::new());
    };
    results.iter().map(outcome).collect()
}

fn outcome(r: &Value) -> Result<RemoteOutcome> {
    let text = |key: &str| r[key].as_str().unwrap_or_default().to_string();
    match r["kind"].as_str() {
        Some("done") => Ok(RemoteOutcome::Done(text("message"))),
        Some("text") => Ok(RemoteOutcome::Text(text("text"))),
        Some("rows") => {
            let columns = r["columns"].as_array().map(Vec::as_slice).unwrap_or_default();
            let rows = r["rows"].as_array().map(Vec::as_slice).unwrap_or_default();
            let (batches, schema) = to_batches(columns, rows)?;
            Ok(RemoteOutcome::Rows(batches, schema))
        }
        _ => Err(Error::External(format!(
            "the server answered a result of unknown kind: {r}"
        ))),
    }
}

/// The server's rows (one JSON object per row, keyed by column name, nulls left out) as Arrow: in
/// the declared column types when they decode, else every column as text.
pub fn to_batches(columns: &[Value], rows: &[Value]) -> Result<(Vec<RecordBatch>, SchemaRef)> {
    let names: Vec<String> = columns
        .iter()
        .map(|c| c["name"].as_str().unwrap_or_default().to_string())
        .collect();
    let types: Option<Vec<DataType>> = columns
        .iter()
        .map(|c| c["type"].as_str().and_then(|t| t.parse::<DataType>().ok()))
        .collect();
    if let Some(types) = types {
        let schema = Arc::new(Schema::new(
            names
                .iter()
                .zip(types)
                .map(|(n, t)| Field::new(n, t, true))
                .collect::<Vec<_>>(),
        ));
        if let Ok(batches) = decode_typed(&schema, rows) {
            return Ok((batches, schema));
        }
    }
    let schema = Arc::new(Schema::new(
        names
            .iter()
            .map(|n| Field::new(n, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ));
    let arrays: Vec<ArrayRef> = names
        .iter()
        .map(|n| {
            let mut b = StringBuilder::new();
            for row in rows {
                match row.get(n) {
                    None | Some(Value::Null) => b.append_null(),
                    Some(Value::String(s)) => b.append_value(s),
                    Some(other) => b.append_value(other.to_string()),
                }
            }
            Arc::new(b.finish()) as ArrayRef
        })
        .collect();
    let options = RecordBatchOptions::new().with_row_count(Some(rows.len()));
    let batch = RecordBatch::try_new_with_options(schema.clone(), arrays, &options)?;
    Ok((vec![batch], schema))
}

fn decode_typed(schema: &SchemaRef, rows: &[Value]) -> Result<Vec<RecordBatch>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let mut decoder = ReaderBuilder::new(schema.clone())
        .with_batch_size(rows.len())
        .build_decoder()?;
    decoder.serialize(rows)?;
    Ok(decoder.flush()?.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rows_decode_in_their_declared_types() {
        let columns = [
            json!({"name": "course_id", "type": "Int64"}),
            json!({"name": "views", "type": "Int64"}),
            json!({"name": "region", "type": "Utf8"}),
        ];
        let rows = [
            json!({"course_id": 3, "views": 10, "region": "eu"}),
            json!({"course_id": 4, "views": 7}),
        ];
        let (batches, schema) = to_batches(&columns, &rows).expect("batches");
        assert_eq!(schema.field(0).data_type(), &DataType::Int64);
        let text = crate::print::format_batches(&batches, crate::print::PrintFormat::Csv).expect("csv");
        assert_eq!(text, "course_id,views,region\n3,10,eu\n4,7,\n");
    }

    #[test]
    fn unknown_types_fall_back_to_text() {
        let columns = [
            json!({"name": "a", "type": "NoSuchType"}),
            json!({"name": "b", "type": "Int64"}),
        ];
        let rows = [json!({"a": {"x": 1}, "b": 2}), json!({"b": null})];
        let (batches, schema) = to_batches(&columns, &rows).expect("batches");
        assert_eq!(schema.field(1).data_type(), &DataType::Utf8);
        let text = crate::print::format_batches(&batches, crate::print::PrintFormat::Csv).expect("csv");
        assert_eq!(text, "a,b\n\"{\"\"x\"\":1}\",2\n,\n");
        let (batches, _) = to_batches(&columns, &[]).expect("no rows");
        assert_eq!(crate::print::row_count(&batches), 0);
    }

    #[test]
    fn urls_and_names() {
        assert_eq!(
            Remote::new("127.0.0.1:8080/", None).expect("url").url(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(Remote::new("http://h:1", None).expect("url").url(), "http://h:1");
        let https = Remote::new("https://h", None).err().expect("https refused").to_string();
        assert!(https.contains("plain HTTP"), "{https}");
        assert!(Remote::new("ftp://h", None).is_err());
        assert_eq!(percent_encode("a b/\"c\""), "a%20b%2F%22c%22");
    }
}

//! The HTTP source (`POST` JSON lines or a JSON array of events) and the agent's `/metrics` endpoint.
//!
//! A request is all or nothing: the body is checked first (UTF-8, every event valid JSON, sizes), a bad
//! body gets `400` with the reason and the line (JSON lines) or element (array) at fault, and nothing of
//! it enters the channel. A good body gets `200 {"accepted":N,"rejected":M}` only once its events are in
//! the channel (as durable as the channel promises); `M` counts events the interceptors sent to the dead
//! letter channel. While the channel stays full longer than `busy_timeout_ms`, requests get `503` with
//! `Retry-After`, and nothing of them is kept.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::channel::NewEvent;
use super::intake::{Intake, Metrics};
use crate::error::{Error, Result};

pub struct HttpSource {
    pub intake: Arc<Intake>,
    pub busy_timeout: Duration,
    pub stop: Arc<AtomicBool>,
}

fn json_error(status: StatusCode, reason: impl Into<String>) -> Response {
    let body = serde_json::json!({ "error": reason.into() });
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// Split and check a request body into events. JSON array when the first non-blank byte is `[`, JSON
/// lines otherwise; blank lines are skipped.
pub fn parse_body(body: &[u8], max_event_bytes: usize) -> std::result::Result<Vec<Vec<u8>>, String> {
    let text = std::str::from_utf8(body)
        .map_err(|e| format!("body is not UTF-8: invalid byte at offset {}", e.valid_up_to()))?;
    let trimmed = text.trim_start();
    let mut events = Vec::new();
    if trimmed.starts_with('[') {
        let items: Vec<&serde_json::value::RawValue> =
            serde_json::from_str(text).map_err(|e| format!("malformed JSON array: {e}"))?;
        for (i, raw) in items.into_iter().enumerate() {
            let s = raw.get();
            if s.len() > max_event_bytes {
                return Err(format!(
                    "element {i}: event of {} bytes is over max_event_bytes ({max_event_bytes})",
                    s.len()
                ));
            }
            events.push(s.as_bytes().to_vec());
        }
    } else {
        for (i, line) in text.split('\n').enumerate() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.trim().is_empty() {
                continue;
            }
            if line.len() > max_event_bytes {
                return Err(format!(
                    "line {}: event of {} bytes is over max_event_bytes ({max_event_bytes})",
                    i + 1,
                    line.len()
                ));
            }
            if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(line) {
                return Err(format!("line {}: malformed JSON: {e}", i + 1));
            }
            events.push(line.as_bytes().to_vec());
        }
    }
    if events.is_empty() {
        return Err("no events in the body".into());
    }
    Ok(events)
}

async fn receive(State(src): State<Arc<HttpSource>>, headers: HeaderMap, body: Bytes) -> Response {
    let origin: Vec<(String, String)> = headers
        .get("x-freshet-origin")
        .and_then(|v| v.to_str().ok())
        .map(|v| vec![("origin".to_string(), v.to_string())])
        .unwrap_or_default();
    let events = match parse_body(&body, src.intake.max_event_bytes) {
        Ok(e) => e,
        Err(reason) => return json_error(StatusCode::BAD_REQUEST, reason),
    };
    let n = events.len();
    let events: Vec<NewEvent> = events.into_iter().map(|b| (b, origin.clone())).collect();
    let src2 = src.clone();
    let result =
        tokio::task::spawn_blocking(move || src2.intake.submit_within(events, &src2.stop, Some(src2.busy_timeout)))
            .await;
    match result {
        Ok(Ok(Some(rejected))) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::json!({ "accepted": n - rejected, "rejected": rejected }).to_string(),
        )
            .into_response(),
        Ok(Ok(None)) => {
            let mut r = json_error(StatusCode::SERVICE_UNAVAILABLE, "channel full; retry later");
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            r
        }
        Ok(Err(e)) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, format!("internal: {e}")),
    }
}

/// The router of an HTTP source: `POST {path}` takes events, `GET /health` answers `ok`; every
/// request first through [`crate::guard::check`] with `limits` (token, body size, timeout,
/// concurrency; no `Host` or content-type rule: see docs/security.md).
pub fn source_router(src: Arc<HttpSource>, path: &str, limits: crate::guard::Limits) -> Router {
    let max_body_bytes = limits.max_body;
    Router::new()
        .route(path, post(receive))
        .route("/health", get(|| async { "ok" }))
        .fallback(|| async {
            json_error(
                StatusCode::NOT_FOUND,
                "no such endpoint; POST events to the source's path",
            )
        })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            crate::guard::Guard::new(limits),
            crate::guard::check,
        ))
        .with_state(src)
}

/// The router of the metrics endpoint: `GET /metrics` in the Prometheus text format.
pub fn metrics_router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(m): State<Arc<Metrics>>| async move {
                ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], m.render())
            }),
        )
        .with_state(metrics)
}

/// How [`serve`] treats its address and connections.
pub struct Listen<'a> {
    pub addr: &'a str,
    /// The config key of the address, for errors.
    pub key: &'a str,
    /// Refuse an address beyond loopback (with the reason), e.g. an HTTP source without a token.
    pub loopback_only: Option<&'a str>,
    /// How long a client may take to send a request's headers.
    pub header_timeout: Duration,
    /// Open connections at most (more are closed as they come).
    pub max_connections: usize,
}

/// Bind now (so a taken port is an error at start-up, naming the key), serve on `rt` until `stop`.
pub fn serve(
    rt: &tokio::runtime::Runtime,
    listen: Listen,
    app: Router,
    stop: Arc<AtomicBool>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let Listen {
        addr: listen,
        key,
        loopback_only,
        header_timeout,
        max_connections,
    } = listen;
    let listener =
        std::net::TcpListener::bind(listen).map_err(|e| Error::option(key, format!("binding {listen}: {e}")))?;
    let addr = listener.local_addr().map_err(|e| Error::option(key, e.to_string()))?;
    if let Some(why) = loopback_only
        && !addr.ip().is_loopback()
    {
        return Err(Error::option(key, format!("{listen} is beyond loopback: {why}")));
    }
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::option(key, e.to_string()))?;
    let listener = {
        let _guard = rt.enter();
        tokio::net::TcpListener::from_std(listener).map_err(|e| Error::option(key, e.to_string()))?
    };
    let task = rt.spawn(async move {
        let shutdown = async move {
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        if let Err(e) = crate::guard::serve(listener, app, header_timeout, max_connections, shutdown).await {
            eprintln!("collect: http server {addr}: {e}");
        }
    });
    Ok((addr, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_checked_whole() {
        assert_eq!(
            parse_body(b"{\"a\":1}\n\n{\"a\":2}\r\n", 100).expect("lines"),
            vec![b"{\"a\":1}".to_vec(), b"{\"a\":2}".to_vec()]
        );
        assert_eq!(
            parse_body(b" [ {\"a\":1}, {\"b\":[1,2]} ]", 100).expect("array"),
            vec![b"{\"a\":1}".to_vec(), b"{\"b\":[1,2]}".to_vec()]
        );
        let e = parse_body(b"{\"a\":1}\n{\"a\":\n", 100).expect_err("bad line");
        assert!(e.starts_with("line 2: malformed JSON"), "{e}");
        let e = parse_body(b"[{\"a\":1},]", 100).expect_err("bad array");
        assert!(e.starts_with("malformed JSON array"), "{e}");
        let e = parse_body(b"{\"a\":\"\xff\"}", 100).expect_err("utf8");
        assert_eq!(e, "body is not UTF-8: invalid byte at offset 6");
        let e = parse_body(b"{\"a\":\"0123456789\"}", 10).expect_err("size");
        assert!(e.contains("over max_event_bytes (10)"), "{e}");
        assert_eq!(parse_body(b"\n \n", 10).expect_err("empty"), "no events in the body");
    }
}

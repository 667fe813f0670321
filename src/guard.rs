//! HTTP hardening shared by `freshet serve` and the collector's HTTP source (docs/security.md):
//! who may call, what a request may carry, how long and how many at once.
//!
//! [`check`] is one middleware, in the order a request meets it:
//! 1. `Host` (DNS rebinding): an IP literal, `localhost`, or a name the operator listed, in the
//!    header and in an absolute request target; else 421 (two `Host` headers: 400). A page on an
//!    attacker's domain that re-resolves to this machine still sends its own name.
//! 2. the bearer token (all but the open paths): compared in constant time; else 401.
//! 3. at most `max_concurrent` requests at once; past it 503 with `Retry-After`, before any work.
//! 4. the body, read whole before any handler runs: over `max_body` bytes 413, not complete
//!    within `request_timeout` 408 (a slow client holds no lock and no session).
//! 5. the handler, in its own task: when it has not answered within `request_timeout` the client
//!    gets 503 and the handler runs on to its end — a statement is never cut off halfway.
//!
//! [`csrf`] is the server's route layer: a `POST` needs `Content-Type: application/json` or
//! `application/sql`, or an `X-Freshet-Client` header. A browser sends none of those cross-site
//! without a CORS preflight, which this server never grants; the content types a plain form or
//! `fetch` may send cross-site (`text/plain`, form encodings) get 415. (Not on the collector: an
//! events endpoint takes events from wherever it is reachable.)
//!
//! [`serve`] accepts connections itself (instead of `axum::serve`) for what axum does not expose:
//! a deadline on reading a request's headers (hyper's `header_read_timeout`) and a cap on open
//! connections.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

/// What [`check`] enforces.
#[derive(Debug, Clone)]
pub struct Limits {
    /// `Authorization: Bearer TOKEN` required (but on `open_paths`).
    pub token: Option<String>,
    /// Paths answered without the token (`/health`).
    pub open_paths: Vec<String>,
    /// `Host` names accepted besides IP literals and `localhost`; `None`: any `Host`.
    pub server_names: Option<Vec<String>>,
    pub max_body: usize,
    pub request_timeout: Duration,
    pub max_concurrent: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            token: None,
            open_paths: vec!["/health".into()],
            server_names: Some(Vec::new()),
            max_body: 1 << 20,
            request_timeout: Duration::from_secs(30),
            max_concurrent: 64,
        }
    }
}

/// The state of [`check`]: its limits and the permits of concurrent requests.
pub struct Guard {
    limits: Limits,
    permits: Arc<Semaphore>,
}

impl Guard {
    pub fn new(limits: Limits) -> Arc<Guard> {
        let permits = Arc::new(Semaphore::new(limits.max_concurrent.max(1)));
        Arc::new(Guard { limits, permits })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message.into() }))).into_response()
}

/// Whether `given` equals `token`, in time that depends on the lengths only, not on where they
/// first differ.
pub fn token_matches(given: &[u8], token: &[u8]) -> bool {
    given.ct_eq(token).into()
}

/// Whether a request with this `Host` may be served: a rebinding attack needs a name of its own.
pub fn host_allowed(value: &str, names: &[String]) -> bool {
    let host = crate::policy::split_host(value.trim())
        .trim_end_matches('.')
        .to_ascii_lowercase();
    host.parse::<std::net::IpAddr>().is_ok() || host == "localhost" || names.contains(&host)
}

fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
}

/// A `POST` a browser could only send same-origin (or after a CORS preflight).
fn not_cross_site(headers: &HeaderMap) -> bool {
    if headers.contains_key("x-freshet-client") {
        return true;
    }
    let Some(ct) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    matches!(essence.as_str(), "application/json" | "application/sql")
}

/// The middleware; see the module doc for its order and answers.
pub async fn check(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    let l = &guard.limits;
    let headers = request.headers();
    if let Some(names) = &l.server_names {
        if headers.get_all(header::HOST).iter().count() > 1 {
            return refuse(StatusCode::BAD_REQUEST, "more than one Host header");
        }
        // The Host header, and the authority of an absolute request target (`GET http://…/`).
        let named = headers
            .get(header::HOST)
            .map(|h| h.as_bytes().to_vec())
            .into_iter()
            .chain(request.uri().authority().map(|a| a.as_str().as_bytes().to_vec()));
        for host in named {
            if !std::str::from_utf8(&host).is_ok_and(|h| host_allowed(h, names)) {
                return refuse(
                    StatusCode::MISDIRECTED_REQUEST,
                    format!(
                        "Host {:?} is not a name of this server; the operator may add it with --server-name",
                        String::from_utf8_lossy(&host)
                    ),
                );
            }
        }
    }
    let open = l.open_paths.iter().any(|p| p == request.uri().path());
    if let Some(token) = &l.token
        && !open
        && !bearer(headers).is_some_and(|given| token_matches(given, token.as_bytes()))
    {
        let mut r = refuse(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    let Ok(permit) = guard.permits.clone().try_acquire_owned() else {
        let mut r = refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("busy: {} requests are being served; retry later", l.max_concurrent),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    };
    let (parts, body) = request.into_parts();
    let bytes = match tokio::time::timeout(l.request_timeout, axum::body::to_bytes(body, l.max_body)).await {
        Err(_) => {
            return refuse(
                StatusCode::REQUEST_TIMEOUT,
                format!("the request body did not arrive within {:?}", l.request_timeout),
            );
        }
        Ok(Err(e)) if is_length_limit(&e) => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is over {} bytes, the server's cap", l.max_body),
            );
        }
        Ok(Err(e)) => return refuse(StatusCode::BAD_REQUEST, format!("reading the request body: {e}")),
        Ok(Ok(b)) => b,
    };
    let request = Request::from_parts(parts, axum::body::Body::from(bytes));
    let timeout = l.request_timeout;
    let handler = tokio::spawn(async move {
        let response = next.run(request).await;
        drop(permit);
        response
    });
    match tokio::time::timeout(timeout, handler).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => refuse(StatusCode::INTERNAL_SERVER_ERROR, format!("the handler failed: {e}")),
        Err(_) => refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "no answer within {timeout:?}; the request goes on in the background (a statement takes effect when it completes: see GET /v1/queries)"
            ),
        ),
    }
}

/// The CSRF rule (see the module doc), as a route layer: only on routes that exist, so a `POST` to
/// a path or method that does not is answered 404/405 like any other.
pub async fn csrf(request: Request, next: Next) -> Response {
    if request.method() == Method::POST && !not_cross_site(request.headers()) {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "POST needs Content-Type: application/sql or application/json (or an X-Freshet-Client header)",
        );
    }
    next.run(request).await
}

/// Whether reading a body failed at the length limit (axum wraps `http_body_util::LengthLimitError`).
fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.to_string().contains("length limit exceeded") {
            return true;
        }
        source = s.source();
    }
    false
}

/// Serve `app` on `listener` until `shutdown` resolves: at most `max_connections` open
/// connections (more are closed as they come), each given `header_timeout` to send a request's
/// headers. On shutdown, open connections finish the request they are in (up to 10 s).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    header_timeout: Duration,
    max_connections: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let slots = Arc::new(Semaphore::new(max_connections.max(1)));
    let mut conns = tokio::task::JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => a,
        };
        while conns.try_join_next().is_some() {}
        let stream = match accepted {
            Ok((s, _)) => s,
            // Out of file descriptors and the like: the listener stays, the next accept may work.
            Err(e) => {
                eprintln!("http: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        let mut stop = stop_rx.clone();
        conns.spawn(async move {
            let _slot = slot;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(header_timeout);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_that_a_rebinding_page_would_send_are_refused() {
        let names = vec!["freshet.internal".to_string()];
        for ok in [
            "127.0.0.1:8080",
            "localhost:8080",
            "LOCALHOST",
            "[::1]:8080",
            "10.1.2.3",
            "freshet.internal:80",
            "freshet.internal.",
        ] {
            assert!(host_allowed(ok, &names), "{ok}");
        }
        for bad in [
            "evil.example:8080",
            "localhost.evil.example",
            "127.0.0.1.nip.io:8080",
            "",
        ] {
            assert!(!host_allowed(bad, &names), "{bad}");
        }
    }

    #[test]
    fn tokens_compare_whole_and_exact() {
        assert!(token_matches(b"s3cret", b"s3cret"));
        for wrong in [&b"s3cre"[..], b"s3cret ", b"S3cret", b"", b"x3cret"] {
            assert!(!token_matches(wrong, b"s3cret"), "{wrong:?}");
        }
    }

    /// The comparison itself: `subtle`'s `ct_eq` folds every byte before deciding, so a guess right
    /// in its first bytes takes as long as one wrong in the first. Measured, not just trusted: the
    /// median times of both differ by less than the noise between two runs of the same guess.
    #[test]
    fn the_token_comparison_takes_as_long_whatever_byte_differs() {
        let token = vec![b'a'; 1024];
        let mut early = token.clone();
        early[0] = b'b';
        let mut late = token.clone();
        late[1023] = b'b';
        let time = |guess: &[u8]| {
            let mut samples: Vec<u128> = (0..101)
                .map(|_| {
                    let t = std::time::Instant::now();
                    for _ in 0..10 {
                        std::hint::black_box(token_matches(std::hint::black_box(guess), &token));
                    }
                    t.elapsed().as_nanos()
                })
                .collect();
            samples.sort_unstable();
            samples[50] as f64
        };
        // Warm up, then interleave so that frequency changes hit both alike.
        let _ = (time(&early), time(&late));
        let (mut e, mut l) = (0.0, 0.0);
        for _ in 0..3 {
            e += time(&early);
            l += time(&late);
        }
        let ratio = e.max(l) / e.min(l);
        // An early-exit comparison makes `early` many times faster than `late` (1 byte vs 1024).
        assert!(ratio < 3.0, "early {e} ns, late {l} ns");
    }
}

//! `freshet serve` as a user runs it: the real binary on port 0, spoken to over plain HTTP/1.1.
//!
//! Each test starts its own server in its own temporary directory (the server's working directory,
//! so relative sink paths such as `out/course_views` land there) with its own data directory. Waits
//! poll a condition until a deadline; nothing sleeps for a fixed time hoping something happened.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How long any one condition may take (debug builds on a busy machine are slow).
const DEADLINE: Duration = Duration::from_secs(60);

/// `queries/course_activity.sql` with its `events = '1000000'` bound replaced by `with`.
fn course_activity(with: &str) -> String {
    let sql =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/queries/course_activity.sql")).expect("query");
    let changed = sql.replace("events = '1000000'", with);
    assert_ne!(
        changed, sql,
        "course_activity.sql no longer bounds its source with events = '1000000'"
    );
    changed
}

/// The report at the end of course_activity.sql: its last statement.
fn course_activity_report(sql: &str) -> &str {
    let at = sql
        .rfind("SELECT course_id, SUM(views)")
        .expect("course_activity.sql ends with its report");
    sql[at..].trim_end().trim_end_matches(';')
}

/// The SELECT of the materialized view `course_views` in course_activity.sql.
fn course_views_select(sql: &str) -> &str {
    let start = sql
        .find("CREATE MATERIALIZED VIEW course_views AS")
        .expect("course_views in course_activity.sql");
    let body = &sql[start + "CREATE MATERIALIZED VIEW course_views AS".len()..];
    body[..body.find(';').expect("statement end")].trim()
}

fn poll<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    poll_within(what, DEADLINE, f)
}

/// Poll `f` until it gives a value; panics naming `what` after `within`.
pub(crate) fn poll_within<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) struct Response {
    pub(crate) status: u16,
    headers: Vec<(String, String)>,
    pub(crate) body: String,
}

impl Response {
    pub(crate) fn json(&self) -> Value {
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "status {}: {}",
            self.status,
            self.body
        );
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The JSON body, after checking the status.
    pub(crate) fn expect(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "{}", self.body);
        self.json()
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`), the whole answer read back.
pub(crate) fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())
        .and_then(|_| s.write_all(body))
        .expect("send");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read answer");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8(raw[..split].to_vec()).expect("utf8 head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"))
    {
        body = dechunk(&body);
    } else if let Some(n) = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        assert_eq!(body.len(), n, "Content-Length");
    }
    Response {
        status,
        headers,
        body: String::from_utf8(body).expect("utf8 body"),
    }
}

fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = rest.windows(2).position(|w| w == b"\r\n").expect("chunk size line");
        let size_text = String::from_utf8_lossy(&rest[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or_default().trim(), 16).expect("hex");
        rest = &rest[eol + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// A running `freshet serve`; killed when dropped.
pub(crate) struct Server {
    child: Child,
    pub(crate) addr: String,
    token: Option<String>,
    stderr: Receiver<String>,
    log: Vec<String>,
}

impl Server {
    /// `freshet serve --listen 127.0.0.1:0 --data-dir DIR/data ARGS…` in `dir`; returns once it serves.
    pub(crate) fn start(dir: &Path, args: &[&str]) -> Server {
        Server::start_with(dir, args, &[])
    }

    pub(crate) fn start_with(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_freshet"))
            .current_dir(dir)
            .arg("serve")
            .args(if args.contains(&"--listen") {
                &[][..]
            } else {
                &["--listen", "127.0.0.1:0"][..]
            })
            .arg("--data-dir")
            .arg(dir.join("data"))
            // The tests' sources and sinks live beside the data directory, in the working directory.
            .arg("--allow-path")
            .arg(dir)
            .args(args)
            .env_remove("FRESHET_TOKEN")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn freshet serve");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = Server {
            child,
            addr: String::new(),
            token: None,
            stderr: rx,
            log: Vec::new(),
        };
        let deadline = Instant::now() + DEADLINE;
        server.addr = loop {
            match server
                .stderr
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => {
                    let addr = line
                        .strip_prefix("serving on http://")
                        .and_then(|rest| rest.split_whitespace().next())
                        .map(str::to_string);
                    server.log.push(line);
                    if let Some(addr) = addr {
                        break addr;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = server.child.wait();
                    panic!("freshet serve exited ({status:?}):\n{}", server.log.join("\n"))
                }
                Err(RecvTimeoutError::Timeout) => panic!("freshet serve did not start:\n{}", server.log.join("\n")),
            }
        };
        server
    }

    pub(crate) fn set_token(&mut self, token: &str) {
        self.token = Some(token.to_string());
    }

    /// A request as a client of the API sends it: with the token, and a POST's body as SQL.
    pub(crate) fn call(&self, method: &str, path: &str, body: &str) -> Response {
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        if method == "POST" {
            headers.push(("Content-Type", "application/sql"));
        }
        http(&self.addr, method, path, &headers, body.as_bytes())
    }

    pub(crate) fn get(&self, path: &str) -> Response {
        self.call("GET", path, "")
    }

    pub(crate) fn post(&self, path: &str, body: &str) -> Response {
        self.call("POST", path, body)
    }

    fn delete(&self, path: &str) -> Response {
        self.call("DELETE", path, "")
    }

    fn queries(&self) -> Vec<Value> {
        let v = self.get("/v1/queries").expect(200);
        v["queries"].as_array().expect("queries").clone()
    }

    fn names(&self) -> Vec<String> {
        self.queries()
            .iter()
            .map(|q| q["name"].as_str().expect("name").to_string())
            .collect()
    }

    fn query(&self, name: &str) -> Value {
        self.get(&format!("/v1/queries/{name}")).expect(200)
    }

    /// Poll `GET /v1/queries/NAME` until `ok` holds for it; returns that answer.
    fn wait_for(&self, name: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        let deadline = Instant::now() + DEADLINE;
        loop {
            last = match self.get(&format!("/v1/queries/{name}")) {
                r if r.status == 200 => r.json(),
                _ => last,
            };
            if ok(&last) {
                return last;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: timed out waiting for {what}; last: {last}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Rows of a bounded SELECT.
    fn select(&self, sql: &str) -> Vec<Value> {
        let v = self.post("/v1/query", sql).expect(200);
        assert_eq!(v["kind"], "rows", "{v}");
        v["rows"].as_array().expect("rows").clone()
    }

    /// SIGTERM, as a service manager stops it; waits for the exit and returns it with all of stderr.
    fn terminate(mut self) -> (ExitStatus, String) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
        assert!(sent.success(), "kill -TERM {pid}");
        let status = poll("freshet serve to exit after SIGTERM", || {
            self.child.try_wait().expect("try_wait")
        });
        // The reader thread ends at EOF; collect what is left.
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_secs(5)) {
            self.log.push(line);
        }
        (status, self.log.join("\n"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn u64_of(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} in {v}"))
}

/// The stored catalog, as `(name, kind, state)` per object.
fn stored(dir: &Path) -> Vec<(String, String, Option<String>)> {
    let text = std::fs::read_to_string(dir.join("data/catalog.json")).expect("catalog.json");
    let doc: Value = serde_json::from_str(&text).expect("catalog JSON");
    assert_eq!(doc["version"], 1, "{doc}");
    doc["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .map(|o| {
            (
                o["name"].as_str().expect("name").to_string(),
                o["kind"].as_str().expect("kind").to_string(),
                o["state"].as_str().map(str::to_string),
            )
        })
        .collect()
}

fn state(s: &str) -> Option<String> {
    Some(s.to_string())
}

// ---- Prometheus text format ----

/// `/metrics`, parsed and checked; returns `name{query=…} → value`.
fn metrics(server: &Server) -> BTreeMap<(String, String), f64> {
    let r = server.get("/metrics");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.header("content-type").is_some_and(|t| t.starts_with("text/plain")),
        "{:?}",
        r.headers
    );
    // Strictly: families together after their TYPE line, no series twice, histograms cumulative.
    let freshet::metrics::parse::Exposition { types, samples } =
        freshet::metrics::parse::parse(&r.body).unwrap_or_else(|e| panic!("/metrics: {e}\n{}", r.body));
    for family in [
        "freshet_query_rows_in_total",
        "freshet_query_rows_out_total",
        "freshet_query_errors_total",
        "freshet_query_late_total",
        "freshet_query_batches_total",
    ] {
        assert_eq!(types.get(family).map(String::as_str), Some("counter"), "{family}");
    }
    for family in [
        "freshet_query_running",
        "freshet_query_watermark_ms",
        "freshet_query_lag_ms",
    ] {
        assert_eq!(types.get(family).map(String::as_str), Some("gauge"), "{family}");
    }
    assert_eq!(
        types.get("freshet_query_batch_seconds").map(String::as_str),
        Some("histogram")
    );
    samples
        .into_iter()
        .filter(|s| !s.labels.contains_key("le"))
        .map(|s| ((s.name, s.labels.get("query").cloned().unwrap_or_default()), s.value))
        .collect()
}

// ---- the tests ----

/// The README walkthrough with a bounded source: register queries/course_activity.sql, watch it run
/// to the end, read its materialized view (equal to a batch computation over the same events), scrape
/// /metrics; after a restart the finished queries stay finished and are not run again.
#[tokio::test]
async fn course_activity_runs_to_the_batch_oracle_and_is_not_rerun_after_a_restart() {
    const EVENTS: u64 = 20_000;
    let dir = tempfile::tempdir().expect("tmp");
    let sql = course_activity(&format!("events = '{EVENTS}'"));
    let server = Server::start(dir.path(), &[]);
    assert!(server.log[0].contains("0 queries; no token"), "{}", server.log[0]);

    let v = server.post("/v1/statements", &sql).expect(200);
    let results = v["results"].as_array().expect("results");
    let messages: Vec<&Value> = results.iter().take(3).map(|r| &r["message"]).collect();
    assert_eq!(
        messages,
        [
            "created source course_events",
            "created sink course_views_archive",
            "created materialized view course_views"
        ],
        "{v}"
    );
    // The file's closing report is a bounded SELECT: it answers at once, with what the view holds then.
    assert_eq!(results.len(), 4, "{v}");
    assert_eq!(results[3]["kind"], "rows", "{v}");
    let columns: Vec<&Value> = results[3]["columns"]
        .as_array()
        .expect("columns")
        .iter()
        .map(|c| &c["name"])
        .collect();
    assert_eq!(columns, ["course_id", "views", "purchases", "conversion_pct"]);

    let listed = server.queries();
    let summary: Vec<(&Value, &Value)> = listed.iter().map(|q| (&q["name"], &q["kind"])).collect();
    assert_eq!(
        summary,
        [
            (&json!("course_views_archive"), &json!("sink")),
            (&json!("course_views"), &json!("materialized view"))
        ]
    );
    for q in &listed {
        assert!(
            ["running", "finishing", "finished"].contains(&q["status"].as_str().expect("status")),
            "{q}"
        );
        assert!(
            q["sql"]
                .as_str()
                .is_some_and(|s| s.starts_with("CREATE ") && s.contains("TUMBLE(course_events")),
            "{q}"
        );
    }
    for name in ["course_views_archive", "course_views"] {
        let q = server.wait_for(name, "the bounded source to end", |q| q["status"] == "finished");
        assert_eq!(u64_of(&q, "rows_in"), EVENTS, "{q}");
        assert!(u64_of(&q, "rows_out") > 0, "{q}");
        assert_eq!((u64_of(&q, "errors"), u64_of(&q, "late")), (0, 0), "{q}");
        assert!(q["last_error"].is_null(), "{q}");
    }

    // The view against a batch computation over the same generated events (course_activity.sql's
    // source: the generator, seed 42, defaults otherwise).
    let opts = crate::support::gen_opts(EVENTS, 42);
    let oracle = crate::support::oracle_ctx(&opts, "ev");
    let want = crate::support::batch_rows(
        &oracle,
        "SELECT course_id, date_bin(INTERVAL '1 minute', event_time, TIMESTAMP '1970-01-01'), COUNT(*),
                COUNT(DISTINCT user_id), SUM(CASE WHEN purchased THEN 1 ELSE 0 END) FROM ev GROUP BY 1, 2",
    )
    .await;
    let mut got: Vec<String> = server
        .select("SELECT course_id, window_start, views, viewers, purchases FROM course_views")
        .iter()
        .map(|r| {
            format!(
                "{}|{}|{}|{}|{}",
                r["course_id"],
                r["window_start"].as_str().expect("window_start"),
                r["views"],
                r["viewers"],
                r["purchases"]
            )
        })
        .collect();
    got.sort();
    crate::support::assert_rows_eq(&got, &want, "course_views");
    let total = server.select("SELECT SUM(views) AS views FROM course_views");
    assert_eq!(total, [json!({ "views": EVENTS })]);

    // The file's own report, now that the view is complete.
    let report = server.select(course_activity_report(&sql));
    let want_top = crate::support::batch_rows(
        &oracle,
        "SELECT course_id, COUNT(*) AS views, SUM(CASE WHEN purchased THEN 1 ELSE 0 END) AS purchases
         FROM ev GROUP BY course_id ORDER BY views DESC LIMIT 5",
    )
    .await;
    let mut got_top: Vec<String> = report
        .iter()
        .map(|r| format!("{}|{}|{}", r["course_id"], r["views"], r["purchases"]))
        .collect();
    let views: Vec<u64> = report.iter().map(|r| u64_of(r, "views")).collect();
    assert!(views.windows(2).all(|w| w[0] >= w[1]), "ORDER BY views DESC: {views:?}");
    got_top.sort();
    assert_eq!(got_top, want_top);

    // The archive went to out/course_views under the server's working directory.
    let ctx = datafusion::prelude::SessionContext::new();
    let archive = dir.path().join("out/course_views");
    ctx.register_parquet("a", archive.to_str().expect("utf8"), Default::default())
        .await
        .expect("archive parquet");
    let archived = crate::support::batch_rows(&ctx, "SELECT SUM(views), COUNT(*) FROM a").await;
    assert_eq!(archived, [format!("{EVENTS}|{}", want.len())]);
    let archive_files = std::fs::read_dir(&archive).expect("archive dir").count();

    let m = metrics(&server);
    for name in ["course_views_archive", "course_views"] {
        let at = |family: &str| m.get(&(family.to_string(), name.to_string())).copied();
        assert_eq!(at("freshet_query_rows_in_total"), Some(EVENTS as f64), "{m:?}");
        assert_eq!(at("freshet_query_running"), Some(0.0), "{m:?}");
        assert!(
            at("freshet_query_batch_seconds_count").is_some_and(|n| n >= 1.0),
            "{m:?}"
        );
    }

    let states = stored(dir.path());
    assert_eq!(
        states,
        [
            ("course_events".into(), "source".into(), None),
            ("course_views_archive".into(), "sink".into(), state("finished")),
            ("course_views".into(), "materialized view".into(), state("finished")),
        ]
    );

    // Restart: the finished queries are listed as finished and do not run again.
    let (status, log) = server.terminate();
    assert!(status.success(), "{log}");
    assert!(log.contains("stopped; the queries run again"), "{log}");
    let server = Server::start(dir.path(), &[]);
    for q in server.queries() {
        assert_eq!(q["status"], "finished", "{q}");
        assert_eq!(u64_of(&q, "rows_in"), 0, "not run again: {q}");
        assert!(q["last_error"].is_null(), "{q}");
    }
    assert_eq!(server.names(), ["course_views_archive", "course_views"]);
    assert_eq!(std::fs::read_dir(&archive).expect("archive dir").count(), archive_files);
    assert_eq!(stored(dir.path()), states, "the catalog is unchanged by the restart");
}

/// An endless source: rows flow, pause stops one query (and only that one), resume starts it again,
/// DELETE drops it and frees its name.
#[test]
fn a_running_query_pauses_resumes_and_drops() {
    let dir = tempfile::tempdir().expect("tmp");
    let sql = course_activity("rate = '2000'");
    let server = Server::start(dir.path(), &[]);
    server.post("/v1/statements", &sql).expect(200);

    let first = server.wait_for("course_views", "rows and a watermark", |q| {
        q["rows_in"].as_u64().is_some_and(|n| n > 0) && q["watermark"].is_string()
    });
    assert_eq!(first["status"], "running", "{first}");
    let lag = first["lag_ms"].as_i64().expect("lag_ms");
    assert!((0..60_000).contains(&lag), "event time is the wall clock here: {first}");
    let n = u64_of(&first, "rows_in");
    server.wait_for("course_views", "rows_in to grow", |q| q["rows_in"].as_u64() > Some(n));
    server.wait_for("course_views_archive", "rows_in", |q| q["rows_in"].as_u64() > Some(0));
    poll("rows in the view", || {
        let rows = server.select("SELECT SUM(views) AS views FROM course_views");
        rows[0]["views"].as_u64().filter(|n| *n > 0)
    });

    // Pause: only course_views stops, and it keeps its rows.
    let paused = server.post("/v1/queries/course_views/pause", "").expect(200);
    assert_eq!(
        (&paused["name"], &paused["status"]),
        (&json!("course_views"), &json!("paused"))
    );
    let again = server.post("/v1/queries/course_views/pause", "").expect(409);
    assert!(
        again["error"].as_str().is_some_and(|e| e.contains("already paused")),
        "{again}"
    );
    let at_pause = u64_of(&server.query("course_views"), "rows_in");
    let viewed = server.select("SELECT SUM(views) AS views FROM course_views");
    let sink_at_pause = u64_of(&server.query("course_views_archive"), "rows_in");
    server.wait_for("course_views_archive", "the sink to keep reading", |q| {
        q["rows_in"].as_u64() > Some(sink_at_pause + 500)
    });
    let q = server.query("course_views");
    assert_eq!(
        (u64_of(&q, "rows_in"), &q["status"]),
        (at_pause, &json!("paused")),
        "{q}"
    );
    assert_eq!(server.select("SELECT SUM(views) AS views FROM course_views"), viewed);
    let m = metrics(&server);
    let running = |name: &str| m.get(&("freshet_query_running".to_string(), name.to_string())).copied();
    assert_eq!(
        (running("course_views"), running("course_views_archive")),
        (Some(0.0), Some(1.0))
    );

    // Resume: it starts again from its definition.
    let resumed = server.post("/v1/queries/course_views/resume", "").expect(200);
    assert_eq!(resumed["status"], "running", "{resumed}");
    let again = server.post("/v1/queries/course_views/resume", "").expect(409);
    assert!(
        again["error"].as_str().is_some_and(|e| e.contains("already running")),
        "{again}"
    );
    server.wait_for("course_views", "rows after the resume", |q| {
        q["status"] == "running" && q["rows_in"].as_u64() > Some(0)
    });

    // Drop: gone from the list, and the name is free for a new query.
    let dropped = server.delete("/v1/queries/course_views").expect(200);
    assert_eq!(
        dropped,
        json!({ "kind": "done", "message": "dropped materialized view course_views" })
    );
    let gone = server.get("/v1/queries/course_views").expect(404);
    assert!(
        gone["error"].as_str().is_some_and(|e| e.contains("course_views")),
        "{gone}"
    );
    assert_eq!(server.names(), ["course_views_archive"]);
    server.post("/v1/query", "SELECT * FROM course_views").expect(400);
    let again = server
        .post(
            "/v1/statements",
            &format!("CREATE MATERIALIZED VIEW course_views AS {}", course_views_select(&sql)),
        )
        .expect(200);
    assert_eq!(again["results"][0]["message"], "created materialized view course_views");
    assert_eq!(server.names(), ["course_views_archive", "course_views"]);
    server.wait_for("course_views", "the new query to run", |q| {
        q["status"] == "running" && q["rows_in"].as_u64() > Some(0)
    });
    let dropped = server.delete("/v1/queries/course_views_archive").expect(200);
    assert_eq!(dropped["message"], "dropped sink course_views_archive");
    server.delete("/v1/queries/course_views_archive").expect(404);
    assert_eq!(server.names(), ["course_views"]);
    let states = stored(dir.path());
    assert_eq!(
        states,
        [
            ("course_events".into(), "source".into(), None),
            ("course_views".into(), "materialized view".into(), state("running")),
        ]
    );
    let (status, log) = server.terminate();
    assert!(status.success(), "{log}");
}

/// Bad requests get a 4xx answer with a JSON reason (SQL errors with line and column), and change nothing.
#[test]
fn bad_requests_get_json_errors_with_a_reason() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = Server::start(dir.path(), &[]);
    for (method, path) in [
        ("GET", "/v1/queries/nope"),
        ("POST", "/v1/queries/nope/pause"),
        ("POST", "/v1/queries/nope/resume"),
        ("DELETE", "/v1/queries/nope"),
    ] {
        let e = server.call(method, path, "").expect(404);
        assert_eq!(e, json!({ "error": "no continuous query 'nope'" }), "{method} {path}");
    }

    // A syntax error: nothing in the body runs, and the error points at line 3, column 17 (at FROM).
    let e = server
        .post(
            "/v1/statements",
            "CREATE SOURCE ev (user_id BIGINT, event_time TIMESTAMP) WITH (connector = 'generator');\n\n\
             SELECT (user_id FROM ev;",
        )
        .expect(400);
    assert_eq!((&e["line"], &e["column"]), (&json!(3), &json!(17)), "{e}");
    assert!(e["error"].as_str().is_some_and(|m| m.contains("FROM")), "{e}");
    let sources = server.post("/v1/statements", "SHOW SOURCES").expect(200);
    assert_eq!(sources["results"][0]["rows"], json!([]), "nothing ran: {sources}");

    // A statement that fails: the ones before it ran, and the answer says which one failed.
    let e = server
        .post(
            "/v1/statements",
            "CREATE SOURCE ev (user_id BIGINT NOT NULL, course_id BIGINT NOT NULL, region VARCHAR,
                 purchased BOOLEAN, event_time TIMESTAMP NOT NULL,
                 WATERMARK FOR event_time AS event_time - INTERVAL '1' SECOND)
             WITH (connector = 'generator', rate = '1000');
             SELECT nope FROM ev;",
        )
        .expect(400);
    assert_eq!((&e["statement"], &e["line"]), (&json!(2), &json!(5)), "{e}");
    assert_eq!(e["results"][0]["message"], "created source ev", "{e}");
    assert!(e["error"].as_str().is_some_and(|m| m.contains("nope")), "{e}");

    // A continuous SELECT has no end to answer with: refused, with the way to do it instead.
    for path in ["/v1/statements", "/v1/query"] {
        let e = server
            .post(path, "SELECT user_id, region FROM ev WHERE purchased")
            .expect(400);
        let message = e["error"].as_str().expect("error");
        assert!(
            message.contains("continuous SELECT") && message.contains("CREATE MATERIALIZED VIEW"),
            "{e}"
        );
    }
    assert_eq!(server.queries(), Vec::<Value>::new(), "nothing left running");

    let e = server.post("/v1/query", "DROP SOURCE ev").expect(400);
    assert!(e["error"].as_str().is_some_and(|m| m.contains("one SELECT")), "{e}");
    let e = server.post("/v1/query", "SELECT 1; SELECT 2").expect(400);
    assert!(e["error"].as_str().is_some_and(|m| m.contains("one statement")), "{e}");
    let e = server.post("/v1/query", "SELECT * FROM no_such_view").expect(400);
    assert!(e["error"].as_str().is_some_and(|m| m.contains("no_such_view")), "{e}");
    let e = server.post("/v1/statements", "  -- nothing\n").expect(400);
    assert!(e["error"].as_str().is_some_and(|m| m.contains("no statements")), "{e}");
    let e = server.get("/v1/nothing/here").expect(404);
    assert!(e["error"].is_string(), "{e}");
    let e = server.call("PUT", "/v1/queries", "").expect(405);
    assert!(e["error"].is_string(), "{e}");

    // Neither a body that is not UTF-8 nor a request that is not HTTP brings the server down.
    let r = http(
        &server.addr,
        "POST",
        "/v1/statements",
        &[("Content-Type", "application/sql")],
        b"\xff\xfe",
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let mut s = TcpStream::connect(&server.addr).expect("connect");
    s.write_all(b"NOT HTTP AT ALL\r\n\r\n").expect("send");
    let _ = s.read_to_end(&mut Vec::new());
    let health = server.get("/health");
    assert_eq!((health.status, health.body.as_str()), (200, "ok"));
    let api = server.get("/openapi.yaml");
    assert_eq!(api.status, 200);
    assert!(api.body.starts_with("openapi: 3"), "{}", api.body);
}

/// `--token` (or FRESHET_TOKEN): every endpoint but /health needs `Authorization: Bearer TOKEN`.
#[test]
fn a_token_guards_everything_but_health() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = Server::start(dir.path(), &["--token", "s3cret"]);
    assert!(server.log[0].contains("bearer token required"), "{}", server.log[0]);
    for path in ["/v1/queries", "/metrics", "/openapi.yaml"] {
        for headers in [
            vec![],
            vec![("Authorization", "Bearer wrong")],
            vec![("Authorization", "s3cret")],
        ] {
            let r = http(&server.addr, "GET", path, &headers, b"");
            assert_eq!(r.status, 401, "{path} {headers:?}: {}", r.body);
            assert_eq!(r.header("www-authenticate"), Some("Bearer"));
            assert!(r.json()["error"].is_string(), "{}", r.body);
        }
        let r = http(&server.addr, "GET", path, &[("Authorization", "Bearer s3cret")], b"");
        assert_eq!(r.status, 200, "{path}: {}", r.body);
    }
    let r = http(&server.addr, "POST", "/v1/statements", &[], b"SHOW SOURCES");
    assert_eq!(r.status, 401, "{}", r.body);
    let r = http(&server.addr, "GET", "/health", &[], b"");
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));

    // The same from the environment.
    let other = tempfile::tempdir().expect("tmp");
    let server = Server::start_with(other.path(), &[], &[("FRESHET_TOKEN", "s3cret")]);
    assert_eq!(http(&server.addr, "GET", "/v1/queries", &[], b"").status, 401);
    let mut with_token = server;
    with_token.token = Some("s3cret".into());
    assert_eq!(with_token.queries(), Vec::<Value>::new());
}

/// A restart on the same data directory runs the running queries again and keeps paused ones paused;
/// a second server on a data directory in use refuses to start.
#[test]
fn a_restart_runs_running_queries_again_and_keeps_paused_ones_paused() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = Server::start(dir.path(), &[]);
    server
        .post("/v1/statements", &course_activity("rate = '2000'"))
        .expect(200);
    server.wait_for("course_views", "rows", |q| q["rows_in"].as_u64() > Some(0));
    server.post("/v1/queries/course_views_archive/pause", "").expect(200);
    assert_eq!(
        stored(dir.path()),
        [
            ("course_events".into(), "source".into(), None),
            ("course_views_archive".into(), "sink".into(), state("paused")),
            ("course_views".into(), "materialized view".into(), state("running")),
        ]
    );

    let second = Command::new(env!("CARGO_BIN_EXE_freshet"))
        .current_dir(dir.path())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .stdin(Stdio::null())
        .output()
        .expect("run a second server");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{stderr}");
    assert!(stderr.contains("in use by another freshet process"), "{stderr}");
    assert!(!stderr.contains("serving on"), "{stderr}");

    let (status, log) = server.terminate();
    assert!(status.success(), "{log}");
    assert!(log.contains("stopped;"), "{log}");
    let states = stored(dir.path());
    assert_eq!(states[1].2, state("paused"), "{states:?}");
    assert_eq!(states[2].2, state("running"), "{states:?}");

    let server = Server::start(dir.path(), &[]);
    assert!(server.log.iter().any(|l| l.contains("2 queries")), "{:?}", server.log);
    // The running view resumes from the checkpoint its query took when the server stopped.
    assert!(
        server
            .log
            .iter()
            .any(|l| l.contains("query 'course_views': resuming from checkpoint")),
        "{:?}",
        server.log
    );
    let archive = server.query("course_views_archive");
    assert_eq!(archive["status"], "paused", "{archive}");
    assert_eq!(u64_of(&archive, "rows_in"), 0, "{archive}");
    assert!(
        archive["watermark"].is_null() && archive["lag_ms"].is_null(),
        "a query that has not run has no watermark: {archive}"
    );
    let views = server.wait_for("course_views", "rows after the restart", |q| {
        q["status"] == "running" && q["rows_in"].as_u64() > Some(0) && q["watermark"].is_string()
    });
    assert!(
        views["lag_ms"].as_i64().is_some_and(|l| (0..60_000).contains(&l)),
        "{views}"
    );
    let m = metrics(&server);
    let key = |family: &str, q: &str| (family.to_string(), q.to_string());
    assert_eq!(m.get(&key("freshet_query_running", "course_views")), Some(&1.0));
    assert_eq!(m.get(&key("freshet_query_running", "course_views_archive")), Some(&0.0));
    assert!(
        !m.contains_key(&key("freshet_query_lag_ms", "course_views_archive")),
        "{m:?}"
    );
    assert!(m.contains_key(&key("freshet_query_lag_ms", "course_views")), "{m:?}");
    assert_eq!(stored(dir.path()), states, "the catalog is unchanged by the restart");

    server.post("/v1/queries/course_views_archive/resume", "").expect(200);
    server.wait_for("course_views_archive", "rows after the resume", |q| {
        q["status"] == "running" && q["rows_in"].as_u64() > Some(0)
    });
    assert_eq!(stored(dir.path())[1].2, state("running"));
}

impl Server {
    /// Wait until the server writes a line containing `needle` to stderr; returns the line.
    fn wait_for_log(&mut self, needle: &str) -> String {
        if let Some(line) = self.log.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        let deadline = Instant::now() + DEADLINE;
        loop {
            match self
                .stderr
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => {
                    self.log.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!("no '{needle}' on stderr:\n{}", self.log.join("\n")),
            }
        }
    }

    /// Forget the log so far (a later [`Self::wait_for_log`] looks only at new lines).
    fn clear_log(&mut self) {
        while let Ok(line) = self.stderr.try_recv() {
            self.log.push(line);
        }
        self.log.clear();
    }
}

/// A call that must come back promptly even while a sink waits for HBase.
fn promptly<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let t0 = Instant::now();
    let out = f();
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "{what} took {:?} while HBase was unreachable",
        t0.elapsed()
    );
    out
}

/// HBase unreachable (a proxy in front of its Thrift gateway that drops every connection) blocks
/// only the query writing to it: the server keeps answering `/metrics` and the query list, the
/// other query keeps running, and pause, resume, DROP and SIGTERM of the blocked query all return.
#[test]
fn an_hbase_outage_blocks_only_its_query_and_the_server_keeps_answering() {
    use crate::services::{Proxy, THRIFT, up};
    if !up("HBase Thrift", THRIFT) {
        return;
    }
    let proxy = Proxy::start(THRIFT);
    let dir = tempfile::tempdir().expect("tmp");
    let mut server = Server::start(dir.path(), &[]);
    let table = crate::support::unique("serve_outage");
    let sink = |name: &str| {
        format!(
            "CREATE SINK {name} WITH (connector = 'hbase', thrift = '{}', table = '{table}',
                 row_key = 'course_id, window_start', create_table = 'true', batch_rows = '50') AS
             SELECT course_id, window_start, COUNT(*) AS views
             FROM TABLE(TUMBLE(TABLE ev, DESCRIPTOR(event_time), INTERVAL '1' MINUTE))
             GROUP BY course_id, window_start, window_end;",
            proxy.addr
        )
    };
    let sql = format!(
        "CREATE SOURCE ev ({}) WITH (connector = 'generator', rate = '2000', seed = '3');
         {}
         CREATE MATERIALIZED VIEW total AS SELECT COUNT(*) AS n FROM ev;",
        crate::support::COURSE_COLUMNS,
        sink("hb")
    );
    server.post("/v1/statements", &sql).expect(200);
    server.wait_for("hb", "rows written to HBase", |q| q["rows_out"].as_u64() > Some(0));
    let total = |server: &Server| -> u64 {
        let rows = server.select("SELECT n FROM total");
        rows.first().and_then(|r| r["n"].as_u64()).unwrap_or(0)
    };

    // The log is cleared before the outage, not after: the sink says "retrying" once per outage, and
    // a write under way when the proxy goes down says it at once — clearing afterwards could discard
    // that line and leave the wait below with nothing to find (seen once in CI).
    server.clear_log();
    proxy.down();
    server.wait_for_log("retrying");
    let during = total(&server);
    for _ in 0..3 {
        let m = promptly("GET /metrics", || metrics(&server));
        assert_eq!(
            m.get(&("freshet_query_running".to_string(), "hb".to_string())),
            Some(&1.0),
            "the blocked query is still running"
        );
        promptly("GET /v1/queries", || server.queries());
    }
    poll("the other query to keep running", || {
        (total(&server) > during + 1000).then_some(())
    });

    let paused = promptly("pausing the blocked query", || {
        server.post("/v1/queries/hb/pause", "").expect(200)
    });
    assert_eq!(paused["status"], "paused", "{paused}");
    promptly("GET /metrics after the pause", || metrics(&server));
    server.clear_log();
    promptly("resuming it", || server.post("/v1/queries/hb/resume", "").expect(200));
    server.wait_for_log("retrying");
    let dropped = promptly("dropping it", || server.delete("/v1/queries/hb").expect(200));
    assert_eq!(dropped["message"], "dropped sink hb");
    assert_eq!(server.names(), ["total"]);

    // A new sink to the same unreachable HBase: the statement returns at once (`create_table` is
    // done before its first write, on its own thread), the query waits, and a shutdown still ends it.
    server.clear_log();
    promptly("creating a sink while HBase is away", || {
        server.post("/v1/statements", &sink("hb2")).expect(200)
    });
    server.wait_for_log("retrying");
    let t0 = Instant::now();
    let (status, log) = server.terminate();
    assert!(status.success(), "{log}");
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "SIGTERM took {:?} with a sink waiting for HBase",
        t0.elapsed()
    );
    proxy.up();
}

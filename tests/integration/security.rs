//! docs/security.md, rule by rule, each tried the way an attacker would, against the real binary:
//! what SQL may touch (paths, librdkafka keys, hosts) for `serve`, `run` and `check`, and the
//! server's HTTP hardening (token on a public bind, cross-site POSTs, `Host`, body size, slow
//! clients, concurrency, huge answers). Every refusal is followed by a request that still works.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::server::{Server, http, poll_within};

fn sql_post(server: &Server, path: &str, body: &str) -> (u16, Value) {
    let r = server.post(path, body);
    let v = r.json();
    (r.status, v)
}

/// A statement the policy refuses: 403, the key and the reason, and the line it is on.
fn assert_refused(server: &Server, sql: &str, key: &str, why: &str) {
    let (status, v) = sql_post(server, "/v1/statements", sql);
    assert_eq!(status, 403, "{sql}: {v}");
    let msg = v["error"].as_str().unwrap_or_default();
    assert!(msg.starts_with(&format!("option '{key}': refused: ")), "{sql}: {msg}");
    assert!(msg.contains(why), "{sql}: {msg}");
    assert_eq!(v["line"], 1, "{v}");
}

#[test]
fn serve_refuses_paths_keys_and_hosts_outside_its_policy_and_keeps_serving() {
    let dir = tempfile::tempdir().expect("tmp");
    let outside = tempfile::tempdir().expect("tmp");
    std::fs::write(outside.path().join("secret.jsonl"), "{\"x\": 1}\nnot json\n").expect("write");
    std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).expect("symlink");
    std::fs::write(dir.path().join("in.jsonl"), "{\"x\": 1}\n").expect("write");
    // The harness allows the test's directory (the server's working directory) besides its data dir.
    let server = Server::start(dir.path(), &[]);
    let out = outside.path().display().to_string();
    let name = outside.path().file_name().expect("name").to_string_lossy().to_string();

    let source = |path: &str| format!("CREATE SOURCE s (x BIGINT) WITH (connector = 'file', path = '{path}')");
    let outside_dirs = "outside the allowed directories";
    assert_refused(&server, &source(&format!("{out}/secret.jsonl")), "path", outside_dirs);
    assert_refused(&server, &source("/etc/passwd"), "path", outside_dirs);
    assert_refused(&server, &source("link/secret.jsonl"), "path", outside_dirs);
    assert_refused(
        &server,
        &source(&format!("../{name}/secret.jsonl")),
        "path",
        outside_dirs,
    );
    assert_refused(
        &server,
        &format!("CREATE SINK k WITH (connector = 'parquet', path = '{out}/made') AS SELECT 1 AS x"),
        "path",
        outside_dirs,
    );
    assert!(
        !outside.path().join("made").exists(),
        "a refused sink created its directory"
    );
    let kafka = |extra: &str| {
        format!(
            "CREATE SOURCE k (x BIGINT) WITH (connector = 'kafka', topic = 't', bootstrap_servers = 'localhost:9092'{extra})"
        )
    };
    assert_refused(
        &server,
        &kafka(", 'properties.plugin.library.paths' = '/tmp/evil.so'"),
        "properties.plugin.library.paths",
        "never allowed",
    );
    assert_refused(
        &server,
        &kafka(", 'properties.sasl.kerberos.kinit.cmd' = 'touch /tmp/owned'"),
        "properties.sasl.kerberos.kinit.cmd",
        "never allowed",
    );
    assert_refused(
        &server,
        &kafka(", 'properties.sasl.oauthbearer.token.endpoint.url' = 'http://169.254.169.254/'"),
        "properties.sasl.oauthbearer.token.endpoint.url",
        "--allow-property",
    );
    assert_refused(
        &server,
        &kafka(", 'properties.ssl.ca.location' = '/etc/ssl/certs'"),
        "properties.ssl.ca.location",
        outside_dirs,
    );
    assert_refused(
        &server,
        "CREATE SOURCE k (x BIGINT) WITH (connector = 'kafka', topic = 't', bootstrap_servers = '169.254.169.254:80')",
        "bootstrap_servers",
        "--allow-host",
    );
    assert_refused(
        &server,
        "CREATE SINK h WITH (connector = 'hbase', table = 't', row_key = 'x', thrift = '10.0.0.1:9090') AS SELECT 1 AS x",
        "thrift",
        "--allow-host",
    );
    // Nothing refused was registered, and what the policy allows still works.
    let (status, v) = sql_post(&server, "/v1/statements", "SHOW SOURCES");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["results"][0]["rows"].as_array().map(Vec::len), Some(0), "{v}");
    let (status, v) = sql_post(&server, "/v1/statements", &source("in.jsonl"));
    assert_eq!(status, 200, "{v}");
    assert_eq!(server.get("/v1/queries").status, 200);
}

/// `freshet` run in `dir` with `args`; (success, stdout, stderr).
fn freshet(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_freshet"))
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run freshet");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn run_and_check_keep_paths_under_the_working_directory_unless_allowed() {
    let dir = tempfile::tempdir().expect("tmp");
    let outside = tempfile::tempdir().expect("tmp");
    std::fs::write(outside.path().join("in.jsonl"), "{\"x\": 1}\n{\"x\": 2}\n").expect("write");
    let out = outside.path().display();
    let job = format!(
        "CREATE SOURCE s (x BIGINT) WITH (connector = 'file',\n  path = '{out}/in.jsonl');\nCREATE SINK o WITH (connector = 'file', path = 'out.jsonl') AS SELECT x FROM s;\n"
    );
    std::fs::write(dir.path().join("job.sql"), &job).expect("job");

    let (ok, _, stderr) = freshet(dir.path(), &["run", "job.sql", "--no-checkpoints"]);
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("job.sql:1: option 'path': refused"), "{stderr}");
    assert!(!dir.path().join("out.jsonl").exists());

    let (ok, stdout, _) = freshet(dir.path(), &["check", "job.sql"]);
    assert!(!ok, "{stdout}");
    assert!(stdout.contains("job.sql:2:10: option 'path': refused"), "{stdout}");

    // Allowed by flag: the same job runs and reads both rows.
    let allow = outside.path().to_str().expect("utf8");
    let (ok, stdout, _) = freshet(dir.path(), &["check", "job.sql", "--allow-path", allow]);
    assert!(ok, "{stdout}");
    let (ok, _, stderr) = freshet(
        dir.path(),
        &["run", "job.sql", "--no-checkpoints", "--allow-path", allow],
    );
    assert!(ok, "{stderr}");
    let written = std::fs::read_to_string(dir.path().join("out.jsonl")).expect("sink output");
    assert_eq!(written.lines().count(), 2, "{written}");

    // A key that runs a command is refused whatever the flags say.
    let (ok, _, stderr) = freshet(
        dir.path(),
        &["run", "job.sql", "--allow-property", "sasl.kerberos.kinit.cmd"],
    );
    assert!(!ok && stderr.contains("can never be allowed"), "{stderr}");
}

#[test]
fn serve_will_not_listen_beyond_loopback_without_a_token() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let (ok, _, stderr) = freshet(
        dir.path(),
        &[
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--data-dir",
            data.to_str().expect("utf8"),
        ],
    );
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("refusing to serve beyond loopback without a token"),
        "{stderr}"
    );
    // With one it serves (and then needs it).
    let mut server = Server::start_with(dir.path(), &["--listen", "0.0.0.0:0", "--token", "t0ken"], &[]);
    assert_eq!(server.get("/v1/queries").status, 401);
    server.set_token("t0ken");
    assert_eq!(server.get("/v1/queries").status, 200);
}

/// Raw requests on one connection: `head` then `body`, the answer read until the server closes.
fn raw(addr: &str, bytes: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    s.write_all(bytes).expect("send");
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text)
}

#[test]
fn cross_site_posts_foreign_hosts_and_oversized_bodies_are_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = Server::start(
        dir.path(),
        &["--max-body-bytes", "2000", "--server-name", "freshet.internal"],
    );
    let addr = server.addr.clone();
    let port = addr.rsplit(':').next().expect("port").to_string();

    // What a web page can send cross-site without a CORS preflight: refused before any SQL runs.
    for ct in [
        None,
        Some("text/plain"),
        Some("text/plain; charset=utf-8"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
    ] {
        let headers: Vec<(&str, &str)> = ct.iter().map(|c| ("Content-Type", *c)).collect();
        let r = http(
            &addr,
            "POST",
            "/v1/statements",
            &headers,
            b"CREATE SOURCE csrf (x BIGINT) WITH (connector = 'generator')",
        );
        assert_eq!(r.status, 415, "{ct:?}: {}", r.body);
        assert!(r.body.contains("application/sql"), "{}", r.body);
    }
    for headers in [
        vec![("Content-Type", "application/json")],
        vec![("X-Freshet-Client", "curl")],
    ] {
        let r = http(&addr, "POST", "/v1/query", &headers, b"SELECT 1 AS one");
        assert_eq!(r.status, 200, "{headers:?}: {}", r.body);
    }
    assert_eq!(
        server.post("/v1/statements", "SHOW SOURCES").expect(200)["results"][0]["rows"],
        Value::Array(vec![])
    );

    // DNS rebinding: a name the operator did not list.
    for host in [format!("evil.example:{port}"), format!("localhost.evil.example:{port}")] {
        let (status, text) = raw(
            &addr,
            format!("GET /v1/queries HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        assert_eq!(status, 421, "{host}: {text}");
    }
    for host in [
        format!("localhost:{port}"),
        format!("freshet.internal:{port}"),
        addr.clone(),
    ] {
        let (status, text) = raw(
            &addr,
            format!("GET /v1/queries HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        assert_eq!(status, 200, "{host}: {text}");
    }

    // Bodies over --max-body-bytes: 413, declared or chunked.
    let big = format!("SELECT 1 AS x -- {}", "y".repeat(3000));
    let r = server.post("/v1/query", &big);
    assert_eq!(r.status, 413, "{}", r.body);
    let chunk = "z".repeat(1500);
    let (status, text) = raw(
        &addr,
        format!(
            "POST /v1/query HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/sql\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{chunk}\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
            chunk.len(),
            chunk.len()
        )
        .as_bytes(),
    );
    assert_eq!(status, 413, "{text}");
    assert_eq!(server.get("/health").status, 200);

    // A cap above axum's own default (2 MB) is the one that holds.
    let other = tempfile::tempdir().expect("tmp");
    let big = Server::start(other.path(), &["--max-body-bytes", "3000000"]);
    let (status, v) = sql_post(
        &big,
        "/v1/query",
        &format!("SELECT 1 AS x -- {}", "y".repeat(2_500_000)),
    );
    assert_eq!(status, 200, "{v}");
    let (status, _) = sql_post(
        &big,
        "/v1/query",
        &format!("SELECT 1 AS x -- {}", "y".repeat(3_000_000)),
    );
    assert_eq!(status, 413);
}

#[test]
fn slow_clients_and_request_floods_get_an_answer_and_hold_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = Server::start(
        dir.path(),
        &["--request-timeout", "3", "--max-concurrent-requests", "1"],
    );
    let addr = server.addr.clone();

    // Headers that never end: the connection is closed after the timeout.
    let started = Instant::now();
    let (status, text) = raw(&addr, format!("GET /health HTTP/1.1\r\nHost: {addr}\r\n").as_bytes());
    assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());
    assert!(status == 0 || status == 408, "{status}: {text}");

    // Two bodies that never complete: one takes the only request slot and holds it until its 408,
    // the other is turned away at once with 503 (which one is up to the server); a request in
    // between is turned away too, and served after.
    let stall = || {
        let mut c = TcpStream::connect(&addr).expect("connect");
        c.write_all(
            format!("POST /v1/query HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/sql\r\nContent-Length: 100\r\nConnection: close\r\n\r\nSELECT")
                .as_bytes(),
        )
        .expect("send");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut answer = String::new();
            let _ = c.read_to_string(&mut answer);
            let _ = tx.send(answer);
        });
        rx
    };
    let (a, b) = (stall(), stall());
    let (turned_away, held) = poll_within("one stalled request to be turned away", Duration::from_secs(30), || {
        if let Ok(r) = a.try_recv() {
            return Some((r, &b));
        }
        b.try_recv().ok().map(|r| (r, &a))
    });
    assert!(turned_away.starts_with("HTTP/1.1 503"), "{turned_away}");
    let busy = server.get("/v1/queries");
    assert_eq!(busy.status, 503, "{}", busy.body);
    assert_eq!(busy.header("retry-after"), Some("1"), "{}", busy.body);
    let answer = held.recv().expect("answer");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let after = poll_within("the slot to be free again", Duration::from_secs(30), || {
        let r = server.get("/v1/queries");
        (r.status == 200).then_some(r)
    });
    assert_eq!(after.status, 200);
}

#[test]
fn a_huge_select_is_refused_with_422_and_a_small_one_answered() {
    let dir = tempfile::tempdir().expect("tmp");
    let rows: String = (0..5_000)
        .map(|i| format!("{{\"x\": {i}, \"pad\": \"{}\"}}\n", "p".repeat(100)))
        .collect();
    std::fs::write(dir.path().join("rows.jsonl"), rows).expect("write");
    let server = Server::start(
        dir.path(),
        &[
            "--max-result-rows",
            "1000",
            "--max-result-bytes",
            "400000",
            "--query-memory-bytes",
            "200000",
        ],
    );
    server
        .post(
            "/v1/statements",
            "CREATE TABLE t (x BIGINT, pad VARCHAR) WITH (connector = 'file', path = 'rows.jsonl')",
        )
        .expect(200);
    let capped = |sql: &str, why: &str| {
        let (status, v) = sql_post(&server, "/v1/query", sql);
        assert_eq!(status, 422, "{sql}: {v}");
        assert!(v["error"].as_str().is_some_and(|m| m.contains(why)), "{sql}: {v}");
    };
    capped("SELECT x FROM t", "more than 1000 rows");
    capped(
        "SELECT x, pad, pad AS p2, pad AS p3 FROM t LIMIT 900",
        "over 400000 bytes",
    );
    capped(
        "SELECT pad || CAST(x AS VARCHAR) AS k FROM t ORDER BY k DESC LIMIT 5",
        "memory",
    );
    let (status, v) = sql_post(&server, "/v1/query", "SELECT COUNT(*) AS n, MAX(x) AS m FROM t");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["rows"][0]["n"], 5000, "{v}");
}

/// `POST /v1/statements` of `sql` on a thread of its own; its status arrives on the receiver.
fn post_in_background(addr: &str, sql: &'static str) -> std::sync::mpsc::Receiver<u16> {
    let addr = addr.to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = http(
            &addr,
            "POST",
            "/v1/statements",
            &[("Content-Type", "application/sql")],
            sql.as_bytes(),
        );
        let _ = tx.send(r.status);
    });
    rx
}

/// A statement waiting on a service that does not answer (an exactly-once Kafka sink initializing
/// its transactions against a port nobody listens on: a minute) holds other statements back, but
/// no read: the query list, one query, `/metrics` and a bounded SELECT answer at once.
#[test]
fn reads_answer_while_a_statement_waits_for_an_unreachable_service() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = Server::start(dir.path(), &["--request-timeout", "120"]);
    server
        .post(
            "/v1/statements",
            "CREATE SOURCE g (user_id BIGINT) WITH (connector = 'generator', rate = '100');
             CREATE MATERIALIZED VIEW users AS SELECT user_id, COUNT(*) AS n FROM g GROUP BY user_id;",
        )
        .expect(200);
    let blocked = post_in_background(
        &server.addr,
        "CREATE SINK k WITH (connector = 'kafka', bootstrap_servers = '127.0.0.1:1', topic = 't') AS SELECT user_id FROM g",
    );
    // The statement has the session: a second statement sent after it waits. (One sent before
    // it got the session just runs: try again until one waits.)
    let probe = Instant::now();
    loop {
        let rx = post_in_background(&server.addr, "SHOW SOURCES");
        if rx.recv_timeout(Duration::from_secs(3)).is_err() {
            break;
        }
        assert!(
            probe.elapsed() < Duration::from_secs(40),
            "statements kept running while the first waited for Kafka: the test no longer blocks the session"
        );
    }
    // ... and every read answers promptly meanwhile.
    for path in ["/v1/queries", "/v1/queries/users", "/metrics", "/health"] {
        let started = Instant::now();
        let r = server.get(path);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{path} took {:?}",
            started.elapsed()
        );
    }
    let started = Instant::now();
    let (status, v) = sql_post(&server, "/v1/query", "SELECT COUNT(*) AS users FROM users");
    assert_eq!(status, 200, "{v}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "/v1/query took {:?}",
        started.elapsed()
    );
    assert!(
        blocked.try_recv().is_err(),
        "the Kafka statement answered within {:?}",
        probe.elapsed()
    );
}

/// The server's own fault — its catalog cannot be written — is a 500, and leaves the catalog file
/// and the session agreeing: a CREATE that could not be recorded is undone, a DROP that could not
/// be recorded does not happen.
#[test]
fn a_catalog_that_cannot_be_written_is_a_500_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = Server::start(dir.path(), &[]);
    server
        .post(
            "/v1/statements",
            "CREATE SOURCE g (user_id BIGINT) WITH (connector = 'generator', rate = '10');
             CREATE MATERIALIZED VIEW v AS SELECT user_id, COUNT(*) AS n FROM g GROUP BY user_id;",
        )
        .expect(200);
    // The catalog is written as catalog.json.tmp, then renamed: a directory there stops it.
    let blocker = dir.path().join("data/catalog.json.tmp");
    std::fs::create_dir(&blocker).expect("block the catalog");
    let (status, v) = sql_post(
        &server,
        "/v1/statements",
        "CREATE SOURCE h (user_id BIGINT) WITH (connector = 'generator')",
    );
    assert_eq!(status, 500, "{v}");
    let r = server.call("DELETE", "/v1/queries/v", "");
    assert_eq!(r.status, 500, "{}", r.body);
    std::fs::remove_dir(&blocker).expect("unblock");
    // Neither took effect: h is unknown, v still runs, and the file says the same.
    let (_, v) = sql_post(&server, "/v1/statements", "SHOW SOURCES");
    let names: Vec<&str> = v["results"][0]["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(names, vec!["g"], "{v}");
    assert_eq!(server.get("/v1/queries/v").expect(200)["status"], "running");
    let stored = std::fs::read_to_string(dir.path().join("data/catalog.json")).expect("catalog");
    assert!(stored.contains("\"v\"") && !stored.contains("\"h\""), "{stored}");
    // And with the directory writable again, both work.
    server.call("DELETE", "/v1/queries/v", "").expect(200);
    let (status, v) = sql_post(
        &server,
        "/v1/statements",
        "CREATE SOURCE h (user_id BIGINT) WITH (connector = 'generator')",
    );
    assert_eq!(status, 200, "{v}");
}

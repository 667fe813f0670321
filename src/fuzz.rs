//! Fuzz targets: each takes arbitrary bytes and drives one reader of untrusted input the way
//! Freshet does. A target returns normally whatever the input; it panics only when an invariant of
//! that reader is broken (a panic inside the reader is a finding too). Shared by the stable driver
//! (`tests/fuzz.rs`, run by `scripts/fuzz.sh` and CI) and any coverage-guided harness; see
//! docs/fuzzing.md.
//!
//! Targets that touch files work under the process's current directory: the driver runs them in
//! a temporary one.

use std::path::Path;

use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};

use crate::collect::channel::{ChannelOptions, DiskChannel};
use crate::engine::query::EngineConfig;
use crate::format::{Format, LineDecoder};
use crate::session::Session;

/// A fuzz target: returns for any input, panics on a broken invariant.
pub type Target = fn(&[u8]);

/// The targets by name, as `scripts/fuzz.sh` and the driver list them.
pub const TARGETS: &[(&str, Target)] = &[
    ("sql", sql),
    ("json_lines", json_lines),
    ("csv_lines", csv_lines),
    ("channel_segment", channel_segment),
    ("checkpoint", checkpoint),
    ("fslt", fslt),
    ("http", http),
];

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
}

/// What `freshet check` does with a file: split it into statements, parse each, plan them in
/// order in one plan-only session (nothing opened, nothing run), and place every error. Errors are
/// fine; panics and stack overflows are not.
pub fn sql(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        // `check_file` reports invalid UTF-8 itself; the lossy text is still worth checking.
        return sql(String::from_utf8_lossy(data).as_bytes());
    };
    RUNTIME.with(|rt| {
        rt.block_on(crate::check::check_sql_with(text, &crate::policy::Policy::default()));
    });
}

fn course_schema() -> datafusion::arrow::datatypes::SchemaRef {
    std::sync::Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Int64, false),
        Field::new("course_id", DataType::Int64, true),
        Field::new("region", DataType::Utf8, true),
        Field::new("purchased", DataType::Boolean, true),
        Field::new("event_time", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        Field::new("tags", DataType::new_list(DataType::Utf8, true), true),
    ]))
}

/// The lines of a chunk that hold a record (not blank): rows + errors must account for each.
fn records_in(chunk: &[u8]) -> usize {
    if chunk.is_empty() {
        return 0;
    }
    let chunk = chunk.strip_suffix(b"\n").unwrap_or(chunk);
    chunk
        .split(|b| *b == b'\n')
        .filter(|l| !crate::format::blank(l))
        .count()
}

fn decode_lines(data: &[u8], format: Format) {
    let csv = matches!(format, Format::Csv { .. });
    let d = LineDecoder::new(course_schema(), format);
    // Twice on one decoder: the second chunk meets the state the first left (idle decoders, the
    // "dirty" flag).
    for _ in 0..2 {
        let Ok(out) = d.decode_chunk(data, 1, "f") else {
            return;
        };
        let rows = out.batch.map_or(0, |b| b.num_rows());
        let expected = records_in(data);
        let accounted = rows + out.errors.len();
        if csv {
            // Arrow's CSV reader skips blank lines itself; none may be double-counted.
            assert!(
                accounted <= expected.max(1),
                "{rows} rows + {} errors for {expected} lines",
                out.errors.len()
            );
        } else {
            assert_eq!(
                accounted, expected,
                "rows {rows} + errors {:?} for {expected} lines",
                out.errors
            );
        }
    }
}

/// A JSON-lines chunk against a fixed schema: rows plus bad records account for every line.
pub fn json_lines(data: &[u8]) {
    decode_lines(data, Format::Json);
}

/// A CSV chunk against a fixed schema: never more rows plus bad records than lines.
pub fn csv_lines(data: &[u8]) {
    decode_lines(
        data,
        Format::Csv {
            header: false,
            delimiter: b',',
        },
    );
}

/// The collector's disk channel opening a directory whose only segment holds `data`: recovery
/// either fails or hands out events, each of which was a record whose CRC verified.
pub fn channel_segment(data: &[u8]) {
    let dir = Path::new("channel");
    let _ = std::fs::remove_dir_all(dir);
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let seg = dir.join(format!("{:020}.seg", 0));
    if std::fs::write(&seg, data).is_err() {
        return;
    }
    let Ok(mut ch) = DiskChannel::open(dir, ChannelOptions::default()) else {
        return;
    };
    let verified = verified_payloads(data);
    while let Ok(events) = ch.take(1000) {
        if events.is_empty() {
            break;
        }
        for e in &events {
            assert!(
                verified
                    .iter()
                    .any(|p| p.windows(e.body.len().max(1)).any(|w| w == e.body.as_slice()) || e.body.is_empty()),
                "event {} is not in any record whose CRC verifies",
                e.id
            );
        }
        if ch.commit().is_err() {
            break;
        }
    }
}

/// The payloads of the records of a segment whose CRC verifies, walking it as the format says
/// (channel.rs): `FRSHSEG1`, then `len`, `crc` (of the len bytes and the payload), payload.
fn verified_payloads(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut at = 8;
    while let Some(head) = data.get(at..at + 8) {
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        let Some(payload) = data.get(at + 8..(at + 8).saturating_add(len)) else {
            break;
        };
        let mut h = crc32fast::Hasher::new();
        h.update(&head[..4]);
        h.update(payload);
        if h.finalize() != crc {
            break;
        }
        out.push(payload);
        at += 8 + len;
    }
    out
}

/// A checkpoint directory whose table file is `data[1..]` (with the manifest's size and CRC made
/// to match, so Arrow's IPC reader gets it) or, when `data[0]` is odd, whose manifest is
/// `data[1..]`: loading falls back or fails, never panics.
pub fn checkpoint(data: &[u8]) {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let dir = Path::new("checkpoints");
    let _ = std::fs::remove_dir_all(dir);
    let Ok(store) = crate::state::CheckpointStore::open(dir, "q", 3) else {
        return;
    };
    let table = keyed_table();
    let mut op = crate::operator::state::OpState::new();
    op.tables.push(("t".into(), table));
    let c = crate::state::Checkpoint {
        epoch: 1,
        fingerprint: "f".into(),
        meta: serde_json::json!({"k": 1}),
        operators: vec![(0, "op".into(), op)],
    };
    if store.write(&c).is_err() {
        return;
    }
    let chk = store.dir().join(format!("chk-{:08}", 1));
    let manifest = chk.join("manifest.json");
    if mode % 2 == 1 {
        let _ = std::fs::write(&manifest, rest);
    } else {
        let Ok(text) = std::fs::read_to_string(&manifest) else {
            return;
        };
        let Some(Ok(mut v)) = text.lines().next().map(serde_json::from_str::<serde_json::Value>) else {
            return;
        };
        let Some(file) = v["operators"][0]["tables"][0]["file"].as_str().map(str::to_string) else {
            return;
        };
        v["operators"][0]["tables"][0]["bytes"] = (rest.len() as u64).into();
        v["operators"][0]["tables"][0]["crc32"] = crc32fast::hash(rest).into();
        let body = v.to_string();
        let text = format!("{body}\ncrc32:{:08x}\n", crc32fast::hash(body.as_bytes()));
        let _ = std::fs::write(chk.join(file), rest);
        let _ = std::fs::write(&manifest, text);
    }
    let _ = store.load_latest("f");
}

fn keyed_table() -> datafusion::arrow::record_batch::RecordBatch {
    use datafusion::arrow::array::{Int64Array, StringArray};
    let schema = std::sync::Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("v", DataType::Utf8, true),
    ]));
    datafusion::arrow::record_batch::RecordBatch::try_new(
        schema,
        vec![
            std::sync::Arc::new(Int64Array::from(vec![1, 2, 3])),
            std::sync::Arc::new(StringArray::from(vec![Some("a"), None, Some("c")])),
        ],
    )
    .expect("a fixed, valid table")
}

/// The `.fslt` test-file parser.
pub fn fslt(data: &[u8]) {
    let _ = crate::test_runner::script::parse(&String::from_utf8_lossy(data));
}

/// The HTTP API (`router`) answering up to four requests in turn on one session, separated by
/// lines `====`. A request's first line is `METHOD PATH`, then header lines up to a blank line,
/// then the body; requests that cannot be built are skipped. Every answer is below 500 except the
/// documented ones (502 when pausing or resuming a query fails); nothing panics. The session plans
/// only, so no statement starts a query or opens anything.
pub fn http(data: &[u8]) {
    use tower::ServiceExt;

    let mut session = Session::new(EngineConfig::default());
    session.plan_only = true;
    let state = crate::server::AppState::new(
        session,
        crate::guard::Limits {
            // Every other input runs with a token, so both sides of the check are exercised.
            token: (data.len() % 2 == 1).then(|| "secret".to_string()),
            ..crate::guard::Limits::default()
        },
    );
    let mut rest = data;
    for _ in 0..4 {
        let (one, next) = match rest.windows(6).position(|w| w == b"\n====\n") {
            Some(i) => (&rest[..i], Some(&rest[i + 6..])),
            None => (rest, None),
        };
        if let Some(request) = http_request(one) {
            let path = request.uri().path().to_string();
            let router = crate::server::router(state.clone());
            let status = RUNTIME.with(|rt| {
                rt.block_on(async {
                    let Ok(r) = router.oneshot(request).await;
                    let status = r.status();
                    // Reading the body runs whatever produces it.
                    let _ = axum::body::to_bytes(r.into_body(), 64 << 20).await;
                    status
                })
            });
            let documented = status == axum::http::StatusCode::BAD_GATEWAY
                && (path.ends_with("/pause") || path.ends_with("/resume"));
            assert!(!status.is_server_error() || documented, "{status} for {path}");
        }
        match next {
            Some(n) => rest = n,
            None => break,
        }
    }
}

fn http_request(data: &[u8]) -> Option<axum::http::Request<axum::body::Body>> {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[][..]),
    };
    let head = String::from_utf8_lossy(head);
    let mut lines = head.lines();
    let first = lines.next().unwrap_or_default();
    let (method, path) = first.split_once(' ').unwrap_or((first, "/"));
    let method = axum::http::Method::from_bytes(method.as_bytes()).ok()?;
    let mut request = axum::http::Request::builder().method(method).uri(path);
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            request = request.header(k.trim(), v.trim());
        }
    }
    request.body(axum::body::Body::from(body.to_vec())).ok()
}

/// Real inputs for a target, the seeds the mutations start from: files of the repository at `root`
/// and inputs built with Freshet's own writers.
pub fn corpus(target: &str, root: &Path) -> Vec<Vec<u8>> {
    let files = |dirs: &[&str], ext: &str| -> Vec<Vec<u8>> {
        let paths: Vec<std::path::PathBuf> = dirs.iter().map(|d| root.join(d)).filter(|p| p.exists()).collect();
        crate::test_runner::find_files(&paths, ext)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|p| std::fs::read(p).ok())
            .collect()
    };
    match target {
        "sql" => files(&["queries", "examples", "tests/check"], "sql"),
        "fslt" => files(&["tests/sql", "examples"], "fslt"),
        "json_lines" => vec![
            br#"{"user_id":1,"course_id":2,"region":"eu","purchased":false,"event_time":"2026-01-01T00:00:00Z","tags":["a"]}
{"user_id":"x","course_id":2}
not json
{"user_id":3,"region":null,"tags":[null,"b"]}
"#
            .to_vec(),
            b"{\"user_id\":1}\r\n\n  \n{\"user_id\":2,\"region\":\"\\u00e9\\\"\"}".to_vec(),
        ],
        "csv_lines" => vec![
            b"1,2,eu,false,2026-01-01T00:00:00Z,\n2,,x,true,2026-01-01T00:00:01Z,\nbad,1\n\n\"q,\"\"x\",1\n".to_vec(),
        ],
        "channel_segment" => {
            let dir = Path::new("corpus-channel");
            let _ = std::fs::remove_dir_all(dir);
            let mut out = Vec::new();
            if let Ok(mut ch) = DiskChannel::open(dir, ChannelOptions::default()) {
                let batch: Vec<crate::collect::channel::NewEvent> = (0..3)
                    .map(|i| (format!("event {i}").into_bytes(), vec![("k".into(), format!("v{i}"))]))
                    .collect();
                let _ = ch.put_batch(&batch);
                let _ = ch.put_batch(&batch[..1]);
                drop(ch);
                if let Ok(seg) = std::fs::read(dir.join(format!("{:020}.seg", 0))) {
                    out.push(seg);
                }
            }
            out
        }
        "checkpoint" => {
            let mut ipc = Vec::new();
            if let Ok(bytes) = crate::operator::state::to_ipc(&keyed_table()) {
                ipc = bytes;
            }
            vec![[&[0u8][..], &ipc].concat(), b"\x01{\"format\":\"freshet-checkpoint\"}\ncrc32:0\n".to_vec()]
        }
        "http" => {
            let script = "CREATE SOURCE g (user_id BIGINT, event_time TIMESTAMP) WITH (connector = 'generator', events = '10');\n\
                          CREATE MATERIALIZED VIEW v AS SELECT user_id, COUNT(*) AS n FROM g GROUP BY user_id;\n\
                          SHOW SOURCES; DESCRIBE g; SELECT 1 AS one;";
            [
                format!("POST /v1/statements\ncontent-type: text/plain\n\n{script}"),
                format!(
                    "POST /v1/statements\nauthorization: Bearer secret\n\n{script}\n====\nPOST /v1/queries/v/pause\n\
                     authorization: Bearer secret\n\n\n====\nPOST /v1/query\nauthorization: Bearer secret\n\n\
                     SELECT * FROM v\n====\nDELETE /v1/queries/v\nauthorization: Bearer secret\n\n"
                ),
                "POST /v1/query\ncontent-type: application/json\n\n{\"sql\": \"SELECT 1 AS x\"}".to_string(),
                "POST /v1/query\n\nSELECT 1 AS x".to_string(),
                "GET /v1/queries\n\n".to_string(),
                "GET /v1/queries/v\nauthorization: Bearer secret\n\n".to_string(),
                "DELETE /v1/queries/v\n\n".to_string(),
                "POST /v1/queries/v/pause\n\n".to_string(),
                "POST /v1/queries/v/resume\n\n".to_string(),
                "GET /metrics\n\n".to_string(),
                "GET /health\n\n".to_string(),
                "GET /openapi.yaml\n\n".to_string(),
                "PUT /nowhere?x=%ff\nx-y: z\n\nbody".to_string(),
            ]
            .into_iter()
            .map(String::into_bytes)
            .collect()
        }
        _ => Vec::new(),
    }
}

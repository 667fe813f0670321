//! Nexmark q0–q22 as shipped in queries/nexmark, each run over generated events and compared with a
//! batch oracle: DataFusion batch SQL over the same events as in-memory tables.
//!
//! The events are 200 000 (rate 2 000 events/s: 100 s of event time, 10 windows of 10 s), their times
//! pulled back by up to 3 s, inside the queries' 4 s watermark delay, so no row is late and the
//! streamed final result must equal the batch result. Each query file runs as shipped, with only its
//! `data/nexmark/` and `out/nexmark/` paths pointed at a temporary directory; its Parquet output
//! (a changelog replayed to its final state, when the sink writes one) is compared row for row.
//!
//! The oracle tables carry one more column than the streams, `seq` (the event number: the order the
//! events arrive in), for the tie rules of Top-N and deduplication: of equal sort keys, Flink keeps
//! the row that came first in a Top-N and the one that came last when deduplicating on `… DESC`.
//!
//! A query Freshet refuses asserts the refusal's message ([`Expect::Refused`]): q6, an OVER aggregate
//! over an updating input, which Flink refuses too.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::datasource::MemTable;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::prelude::{CsvReadOptions, SessionContext};
use freshet::connector::nexmark::{Nexmark, NexmarkOptions, Stream, side_input_csv};
use freshet::sql::parser::parse_script;

use crate::support::*;

const EVENTS: u64 = 200_000;
const RATE: f64 = 2000.0;
const OUT_OF_ORDER_MS: u64 = 3000;
/// Rows per source per micro-batch: small and odd, so state carries across many micro-batches.
const BATCH_SIZE: usize = 4099;

fn options(seed: u64) -> NexmarkOptions {
    NexmarkOptions {
        seed,
        events: Some(EVENTS),
        rate: RATE,
        out_of_order_ms: OUT_OF_ORDER_MS,
    }
}

/// What a query should do today.
enum Expect {
    /// Run, and equal this batch SQL's result.
    Match(&'static str),
    /// Be refused with a message containing `because`.
    Refused { because: &'static str },
}

fn expect(q: u32) -> Expect {
    use Expect::*;
    match q {
        0 => Match("SELECT auction, bidder, price, date_time, extra FROM bid"),
        1 => Match("SELECT auction, bidder, 0.908 * price, date_time, extra FROM bid"),
        2 => Match("SELECT auction, price FROM bid WHERE auction % 123 = 0"),
        3 => Match(
                "SELECT P.name, P.city, P.state, A.id FROM auction A JOIN person P ON A.seller = P.id
                 WHERE A.category = 10 AND P.state IN ('OR', 'ID', 'CA')",
        ),
        4 => Match(
                "SELECT category, AVG(final) FROM (
                    SELECT MAX(B.price) AS final, A.category FROM auction A JOIN bid B ON A.id = B.auction
                    WHERE B.date_time >= A.date_time AND B.date_time <= A.expires
                    GROUP BY A.id, A.category) Q
                 GROUP BY category",
        ),
        5 => Match(
                "WITH w AS (
                    SELECT auction, to_timestamp_millis(
                        (CAST(arrow_cast(date_time, 'Timestamp(Millisecond, None)') AS BIGINT) / 2000) * 2000 - k.i * 2000) AS ws
                    FROM bid CROSS JOIN (VALUES (0), (1), (2), (3), (4)) AS k(i)),
                 counts AS (SELECT auction, ws, COUNT(*) AS num FROM w GROUP BY auction, ws),
                 maxes AS (SELECT ws, MAX(num) AS maxn FROM counts GROUP BY ws)
                 SELECT c.auction, c.num FROM counts c JOIN maxes m ON c.ws = m.ws AND c.num >= m.maxn",
        ),
        // An OVER aggregate over an updating input (the winning bid of an auction changes): Flink
        // refuses it too, and there is no final result to compare with.
        6 => Refused {
            because: "needs an append-only input",
        },
        7 => Match(
                "WITH b1 AS (
                    SELECT MAX(price) AS maxprice, ws + INTERVAL '10 seconds' AS dt FROM (
                        SELECT price, date_bin(INTERVAL '10 seconds', date_time, TIMESTAMP '1970-01-01') AS ws FROM bid) w
                    GROUP BY ws)
                 SELECT B.auction, B.price, B.bidder, B.date_time, B.extra FROM bid B JOIN b1 ON B.price = b1.maxprice
                 WHERE B.date_time >= b1.dt - INTERVAL '10 seconds' AND B.date_time <= b1.dt",
        ),
        8 => Match(
                "WITH P AS (SELECT DISTINCT id, name,
                                date_bin(INTERVAL '10 seconds', date_time, TIMESTAMP '1970-01-01') AS starttime FROM person),
                      A AS (SELECT DISTINCT seller,
                                date_bin(INTERVAL '10 seconds', date_time, TIMESTAMP '1970-01-01') AS starttime FROM auction)
                 SELECT P.id, P.name, P.starttime FROM P JOIN A ON P.id = A.seller AND P.starttime = A.starttime",
        ),
        9 => Match(
                "SELECT id, item_name, description, initial_bid, reserve, date_time, expires, seller, category, extra,
                        auction, bidder, price, bid_date_time, bid_extra FROM (
                    SELECT A.id, A.item_name, A.description, A.initial_bid, A.reserve, A.date_time, A.expires,
                           A.seller, A.category, A.extra, B.auction, B.bidder, B.price,
                           B.date_time AS bid_date_time, B.extra AS bid_extra,
                           ROW_NUMBER() OVER (PARTITION BY A.id ORDER BY B.price DESC, B.date_time ASC, B.seq ASC) AS rownum
                    FROM auction A JOIN bid B ON A.id = B.auction
                    WHERE B.date_time >= A.date_time AND B.date_time <= A.expires) t
                 WHERE rownum <= 1",
        ),
        10 => Match(
            "SELECT auction, bidder, price, date_time, extra, to_char(date_time, '%Y-%m-%d'), to_char(date_time, '%H:%M')
             FROM bid",
        ),
        // Gaps and islands over each bidder's distinct times (with ties, LAG and the running SUM
        // could order equal times differently and split a session).
        11 => Match(
            "WITH t AS (SELECT bidder, date_time, COUNT(*) AS n FROM bid GROUP BY bidder, date_time),
             marked AS (
                SELECT *, CASE WHEN date_time - LAG(date_time) OVER (PARTITION BY bidder ORDER BY date_time)
                                    <= INTERVAL '10 seconds' THEN 0 ELSE 1 END AS new_session
                FROM t),
             numbered AS (
                SELECT *, SUM(new_session) OVER (PARTITION BY bidder ORDER BY date_time ROWS UNBOUNDED PRECEDING) AS sid
                FROM marked)
             SELECT bidder, SUM(n), MIN(date_time), MAX(date_time) + INTERVAL '10 seconds' FROM numbered
             GROUP BY bidder, sid",
        ),
        12 => Match(
            "SELECT bidder, COUNT(*), ws, ws + INTERVAL '10 seconds' FROM (
                SELECT bidder, date_bin(INTERVAL '10 seconds', date_time, TIMESTAMP '1970-01-01') AS ws FROM bid) w
             GROUP BY bidder, ws",
        ),
        13 => Match(
                "SELECT B.auction, B.bidder, B.price, B.date_time, S.value FROM bid B JOIN side_input S
                 ON B.auction % 10000 = S.key",
        ),
        14 => Match(
            "SELECT auction, bidder, 0.908 * price,
                    CASE WHEN h >= 8 AND h <= 18 THEN 'dayTime' WHEN h <= 6 OR h >= 20 THEN 'nightTime'
                         ELSE 'otherTime' END,
                    date_time, extra,
                    CAST(length(extra) - length(replace(extra, 'c', '')) AS BIGINT)
             FROM (SELECT *, date_part('hour', date_time) AS h FROM bid) b
             WHERE 0.908 * price > 1000000 AND 0.908 * price < 50000000",
        ),
        15 => Match(
            "SELECT day, COUNT(*),
                    COUNT(*) FILTER (WHERE r = 1), COUNT(*) FILTER (WHERE r = 2), COUNT(*) FILTER (WHERE r = 3),
                    COUNT(DISTINCT bidder), COUNT(DISTINCT bidder) FILTER (WHERE r = 1),
                    COUNT(DISTINCT bidder) FILTER (WHERE r = 2), COUNT(DISTINCT bidder) FILTER (WHERE r = 3),
                    COUNT(DISTINCT auction), COUNT(DISTINCT auction) FILTER (WHERE r = 1),
                    COUNT(DISTINCT auction) FILTER (WHERE r = 2), COUNT(DISTINCT auction) FILTER (WHERE r = 3)
             FROM (SELECT *, to_char(date_time, '%Y-%m-%d') AS day,
                          CASE WHEN price < 10000 THEN 1 WHEN price < 1000000 THEN 2 ELSE 3 END AS r FROM bid) b
             GROUP BY day",
        ),
        16 => Match(
            "SELECT channel, day, MAX(to_char(date_time, '%H:%M')), COUNT(*),
                    COUNT(*) FILTER (WHERE r = 1), COUNT(*) FILTER (WHERE r = 2), COUNT(*) FILTER (WHERE r = 3),
                    COUNT(DISTINCT bidder), COUNT(DISTINCT bidder) FILTER (WHERE r = 1),
                    COUNT(DISTINCT bidder) FILTER (WHERE r = 2), COUNT(DISTINCT bidder) FILTER (WHERE r = 3),
                    COUNT(DISTINCT auction), COUNT(DISTINCT auction) FILTER (WHERE r = 1),
                    COUNT(DISTINCT auction) FILTER (WHERE r = 2), COUNT(DISTINCT auction) FILTER (WHERE r = 3)
             FROM (SELECT *, to_char(date_time, '%Y-%m-%d') AS day,
                          CASE WHEN price < 10000 THEN 1 WHEN price < 1000000 THEN 2 ELSE 3 END AS r FROM bid) b
             GROUP BY channel, day",
        ),
        17 => Match(
            "SELECT auction, day, COUNT(*),
                    COUNT(*) FILTER (WHERE price < 10000), COUNT(*) FILTER (WHERE price >= 10000 AND price < 1000000),
                    COUNT(*) FILTER (WHERE price >= 1000000),
                    MIN(price), MAX(price), AVG(price), SUM(price)
             FROM (SELECT *, to_char(date_time, '%Y-%m-%d') AS day FROM bid) b
             GROUP BY auction, day",
        ),
        18 => Match(
                "SELECT auction, bidder, price, channel, url, date_time, extra FROM (
                    SELECT *, ROW_NUMBER() OVER (PARTITION BY bidder, auction ORDER BY date_time DESC, seq DESC) AS rn
                    FROM bid) t
                 WHERE rn <= 1",
        ),
        19 => Match(
                "SELECT auction, bidder, price, channel, url, date_time, extra, rank_number FROM (
                    SELECT *, ROW_NUMBER() OVER (PARTITION BY auction ORDER BY price DESC, seq ASC) AS rank_number
                    FROM bid) t
                 WHERE rank_number <= 10",
        ),
        20 => Match(
                "SELECT B.auction, B.bidder, B.price, B.channel, B.url, B.date_time, B.extra,
                        A.item_name, A.description, A.initial_bid, A.reserve, A.date_time, A.expires, A.seller,
                        A.category, A.extra
                 FROM bid B JOIN auction A ON B.auction = A.id WHERE A.category = 10",
        ),
        // `(&|^)channel_id=` can only match after `&` in these URLs (they start with https://).
        21 => Match(
            "SELECT auction, bidder, price, channel,
                    CASE lower(channel) WHEN 'apple' THEN '0' WHEN 'google' THEN '1' WHEN 'facebook' THEN '2'
                         WHEN 'baidu' THEN '3' ELSE id END
             FROM (SELECT *, CASE WHEN strpos(url, '&channel_id=') > 0
                                  THEN split_part(split_part(url, '&channel_id=', 2), '&', 1) END AS id FROM bid) b
             WHERE id IS NOT NULL OR lower(channel) IN ('apple', 'google', 'facebook', 'baidu')",
        ),
        22 => Match(
            "SELECT auction, bidder, price, channel, split_part(url, '/', 4), split_part(url, '/', 5),
                    split_part(url, '/', 6)
             FROM bid",
        ),
        _ => unreachable!("Nexmark has q0–q22"),
    }
}

/// The generated events: JSON-lines files for Freshet (and q13's side input) in `dir`.
fn write_files(g: &Nexmark, dir: &Path) {
    let mut text = [String::new(), String::new(), String::new()];
    for n in 0..EVENTS {
        let e = g.event(n);
        let i = Stream::ALL.iter().position(|s| *s == e.stream()).expect("stream");
        e.write_json(&mut text[i]);
    }
    for (s, t) in Stream::ALL.iter().zip(&text) {
        std::fs::write(dir.join(format!("{}.jsonl", s.name())), t).expect("write events");
    }
    std::fs::write(dir.join("side_input.csv"), side_input_csv()).expect("side input");
}

/// The same events as in-memory tables, each with a `seq` column (the event number).
async fn oracle(g: &Nexmark, dir: &Path) -> SessionContext {
    let ctx = SessionContext::new();
    for stream in Stream::ALL {
        let mut fields: Vec<Field> = stream.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new("seq", DataType::Int64, false));
        let schema = Arc::new(Schema::new(fields));
        let mut next = 0;
        let mut batches = Vec::new();
        loop {
            let ns = g.numbers(stream, &mut next, 10_000);
            if ns.is_empty() {
                break;
            }
            let b = g.batch(stream, &ns).expect("batch");
            let mut cols: Vec<ArrayRef> = b.columns().to_vec();
            cols.push(Arc::new(Int64Array::from_iter_values(ns.iter().map(|n| *n as i64))));
            batches.push(RecordBatch::try_new(schema.clone(), cols).expect("with seq"));
        }
        let table = MemTable::try_new(schema, vec![batches]).expect("memtable");
        ctx.register_table(stream.name(), Arc::new(table)).expect("register");
    }
    let side = Schema::new(vec![
        Field::new("key", DataType::Int64, false),
        Field::new("value", DataType::Utf8, false),
    ]);
    let path = dir.join("side_input.csv");
    ctx.register_csv(
        "side_input",
        path.to_str().expect("utf-8 path"),
        CsvReadOptions::new().schema(&side),
    )
    .await
    .expect("side input");
    ctx
}

/// Run queries/nexmark/q`q`.sql with its paths under `dir`; the planning or run error, if any.
async fn run_file(q: u32, dir: &Path) -> Result<(), String> {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("queries/nexmark/q{q}.sql"));
    // A query Freshet refuses is kept in its file as `-- > ` comment lines (so `freshet check
    // queries` passes): run those.
    let text = std::fs::read_to_string(&file).expect("query file");
    let text: String = text
        .lines()
        .map(|l| l.strip_prefix("-- > ").or_else(|| l.strip_prefix("-- >")).unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let sql = text
        .replace("'data/nexmark/", &format!("'{}/", dir.display()))
        .replace("'out/nexmark/", &format!("'{}/out/", dir.display()));
    let mut s = session(BATCH_SIZE);
    for st in parse_script(&sql).map_err(|e| format!("q{q}.sql: {e}"))? {
        if let Err(e) = s.execute(&st.statement).await {
            s.stop_all().await;
            return Err(format!("q{q}.sql:{}: {e}", st.line));
        }
    }
    crate::support::finish_within(&mut s, std::time::Duration::from_secs(300)).await;
    for query in &s.queries {
        if let Some(Err(e)) = &query.outcome {
            return Err(format!("query {} failed: {e}", query.name));
        }
    }
    Ok(())
}

/// The rows a Parquet sink wrote to `dir`, as `a|b|c` text: a changelog (an `op` column first) is
/// replayed, each `+I`/`+U` adding its row and each `-U`/`-D` taking one back; a retraction of a row
/// that is not there fails.
fn sink_rows(dir: &Path) -> Vec<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "parquet"));
    files.sort();
    let mut batches = Vec::new();
    for f in &files {
        let file = std::fs::File::open(f).expect("parquet file");
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .expect("parquet")
            .build()
            .expect("reader");
        for b in reader {
            batches.push(b.expect("parquet batch"));
        }
    }
    let changelog = batches.first().is_some_and(|b| b.schema().field(0).name() == "op");
    if !changelog {
        return sorted_rows(&batches);
    }
    let mut net: HashMap<String, i64> = HashMap::new();
    for b in &batches {
        let ops = b.column(0).as_any().downcast_ref::<StringArray>().expect("op column");
        let rows = unsorted_rows(&b.project(&(1..b.num_columns()).collect::<Vec<_>>()).expect("project"));
        for (i, row) in rows.into_iter().enumerate() {
            let add = match ops.value(i) {
                "+I" | "+U" => 1,
                "-U" | "-D" => -1,
                other => panic!("unknown op '{other}'"),
            };
            let c = net.entry(row).or_default();
            *c += add;
            assert!(
                *c >= 0,
                "the changelog retracts a row it never inserted (op {})",
                ops.value(i)
            );
        }
    }
    let mut out: Vec<String> = net
        .into_iter()
        .flat_map(|(row, c)| std::iter::repeat_n(row, c as usize))
        .collect();
    out.sort();
    out
}

/// A batch's rows as `a|b|c` text, in order.
fn unsorted_rows(b: &RecordBatch) -> Vec<String> {
    let opts = FormatOptions::default().with_null("NULL");
    let fmts: Vec<ArrayFormatter> = b
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts).expect("fmt"))
        .collect();
    (0..b.num_rows())
        .map(|r| {
            fmts.iter()
                .map(|f| f.value(r).to_string())
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect()
}

async fn check(q: u32) {
    let seed = 700 + q as u64;
    let dir = tempfile::tempdir().expect("tmp");
    let g = Nexmark::new(options(seed));
    write_files(&g, dir.path());
    let outcome = run_file(q, dir.path()).await;
    match expect(q) {
        Expect::Refused { because } => {
            let err = outcome.expect_err("refused for now");
            assert!(
                err.contains(because),
                "q{q}: expected a refusal containing '{because}', got: {err}"
            );
        }
        Expect::Match(sql) => {
            if let Err(e) = outcome {
                panic!("q{q}: {e}");
            }
            let got = sink_rows(&dir.path().join(format!("out/q{q}")));
            let ctx = oracle(&g, dir.path()).await;
            let want = batch_rows(&ctx, sql).await;
            assert!(!want.is_empty(), "q{q}: the oracle returned no rows");
            assert_rows_eq(&got, &want, &format!("q{q}"));
        }
    }
}

macro_rules! nexmark_tests {
    ($($name:ident = $q:literal),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                check($q).await;
            }
        )*
    };
}

nexmark_tests!(
    q0 = 0,
    q1 = 1,
    q2 = 2,
    q3 = 3,
    q4 = 4,
    q5 = 5,
    q6 = 6,
    q7 = 7,
    q8 = 8,
    q9 = 9,
    q10 = 10,
    q11 = 11,
    q12 = 12,
    q13 = 13,
    q14 = 14,
    q15 = 15,
    q16 = 16,
    q17 = 17,
    q18 = 18,
    q19 = 19,
    q20 = 20,
    q21 = 21,
    q22 = 22,
);

/// Three generator sources with the same seed and `events` are the three streams of one sequence:
/// the file `freshet generate nexmark` would write for each stream.
#[tokio::test]
async fn generator_sources_are_the_streams_of_one_sequence() {
    let g = Nexmark::new(NexmarkOptions {
        seed: 9,
        events: Some(20_000),
        rate: 1000.0,
        out_of_order_ms: 1000,
    });
    let mut s = session(3001);
    for stream in Stream::ALL {
        let cols: Vec<String> = stream
            .schema()
            .fields()
            .iter()
            .map(|f| {
                let t = match f.data_type() {
                    DataType::Int64 => "BIGINT",
                    DataType::Utf8 => "VARCHAR",
                    _ => "TIMESTAMP",
                };
                format!("{} {t}", f.name())
            })
            .collect();
        exec(
            &mut s,
            &format!(
                "CREATE SOURCE {name} ({cols}, WATERMARK FOR date_time AS date_time - INTERVAL '2' SECOND)
                 WITH (connector = 'generator', kind = 'nexmark', stream = '{name}', seed = '9', events = '20000',
                       rate = '1000', out_of_order_ms = '1000');",
                name = stream.name(),
                cols = cols.join(", ")
            ),
        )
        .await;
        let got = streamed(&mut s, &format!("SELECT * FROM {}", stream.name())).await;
        let want = sorted_rows(&g.all_batches(stream, 5000).expect("batches"));
        assert_rows_eq(&got, &want, stream.name());
    }
    let bad =
        parse_script("CREATE SOURCE x (id BIGINT) WITH (connector = 'generator', kind = 'nexmark', stream = 'bids');")
            .expect("parses");
    let err = match s.execute(&bad[0].statement).await {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("valid: person, auction, bid"), "{err}");
}

#[test]
fn streams_have_the_schema_the_queries_declare() {
    // Every column a query file declares for a stream is one the generator writes.
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("queries/nexmark");
    for q in 0..=22 {
        let sql = std::fs::read_to_string(dir.join(format!("q{q}.sql"))).expect("query file");
        for stream in Stream::ALL {
            let schema = stream.schema();
            let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            if let Some(at) = sql.find(&format!("CREATE SOURCE {} (", stream.name())) {
                let body = &sql[at..sql[at..].find(") WITH").map_or(sql.len(), |e| at + e)];
                let declared: Vec<&str> = body
                    .lines()
                    .skip(1)
                    .filter_map(|l| l.split_whitespace().next())
                    .filter(|w| *w != "WATERMARK")
                    .collect();
                assert_eq!(declared, names, "q{q}: {}", stream.name());
            }
        }
    }
}

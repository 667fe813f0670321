//! JSON-lines → Arrow decoders, single-threaded (`cargo bench --bench decode [-- FILE SCHEMA ...]`,
//! SCHEMA `course` or `bid`; by default the course file and the Nexmark bids under
//! `$CARGO_TARGET_DIR/bench`, as `scripts/bench.sh` writes them).
//!
//! Each decoder turns the same bytes into batches of 65 536 rows (one per chunk of 65 536 lines);
//! the best of 5 runs is reported, and each decoder's batches must equal those of the current
//! path exactly:
//!
//! - `linedecoder`: `LineDecoder::decode_chunk` (arrow-json's tape decoder, the current path);
//! - `arrow-json`: arrow-json's `Decoder` directly, fed the whole input;
//! - `sonic-rs`: [`fast_json::FastJson`] below (sonic-rs through serde into Arrow builders, for
//!   flat schemas; declines any line whose batch it cannot vouch is arrow-json's);
//! - `simd-json`: simd-json's borrowed DOM per line (into a mutable copy of each chunk), then the
//!   builders — not integrated, for comparison only.

use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{ArrayRef, BooleanBuilder, Int64Builder, StringBuilder, TimestampMillisecondBuilder};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::json::ReaderBuilder;
use datafusion::arrow::record_batch::RecordBatch;
use fast_json::{FastJson, parse_timestamp};
use freshet::format::{Format, LineDecoder};
use simd_json::prelude::*;

const CHUNK_LINES: usize = 65_536;
const RUNS: usize = 5;

fn bid_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("auction", DataType::Int64, true),
        Field::new("bidder", DataType::Int64, true),
        Field::new("price", DataType::Int64, true),
        Field::new("channel", DataType::Utf8, true),
        Field::new("url", DataType::Utf8, true),
        Field::new("date_time", DataType::Timestamp(TimeUnit::Millisecond, None), false),
        Field::new("extra", DataType::Utf8, true),
    ]))
}

/// The input cut into chunks of `CHUNK_LINES` whole lines.
fn chunks(bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut n = 0;
    for i in memchr::memchr_iter(b'\n', bytes) {
        n += 1;
        if n == CHUNK_LINES {
            out.push(&bytes[start..=i]);
            start = i + 1;
            n = 0;
        }
    }
    if start < bytes.len() {
        out.push(&bytes[start..]);
    }
    out
}

fn line_decoder(d: &LineDecoder, chunks: &[&[u8]]) -> Vec<RecordBatch> {
    let mut first = 1;
    let mut out = Vec::new();
    for c in chunks {
        let r = d.decode_chunk(c, first, "bench").expect("decode");
        assert!(r.errors.is_empty(), "{:?}", r.errors.first());
        first += CHUNK_LINES as u64;
        out.extend(r.batch);
    }
    out
}

fn arrow_json(schema: &SchemaRef, bytes: &[u8]) -> Vec<RecordBatch> {
    let mut d = ReaderBuilder::new(schema.clone())
        .with_batch_size(CHUNK_LINES)
        .build_decoder()
        .expect("decoder");
    let mut out = Vec::new();
    let mut off = 0;
    while off < bytes.len() {
        off += d.decode(&bytes[off..]).expect("decode");
        if let Some(b) = d.flush().expect("flush") {
            out.push(b);
        }
    }
    out.extend(d.flush().expect("flush"));
    out
}

fn sonic(schema: &SchemaRef, chunks: &[&[u8]]) -> Vec<RecordBatch> {
    let f = FastJson::new(schema).expect("a flat schema");
    chunks
        .iter()
        .map(|c| f.decode(&[c], CHUNK_LINES).expect("every line decodes"))
        .collect()
}

enum B {
    I64(Int64Builder),
    Str(StringBuilder),
    Bool(BooleanBuilder),
    Ts(TimestampMillisecondBuilder),
}

/// simd-json's borrowed DOM per line, then the builders (only what the two benchmark schemas
/// need; exact for their data: integers, plain strings, booleans, RFC 3339 timestamps).
fn simd(schema: &SchemaRef, chunks: &[&[u8]]) -> Vec<RecordBatch> {
    let mut buffers = simd_json::Buffers::default();
    let mut out = Vec::new();
    let mut copy = Vec::new();
    for c in chunks {
        let mut cols: Vec<B> = schema
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                DataType::Int64 => B::I64(Int64Builder::with_capacity(CHUNK_LINES)),
                DataType::Utf8 => B::Str(StringBuilder::with_capacity(CHUNK_LINES, c.len() / 2)),
                DataType::Boolean => B::Bool(BooleanBuilder::with_capacity(CHUNK_LINES)),
                DataType::Timestamp(TimeUnit::Millisecond, None) => {
                    B::Ts(TimestampMillisecondBuilder::with_capacity(CHUNK_LINES))
                }
                t => panic!("simd-json bench: {t} not supported"),
            })
            .collect();
        copy.clear();
        copy.extend_from_slice(c);
        for line in copy.split_mut(|b| *b == b'\n') {
            if line.is_empty() {
                continue;
            }
            let v = simd_json::to_borrowed_value_with_buffers(line, &mut buffers).expect("JSON");
            let obj = v.as_object().expect("object");
            for (f, col) in schema.fields().iter().zip(cols.iter_mut()) {
                let v = obj.get(f.name().as_str());
                match (col, v) {
                    (B::I64(b), v) => b.append_option(v.and_then(|v| v.as_i64())),
                    (B::Str(b), v) => b.append_option(v.and_then(|v| v.as_str())),
                    (B::Bool(b), v) => b.append_option(v.and_then(|v| v.as_bool())),
                    (B::Ts(b), v) => b.append_option(
                        v.and_then(|v| v.as_str())
                            .and_then(parse_timestamp)
                            .map(|d| d.timestamp_millis()),
                    ),
                }
            }
        }
        let arrays: Vec<ArrayRef> = cols
            .into_iter()
            .map(|c| -> ArrayRef {
                match c {
                    B::I64(mut b) => Arc::new(b.finish()),
                    B::Str(mut b) => Arc::new(b.finish()),
                    B::Bool(mut b) => Arc::new(b.finish()),
                    B::Ts(mut b) => Arc::new(b.finish()),
                }
            })
            .collect();
        out.push(RecordBatch::try_new(schema.clone(), arrays).expect("batch"));
    }
    out
}

fn best(runs: usize, mut f: impl FnMut() -> Vec<RecordBatch>) -> (Duration, Vec<RecordBatch>) {
    let mut best = Duration::MAX;
    let mut last = Vec::new();
    for _ in 0..runs {
        drop(std::mem::take(&mut last));
        let t = Instant::now();
        last = f();
        best = best.min(t.elapsed());
    }
    (best, last)
}

/// Small inputs from Freshet's own generators (20 000 course events; the bids of 40 000 Nexmark
/// events) for `cargo test --all-targets`, which runs this once as a smoke test of the comparison.
fn smoke_inputs(dir: &std::path::Path) -> Vec<String> {
    use freshet::connector::generator::{CourseGenerator, EPOCH_2026_MS, GenOptions};
    use freshet::connector::nexmark::{Event, Nexmark, NexmarkOptions};
    let mut text = String::new();
    let mut g = CourseGenerator::new(
        GenOptions {
            events: Some(20_000),
            ..GenOptions::default()
        },
        EPOCH_2026_MS,
    );
    while let Some(e) = g.next_event() {
        e.write_json(&mut text);
    }
    let course = dir.join("course.jsonl");
    std::fs::write(&course, &text).expect("course input");
    text.clear();
    let nx = Nexmark::new(NexmarkOptions {
        events: Some(40_000),
        ..NexmarkOptions::default()
    });
    for n in 0..40_000 {
        let e = nx.event(n);
        if matches!(e, Event::Bid(_)) {
            e.write_json(&mut text);
        }
    }
    let bid = dir.join("bid.jsonl");
    std::fs::write(&bid, &text).expect("bid input");
    let path = |p: std::path::PathBuf| p.to_string_lossy().into_owned();
    vec![path(course), "course".into(), path(bid), "bid".into()]
}

fn main() {
    // `cargo bench --bench decode` passes `--bench`; `cargo test --all-targets` runs a smoke test.
    let bench = std::env::args().any(|a| a == "--bench");
    let runs = if bench { RUNS } else { 1 };
    let tmp = tempfile::tempdir().expect("tmp");
    let mut args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    if args.is_empty() && !bench {
        args = smoke_inputs(tmp.path());
    }
    if args.is_empty() {
        let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
        args = vec![
            format!("{target}/bench/events-3000000.jsonl"),
            "course".into(),
            format!("{target}/bench/nexmark/data-1000000-42-10000/bid.jsonl"),
            "bid".into(),
        ];
    }
    println!("| input | decoder | best of {runs} (s) | MB/s | lines/s | × (a) |");
    println!("|---|---|---:|---:|---:|---:|");
    for pair in args.chunks(2) {
        let [path, which] = pair else {
            panic!("arguments: FILE SCHEMA ...")
        };
        let schema = match which.as_str() {
            "course" => freshet::connector::generator::course_schema(),
            "bid" => bid_schema(),
            other => panic!("unknown schema {other} (course, bid)"),
        };
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let chunks = chunks(&bytes);
        let lines = freshet::format::count_lines(&bytes);
        let name = std::path::Path::new(path)
            .file_name()
            .map_or(path.clone(), |n| n.to_string_lossy().into_owned());
        let current = LineDecoder::new(schema.clone(), Format::Json);
        let (base_time, base) = best(runs, || line_decoder(&current, &chunks));
        let report = |decoder: &str, t: Duration| {
            let s = t.as_secs_f64();
            println!(
                "| {name} | {decoder} | {s:.3} | {:.0} | {:.2} M | {:.2} |",
                bytes.len() as f64 / 1e6 / s,
                lines as f64 / 1e6 / s,
                base_time.as_secs_f64() / s
            );
        };
        report("LineDecoder::decode_chunk (a)", base_time);
        let check = |decoder: &str, got: &[RecordBatch]| {
            assert_eq!(got.len(), base.len(), "{decoder}: number of batches");
            for (i, (g, b)) in got.iter().zip(&base).enumerate() {
                assert!(g == b, "{decoder}: batch {i} differs from (a)'s");
            }
        };
        let (t, got) = best(runs, || arrow_json(&schema, &bytes));
        check("arrow-json", &got);
        report("arrow-json Decoder (b)", t);
        drop(got);
        let (t, got) = best(runs, || sonic(&schema, &chunks));
        check("sonic-rs", &got);
        report("sonic-rs → builders (c)", t);
        drop(got);
        let (t, got) = best(runs, || simd(&schema, &chunks));
        check("simd-json", &got);
        report("simd-json DOM → builders (d)", t);
        drop(got);
    }
}

#[allow(dead_code)]
mod fast_json {
    //! (Measured, not integrated: see docs/benchmarks.md, "JSON decoders measured".)
    //!
    //! A faster JSON-lines → Arrow decoder for flat schemas, on sonic-rs (SIMD JSON parsing through
    //! serde) feeding Arrow builders directly: no tape, field names matched by a guess at the next
    //! field first.
    //!
    //! It only ever answers when arrow-json would have produced the very same batch: every line must be
    //! one well-formed JSON object (or blank), each known field of a type that needs no coercion (a JSON
    //! integer for an integer column, a number for a float column, `true`/`false`, a string for a string
    //! column, a string or an integer for a timestamp, `null` for a nullable column), no field named
    //! twice, every non-nullable field present. Anything else — a number in a string, a fraction for an
    //! integer, an out-of-range value, a malformed line — makes [`FastJson::decode`] return `None`, and
    //! the caller decodes the same bytes with arrow-json, which gives its rows or its error exactly as
    //! before. So the fast decoder changes speed, never results or error messages.

    use std::sync::Arc;

    use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
    use datafusion::arrow::array::{
        ArrayRef, BooleanBuilder, Float64Builder, Int8Builder, Int16Builder, Int32Builder, Int64Builder,
        PrimitiveBuilder, StringBuilder,
    };
    use datafusion::arrow::compute::kernels::cast_utils::string_to_datetime;
    use datafusion::arrow::datatypes::{
        DataType, SchemaRef, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
        TimestampSecondType,
    };
    use datafusion::arrow::record_batch::RecordBatch;
    use serde::de::{DeserializeSeed, Error as _, IgnoredAny, MapAccess, Visitor};

    /// The column types the fast decoder builds; a schema with any other type is left to arrow-json.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Kind {
        Int8,
        Int16,
        Int32,
        Int64,
        Float64,
        Boolean,
        Utf8,
        Timestamp(TimeUnit),
    }

    /// A decoder for one schema, built once (per [`super::LineDecoder`]) and shared by its threads.
    #[derive(Debug)]
    pub struct FastJson {
        schema: SchemaRef,
        kinds: Vec<Kind>,
        nullable: Vec<bool>,
        names: Vec<Box<[u8]>>,
    }

    impl FastJson {
        /// `None` when the schema has a column type this decoder does not build (nested types,
        /// decimals, unsigned or 32-bit floats, timestamps with a time zone, …), more than 64 columns,
        /// or two columns of one name.
        pub fn new(schema: &SchemaRef) -> Option<Self> {
            let fields = schema.fields();
            if fields.is_empty() || fields.len() > 64 {
                return None;
            }
            let mut kinds = Vec::with_capacity(fields.len());
            for f in fields {
                kinds.push(match f.data_type() {
                    DataType::Int8 => Kind::Int8,
                    DataType::Int16 => Kind::Int16,
                    DataType::Int32 => Kind::Int32,
                    DataType::Int64 => Kind::Int64,
                    DataType::Float64 => Kind::Float64,
                    DataType::Boolean => Kind::Boolean,
                    DataType::Utf8 => Kind::Utf8,
                    DataType::Timestamp(unit, None) => Kind::Timestamp(*unit),
                    _ => return None,
                });
            }
            let names: Vec<Box<[u8]>> = fields.iter().map(|f| f.name().as_bytes().into()).collect();
            if (1..names.len()).any(|i| names[..i].contains(&names[i])) {
                return None;
            }
            Some(FastJson {
                schema: schema.clone(),
                kinds,
                nullable: fields.iter().map(|f| f.is_nullable()).collect(),
                names,
            })
        }

        /// Decode `runs` (each a sequence of whole `\n`-separated lines) as one batch, or `None` when
        /// any line is not one the fast decoder can vouch for, or there are more than `max_rows`
        /// records: then arrow-json must decode them. Blank lines (spaces, tabs, `\r`) are skipped, as
        /// arrow-json skips them.
        pub fn decode(&self, runs: &[&[u8]], max_rows: usize) -> Option<RecordBatch> {
            let capacity = max_rows.min(1 << 20);
            let bytes: usize = runs.iter().map(|r| r.len()).sum();
            let mut cols: Vec<Col> = self
                .kinds
                .iter()
                .map(|k| Col::new(*k, capacity, bytes / self.kinds.len().max(1)))
                .collect();
            let mut rows = 0usize;
            let mut hint = 0usize;
            for run in runs {
                for line in run.split(|b| *b == b'\n') {
                    if line.iter().all(|b| matches!(b, b' ' | b'\t' | b'\r')) {
                        continue;
                    }
                    rows += 1;
                    if rows > max_rows {
                        return None;
                    }
                    let mut de = sonic_rs::Deserializer::from_slice(line);
                    let row = Row {
                        dec: self,
                        cols: &mut cols,
                        hint: &mut hint,
                    };
                    row.deserialize(&mut de).ok()?;
                    de.end().ok()?;
                }
            }
            if rows == 0 {
                return None;
            }
            let arrays: Vec<ArrayRef> = cols
                .into_iter()
                .zip(self.schema.fields())
                .map(|(c, f)| c.finish(f.data_type()))
                .collect();
            RecordBatch::try_new(self.schema.clone(), arrays).ok()
        }

        fn find(&self, key: &[u8], hint: usize) -> Option<usize> {
            if self.names.get(hint).is_some_and(|n| **n == *key) {
                return Some(hint);
            }
            self.names.iter().position(|n| **n == *key)
        }
    }

    enum Col {
        Int8(Int8Builder),
        Int16(Int16Builder),
        Int32(Int32Builder),
        Int64(Int64Builder),
        Float64(Float64Builder),
        Boolean(BooleanBuilder),
        Utf8(StringBuilder),
        TsSecond(PrimitiveBuilder<TimestampSecondType>),
        TsMilli(PrimitiveBuilder<TimestampMillisecondType>),
        TsMicro(PrimitiveBuilder<TimestampMicrosecondType>),
        TsNano(PrimitiveBuilder<TimestampNanosecondType>),
    }

    impl Col {
        fn new(kind: Kind, rows: usize, bytes: usize) -> Self {
            match kind {
                Kind::Int8 => Col::Int8(Int8Builder::with_capacity(rows)),
                Kind::Int16 => Col::Int16(Int16Builder::with_capacity(rows)),
                Kind::Int32 => Col::Int32(Int32Builder::with_capacity(rows)),
                Kind::Int64 => Col::Int64(Int64Builder::with_capacity(rows)),
                Kind::Float64 => Col::Float64(Float64Builder::with_capacity(rows)),
                Kind::Boolean => Col::Boolean(BooleanBuilder::with_capacity(rows)),
                Kind::Utf8 => Col::Utf8(StringBuilder::with_capacity(rows, bytes)),
                Kind::Timestamp(TimeUnit::Second) => Col::TsSecond(PrimitiveBuilder::with_capacity(rows)),
                Kind::Timestamp(TimeUnit::Millisecond) => Col::TsMilli(PrimitiveBuilder::with_capacity(rows)),
                Kind::Timestamp(TimeUnit::Microsecond) => Col::TsMicro(PrimitiveBuilder::with_capacity(rows)),
                Kind::Timestamp(TimeUnit::Nanosecond) => Col::TsNano(PrimitiveBuilder::with_capacity(rows)),
            }
        }

        fn append_null(&mut self) {
            match self {
                Col::Int8(b) => b.append_null(),
                Col::Int16(b) => b.append_null(),
                Col::Int32(b) => b.append_null(),
                Col::Int64(b) => b.append_null(),
                Col::Float64(b) => b.append_null(),
                Col::Boolean(b) => b.append_null(),
                Col::Utf8(b) => b.append_null(),
                Col::TsSecond(b) => b.append_null(),
                Col::TsMilli(b) => b.append_null(),
                Col::TsMicro(b) => b.append_null(),
                Col::TsNano(b) => b.append_null(),
            }
        }

        /// A JSON integer (as arrow-json: the integer if it fits the column, else an error — a float
        /// fallback can only fail for a value that is out of range as an integer).
        fn append_int(&mut self, v: i128) -> bool {
            match self {
                Col::Int8(b) => i8::try_from(v).map(|v| b.append_value(v)).is_ok(),
                Col::Int16(b) => i16::try_from(v).map(|v| b.append_value(v)).is_ok(),
                Col::Int32(b) => i32::try_from(v).map(|v| b.append_value(v)).is_ok(),
                Col::Int64(b) => i64::try_from(v).map(|v| b.append_value(v)).is_ok(),
                // arrow-json parses the text of a number for a float column; an integer converts to
                // the same nearest f64 (both round to nearest, ties to even) — up to 2^64, beyond
                // which sonic-rs has already answered with a float.
                Col::Float64(b) => {
                    b.append_value(v as f64);
                    true
                }
                // The raw value of the unit, as arrow-json takes an integer for a timestamp.
                Col::TsSecond(b) => i64::try_from(v).map(|v| b.append_value(v)).is_ok(),
                Col::TsMilli(b) => i64::try_from(v).map(|v| b.append_value(v)).is_ok(),
                Col::TsMicro(b) => i64::try_from(v).map(|v| b.append_value(v)).is_ok(),
                Col::TsNano(b) => i64::try_from(v).map(|v| b.append_value(v)).is_ok(),
                Col::Boolean(_) | Col::Utf8(_) => false,
            }
        }

        fn append_str(&mut self, s: &str) -> bool {
            match self {
                Col::Utf8(b) => {
                    b.append_value(s);
                    true
                }
                Col::TsSecond(b) => parse_timestamp(s).map(|d| b.append_value(d.timestamp())).is_some(),
                Col::TsMilli(b) => parse_timestamp(s)
                    .map(|d| b.append_value(d.timestamp_millis()))
                    .is_some(),
                Col::TsMicro(b) => parse_timestamp(s)
                    .map(|d| b.append_value(d.timestamp_micros()))
                    .is_some(),
                Col::TsNano(b) => match parse_timestamp(s).and_then(|d| d.timestamp_nanos_opt()) {
                    Some(v) => {
                        b.append_value(v);
                        true
                    }
                    None => false,
                },
                // A number in a string: arrow-json parses it with arrow's cast rules; leave it to it.
                _ => false,
            }
        }

        fn finish(self, data_type: &DataType) -> ArrayRef {
            match self {
                Col::Int8(mut b) => Arc::new(b.finish()),
                Col::Int16(mut b) => Arc::new(b.finish()),
                Col::Int32(mut b) => Arc::new(b.finish()),
                Col::Int64(mut b) => Arc::new(b.finish()),
                Col::Float64(mut b) => Arc::new(b.finish()),
                Col::Boolean(mut b) => Arc::new(b.finish()),
                Col::Utf8(mut b) => Arc::new(b.finish()),
                Col::TsSecond(b) => Arc::new(b.with_data_type(data_type.clone()).finish()),
                Col::TsMilli(b) => Arc::new(b.with_data_type(data_type.clone()).finish()),
                Col::TsMicro(b) => Arc::new(b.with_data_type(data_type.clone()).finish()),
                Col::TsNano(b) => Arc::new(b.with_data_type(data_type.clone()).finish()),
            }
        }
    }

    /// A timestamp string as arrow-json reads it for a column without a time zone
    /// (`string_to_datetime` in UTC). The common shape `YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z` is read here
    /// directly (the same instant; checked against `string_to_datetime` by the tests); any other goes
    /// to `string_to_datetime` itself.
    pub fn parse_timestamp(s: &str) -> Option<DateTime<Utc>> {
        parse_rfc3339_utc(s.as_bytes()).or_else(|| string_to_datetime(&Utc, s).ok())
    }

    fn parse_rfc3339_utc(b: &[u8]) -> Option<DateTime<Utc>> {
        if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
            return None;
        }
        if *b.last()? != b'Z' {
            return None;
        }
        let digits = |r: std::ops::Range<usize>| -> Option<u32> {
            b[r].iter().try_fold(0u32, |acc, d| {
                d.is_ascii_digit().then(|| acc * 10 + u32::from(d - b'0'))
            })
        };
        let nanos = match &b[19..b.len() - 1] {
            [] => 0,
            [b'.', frac @ ..] if (1..=9).contains(&frac.len()) => {
                let v = digits(20..20 + frac.len())?;
                v * 10u32.pow(9 - frac.len() as u32)
            }
            _ => return None,
        };
        let date = NaiveDate::from_ymd_opt(digits(0..4)? as i32, digits(5..7)?, digits(8..10)?)?;
        let time = NaiveTime::from_hms_nano_opt(digits(11..13)?, digits(14..16)?, digits(17..19)?, nanos)?;
        Some(date.and_time(time).and_utc())
    }

    /// One line: a JSON object whose known fields go to their columns.
    struct Row<'a> {
        dec: &'a FastJson,
        cols: &'a mut [Col],
        hint: &'a mut usize,
    }

    impl<'de> DeserializeSeed<'de> for Row<'_> {
        type Value = ();

        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_map(self)
        }
    }

    impl<'de> Visitor<'de> for Row<'_> {
        type Value = ();

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let mut seen = 0u64;
            let mut hint = *self.hint;
            while let Some(field) = map.next_key_seed(Key { dec: self.dec, hint })? {
                match field {
                    Some(i) => {
                        if seen & (1 << i) != 0 {
                            // arrow-json keeps the last value; rare enough to leave to it.
                            return Err(A::Error::custom("duplicate field"));
                        }
                        seen |= 1 << i;
                        map.next_value_seed(Value(&mut self.cols[i]))?;
                        hint = i + 1;
                    }
                    None => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            let all = u64::MAX >> (64 - self.cols.len());
            if seen != all {
                for (i, col) in self.cols.iter_mut().enumerate() {
                    if seen & (1 << i) == 0 {
                        if !self.dec.nullable[i] {
                            return Err(A::Error::custom("missing field"));
                        }
                        col.append_null();
                    }
                }
            }
            *self.hint = 0;
            Ok(())
        }
    }

    /// A field name: `Some(column)` or `None` for a field the schema does not have.
    struct Key<'a> {
        dec: &'a FastJson,
        hint: usize,
    }

    impl<'de> DeserializeSeed<'de> for Key<'_> {
        type Value = Option<usize>;

        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
            d.deserialize_str(self)
        }
    }

    impl<'de> Visitor<'de> for Key<'_> {
        type Value = Option<usize>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a field name")
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Option<usize>, E> {
            Ok(self.dec.find(v.as_bytes(), self.hint))
        }
    }

    /// A field's value, appended to its column.
    struct Value<'a>(&'a mut Col);

    impl<'de> DeserializeSeed<'de> for Value<'_> {
        type Value = ();

        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Value<'_> {
        type Value = ();

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a value of the column's type")
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
            // Null in a non-nullable column makes `RecordBatch::try_new` fail at the end.
            self.0.append_null();
            Ok(())
        }

        fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
            self.visit_unit()
        }

        fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<(), E> {
            match self.0 {
                Col::Boolean(b) => {
                    b.append_value(v);
                    Ok(())
                }
                _ => Err(E::custom("type")),
            }
        }

        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
            ok(self.0.append_int(i128::from(v)))
        }

        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
            ok(self.0.append_int(i128::from(v)))
        }

        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
            match self.0 {
                Col::Float64(b) => {
                    b.append_value(v);
                    Ok(())
                }
                // A fraction or exponent for an integer or a timestamp: arrow-json's float fallback
                // and cast rules decide; leave it to it.
                _ => Err(E::custom("type")),
            }
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
            ok(self.0.append_str(v))
        }
    }

    fn ok<E: serde::de::Error>(appended: bool) -> Result<(), E> {
        if appended { Ok(()) } else { Err(E::custom("type")) }
    }
}

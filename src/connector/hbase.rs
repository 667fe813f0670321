//! `connector = 'hbase'`: an upsert sink and a lookup table, through HBase's Thrift1 gateway
//! (buffered transport, binary protocol).
//!
//! Row keys are order-preserving bytes of the `row_key` columns (see [`encode_key`] and
//! docs/hbase.md), so an analyst can scan by course and time range. Every other column is a cell
//! `column_family:column`. Cell timestamps come from the row (`timestamp_column`, by default
//! `window_end` when the output has it), so replaying a batch rewrites the very same cells. Writes
//! are batched (`batch_rows`); on failure the sink reconnects and retries with backoff, blocking the
//! query (backpressure) until HBase is back — nothing is dropped.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::common::ScalarValue;
use hbase_thrift::THbaseSyncClientExt;
use hbase_thrift::hbase::{BatchMutation, ColumnDescriptor, HbaseSyncClient, Mutation, THbaseSyncClient, TScan};
use thrift::protocol::{TBinaryInputProtocol, TBinaryOutputProtocol};
use thrift::transport::{
    ReadHalf, TBufferedReadTransport, TBufferedWriteTransport, TIoChannel, TTcpChannel, WriteHalf,
};

use super::{Output, Sink, SinkMode};
use crate::error::{Error, Result};
use crate::sql::parser::{Options, SourceDef};

type Client = HbaseSyncClient<
    TBinaryInputProtocol<TBufferedReadTransport<ReadHalf<TTcpChannel>>>,
    TBinaryOutputProtocol<TBufferedWriteTransport<WriteHalf<TTcpChannel>>>,
>;

pub fn connect(address: &str) -> Result<Client> {
    let mut channel = TTcpChannel::new();
    channel
        .open(address)
        .map_err(|e| Error::External(format!("hbase: connecting to thrift at {address}: {e}")))?;
    let (i, o) = channel.split().map_err(|e| Error::External(format!("hbase: {e}")))?;
    Ok(HbaseSyncClient::new(
        TBinaryInputProtocol::new(TBufferedReadTransport::new(i), true),
        TBinaryOutputProtocol::new(TBufferedWriteTransport::new(o), true),
    ))
}

/// Bad arguments (a wrong table or family name, say) are the user's to fix and are not retried;
/// everything else (connection, I/O, a region in transition) is retried by the sink.
fn hb(what: &str, e: thrift::Error) -> Error {
    if let thrift::Error::User(u) = &e {
        if let Some(ia) = u.downcast_ref::<hbase_thrift::hbase::IllegalArgument>() {
            return Error::Plan(format!("hbase: {what}: {}", ia.message.clone().unwrap_or_default()));
        }
        if let Some(io) = u.downcast_ref::<hbase_thrift::hbase::IOError>() {
            return Error::External(format!("hbase: {what}: {}", io.message.clone().unwrap_or_default()));
        }
    }
    Error::External(format!("hbase: {what}: {e}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueFormat {
    Text,
    Binary,
}

#[derive(Debug, Clone)]
pub struct HBaseOptions {
    pub thrift: String,
    pub table: String,
    pub family: String,
    pub row_key: Vec<String>,
    pub create_table: bool,
    pub value_format: ValueFormat,
    pub timestamp_column: Option<String>,
    pub batch_rows: usize,
}

const KEYS: &[&str] = &[
    "connector",
    "thrift",
    "table",
    "column_family",
    "row_key",
    "create_table",
    "value_format",
    "timestamp_column",
    "batch_rows",
];

impl HBaseOptions {
    pub fn parse(o: &Options) -> Result<Self> {
        o.check_keys("connector 'hbase'", KEYS)?;
        let row_key: Vec<String> = o
            .required("row_key", "connector 'hbase'")?
            .split(',')
            .map(|c| c.trim().to_ascii_lowercase())
            .filter(|c| !c.is_empty())
            .collect();
        if row_key.is_empty() {
            return Err(Error::option("row_key", "name at least one column"));
        }
        Ok(HBaseOptions {
            thrift: o.get("thrift").unwrap_or("127.0.0.1:9090").to_string(),
            table: o.required("table", "connector 'hbase'")?.to_string(),
            family: o.get("column_family").unwrap_or("v").to_string(),
            row_key,
            create_table: o.parse_or("create_table", false)?,
            value_format: match o.get("value_format").unwrap_or("text") {
                "text" => ValueFormat::Text,
                "binary" => ValueFormat::Binary,
                other => return Err(Error::option("value_format", format!("'{other}'; valid: text, binary"))),
            },
            timestamp_column: o.get("timestamp_column").map(|c| c.to_ascii_lowercase()),
            batch_rows: o.parse_or("batch_rows", 1000usize)?.max(1),
        })
    }
}

/// Append the order-preserving encoding of one key component. Each component starts with a marker
/// (0x00 null, 0x01 value) so nulls sort first; integers and timestamps (ms) are 8 bytes big-endian
/// with the sign bit flipped; floats are IEEE 754 bits made order-preserving; strings are UTF-8 with
/// 0x00 escaped as 0x00 0xFF and terminated by 0x00 0x01; booleans are one byte.
pub fn encode_key(out: &mut Vec<u8>, v: &ScalarValue) -> Result<()> {
    if v.is_null() {
        out.push(0x00);
        return Ok(());
    }
    out.push(0x01);
    let int = |out: &mut Vec<u8>, i: i64| out.extend_from_slice(&((i as u64) ^ (1 << 63)).to_be_bytes());
    match v {
        ScalarValue::Int8(Some(i)) => int(out, *i as i64),
        ScalarValue::Int16(Some(i)) => int(out, *i as i64),
        ScalarValue::Int32(Some(i)) => int(out, *i as i64),
        ScalarValue::Int64(Some(i)) => int(out, *i),
        ScalarValue::UInt8(Some(i)) => int(out, *i as i64),
        ScalarValue::UInt16(Some(i)) => int(out, *i as i64),
        ScalarValue::UInt32(Some(i)) => int(out, *i as i64),
        // ROW_NUMBER() and RANK() are unsigned; ranks fit in an i64 (and read back as BIGINT).
        ScalarValue::UInt64(Some(i)) => int(out, i64::try_from(*i).unwrap_or(i64::MAX)),
        ScalarValue::TimestampMillisecond(Some(t), _) => int(out, *t),
        ScalarValue::TimestampSecond(Some(t), _) => int(out, t.saturating_mul(1000)),
        ScalarValue::TimestampMicrosecond(Some(t), _) => int(out, t.div_euclid(1000)),
        ScalarValue::TimestampNanosecond(Some(t), _) => int(out, t.div_euclid(1_000_000)),
        ScalarValue::Date32(Some(d)) => int(out, *d as i64),
        ScalarValue::Float64(Some(f)) => {
            let b = f.to_bits();
            let b = if b >> 63 == 1 { !b } else { b ^ (1 << 63) };
            out.extend_from_slice(&b.to_be_bytes());
        }
        ScalarValue::Boolean(Some(b)) => out.push(u8::from(*b)),
        ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) | ScalarValue::Utf8View(Some(s)) => {
            for &c in s.as_bytes() {
                out.push(c);
                if c == 0 {
                    out.push(0xFF);
                }
            }
            out.extend_from_slice(&[0x00, 0x01]);
        }
        other => {
            return Err(Error::plan(format!(
                "row_key: cannot encode a {} column",
                other.data_type()
            )));
        }
    }
    Ok(())
}

/// Decode one component written by [`encode_key`] as `t`; returns the value and the bytes used.
pub fn decode_key(bytes: &[u8], t: &DataType) -> Option<(ScalarValue, usize)> {
    let (&marker, rest) = bytes.split_first()?;
    if marker == 0 {
        return Some((ScalarValue::try_from(t).ok()?, 1));
    }
    let int = || -> Option<i64> { Some((u64::from_be_bytes(rest.get(..8)?.try_into().ok()?) ^ (1 << 63)) as i64) };
    Some(match t {
        DataType::Int64 => (ScalarValue::Int64(Some(int()?)), 9),
        DataType::Int32 => (ScalarValue::Int32(Some(int()? as i32)), 9),
        DataType::Int16 => (ScalarValue::Int16(Some(int()? as i16)), 9),
        DataType::Int8 => (ScalarValue::Int8(Some(int()? as i8)), 9),
        DataType::Timestamp(TimeUnit::Millisecond, tz) => {
            (ScalarValue::TimestampMillisecond(Some(int()?), tz.clone()), 9)
        }
        DataType::Date32 => (ScalarValue::Date32(Some(int()? as i32)), 9),
        DataType::Boolean => (ScalarValue::Boolean(Some(*rest.first()? == 1)), 2),
        DataType::Float64 => {
            let b = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
            let b = if b >> 63 == 1 { b ^ (1 << 63) } else { !b };
            (ScalarValue::Float64(Some(f64::from_bits(b))), 9)
        }
        DataType::Utf8 => {
            let mut s = Vec::new();
            let mut i = 0;
            loop {
                let c = *rest.get(i)?;
                if c == 0 {
                    match *rest.get(i + 1)? {
                        0x01 => break,
                        _ => {
                            s.push(0);
                            i += 2;
                        }
                    }
                } else {
                    s.push(c);
                    i += 1;
                }
            }
            (ScalarValue::Utf8(Some(String::from_utf8(s).ok()?)), 1 + i + 2)
        }
        _ => return None,
    })
}

fn encode_value(v: &ScalarValue, f: ValueFormat) -> Vec<u8> {
    match f {
        ValueFormat::Text => match v {
            ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) | ScalarValue::Utf8View(Some(s)) => {
                s.as_bytes().to_vec()
            }
            ScalarValue::TimestampMillisecond(Some(t), _) => crate::time::format_ms(*t).into_bytes(),
            other => other.to_string().into_bytes(),
        },
        ValueFormat::Binary => match v {
            ScalarValue::Int64(Some(i)) | ScalarValue::TimestampMillisecond(Some(i), _) => i.to_be_bytes().to_vec(),
            ScalarValue::Int32(Some(i)) => (*i as i64).to_be_bytes().to_vec(),
            ScalarValue::Float64(Some(x)) => x.to_be_bytes().to_vec(),
            ScalarValue::Boolean(Some(b)) => vec![u8::from(*b)],
            ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) | ScalarValue::Utf8View(Some(s)) => {
                s.as_bytes().to_vec()
            }
            other => other.to_string().into_bytes(),
        },
    }
}

fn decode_value(bytes: &[u8], t: &DataType, f: ValueFormat) -> Result<ScalarValue> {
    let text = || String::from_utf8_lossy(bytes).into_owned();
    if f == ValueFormat::Binary {
        let i64_of = || bytes.try_into().ok().map(i64::from_be_bytes);
        match t {
            DataType::Int64 => return Ok(ScalarValue::Int64(i64_of())),
            DataType::Int32 => return Ok(ScalarValue::Int32(i64_of().map(|v| v as i32))),
            DataType::Float64 => return Ok(ScalarValue::Float64(bytes.try_into().ok().map(f64::from_be_bytes))),
            DataType::Boolean => return Ok(ScalarValue::Boolean(bytes.first().map(|b| *b == 1))),
            DataType::Timestamp(TimeUnit::Millisecond, tz) => {
                return Ok(ScalarValue::TimestampMillisecond(i64_of(), tz.clone()));
            }
            _ => {}
        }
    }
    Ok(ScalarValue::try_from_string(text(), t)?)
}

pub struct HBaseSink {
    opts: HBaseOptions,
    client: Option<Client>,
    key_idx: Vec<usize>,
    ts_idx: Option<usize>,
    columns: Vec<(usize, Vec<u8>)>,
    pending: BTreeMap<i64, Vec<BatchMutation>>,
    pending_rows: usize,
    pub retries: u64,
}

impl HBaseSink {
    pub fn open(o: &Options, schema: SchemaRef) -> Result<Self> {
        let opts = HBaseOptions::parse(o)?;
        let names = super::kafka::field_names(&schema);
        let idx = |c: &str, key: &str| {
            schema
                .index_of(c)
                .map_err(|_| Error::option(key, format!("no column '{c}' in the query's output ({names})")))
        };
        let key_idx = opts
            .row_key
            .iter()
            .map(|c| idx(c, "row_key"))
            .collect::<Result<Vec<_>>>()?;
        let ts_idx = match &opts.timestamp_column {
            Some(c) => Some(idx(c, "timestamp_column")?),
            None => schema.index_of("window_end").ok(),
        };
        let family = opts.family.clone();
        let columns = (0..schema.fields().len())
            .filter(|i| !key_idx.contains(i))
            .map(|i| (i, format!("{family}:{}", schema.field(i).name()).into_bytes()))
            .collect();
        let mut sink = HBaseSink {
            opts,
            client: None,
            key_idx,
            ts_idx,
            columns,
            pending: BTreeMap::new(),
            pending_rows: 0,
            retries: 0,
        };
        if sink.opts.create_table {
            sink.with_retry(|c, o| ensure_table(c, &o.table, &o.family))?;
        }
        Ok(sink)
    }

    /// Run `f` with a connected client; on failure reconnect and retry with backoff until it works.
    fn with_retry<T>(&mut self, mut f: impl FnMut(&mut Client, &HBaseOptions) -> Result<T>) -> Result<T> {
        let mut backoff = Duration::from_millis(100);
        let mut since: Option<Instant> = None;
        loop {
            let attempt = match self.client.as_mut() {
                Some(c) => f(c, &self.opts),
                None => connect(&self.opts.thrift).and_then(|mut c| {
                    let r = f(&mut c, &self.opts);
                    self.client = Some(c);
                    r
                }),
            };
            match attempt {
                Ok(v) => {
                    if let Some(t) = since {
                        eprintln!(
                            "hbase: {} is back after {:.1} s",
                            self.opts.thrift,
                            t.elapsed().as_secs_f64()
                        );
                    }
                    return Ok(v);
                }
                Err(Error::Plan(m)) => return Err(Error::Plan(m)),
                Err(e) => {
                    if since.is_none() {
                        eprintln!("hbase: {e}; retrying (writes wait until HBase is back)");
                        since = Some(Instant::now());
                    }
                    self.client = None;
                    self.retries += 1;
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    fn flush(&mut self) -> Result<()> {
        let pending = std::mem::take(&mut self.pending);
        self.pending_rows = 0;
        for (ts, rows) in pending {
            for chunk in rows.chunks(self.opts.batch_rows) {
                self.with_retry(|c, o| {
                    let r = if ts == i64::MIN {
                        c.mutate_rows(o.table.clone().into_bytes(), chunk.to_vec(), BTreeMap::new())
                    } else {
                        c.mutate_rows_ts(o.table.clone().into_bytes(), chunk.to_vec(), ts, BTreeMap::new())
                    };
                    r.map_err(|e| hb(&format!("writing to table '{}'", o.table), e))
                })?;
            }
        }
        Ok(())
    }
}

pub fn ensure_table(c: &mut Client, table: &str, family: &str) -> Result<()> {
    let exists = |c: &mut Client| c.table_exists(table).map_err(|e| hb("listing tables", e));
    if !exists(c)? {
        let cd = ColumnDescriptor {
            name: Some(format!("{family}:").into_bytes()),
            max_versions: Some(1),
            compression: Some("NONE".into()),
            bloom_filter_type: Some("NONE".into()),
            time_to_live: Some(i32::MAX),
            ..Default::default()
        };
        // Another writer may have created it meanwhile: that is success too.
        if let Err(e) = c.create_table(table.as_bytes().to_vec(), vec![cd])
            && !exists(c)?
        {
            return Err(hb(&format!("creating table '{table}'"), e));
        }
    }
    Ok(())
}

impl Sink for HBaseSink {
    fn mode(&self) -> SinkMode {
        SinkMode::Upsert
    }

    fn write(&mut self, out: &Output) -> Result<()> {
        let b = &out.batch;
        // A changelog applies by row key: within one write, the last change of a key wins (a `-U`
        // followed by its `+U` is one put; a final `-D` deletes the row's cells).
        let mut last: HashMap<Vec<u8>, usize> = HashMap::new();
        let mut order: Vec<Vec<u8>> = Vec::new();
        for r in 0..b.num_rows() {
            let mut key = Vec::new();
            for i in &self.key_idx {
                encode_key(&mut key, &ScalarValue::try_from_array(b.column(*i), r)?)?;
            }
            if last.insert(key.clone(), r).is_none() {
                order.push(key);
            }
        }
        for key in order {
            let r = last[&key];
            let delete = !out.kind(r).is_add();
            let ts = match self.ts_idx {
                Some(i) => match ScalarValue::try_from_array(b.column(i), r)? {
                    ScalarValue::TimestampMillisecond(Some(t), _) | ScalarValue::Int64(Some(t)) => t,
                    _ => i64::MIN,
                },
                None => i64::MIN,
            };
            let mut mutations = Vec::with_capacity(self.columns.len());
            for (i, col) in &self.columns {
                let v = ScalarValue::try_from_array(b.column(*i), r)?;
                let is_delete = delete || v.is_null();
                mutations.push(Mutation {
                    is_delete: Some(is_delete),
                    column: Some(col.clone()),
                    value: Some(if is_delete {
                        Vec::new()
                    } else {
                        encode_value(&v, self.opts.value_format)
                    }),
                    write_to_w_a_l: Some(true),
                });
            }
            self.pending.entry(ts).or_default().push(BatchMutation {
                row: Some(key),
                mutations: Some(mutations),
            });
            self.pending_rows += 1;
        }
        // Each write is one micro-batch's changes: send them now, for latency.
        self.flush()
    }

    fn commit(&mut self) -> Result<()> {
        self.flush()
    }
}

/// Options of an HBase lookup table (`CREATE TABLE … WITH (connector = 'hbase', …)`).
pub fn table_options(o: &Options) -> Result<HBaseOptions> {
    o.check_keys(
        "connector 'hbase' (table)",
        &[
            "connector",
            "thrift",
            "table",
            "column_family",
            "row_key",
            "value_format",
            "refresh_interval_ms",
        ],
    )?;
    let mut sink_view = o.clone();
    sink_view.0.remove("refresh_interval_ms");
    HBaseOptions::parse(&sink_view)
}

/// Read a whole HBase table as rows of `def.schema` (for lookup joins). The `row_key` columns are
/// decoded from the row key; the others from cells `column_family:column`.
pub fn load(def: &SourceDef) -> Result<Vec<RecordBatch>> {
    let opts = table_options(&def.options)?;
    let schema = def.schema.clone();
    let key_types: Vec<DataType> = opts
        .row_key
        .iter()
        .map(|c| {
            schema
                .field_with_name(c)
                .map(|f| f.data_type().clone())
                .map_err(|_| Error::option("row_key", format!("no column '{c}' in table '{}'", def.name)))
        })
        .collect::<Result<_>>()?;
    let mut client = connect(&opts.thrift)?;
    // Thrift's generated Default fills every optional field (timestamp 0, empty filter…): name them.
    let scan = TScan {
        start_row: None,
        stop_row: None,
        timestamp: None,
        columns: None,
        caching: Some(1000),
        filter_string: None,
        batch_size: None,
        sort_columns: None,
        reversed: None,
        cache_blocks: None,
    };
    let id = client
        .scanner_open_with_scan(opts.table.clone().into_bytes(), scan, BTreeMap::new())
        .map_err(|e| hb(&format!("scanning table '{}'", opts.table), e))?;
    let mut rows: Vec<Vec<ScalarValue>> = Vec::new();
    loop {
        let got = client.scanner_get_list(id, 1000).map_err(|e| hb("scanning", e))?;
        if got.is_empty() {
            break;
        }
        for r in got {
            let key = r.row.unwrap_or_default();
            let mut keys = BTreeMap::new();
            let mut at = 0;
            for (name, t) in opts.row_key.iter().zip(&key_types) {
                let (v, used) = decode_key(&key[at..], t).ok_or_else(|| {
                    Error::External(format!("hbase: row key of '{}' does not decode as {t}", opts.table))
                })?;
                keys.insert(name.clone(), v);
                at += used;
            }
            let cells = r.columns.unwrap_or_default();
            let mut row = Vec::with_capacity(schema.fields().len());
            for f in schema.fields() {
                let v = match keys.get(f.name()) {
                    Some(v) => v.clone(),
                    None => match cells.get(format!("{}:{}", opts.family, f.name()).as_bytes()) {
                        Some(cell) => decode_value(
                            cell.value.as_deref().unwrap_or_default(),
                            f.data_type(),
                            opts.value_format,
                        )?,
                        None => ScalarValue::try_from(f.data_type())?,
                    },
                };
                row.push(v);
            }
            rows.push(row);
        }
    }
    let _ = client.scanner_close(id);
    let nullable = Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| Field::new(f.name(), f.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ));
    if rows.is_empty() {
        return Ok(vec![]);
    }
    let cols: Vec<ArrayRef> = (0..nullable.fields().len())
        .map(|i| ScalarValue::iter_to_array(rows.iter().map(|r| r[i].clone())))
        .collect::<Result<_, _>>()?;
    Ok(vec![
        RecordBatch::try_new(nullable, cols)?
            .with_schema(schema.clone())
            .map_err(Error::from)?,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(vals: &[ScalarValue]) -> Vec<u8> {
        let mut k = Vec::new();
        for v in vals {
            encode_key(&mut k, v).expect("encodes");
        }
        k
    }

    #[test]
    fn keys_sort_like_their_values() {
        let ints = [-5i64, -1, 0, 1, 7, 1_000_000];
        let mut prev: Option<Vec<u8>> = None;
        for i in ints {
            let k = key(&[
                ScalarValue::Int64(Some(i)),
                ScalarValue::TimestampMillisecond(Some(i * 60_000), None),
            ]);
            if let Some(p) = &prev {
                assert!(p < &k, "{i}");
            }
            prev = Some(k);
        }
        let a = key(&[ScalarValue::Utf8(Some("ab".into())), ScalarValue::Int64(Some(9))]);
        let b = key(&[ScalarValue::Utf8(Some("abc".into())), ScalarValue::Int64(Some(1))]);
        assert!(a < b, "a string prefix sorts first whatever follows");
        let floats = [-2.5f64, -0.0, 0.5, 3.0];
        let enc: Vec<Vec<u8>> = floats.iter().map(|f| key(&[ScalarValue::Float64(Some(*f))])).collect();
        assert!(enc.windows(2).all(|w| w[0] < w[1]));
        assert!(key(&[ScalarValue::Int64(None)]) < key(&[ScalarValue::Int64(Some(i64::MIN))]));
    }

    #[test]
    fn keys_round_trip() {
        let vals = [
            (ScalarValue::Int64(Some(-42)), DataType::Int64),
            (ScalarValue::Utf8(Some("a\0b".into())), DataType::Utf8),
            (
                ScalarValue::TimestampMillisecond(Some(1_767_225_600_000), None),
                DataType::Timestamp(TimeUnit::Millisecond, None),
            ),
            (ScalarValue::Float64(Some(-1.25)), DataType::Float64),
            (ScalarValue::Boolean(Some(true)), DataType::Boolean),
        ];
        let k = key(&vals.iter().map(|(v, _)| v.clone()).collect::<Vec<_>>());
        let mut at = 0;
        for (v, t) in &vals {
            let (got, used) = decode_key(&k[at..], t).expect("decodes");
            assert_eq!(&got, v);
            at += used;
        }
        assert_eq!(at, k.len());
    }
}

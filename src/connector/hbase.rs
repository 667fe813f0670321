//! `connector = 'hbase'`: an upsert sink and a lookup table, through HBase's Thrift1 gateway
//! (buffered transport, binary protocol); the sink can write through the Thrift2 gateway instead
//! (`protocol = 'thrift2'`, [`super::hbase_thrift2`]), which takes a per-mutation `durability`.
//! Both write the same cells at the same timestamps ([`Gateway::write`]).
//!
//! Row keys are order-preserving bytes of the `row_key` columns (see [`encode_key`] and
//! docs/hbase.md), so an analyst can scan by course and time range. Every other column is a cell
//! `column_family:column`; a NULL value is no cell. Writes are cut into calls (`calls`:
//! `batch_rows`, `batch_bytes`) that go out over `connections` at once; on failure the sink
//! reconnects and retries with backoff, blocking the query (backpressure) until HBase is back —
//! nothing is dropped — or until the query is stopped ([`Sink::interrupt_handle`]). Every
//! read or write on the Thrift socket gives up after [`IO_TIMEOUT`] (then the call is retried on a
//! new connection), after [`STOP_GRACE`] once the query is stopping.
//!
//! # Exactly-once effect under replays: cell timestamps
//!
//! A restarted query resumes from its newest checkpoint and writes the rows of the epochs after it
//! again, cut into other micro-batches (so with other intermediate values). The sink makes that
//! replay land on the cells the first run wrote. A cell's timestamp is `base + generation`:
//!
//! - `base` comes from the row: the `timestamp_column` (by default `window_end` when the output has
//!   it), in ms; 0 when the output has no such column.
//! - the *generation* `g` is the sink's: it starts at 0, goes up by one when a checkpoint publishes
//!   deletes (below), and is stored in every checkpoint (and, as its highest value, in the table's
//!   row [`GENERATION_ROW`], which sorts after every data row and which the lookup reader skips).
//!
//! **Upserts** go out at once: the row's non-NULL values at `base + g`. A later update of the row in
//! the same generation, and the same row written again by a replay, replace those very cell versions
//! (HBase keeps one version per timestamp: the last one written).
//!
//! **Deletes** — a retraction (`-D`, or a `-U` not followed by its `+U`) and a NULL where the cell
//! may hold a value — cannot go out at once: an HBase delete marker at timestamp T hides every put at
//! or below T, also puts written after it, until a major compaction. A marker at the timestamp the
//! row's upserts use would hide its next upsert, and a marker written after the newest checkpoint
//! would, after a crash, hide the puts of a replay that never learns of it. So deletes follow the
//! checkpoint's two phases: `write` notes the row (its latest values); [`Sink::prepare`] returns
//! the noted rows with `g`, which the checkpoint stores; [`Sink::publish`] (the checkpoint is
//! durable) writes for each noted row a marker at `base + g` on every column and its non-NULL values
//! again at `base + g + 1`, then moves to generation `g + 1`. [`Sink::recover`] does the same from
//! the checkpoint (the same cells at the same timestamps: harmless if it was done). A row written
//! in generation `g > 0` for the first time since the sink started or since `g` began gets a marker
//! at `base + g − 1` first, hiding its older versions (a query that never deletes stays at
//! generation 0, where cell timestamps are exactly the base and nothing needs hiding; one that does
//! pays one more mutation per row and generation, and its cells sit `g` ms above the base). A row
//! whose latest change in the epoch is an upsert with every once-held value non-NULL needs no
//! delete at all.
//!
//! **Guarantee.** Every cell holds one version (older ones are hidden by markers), and no marker
//! ever sits at or above a timestamp the sink writes later, a replay's included: delete markers go
//! out only once the checkpoint recording them is durable, and every start takes up the highest
//! generation published (the checkpoint's, or the table's if that is higher), so hiding markers at
//! `g − 1` stay below. After a restart from checkpoint N the sink is in N's generation, as the first
//! run was after N, so the replay rewrites the first run's cells in place; once it has passed the
//! point where the first run stopped, every row it wrote holds its final value (deleted rows and
//! NULL cells absent), in one version. A crash during recovery, and a start from scratch over a
//! table earlier runs wrote, keep this. Deletes and NULLs show in HBase when their epoch's
//! checkpoint completes (every commit interval), upserts at once. Not guaranteed:
//!
//! - while a replay catches up, a row may show an earlier value than it did before the crash: the
//!   replay writes the same timestamps, and at equal timestamps HBase keeps the last write, not the
//!   newest result (a lower timestamp for replayed values would need the row's progress, which the
//!   sink does not see);
//! - a row the first run wrote after the checkpoint that the replay never writes (its changes
//!   cancelled out within a differently cut micro-batch) keeps what the first run wrote;
//! - the row key must identify the row (include the window): a row key shared by several windows
//!   keeps no history of them in versions, since markers hide older versions;
//! - without a timestamp column cells carry timestamps `g` (near 1970): a family TTL then removes them
//!   at once.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::common::ScalarValue;
use hbase_thrift::THbaseSyncClientExt;
use hbase_thrift::hbase::{
    BatchMutation, ColumnDescriptor, HbaseSyncClient, Mutation, THbaseSyncClient, TRowResult, TScan,
};
use thrift::protocol::{TBinaryInputProtocol, TBinaryOutputProtocol};
use thrift::transport::{TBufferedReadTransport, TBufferedWriteTransport};

use super::hbase_thrift2::{self as t2, TDurability};
use super::{Output, Sink, SinkMode};
use crate::error::{Error, Result};
use crate::sql::parser::{Options, SourceDef};

/// The Thrift gateway when `thrift` is not given: the local one.
pub const DEFAULT_THRIFT: &str = "127.0.0.1:9090";
/// The Thrift2 gateway when `thrift` is not given with `protocol = 'thrift2'` (what
/// `scripts/services` starts).
pub const DEFAULT_THRIFT2: &str = "127.0.0.1:9095";

/// The gateway address options `o` name: `thrift`, or the local default of their `protocol`.
pub fn thrift_address(o: &Options) -> &str {
    o.get("thrift").unwrap_or(match protocol_of(o) {
        Some(Protocol::Thrift2) => DEFAULT_THRIFT2,
        _ => DEFAULT_THRIFT,
    })
}

/// The `protocol` options `o` name (`thrift1` when not given); `None` for an unknown one.
fn protocol_of(o: &Options) -> Option<Protocol> {
    match o
        .get("protocol")
        .unwrap_or("thrift1")
        .trim()
        .to_ascii_lowercase()
        .as_str()
    {
        "thrift1" => Some(Protocol::Thrift1),
        "thrift2" => Some(Protocol::Thrift2),
        _ => None,
    }
}

/// Thrift connections per HBase sink unless `connections` says otherwise (see docs/hbase.md for the
/// measurements behind it).
const DEFAULT_CONNECTIONS: usize = 4;

/// Bytes per call unless `batch_bytes` says otherwise: HBase's own client buffers this much
/// (`hbase.client.write.buffer`) before it sends, and so does Flink's HBase sink
/// (`sink.buffer-flush.max-size`).
const DEFAULT_BATCH_BYTES: usize = 2 << 20;
/// The largest `batch_bytes`, below the limits on one call: libthrift's message size (100 MB by
/// default in the gateways' Thrift 0.14) and HBase's `hbase.ipc.max.request.size` (256 MB).
const MAX_BATCH_BYTES: usize = 64 << 20;
/// A flush of fewer rows than `batch_rows × connections` is cut into one call per connection, but
/// no call is cut below this many rows (small calls cost more per row than they save in waiting).
const MIN_CALL_ROWS: usize = 100;

/// A Thrift1 write of rows at this many cell timestamps or more (a session's `window_end`, a
/// per-row `timestamp_column`) prints a hint once: Thrift2 would send them in one call.
const MANY_TIMESTAMPS: usize = 64;

/// Connecting to the Thrift server gives up after this long (then the sink retries).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// One read or write on the Thrift socket gives up after this long without progress (a region in
/// transition can hold a call for a while); the call is then retried on a new connection.
pub const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Once the query is stopping, a read or write in flight waits at most this long for HBase.
pub const STOP_GRACE: Duration = Duration::from_secs(3);
/// How often a waiting read or write, or the backoff between retries, looks at the stop flag.
const POLL: Duration = Duration::from_millis(100);

/// The row where the sink keeps the highest generation it published (column
/// `column_family:generation`, the number as text, at cell timestamp = the number). A query
/// starting from scratch over the table starts there, above the markers earlier runs left.
pub const GENERATION_ROW: &[u8] = b"\xfffreshet:sink";

type In = TBinaryInputProtocol<TBufferedReadTransport<Conn>>;
type Out = TBinaryOutputProtocol<TBufferedWriteTransport<Conn>>;

/// A Thrift1 client (the sink's when `protocol = 'thrift1'`, the lookup tables', tools' and tests').
pub type Client = HbaseSyncClient<In, Out>;

/// A connection of the sink, to the gateway its `protocol` names.
enum Gateway {
    Thrift1(Client),
    Thrift2(t2::Client<In, Out>),
}

/// One half of a Thrift connection: a TCP stream whose reads and writes wait in short steps, up
/// to [`IO_TIMEOUT`], or [`STOP_GRACE`] once the stop flag is set.
pub struct Conn {
    stream: TcpStream,
    stop: Arc<AtomicBool>,
}

impl Conn {
    fn wait<T>(&mut self, mut op: impl FnMut(&mut TcpStream) -> io::Result<T>) -> io::Result<T> {
        let started = Instant::now();
        loop {
            match op(&mut self.stream) {
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    let waited = started.elapsed();
                    if waited >= IO_TIMEOUT || (self.stop.load(Ordering::Relaxed) && waited >= STOP_GRACE) {
                        return Err(io::Error::new(
                            ErrorKind::TimedOut,
                            format!("no answer for {:.1} s", waited.as_secs_f64()),
                        ));
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                r => return r,
            }
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.wait(|s| s.read(buf))
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.wait(|s| s.write(buf))
    }
    fn flush(&mut self) -> io::Result<()> {
        self.wait(|s| s.flush())
    }
}

/// A client of the Thrift server at `address` (for tools and tests; the sink has its own).
pub fn connect(address: &str) -> Result<Client> {
    let (i, o) = open_protocols(address, &Arc::new(AtomicBool::new(false)))?;
    Ok(HbaseSyncClient::new(i, o))
}

/// A connection to the gateway `opts` names, its reads and writes watching `stop`.
fn open_gateway(opts: &HBaseOptions, stop: &Arc<AtomicBool>) -> Result<Gateway> {
    let (i, o) = open_protocols(&opts.thrift, stop)?;
    Ok(match opts.protocol {
        Protocol::Thrift1 => Gateway::Thrift1(HbaseSyncClient::new(i, o)),
        Protocol::Thrift2 => Gateway::Thrift2(t2::Client::new(i, o)),
    })
}

/// The binary protocol on a buffered transport over a new connection to `address`.
fn open_protocols(address: &str, stop: &Arc<AtomicBool>) -> Result<(In, Out)> {
    let err = |e: &dyn std::fmt::Display| Error::External(format!("hbase: connecting to thrift at {address}: {e}"));
    let mut last: Option<io::Error> = None;
    let mut stream = None;
    for a in address.to_socket_addrs().map_err(|e| err(&e))? {
        match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let stream = match (stream, last) {
        (Some(s), _) => s,
        (None, Some(e)) => return Err(err(&e)),
        (None, None) => return Err(err(&"no address")),
    };
    let setup = |s: &TcpStream| -> io::Result<TcpStream> {
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(POLL))?;
        s.set_write_timeout(Some(POLL))?;
        s.try_clone()
    };
    let other = setup(&stream).map_err(|e| err(&e))?;
    let read = Conn {
        stream,
        stop: stop.clone(),
    };
    let write = Conn {
        stream: other,
        stop: stop.clone(),
    };
    Ok((
        TBinaryInputProtocol::new(TBufferedReadTransport::new(read), true),
        TBinaryOutputProtocol::new(TBufferedWriteTransport::new(write), true),
    ))
}

/// One column `family:qualifier` as Thrift2 names it (HBase splits at the first colon too).
fn split_column(column: &[u8]) -> (&[u8], &[u8]) {
    match column.iter().position(|&b| b == b':') {
        Some(at) => (&column[..at], &column[at + 1..]),
        None => (column, &[]),
    }
}

impl Gateway {
    /// Write `rows`, each `(ts, row)` at its cell timestamp `ts`: each put at `ts`, each delete a
    /// marker hiding every version at or below `ts`. Thrift1's `mutateRowsTs` does that in one
    /// call for rows of one timestamp (its puts first, then its deletes, each with `SYNC_WAL`):
    /// through Thrift1 `rows` must share one (see [`calls`]). Thrift2 takes the same puts
    /// (`putMultiple`, each with its own timestamp) and then the same deletes (`deleteMultiple`,
    /// `DELETE_COLUMNS` at each row's `ts`), with `durability`.
    fn write(
        &mut self,
        table: &str,
        rows: &[(i64, BatchMutation)],
        durability: Option<TDurability>,
    ) -> thrift::Result<()> {
        let c = match self {
            Gateway::Thrift1(c) => {
                let ts = rows.first().map_or(0, |(ts, _)| *ts);
                debug_assert!(rows.iter().all(|(t, _)| *t == ts), "one timestamp per Thrift1 call");
                let rows = rows.iter().map(|(_, r)| r.clone()).collect();
                return c.mutate_rows_ts(table.as_bytes().to_vec(), rows, ts, BTreeMap::new());
            }
            Gateway::Thrift2(c) => c,
        };
        let mut puts = Vec::new();
        let mut deletes = Vec::new();
        for (ts, r) in rows {
            let ts = *ts;
            let row = r.row.as_deref().unwrap_or_default();
            let (mut cells, mut gone) = (Vec::new(), Vec::new());
            for m in r.mutations.iter().flatten() {
                let (family, qualifier) = split_column(m.column.as_deref().unwrap_or_default());
                if m.is_delete == Some(true) {
                    gone.push(t2::TColumn {
                        family,
                        qualifier: Some(qualifier),
                        timestamp: Some(ts),
                    });
                } else {
                    cells.push(t2::TColumnValue {
                        family,
                        qualifier,
                        value: m.value.as_deref().unwrap_or_default(),
                        timestamp: None,
                    });
                }
            }
            if !cells.is_empty() {
                puts.push(t2::TPut {
                    row,
                    column_values: cells,
                    timestamp: Some(ts),
                    durability,
                });
            }
            if !gone.is_empty() {
                deletes.push(t2::TDelete {
                    row,
                    columns: gone,
                    delete_type: t2::TDeleteType::DeleteColumns,
                    durability,
                });
            }
        }
        if !puts.is_empty() {
            c.put_multiple(table.as_bytes(), &puts)?;
        }
        if !deletes.is_empty() {
            c.delete_multiple(table.as_bytes(), &deletes)?;
        }
        Ok(())
    }

    /// The newest value of cell `column` (`family:qualifier`) of `row`.
    fn cell(&mut self, table: &str, row: &[u8], column: &[u8]) -> thrift::Result<Option<Vec<u8>>> {
        match self {
            Gateway::Thrift1(c) => {
                let rows = c.get_row_with_columns(
                    table.as_bytes().to_vec(),
                    row.to_vec(),
                    vec![column.to_vec()],
                    BTreeMap::new(),
                )?;
                Ok(rows
                    .into_iter()
                    .filter_map(|r| r.columns)
                    .find_map(|mut cols| cols.remove(column))
                    .and_then(|c| c.value))
            }
            Gateway::Thrift2(c) => {
                let (family, qualifier) = split_column(column);
                c.get_cell(table.as_bytes(), row, family, qualifier)
            }
        }
    }

    fn table_exists(&mut self, table: &str) -> thrift::Result<bool> {
        match self {
            Gateway::Thrift1(c) => c.table_exists(table),
            Gateway::Thrift2(c) => c.table_exists(table),
        }
    }

    /// Create `table` with the one family `family`, keeping one version.
    fn create_table(&mut self, table: &str, family: &str) -> thrift::Result<()> {
        match self {
            Gateway::Thrift1(c) => {
                let cd = ColumnDescriptor {
                    name: Some(format!("{family}:").into_bytes()),
                    max_versions: Some(1),
                    compression: Some("NONE".into()),
                    bloom_filter_type: Some("NONE".into()),
                    time_to_live: Some(i32::MAX),
                    ..Default::default()
                };
                c.create_table(table.as_bytes().to_vec(), vec![cd])
            }
            Gateway::Thrift2(c) => c.create_table(table, family.as_bytes()),
        }
    }
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
        if let Some(ia) = u.downcast_ref::<t2::TIllegalArgument>() {
            return Error::Plan(format!("hbase: {what}: {}", ia.message.clone().unwrap_or_default()));
        }
        if let Some(io) = u.downcast_ref::<t2::TIOError>() {
            return Error::External(format!("hbase: {what}: {}", io.message.clone().unwrap_or_default()));
        }
    }
    Error::External(format!("hbase: {what}: {e}"))
}

/// Which Thrift gateway the sink writes through (`protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `Hbase.mutateRowsTs`: every mutation with `SYNC_WAL`.
    Thrift1,
    /// `THBaseService.putMultiple` / `deleteMultiple`, with the sink's `durability`.
    Thrift2,
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
    /// At most this many bytes of row keys, columns and values per call (a row larger than this
    /// goes alone).
    pub batch_bytes: usize,
    /// Thrift connections a flush sends its batches over at once.
    pub connections: usize,
    pub protocol: Protocol,
    /// The WAL durability of every mutation (Thrift2 only); `None`: the table's (`USE_DEFAULT`).
    pub durability: Option<TDurability>,
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
    "batch_bytes",
    "connections",
    "protocol",
    "durability",
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
        let word = |key: &str, default: &str| o.get(key).unwrap_or(default).trim().to_ascii_lowercase();
        let given = |key: &str| o.get(key).unwrap_or_default();
        let protocol = protocol_of(o)
            .ok_or_else(|| Error::option("protocol", format!("'{}'; valid: thrift1, thrift2", given("protocol"))))?;
        let durability = match word("durability", "default").as_str() {
            "default" => None,
            "skip_wal" => Some(TDurability::SkipWal),
            "async_wal" => Some(TDurability::AsyncWal),
            "sync_wal" => Some(TDurability::SyncWal),
            "fsync_wal" => Some(TDurability::FsyncWal),
            _ => {
                return Err(Error::option(
                    "durability",
                    format!(
                        "'{}'; valid: default, skip_wal, async_wal, sync_wal, fsync_wal",
                        given("durability")
                    ),
                ));
            }
        };
        // Thrift1 writes every mutation with SYNC_WAL: nothing else can be asked of it.
        if protocol == Protocol::Thrift1 && !matches!(durability, None | Some(TDurability::SyncWal)) {
            return Err(Error::option(
                "durability",
                format!(
                    "'{}' needs protocol = 'thrift2' (Thrift1 writes every mutation with SYNC_WAL: \
                     with it only 'default' and 'sync_wal')",
                    given("durability")
                ),
            ));
        }
        Ok(HBaseOptions {
            thrift: thrift_address(o).to_string(),
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
            batch_bytes: match o.parse_or("batch_bytes", DEFAULT_BATCH_BYTES)? {
                n @ 1024..=MAX_BATCH_BYTES => n,
                n => {
                    return Err(Error::option(
                        "batch_bytes",
                        format!("{n}; valid: 1024 to {MAX_BATCH_BYTES} (bytes)"),
                    ));
                }
            },
            connections: match o.parse_or("connections", DEFAULT_CONNECTIONS)? {
                n @ 1..=64 => n,
                n => return Err(Error::option("connections", format!("{n}; valid: 1 to 64"))),
            },
            protocol,
            durability,
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

/// Rows the sink remembers within a generation: at most this many (then it forgets them all and
/// treats the rows it meets again as new: one more marker each, never a wrong cell).
const ROWS_CAP: usize = 200_000;

/// A row whose latest change deletes cells (see the module doc), waiting for the checkpoint.
#[derive(Debug, Clone, PartialEq)]
struct Noted {
    base: i64,
    /// The row's latest values, per value column (`None`: NULL, or the whole row retracted).
    cells: Vec<Option<Vec<u8>>>,
}

/// The cell timestamp of generation `g` for a row with `base` (never HBase's "latest", i64::MAX).
fn cell_ts(base: i64, g: u64) -> i64 {
    base.saturating_add(i64::try_from(g).unwrap_or(i64::MAX))
        .min(i64::MAX - 1)
}

fn put(column: &[u8], value: Vec<u8>) -> Mutation {
    Mutation {
        is_delete: Some(false),
        column: Some(column.to_vec()),
        value: Some(value),
        write_to_w_a_l: Some(true),
    }
}

fn delete(column: &[u8]) -> Mutation {
    Mutation {
        is_delete: Some(true),
        column: Some(column.to_vec()),
        value: Some(Vec::new()),
        write_to_w_a_l: Some(true),
    }
}

/// Bit `i` for value column `i`; columns past 64 have none (they always count as maybe holding a value).
fn bit(i: usize) -> u64 {
    if i < 64 { 1 << i } else { 0 }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The bytes a row's mutations put on the wire, near enough: its row key, columns and values.
fn wire_bytes((_, m): &(i64, BatchMutation)) -> usize {
    let cells: usize = m
        .mutations
        .iter()
        .flatten()
        .map(|c| c.column.as_ref().map_or(0, Vec::len) + c.value.as_ref().map_or(0, Vec::len) + 8)
        .sum();
    m.row.as_ref().map_or(0, Vec::len) + cells + 8
}

/// Cut a flush's rows (`(cell timestamp, mutations)`, in timestamp order) into calls of at most
/// `batch_rows` rows and `batch_bytes` bytes (a row larger than that goes alone); through Thrift1,
/// whose `mutateRowsTs` takes one timestamp per call, also wherever the timestamp changes. A flush
/// too small to give every connection a full call is cut into `connections` calls of about equal
/// rows (none below [`MIN_CALL_ROWS`]), so that every connection takes a share of it.
fn calls<'a>(rows: &'a [(i64, BatchMutation)], o: &HBaseOptions) -> Vec<&'a [(i64, BatchMutation)]> {
    let per_connection = rows.len().div_ceil(o.connections.max(1)).max(MIN_CALL_ROWS);
    let max_rows = o.batch_rows.min(per_connection).max(1);
    let one_ts = o.protocol == Protocol::Thrift1;
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, m) in rows.iter().enumerate() {
        let b = wire_bytes(m);
        let new_ts = one_ts && i > start && rows[start].0 != m.0;
        if i > start && (new_ts || i - start == max_rows || bytes + b > o.batch_bytes) {
            out.push(&rows[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += b;
    }
    if start < rows.len() {
        out.push(&rows[start..]);
    }
    out
}

pub struct HBaseSink {
    opts: HBaseOptions,
    client: Option<Gateway>,
    key_idx: Vec<usize>,
    ts_idx: Option<usize>,
    columns: Vec<(usize, Vec<u8>)>,
    /// Mutations to send, by cell timestamp (one `mutateRowsTs` call per timestamp and chunk).
    queued: BTreeMap<i64, Vec<BatchMutation>>,
    /// The current generation (see the module doc).
    generation: u64,
    /// Whether this sink began the current generation itself (by publishing), so that nobody else
    /// wrote in it and [`Self::rows`] knows exactly which cells hold a value.
    fresh: bool,
    /// Rows written in this generation whose older versions are hidden (by a marker at `base + g −
    /// 1`, or by publishing), with a bit per value column written in this generation. Kept only when
    /// `generation > 0` (at 0 there is nothing older to hide) or `fresh`.
    rows: HashMap<Vec<u8>, u64>,
    /// Rows whose latest change deletes cells, by row key: published with the next checkpoint.
    noted: BTreeMap<Vec<u8>, Noted>,
    /// What `recover` was given, applied before the first HBase write: the checkpoint's generation
    /// and noted rows (a new sink starts as if from scratch).
    resume: Option<(u64, BTreeMap<Vec<u8>, Noted>)>,
    stop: Arc<AtomicBool>,
    pub retries: u64,
    /// `create_table` could not reach HBase when the sink was opened: done before the first write.
    create_pending: bool,
    /// Connections besides `client` for sending the batches of one flush at once (opened on
    /// demand; one that fails is dropped, and its batches go out again through `with_retry`).
    pool: Vec<Gateway>,
    /// Whether the hint that Thrift2 writes rows of many timestamps in one call was given.
    hinted: bool,
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
            queued: BTreeMap::new(),
            generation: 0,
            fresh: false,
            rows: HashMap::new(),
            noted: BTreeMap::new(),
            resume: Some((0, BTreeMap::new())),
            stop: Arc::new(AtomicBool::new(false)),
            retries: 0,
            create_pending: false,
            pool: Vec::new(),
            hinted: false,
        };
        if sink.opts.create_table {
            // Once, now: a bad table or family name fails the statement that made the sink. An
            // HBase that does not answer must not hold the statement up (nor the server's
            // session): the table is then made before the first write, on the query's thread,
            // waiting like any write does.
            let attempt = open_gateway(&sink.opts, &sink.stop).and_then(|mut c| {
                ensure_table(&mut c, &sink.opts.table, &sink.opts.family)?;
                sink.client = Some(c);
                Ok(())
            });
            match attempt {
                Ok(()) => {}
                Err(Error::Plan(m)) => return Err(Error::Plan(m)),
                Err(e) => {
                    eprintln!("hbase: {e}; table '{}' is created once HBase answers", sink.opts.table);
                    sink.create_pending = true;
                }
            }
        }
        Ok(sink)
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Run `f` with a connected client; on failure reconnect and retry with backoff until it works,
    /// or until the query is stopping (then the error is returned).
    fn with_retry<T>(&mut self, mut f: impl FnMut(&mut Gateway, &HBaseOptions) -> Result<T>) -> Result<T> {
        let mut backoff = Duration::from_millis(100);
        let mut since: Option<Instant> = None;
        loop {
            let attempt = match self.client.as_mut() {
                Some(c) => f(c, &self.opts),
                None => open_gateway(&self.opts, &self.stop).and_then(|mut c| {
                    let r = f(&mut c, &self.opts);
                    self.client = Some(c);
                    r
                }),
            };
            let e = match attempt {
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
                Err(e) => e,
            };
            self.client = None;
            let gave_up = |e: &Error| Error::External(format!("{e} (gave up: the query is stopping)"));
            if self.stopping() {
                return Err(gave_up(&e));
            }
            if since.is_none() {
                eprintln!("hbase: {e}; retrying (writes wait until HBase is back)");
                since = Some(Instant::now());
            }
            self.retries += 1;
            let until = Instant::now() + backoff;
            while let Some(left) = until.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
                if self.stopping() {
                    return Err(gave_up(&e));
                }
                std::thread::sleep(left.min(POLL));
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    fn queue(&mut self, ts: i64, row: &[u8], mutations: Vec<Mutation>) {
        if mutations.is_empty() {
            return;
        }
        self.queued.entry(ts).or_default().push(BatchMutation {
            row: Some(row.to_vec()),
            mutations: Some(mutations),
        });
    }

    fn flush(&mut self) -> Result<()> {
        if self.opts.protocol == Protocol::Thrift1 && self.queued.len() >= MANY_TIMESTAMPS && !self.hinted {
            self.hinted = true;
            eprintln!(
                "hbase: table '{}': a write of rows at {} cell timestamps takes a Thrift1 call per \
                 timestamp (mutateRowsTs); protocol = 'thrift2' writes them in one call (docs/hbase.md)",
                self.opts.table,
                self.queued.len()
            );
        }
        let rows: Vec<(i64, BatchMutation)> = std::mem::take(&mut self.queued)
            .into_iter()
            .flat_map(|(ts, rows)| rows.into_iter().map(move |r| (ts, r)))
            .collect();
        let chunks = calls(&rows, &self.opts);
        // The calls of one flush are independent, whatever their timestamps, so up to
        // `connections` go out at once: no two hold the same row at the same timestamp (a write
        // keeps one change per row), and where a row has a delete marker and puts in one flush,
        // the puts sit above the marker (a hiding marker at `base + g − 1` under puts at
        // `base + g`; a published one at `base + g` under the values at `base + g + 1`), so HBase
        // ends the same in any order. Whatever did not go out that way goes through `with_retry`,
        // one by one.
        let sent = match chunks.len() {
            0 | 1 => vec![false; chunks.len()],
            _ => self.send_parallel(&chunks),
        };
        for (chunk, _) in chunks.iter().zip(sent).filter(|(_, sent)| !sent) {
            self.with_retry(|c, o| {
                c.write(&o.table, chunk, o.durability)
                    .map_err(|e| hb(&format!("writing to table '{}'", o.table), e))
            })?;
            // A crash between two calls of one batch (the fault tests' named point).
            fail::fail_point!("hbase-mid-batch", |_| crate::state::crash("hbase-mid-batch"));
        }
        Ok(())
    }

    /// Send `chunks` over the pool's connections at once, connection `w` taking chunks `w`,
    /// `w + n`, … in order and stopping at its first error (that connection is then dropped).
    /// Returns which chunks went out.
    fn send_parallel(&mut self, chunks: &[&[(i64, BatchMutation)]]) -> Vec<bool> {
        let mut sent = vec![false; chunks.len()];
        let want = self.opts.connections.min(chunks.len());
        if want < 2 || self.stopping() {
            return sent;
        }
        while self.pool.len() < want {
            match open_gateway(&self.opts, &self.stop) {
                Ok(c) => self.pool.push(c),
                Err(_) => break,
            }
        }
        let n = self.pool.len();
        if n < 2 {
            return sent;
        }
        let (table, durability) = (self.opts.table.as_str(), self.opts.durability);
        let outcomes: Vec<(Vec<usize>, bool)> = std::thread::scope(|s| {
            let handles: Vec<_> = self
                .pool
                .iter_mut()
                .enumerate()
                .map(|(w, client)| {
                    s.spawn(move || {
                        let mut done = Vec::new();
                        for i in (w..chunks.len()).step_by(n) {
                            let r = client.write(table, chunks[i], durability);
                            if r.is_err() {
                                return (done, true);
                            }
                            done.push(i);
                            fail::fail_point!("hbase-mid-batch", |_| crate::state::crash("hbase-mid-batch"));
                        }
                        (done, false)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or((Vec::new(), true)))
                .collect()
        });
        let mut broken = outcomes.iter().map(|(_, b)| *b);
        self.pool.retain(|_| !broken.next().unwrap_or(true));
        for (done, _) in outcomes {
            for i in done {
                sent[i] = true;
            }
        }
        sent
    }

    fn generation_column(&self) -> Vec<u8> {
        format!("{}:generation", self.opts.family).into_bytes()
    }

    /// The highest generation published to the table (0: none).
    fn stored_generation(&mut self) -> Result<u64> {
        let column = self.generation_column();
        let cell = self.with_retry(|c, o| {
            c.cell(&o.table, GENERATION_ROW, &column)
                .map_err(|e| hb(&format!("reading table '{}'", o.table), e))
        })?;
        Ok(cell
            .and_then(|v| String::from_utf8(v).ok()?.trim().parse().ok())
            .unwrap_or(0))
    }

    /// Before the first write: take up the generation `recover` was given (or the table's, from
    /// scratch) and publish the checkpoint's noted rows.
    fn resume(&mut self) -> Result<()> {
        if self.create_pending {
            self.with_retry(|c, o| ensure_table(c, &o.table, &o.family))?;
            self.create_pending = false;
        }
        let Some((generation, noted)) = self.resume.take() else {
            return Ok(());
        };
        let stored = match self.stored_generation() {
            Ok(g) => g,
            Err(e) => {
                self.resume = Some((generation, noted));
                return Err(e);
            }
        };
        self.generation = generation;
        self.noted = noted;
        if let Err(e) = self.publish_noted() {
            self.resume = Some((generation, std::mem::take(&mut self.noted)));
            return Err(e);
        }
        // Cells of this generation may hold what an earlier run wrote after the checkpoint (or
        // before the table's newest generation, if a checkpoint was lost): nothing is known exactly.
        self.generation = self.generation.max(stored);
        self.fresh = false;
        self.rows.clear();
        Ok(())
    }

    /// Write the noted rows' deletes (a marker at `base + g` on every column, the non-NULL values
    /// again at `base + g + 1`) and move to generation `g + 1`.
    fn publish_noted(&mut self) -> Result<()> {
        if self.noted.is_empty() {
            return Ok(());
        }
        let g = self.generation;
        let noted = std::mem::take(&mut self.noted);
        let columns = std::mem::take(&mut self.columns);
        for (key, n) in &noted {
            self.queue(
                cell_ts(n.base, g),
                key,
                columns.iter().map(|(_, c)| delete(c)).collect(),
            );
            let puts = columns
                .iter()
                .zip(&n.cells)
                .filter_map(|((_, c), v)| Some(put(c, v.clone()?)))
                .collect();
            self.queue(cell_ts(n.base, g + 1), key, puts);
        }
        self.columns = columns;
        let column = self.generation_column();
        let next = g + 1;
        self.queue(
            cell_ts(0, next),
            GENERATION_ROW,
            vec![put(&column, next.to_string().into_bytes())],
        );
        if let Err(e) = self.flush() {
            self.noted = noted;
            return Err(e);
        }
        self.generation = next;
        self.fresh = true;
        self.rows = noted
            .into_iter()
            .map(|(key, n)| {
                let held = n
                    .cells
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| v.is_some())
                    .map(|(i, _)| bit(i));
                (key, held.fold(0, |a, b| a | b))
            })
            .collect();
        Ok(())
    }

    fn base(&self, b: &RecordBatch, r: usize) -> Result<i64> {
        let Some(i) = self.ts_idx else {
            return Ok(0);
        };
        let ms = match ScalarValue::try_from_array(b.column(i), r)? {
            ScalarValue::TimestampMillisecond(Some(t), _) | ScalarValue::Int64(Some(t)) => t,
            ScalarValue::TimestampSecond(Some(t), _) => t.saturating_mul(1000),
            ScalarValue::TimestampMicrosecond(Some(t), _) => t.div_euclid(1000),
            ScalarValue::TimestampNanosecond(Some(t), _) => t.div_euclid(1_000_000),
            _ => 0,
        };
        // HBase refuses negative timestamps.
        Ok(ms.max(0))
    }

    /// Queue one write's upserts and note its deletes (nothing is sent).
    fn stage(&mut self, out: &Output) -> Result<()> {
        let b = &out.batch;
        // A changelog applies by row key: within one write, the last change of a key wins (a `-U`
        // followed by its `+U` is one upsert; a final `-D` deletes the row's cells).
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
            let base = self.base(b, r)?;
            let cells = if out.kind(r).is_add() {
                self.columns
                    .iter()
                    .map(|(i, _)| {
                        let v = ScalarValue::try_from_array(b.column(*i), r)?;
                        Ok((!v.is_null()).then(|| encode_value(&v, self.opts.value_format)))
                    })
                    .collect::<Result<Vec<_>>>()?
            } else {
                vec![None; self.columns.len()]
            };
            self.stage_row(key, base, cells);
        }
        Ok(())
    }

    fn stage_row(&mut self, key: Vec<u8>, base: i64, cells: Vec<Option<Vec<u8>>>) {
        let g = self.generation;
        let known = self.rows.get(&key).copied();
        if known.is_none() && g > 0 {
            let hide = self.columns.iter().map(|(_, c)| delete(c)).collect();
            self.queue(cell_ts(base, g - 1), &key, hide);
        }
        let mut held = known.unwrap_or(0);
        let mut puts = Vec::new();
        let mut deletes = false;
        for (i, v) in cells.iter().enumerate() {
            match v {
                Some(v) => {
                    puts.push(put(&self.columns[i].1, v.clone()));
                    held |= bit(i);
                }
                // Unless this sink knows the cell holds nothing in this generation, it must go.
                None => deletes |= !self.fresh || i >= 64 || held & bit(i) != 0,
            }
        }
        self.queue(cell_ts(base, g), &key, puts);
        if g > 0 || self.fresh {
            if known.is_none() && self.rows.len() >= ROWS_CAP {
                self.rows.clear();
                self.fresh = false;
            }
            self.rows.insert(key.clone(), held);
        }
        if deletes {
            self.noted.insert(key, Noted { base, cells });
        } else {
            self.noted.remove(&key);
        }
    }

    /// The checkpoint's part of this sink: the generation and the noted rows.
    fn pending_json(&self) -> serde_json::Value {
        let rows: Vec<serde_json::Value> = self
            .noted
            .iter()
            .map(|(key, n)| {
                serde_json::json!({
                    "row": hex(key),
                    "base": n.base,
                    "cells": n.cells.iter().map(|c| c.as_deref().map(hex)).collect::<Vec<_>>(),
                })
            })
            .collect();
        serde_json::json!({"generation": self.generation, "deletes": rows})
    }

    fn parse_pending(&self, v: &serde_json::Value) -> Result<(u64, BTreeMap<Vec<u8>, Noted>)> {
        let bad = |what: &str| Error::External(format!("hbase: the checkpoint's sink state: {what}"));
        if v.is_null() {
            return Ok((0, BTreeMap::new()));
        }
        let generation = v["generation"].as_u64().ok_or_else(|| bad("no generation"))?;
        let mut noted = BTreeMap::new();
        for r in v["deletes"].as_array().ok_or_else(|| bad("no deletes"))? {
            let key = r["row"].as_str().and_then(unhex).ok_or_else(|| bad("a bad row key"))?;
            let base = r["base"].as_i64().ok_or_else(|| bad("a bad base"))?;
            let cells = r["cells"]
                .as_array()
                .ok_or_else(|| bad("no cells"))?
                .iter()
                .map(|c| match c {
                    serde_json::Value::Null => Ok(None),
                    c => c.as_str().and_then(unhex).map(Some).ok_or_else(|| bad("a bad cell")),
                })
                .collect::<Result<Vec<_>>>()?;
            if cells.len() != self.columns.len() {
                return Err(bad(&format!(
                    "{} cells in a row, the query writes {}",
                    cells.len(),
                    self.columns.len()
                )));
            }
            noted.insert(key, Noted { base, cells });
        }
        Ok((generation, noted))
    }
}

fn ensure_table(c: &mut Gateway, table: &str, family: &str) -> Result<()> {
    let exists = |c: &mut Gateway| c.table_exists(table).map_err(|e| hb("listing tables", e));
    if !exists(c)? {
        // Another writer may have created it meanwhile: that is success too.
        if let Err(e) = c.create_table(table, family)
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
        self.resume()?;
        self.stage(out)?;
        // Each write is one micro-batch's changes: send them now, for latency.
        self.flush()
    }

    /// Without checkpoints: send everything and publish the noted deletes at once.
    fn commit(&mut self) -> Result<()> {
        self.resume()?;
        self.flush()?;
        self.publish_noted()
    }

    fn prepare(&mut self, _epoch: u64) -> Result<serde_json::Value> {
        self.resume()?;
        self.flush()?;
        Ok(self.pending_json())
    }

    fn publish(&mut self, _epoch: u64) -> Result<()> {
        self.resume()?;
        self.publish_noted()
    }

    fn recover(&mut self, epoch: Option<u64>, pending: &serde_json::Value) -> Result<()> {
        let resume = match epoch {
            Some(_) => self.parse_pending(pending)?,
            None => (0, BTreeMap::new()),
        };
        self.queued.clear();
        self.noted.clear();
        self.rows.clear();
        self.fresh = false;
        self.generation = 0;
        self.resume = Some(resume);
        Ok(())
    }

    fn interrupt_handle(&self) -> Option<Arc<AtomicBool>> {
        Some(self.stop.clone())
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

/// Every row of `table` (the newest version of each cell) through Thrift1, handed to `each` as they
/// come, a thousand at a time.
pub fn scan(c: &mut Client, table: &str, mut each: impl FnMut(TRowResult) -> Result<()>) -> Result<()> {
    // Thrift's generated Default fills every optional field (timestamp 0, empty filter…): name them.
    let all = TScan {
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
    let id = c
        .scanner_open_with_scan(table.as_bytes().to_vec(), all, BTreeMap::new())
        .map_err(|e| hb(&format!("scanning table '{table}'"), e))?;
    let result = loop {
        let got = match c.scanner_get_list(id, 1000) {
            Ok(got) if got.is_empty() => break Ok(()),
            Ok(got) => got,
            Err(e) => break Err(hb("scanning", e)),
        };
        if let Err(e) = got.into_iter().try_for_each(&mut each) {
            break Err(e);
        }
    };
    let _ = c.scanner_close(id);
    result
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
    let mut rows: Vec<Vec<ScalarValue>> = Vec::new();
    scan(&mut connect(&opts.thrift)?, &opts.table, |r| {
        let key = r.row.unwrap_or_default();
        // The sink's own row (GENERATION_ROW), after every data row: not data.
        if key.first() == Some(&0xFF) {
            return Ok(());
        }
        let mut keys = BTreeMap::new();
        let mut at = 0;
        for (name, t) in opts.row_key.iter().zip(&key_types) {
            let (v, used) = decode_key(&key[at..], t)
                .ok_or_else(|| Error::External(format!("hbase: row key of '{}' does not decode as {t}", opts.table)))?;
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
        Ok(())
    })?;
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

    fn parsed(extra: &[(&str, &str)]) -> Result<HBaseOptions> {
        let mut o = Options(BTreeMap::from(
            [("connector", "hbase"), ("table", "t"), ("row_key", "k")].map(|(k, v)| (k.to_string(), v.to_string())),
        ));
        o.0.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        HBaseOptions::parse(&o)
    }

    #[test]
    fn durability_other_than_sync_needs_thrift2_and_each_protocol_has_its_local_gateway() {
        let o = parsed(&[]).expect("defaults");
        assert_eq!(
            (o.protocol, o.durability, o.thrift.as_str()),
            (Protocol::Thrift1, None, DEFAULT_THRIFT)
        );
        let o = parsed(&[("protocol", "Thrift2"), ("durability", "ASYNC_WAL")]).expect("thrift2");
        assert_eq!(
            (o.protocol, o.durability, o.thrift.as_str()),
            (Protocol::Thrift2, Some(TDurability::AsyncWal), DEFAULT_THRIFT2)
        );
        let o = parsed(&[("durability", "sync_wal")]).expect("thrift1 writes with SYNC_WAL");
        assert_eq!(o.durability, Some(TDurability::SyncWal));
        for d in ["skip_wal", "async_wal", "fsync_wal"] {
            let e = parsed(&[("durability", d)]).expect_err("thrift1 cannot");
            assert!(
                matches!(&e, Error::Option { key, message } if key == "durability" && message.contains("needs protocol = 'thrift2'")),
                "{e}"
            );
        }
        let e = parsed(&[("protocol", "rest")]).expect_err("no such protocol");
        assert!(matches!(&e, Error::Option { key, .. } if key == "protocol"), "{e}");
        let e = parsed(&[("protocol", "thrift2"), ("durability", "fast")]).expect_err("no such durability");
        assert!(e.to_string().contains("'fast'; valid: default, skip_wal"), "{e}");
    }

    #[test]
    fn calls_are_cut_by_rows_bytes_and_timestamps_and_shared_among_the_connections() {
        let row = |i: usize, value_len: usize| {
            let m = BatchMutation {
                row: Some(format!("r{i:05}").into_bytes()),
                mutations: Some(vec![put(b"v:a", vec![b'x'; value_len])]),
            };
            (60_000, m)
        };
        let sizes = |calls: &[&[(i64, BatchMutation)]]| calls.iter().map(|c| c.len()).collect::<Vec<_>>();
        let mut o = parsed(&[]).expect("defaults");
        assert_eq!((o.batch_rows, o.batch_bytes, o.connections), (1000, 2 << 20, 4));
        // Many narrow rows: full calls of `batch_rows`.
        let narrow: Vec<_> = (0..5000).map(|i| row(i, 10)).collect();
        assert_eq!(sizes(&calls(&narrow, &o)), vec![1000; 5]);
        // A flush smaller than a full call per connection: one call per connection.
        assert_eq!(sizes(&calls(&narrow[..2300], &o)), vec![575, 575, 575, 575]);
        // … but none below MIN_CALL_ROWS.
        assert_eq!(sizes(&calls(&narrow[..250], &o)), vec![100, 100, 50]);
        assert_eq!(sizes(&calls(&narrow[..1], &o)), vec![1]);
        assert!(calls(&narrow[..0], &o).is_empty());
        // Wide rows: cut by bytes; a row wider than `batch_bytes` goes alone; nothing is lost.
        o.batch_bytes = 100_000;
        let wide: Vec<_> = (0..40).map(|i| row(i, if i == 7 { 250_000 } else { 30_000 })).collect();
        let cut = calls(&wide, &o);
        assert_eq!(sizes(&cut), vec![3, 3, 1, 1, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 2]);
        assert!(
            cut.iter()
                .all(|c| c.len() == 1 || c.iter().map(wire_bytes).sum::<usize>() <= 100_000)
        );
        let rejoined: Vec<_> = cut.iter().flat_map(|c| c.iter()).map(|(_, m)| m.row.clone()).collect();
        assert_eq!(rejoined, wide.iter().map(|(_, m)| m.row.clone()).collect::<Vec<_>>());
        // Rows of many timestamps (a session's window_end, a per-row timestamp column): Thrift1's
        // mutateRowsTs takes one timestamp per call, Thrift2's putMultiple one per put.
        o.batch_bytes = 2 << 20;
        let mut mixed: Vec<_> = narrow[..2000].to_vec();
        for (i, r) in mixed.iter_mut().enumerate() {
            r.0 = 60_000 * (i as i64 / 10);
        }
        let cut = calls(&mixed, &o);
        assert_eq!(sizes(&cut), vec![10; 200], "Thrift1: a call per timestamp");
        assert!(cut.iter().all(|c| c.iter().all(|(ts, _)| *ts == c[0].0)));
        o.protocol = Protocol::Thrift2;
        assert_eq!(
            sizes(&calls(&mixed, &o)),
            vec![500; 4],
            "Thrift2: timestamps mixed in a call"
        );
        // The option: bytes, within bounds.
        assert_eq!(parsed(&[("batch_bytes", "65536")]).expect("valid").batch_bytes, 65536);
        for bad in ["100", "1000000000", "2mb"] {
            let e = parsed(&[("batch_bytes", bad)]).expect_err("invalid");
            assert!(matches!(&e, Error::Option { key, .. } if key == "batch_bytes"), "{e}");
        }
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

#[cfg(test)]
mod staging_tests {
    use datafusion::arrow::array::{Int8Array, Int64Array, StringArray, TimestampMillisecondArray};

    use super::*;
    use crate::operator::RowKind;

    const END: i64 = 60_000;

    fn sink() -> HBaseSink {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("window_end", DataType::Timestamp(TimeUnit::Millisecond, None), false),
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Utf8, true),
        ]));
        let o = Options(BTreeMap::from(
            [
                ("connector", "hbase"),
                ("table", "t"),
                ("row_key", "k"),
                ("thrift", "127.0.0.1:1"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        ));
        let mut s = HBaseSink::open(&o, schema).expect("open");
        s.resume = None;
        s
    }

    fn out(s: &HBaseSink, rows: &[(RowKind, i64, Option<i64>, Option<&str>)]) -> Output {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("window_end", DataType::Timestamp(TimeUnit::Millisecond, None), false),
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Utf8, true),
        ]));
        assert_eq!(s.columns.len(), 3, "window_end, a, b are cells");
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(TimestampMillisecondArray::from_iter_values(rows.iter().map(|_| END))),
                Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.2))),
                Arc::new(StringArray::from_iter(rows.iter().map(|r| r.3))),
            ],
        )
        .expect("batch");
        Output {
            batch,
            kinds: Some(Int8Array::from_iter_values(rows.iter().map(|r| r.0 as i8))),
            key: None,
        }
    }

    /// What is queued, as (timestamp, row's k, puts (column names), deletes (column names)).
    fn taken(s: &mut HBaseSink) -> Vec<(i64, i64, Vec<String>, Vec<String>)> {
        let mut got = Vec::new();
        for (ts, rows) in std::mem::take(&mut s.queued) {
            for r in rows {
                let key = r.row.expect("row");
                let (k, _) = decode_key(&key, &DataType::Int64).expect("key");
                let ScalarValue::Int64(Some(k)) = k else {
                    panic!("{k:?}")
                };
                let (mut puts, mut dels) = (Vec::new(), Vec::new());
                for m in r.mutations.expect("mutations") {
                    let col = String::from_utf8(m.column.expect("column")).expect("utf8");
                    let col = col.trim_start_matches("v:").to_string();
                    if m.is_delete == Some(true) {
                        dels.push(col);
                    } else {
                        puts.push(col);
                    }
                }
                got.push((ts, k, puts, dels));
            }
        }
        got
    }

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn upserts_go_out_at_the_base_and_deletes_wait_for_the_checkpoint() {
        use RowKind::*;
        let mut s = sink();
        s.stage(&out(&s, &[(Insert, 1, Some(1), Some("x")), (Insert, 2, Some(5), None)]))
            .expect("stage");
        assert_eq!(
            taken(&mut s),
            vec![
                (END, 1, names(&["window_end", "a", "b"]), vec![]),
                (END, 2, names(&["window_end", "a"]), vec![]),
            ]
        );
        // Row 2's b may hold a value an earlier run wrote: noted, not deleted now.
        assert_eq!(s.noted.keys().count(), 1);
        // A -U then its +U is one upsert; a NULL is noted; a -D is noted with every cell gone.
        s.stage(&out(
            &s,
            &[
                (UpdateBefore, 1, Some(1), Some("x")),
                (UpdateAfter, 1, None, Some("y")),
                (Delete, 2, Some(5), None),
            ],
        ))
        .expect("stage");
        assert_eq!(taken(&mut s), vec![(END, 1, names(&["window_end", "b"]), vec![])]);
        assert_eq!(s.noted.len(), 2);
        assert!(s.noted.values().any(|n| n.cells.iter().all(Option::is_none)));
        // The row back with every value: nothing left to delete for it.
        s.stage(&out(&s, &[(Insert, 2, Some(6), Some("z"))])).expect("stage");
        assert_eq!(s.noted.len(), 1);
        let json = s.pending_json();
        assert_eq!(json["generation"], 0);
        let (g, noted) = s.parse_pending(&json).expect("parses");
        assert_eq!((g, &noted), (0, &s.noted), "the checkpoint's part round-trips");
        assert_eq!(
            s.parse_pending(&serde_json::Value::Null).expect("parses"),
            (0, BTreeMap::new())
        );
    }

    #[test]
    fn a_row_first_met_in_a_later_generation_hides_its_older_versions_once() {
        use RowKind::*;
        let mut s = sink();
        s.generation = 3;
        s.stage(&out(&s, &[(Insert, 1, Some(1), Some("x"))])).expect("stage");
        s.stage(&out(&s, &[(UpdateAfter, 1, Some(2), Some("x"))]))
            .expect("stage");
        assert_eq!(
            taken(&mut s),
            vec![
                (END + 2, 1, vec![], names(&["window_end", "a", "b"])),
                (END + 3, 1, names(&["window_end", "a", "b"]), vec![]),
                (END + 3, 1, names(&["window_end", "a", "b"]), vec![]),
            ]
        );
        assert!(s.noted.is_empty());
    }

    #[test]
    fn in_a_generation_it_began_the_sink_deletes_only_cells_it_wrote() {
        use RowKind::*;
        let mut s = sink();
        s.generation = 1;
        s.fresh = true;
        // First met: older versions hidden, so a NULL b needs no delete.
        s.stage(&out(&s, &[(Insert, 1, Some(1), None)])).expect("stage");
        assert!(s.noted.is_empty());
        // a was written in this generation: its NULL must be deleted.
        s.stage(&out(&s, &[(UpdateAfter, 1, None, None)])).expect("stage");
        assert_eq!(s.noted.len(), 1);
        // A row met only to be retracted holds nothing: no delete.
        s.stage(&out(&s, &[(Delete, 7, None, None)])).expect("stage");
        assert_eq!(s.noted.len(), 1);
        assert_eq!(
            taken(&mut s)
                .iter()
                .filter(|t| !t.3.is_empty())
                .map(|t| (t.0, t.1))
                .collect::<Vec<_>>(),
            vec![(END, 1), (END, 7)],
            "each row's older versions hidden once, at base + g - 1"
        );
    }
}

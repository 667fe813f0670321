//! HBase's Thrift2 gateway (`THBaseService`), the few calls the HBase sink makes, written by hand on
//! the `thrift` crate's protocol primitives (no Rust crate speaks Thrift2). Field ids and types are
//! those of HBase 2.6's `hbase-thrift/src/main/resources/org/apache/hadoop/hbase/thrift2/hbase.thrift`.
//!
//! The structs borrow their bytes: a flush serializes the rows it holds without copying them.
//! Exceptions come back as `thrift::Error::User` holding a [`TIOError`] or [`TIllegalArgument`], as
//! the generated Thrift1 client does, so one error mapping serves both gateways.

use std::fmt;

use thrift::protocol::{
    TFieldIdentifier, TInputProtocol, TListIdentifier, TMessageIdentifier, TMessageType, TOutputProtocol,
    TStructIdentifier, TType,
};

/// `TDurability`: how a mutation is written to HBase's write-ahead log. Unset (`None` where it is
/// optional) is `USE_DEFAULT`, the table's setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TDurability {
    SkipWal = 1,
    AsyncWal = 2,
    SyncWal = 3,
    FsyncWal = 4,
}

/// `TColumnValue`: one cell to put.
pub struct TColumnValue<'a> {
    pub family: &'a [u8],
    pub qualifier: &'a [u8],
    pub value: &'a [u8],
    /// Unset: the put's timestamp.
    pub timestamp: Option<i64>,
}

/// `TPut`: cells of one row.
pub struct TPut<'a> {
    pub row: &'a [u8],
    pub column_values: Vec<TColumnValue<'a>>,
    pub timestamp: Option<i64>,
    pub durability: Option<TDurability>,
}

/// `TColumn`: a family, optionally a qualifier and a timestamp.
pub struct TColumn<'a> {
    pub family: &'a [u8],
    pub qualifier: Option<&'a [u8]>,
    pub timestamp: Option<i64>,
}

/// `TDeleteType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TDeleteType {
    /// One version (the one at the timestamp).
    DeleteColumn = 0,
    /// Every version at or below the timestamp (HBase's `Delete.addColumns`).
    DeleteColumns = 1,
}

/// `TDelete`: columns of one row.
pub struct TDelete<'a> {
    pub row: &'a [u8],
    pub columns: Vec<TColumn<'a>>,
    pub delete_type: TDeleteType,
    pub durability: Option<TDurability>,
}

/// `TIOError`: HBase failed (a region in transition, a table or family it does not know, …).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TIOError {
    pub message: Option<String>,
}

/// `TIllegalArgument`: the call's arguments are wrong.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TIllegalArgument {
    pub message: Option<String>,
}

impl fmt::Display for TIOError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TIOError: {}", self.message.as_deref().unwrap_or(""))
    }
}

impl fmt::Display for TIllegalArgument {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TIllegalArgument: {}", self.message.as_deref().unwrap_or(""))
    }
}

impl std::error::Error for TIOError {}
impl std::error::Error for TIllegalArgument {}

/// A `THBaseService` client over one connection (the sink gives it the binary protocol on a
/// buffered transport, as the Thrift2 server expects by default).
pub struct Client<I, O> {
    i: I,
    o: O,
    seq: i32,
}

type Out<'p> = &'p mut dyn TOutputProtocol;

fn field(o: Out<'_>, id: i16, t: TType, write: impl FnOnce(Out<'_>) -> thrift::Result<()>) -> thrift::Result<()> {
    o.write_field_begin(&TFieldIdentifier::new("", t, id))?;
    write(o)?;
    o.write_field_end()
}

fn bytes(o: Out<'_>, id: i16, b: &[u8]) -> thrift::Result<()> {
    field(o, id, TType::String, |o| o.write_bytes(b))
}

fn i64_field(o: Out<'_>, id: i16, v: Option<i64>) -> thrift::Result<()> {
    match v {
        Some(v) => field(o, id, TType::I64, |o| o.write_i64(v)),
        None => Ok(()),
    }
}

fn durability(o: Out<'_>, id: i16, d: Option<TDurability>) -> thrift::Result<()> {
    match d {
        Some(d) => field(o, id, TType::I32, |o| o.write_i32(d as i32)),
        None => Ok(()),
    }
}

/// A struct: its fields, then the stop field.
fn strukt(o: Out<'_>, fields: impl FnOnce(Out<'_>) -> thrift::Result<()>) -> thrift::Result<()> {
    o.write_struct_begin(&TStructIdentifier::new(""))?;
    fields(o)?;
    o.write_field_stop()?;
    o.write_struct_end()
}

fn list<T>(o: Out<'_>, id: i16, items: &[T], write: impl Fn(Out<'_>, &T) -> thrift::Result<()>) -> thrift::Result<()> {
    field(o, id, TType::List, |o| {
        let len = i32::try_from(items.len())
            .map_err(|_| thrift::new_protocol_error(thrift::ProtocolErrorKind::SizeLimit, "list too long"))?;
        o.write_list_begin(&TListIdentifier::new(TType::Struct, len))?;
        for it in items {
            write(o, it)?;
        }
        o.write_list_end()
    })
}

fn put(o: Out<'_>, p: &TPut<'_>) -> thrift::Result<()> {
    strukt(o, |o| {
        bytes(o, 1, p.row)?;
        list(o, 2, &p.column_values, |o, c| {
            strukt(o, |o| {
                bytes(o, 1, c.family)?;
                bytes(o, 2, c.qualifier)?;
                bytes(o, 3, c.value)?;
                i64_field(o, 4, c.timestamp)
            })
        })?;
        i64_field(o, 3, p.timestamp)?;
        durability(o, 6, p.durability)
    })
}

fn delete(o: Out<'_>, d: &TDelete<'_>) -> thrift::Result<()> {
    strukt(o, |o| {
        bytes(o, 1, d.row)?;
        list(o, 2, &d.columns, |o, c| {
            strukt(o, |o| {
                bytes(o, 1, c.family)?;
                if let Some(q) = c.qualifier {
                    bytes(o, 2, q)?;
                }
                i64_field(o, 3, c.timestamp)
            })
        })?;
        field(o, 4, TType::I32, |o| o.write_i32(d.delete_type as i32))?;
        durability(o, 7, d.durability)
    })
}

/// `TTableName` of `ns:name` (or `name`, in the default namespace).
fn table_name(o: Out<'_>, table: &str) -> thrift::Result<()> {
    strukt(o, |o| {
        let (ns, name) = table.split_once(':').map_or((None, table), |(n, t)| (Some(n), t));
        if let Some(ns) = ns {
            bytes(o, 1, ns.as_bytes())?;
        }
        bytes(o, 2, name.as_bytes())
    })
}

/// Read a struct field by field: `each` gets the id and type of every field and must read (or
/// skip) its value.
fn read_struct(
    i: &mut dyn TInputProtocol,
    mut each: impl FnMut(&mut dyn TInputProtocol, i16, TType) -> thrift::Result<()>,
) -> thrift::Result<()> {
    i.read_struct_begin()?;
    loop {
        let f = i.read_field_begin()?;
        if f.field_type == TType::Stop {
            break;
        }
        each(i, f.id.unwrap_or(-1), f.field_type)?;
        i.read_field_end()?;
    }
    i.read_struct_end()
}

/// Skip a value of type `t`. The crate's own `skip` reads strings as UTF-8 and fails on binary
/// fields (a row key); this reads them as bytes.
fn skip(i: &mut dyn TInputProtocol, t: TType) -> thrift::Result<()> {
    skip_within(i, t, 64)
}

fn skip_within(i: &mut dyn TInputProtocol, t: TType, depth: u8) -> thrift::Result<()> {
    let depth = depth
        .checked_sub(1)
        .ok_or_else(|| thrift::new_protocol_error(thrift::ProtocolErrorKind::DepthLimit, "nested too deep"))?;
    match t {
        TType::String => i.read_bytes().map(drop),
        TType::Struct => read_struct(i, |i, _, t| skip_within(i, t, depth)),
        TType::List => {
            let l = i.read_list_begin()?;
            for _ in 0..l.size {
                skip_within(i, l.element_type, depth)?;
            }
            i.read_list_end()
        }
        TType::Set => {
            let l = i.read_set_begin()?;
            for _ in 0..l.size {
                skip_within(i, l.element_type, depth)?;
            }
            i.read_set_end()
        }
        TType::Map => {
            let m = i.read_map_begin()?;
            if let (Some(k), Some(v)) = (m.key_type, m.value_type) {
                for _ in 0..m.size {
                    skip_within(i, k, depth)?;
                    skip_within(i, v, depth)?;
                }
            }
            i.read_map_end()
        }
        other => i.skip(other),
    }
}

/// The `message` (field 1, string) of an exception struct.
fn read_message(i: &mut dyn TInputProtocol) -> thrift::Result<Option<String>> {
    let mut message = None;
    read_struct(i, |i, id, t| {
        match (id, t) {
            (1, TType::String) => message = Some(i.read_string()?),
            _ => skip(i, t)?,
        }
        Ok(())
    })?;
    Ok(message)
}

impl<I: TInputProtocol, O: TOutputProtocol> Client<I, O> {
    pub fn new(i: I, o: O) -> Self {
        Client { i, o, seq: 0 }
    }

    /// Send call `name` with the argument fields `args` writes, and read the reply: `success`
    /// reads field 0 of the result (the return value), exceptions become errors.
    fn call<T>(
        &mut self,
        name: &str,
        args: impl FnOnce(Out<'_>) -> thrift::Result<()>,
        mut success: impl FnMut(&mut dyn TInputProtocol, TType) -> thrift::Result<T>,
    ) -> thrift::Result<Option<T>> {
        self.seq = self.seq.wrapping_add(1);
        let o: Out<'_> = &mut self.o;
        o.write_message_begin(&TMessageIdentifier::new(name, TMessageType::Call, self.seq))?;
        strukt(o, args)?;
        o.write_message_end()?;
        o.flush()?;

        let i: &mut dyn TInputProtocol = &mut self.i;
        let m = i.read_message_begin()?;
        thrift::protocol::verify_expected_sequence_number(self.seq, m.sequence_number)?;
        thrift::protocol::verify_expected_service_call(name, &m.name)?;
        if m.message_type == TMessageType::Exception {
            let e = thrift::Error::read_application_error_from_in_protocol(i)?;
            i.read_message_end()?;
            return Err(thrift::Error::Application(e));
        }
        thrift::protocol::verify_expected_message_type(TMessageType::Reply, m.message_type)?;
        let mut value = None;
        let mut error: Option<thrift::Error> = None;
        read_struct(i, |i, id, t| {
            match (id, t) {
                (0, _) => value = Some(success(i, t)?),
                (1, TType::Struct) => {
                    error = Some(thrift::Error::User(Box::new(TIOError {
                        message: read_message(i)?,
                    })))
                }
                (2, TType::Struct) => {
                    error = Some(thrift::Error::User(Box::new(TIllegalArgument {
                        message: read_message(i)?,
                    })))
                }
                _ => skip(i, t)?,
            }
            Ok(())
        })?;
        i.read_message_end()?;
        match error {
            Some(e) => Err(e),
            None => Ok(value),
        }
    }

    /// `putMultiple(table, puts)`.
    pub fn put_multiple(&mut self, table: &[u8], puts: &[TPut<'_>]) -> thrift::Result<()> {
        self.multiple("putMultiple", table, puts, put)
    }

    /// `deleteMultiple(table, deletes)`: HBase answers an empty list or throws.
    pub fn delete_multiple(&mut self, table: &[u8], deletes: &[TDelete<'_>]) -> thrift::Result<()> {
        self.multiple("deleteMultiple", table, deletes, delete)
    }

    /// A call taking (1: table, 2: list of structs), whose answer (if any) is not needed.
    fn multiple<T>(
        &mut self,
        name: &str,
        table: &[u8],
        items: &[T],
        write: impl Fn(Out<'_>, &T) -> thrift::Result<()>,
    ) -> thrift::Result<()> {
        self.call(
            name,
            |o| {
                bytes(o, 1, table)?;
                list(o, 2, items, write)
            },
            |i, t| skip(i, t),
        )?;
        Ok(())
    }

    /// `get(table, TGet{row, columns: [family:qualifier]})`: the newest value of that cell.
    pub fn get_cell(
        &mut self,
        table: &[u8],
        row: &[u8],
        family: &[u8],
        qualifier: &[u8],
    ) -> thrift::Result<Option<Vec<u8>>> {
        let got = self.call(
            "get",
            |o| {
                bytes(o, 1, table)?;
                field(o, 2, TType::Struct, |o| {
                    strukt(o, |o| {
                        bytes(o, 1, row)?;
                        let column = TColumn {
                            family,
                            qualifier: Some(qualifier),
                            timestamp: None,
                        };
                        list(o, 2, &[column], |o, c| {
                            strukt(o, |o| {
                                bytes(o, 1, c.family)?;
                                bytes(o, 2, c.qualifier.unwrap_or_default())
                            })
                        })
                    })
                })
            },
            // TResult{1 row, 2 list<TColumnValue{1 family, 2 qualifier, 3 value, …}>, …}
            |i, _| {
                let mut value = None;
                read_struct(i, |i, id, t| {
                    if (id, t) != (2, TType::List) {
                        return skip(i, t);
                    }
                    let l = i.read_list_begin()?;
                    for _ in 0..l.size {
                        let (mut f, mut q, mut v) = (Vec::new(), Vec::new(), None);
                        read_struct(i, |i, id, t| {
                            match (id, t) {
                                (1, TType::String) => f = i.read_bytes()?,
                                (2, TType::String) => q = i.read_bytes()?,
                                (3, TType::String) => v = Some(i.read_bytes()?),
                                _ => skip(i, t)?,
                            }
                            Ok(())
                        })?;
                        if f == family && q == qualifier && value.is_none() {
                            value = v;
                        }
                    }
                    i.read_list_end()
                })?;
                Ok(value)
            },
        )?;
        Ok(got.flatten())
    }

    /// `tableExists(TTableName)`.
    pub fn table_exists(&mut self, table: &str) -> thrift::Result<bool> {
        let got = self.call(
            "tableExists",
            |o| field(o, 1, TType::Struct, |o| table_name(o, table)),
            |i, _| i.read_bool(),
        )?;
        Ok(got.unwrap_or(false))
    }

    /// `createTable(TTableDescriptor)` with one family keeping one version, as the Thrift1 path
    /// creates it (no compression, no bloom filter, no block cache, not in memory, no TTL).
    pub fn create_table(&mut self, table: &str, family: &[u8]) -> thrift::Result<()> {
        self.call(
            "createTable",
            |o| {
                field(o, 1, TType::Struct, |o| {
                    strukt(o, |o| {
                        field(o, 1, TType::Struct, |o| table_name(o, table))?;
                        list(o, 2, &[family], |o, family| {
                            // TColumnFamilyDescriptor
                            strukt(o, |o| {
                                bytes(o, 1, family)?;
                                field(o, 5, TType::I32, |o| o.write_i32(0))?; // bloom filter NONE
                                field(o, 6, TType::I32, |o| o.write_i32(2))?; // compression NONE
                                field(o, 10, TType::I32, |o| o.write_i32(1))?; // max versions
                                field(o, 13, TType::I32, |o| o.write_i32(i32::MAX))?; // TTL
                                field(o, 14, TType::Bool, |o| o.write_bool(false))?; // block cache
                                field(o, 20, TType::Bool, |o| o.write_bool(false)) // in memory
                            })
                        })
                    })
                })
            },
            |i, t| skip(i, t),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use thrift::protocol::{TBinaryInputProtocol, TBinaryOutputProtocol};
    use thrift::transport::TBufferChannel;

    use super::*;

    /// A client whose server's answer is `reply` (written with the same protocol).
    fn answered_by(
        reply: impl FnOnce(Out<'_>) -> thrift::Result<()>,
    ) -> Client<impl TInputProtocol, impl TOutputProtocol> {
        let mut answer = TBinaryOutputProtocol::new(TBufferChannel::with_capacity(0, 4096), true);
        reply(&mut answer).expect("reply");
        let bytes = answer.transport.write_bytes();
        let mut input = TBufferChannel::with_capacity(bytes.len(), 0);
        input.set_readable_bytes(&bytes);
        Client::new(
            TBinaryInputProtocol::new(input, true),
            TBinaryOutputProtocol::new(TBufferChannel::with_capacity(0, 1 << 16), true),
        )
    }

    fn reply(o: Out<'_>, name: &str, result: impl FnOnce(Out<'_>) -> thrift::Result<()>) -> thrift::Result<()> {
        o.write_message_begin(&TMessageIdentifier::new(name, TMessageType::Reply, 1))?;
        strukt(o, result)?;
        o.write_message_end()
    }

    fn one_put<'a>() -> TPut<'a> {
        TPut {
            row: b"r",
            column_values: vec![TColumnValue {
                family: b"v",
                qualifier: b"a",
                value: b"1",
                timestamp: None,
            }],
            timestamp: Some(7),
            durability: Some(TDurability::AsyncWal),
        }
    }

    #[test]
    fn exceptions_come_back_as_their_types_with_hbase_s_message() {
        let mut c = answered_by(|o| {
            reply(o, "putMultiple", |o| {
                field(o, 1, TType::Struct, |o| {
                    strukt(o, |o| {
                        field(o, 1, TType::String, |o| o.write_string("no such family x"))
                    })
                })
            })
        });
        let e = c.put_multiple(b"t", &[one_put()]).expect_err("TIOError");
        let thrift::Error::User(u) = e else { panic!("{e:?}") };
        assert_eq!(
            u.downcast_ref::<TIOError>().and_then(|e| e.message.as_deref()),
            Some("no such family x")
        );
        let mut c = answered_by(|o| {
            reply(o, "get", |o| {
                field(o, 2, TType::Struct, |o| {
                    strukt(o, |o| field(o, 1, TType::String, |o| o.write_string("bad")))
                })
            })
        });
        let e = c.get_cell(b"t", b"r", b"v", b"a").expect_err("TIllegalArgument");
        let thrift::Error::User(u) = e else { panic!("{e:?}") };
        assert!(u.downcast_ref::<TIllegalArgument>().is_some());
    }

    #[test]
    fn a_reply_to_another_call_is_refused_and_unknown_fields_are_skipped() {
        let mut c = answered_by(|o| reply(o, "get", |_| Ok(())));
        assert!(c.put_multiple(b"t", &[one_put()]).is_err());
        // A TResult with a row key that is no UTF-8 (skipped as bytes), a field this client does
        // not know (99) and cells with tags (binary, skipped).
        let mut c = answered_by(|o| {
            reply(o, "get", |o| {
                field(o, 0, TType::Struct, |o| {
                    strukt(o, |o| {
                        bytes(o, 1, b"\xfffreshet:sink\x80")?;
                        field(o, 99, TType::I64, |o| o.write_i64(5))?;
                        list(o, 2, &[(b"v", b"a", b"42")], |o, (f, q, v)| {
                            strukt(o, |o| {
                                bytes(o, 1, *f)?;
                                bytes(o, 2, *q)?;
                                bytes(o, 3, *v)?;
                                i64_field(o, 4, Some(1))?;
                                bytes(o, 5, b"\xc3\x28")
                            })
                        })
                    })
                })
            })
        });
        assert_eq!(c.get_cell(b"t", b"r", b"v", b"a").expect("get"), Some(b"42".to_vec()));
    }
}

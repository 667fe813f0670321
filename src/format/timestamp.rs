//! Timestamps of JSON records read as text, then converted here, instead of by arrow-json.
//!
//! arrow-json parses every timestamp string with `string_to_datetime`, a general parser (dates
//! with or without times, `T`/`t`/space, any fraction, offsets, time-zone names) that built a
//! `chrono` date for every record: about 8 % of the CPU of a JSON file query whose records carry
//! one timestamp (`perf`, the course TUMBLE benchmark). Most streams write one shape,
//! `YYYY-MM-DDTHH:MM:SS[.fraction][Z]`, and consecutive records mostly share their date.
//!
//! So the fast decode of a chunk reads the `TIMESTAMP` (no time zone) columns as text, and
//! [`Converter`] turns them into timestamps: that shape directly (the day number from `chrono`,
//! cached per date), anything else through the very function arrow-json calls. The result is the
//! same by construction, and a unit test compares the two over many generated strings: when any
//! value is not a string both read (a number, a bad date), the caller decodes the chunk again
//! the ordinary way, so values and error messages stay arrow-json's.

use std::sync::Arc;

use chrono::{Datelike, NaiveDate, Utc};
use datafusion::arrow::array::{Array, ArrayRef, PrimitiveArray, StringArray};
use datafusion::arrow::compute::kernels::cast_utils::string_to_datetime;
use datafusion::arrow::datatypes::{
    DataType, Field, Schema, SchemaRef, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType,
};
use datafusion::arrow::record_batch::RecordBatch;

/// The columns a schema's records carry as timestamps without a time zone, read as text instead.
#[derive(Debug)]
pub(super) struct TextTimestamps {
    /// The schema to decode with: those columns as `Utf8` (nullability kept).
    pub text_schema: SchemaRef,
    /// Index and unit of each such column.
    columns: Vec<(usize, TimeUnit)>,
}

impl TextTimestamps {
    /// `None` when `schema` has no top-level timestamp column without a time zone.
    pub fn of(schema: &Schema) -> Option<TextTimestamps> {
        let mut columns = Vec::new();
        let fields: Vec<Field> = schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| match f.data_type() {
                DataType::Timestamp(unit, None) => {
                    columns.push((i, *unit));
                    f.as_ref().clone().with_data_type(DataType::Utf8)
                }
                _ => f.as_ref().clone(),
            })
            .collect();
        if columns.is_empty() {
            return None;
        }
        Some(TextTimestamps {
            text_schema: Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone())),
            columns,
        })
    }

    /// `batch` (decoded with [`Self::text_schema`]) with its text columns as the timestamps of
    /// `schema`; `None` if a value is not one `string_to_datetime` reads.
    pub fn convert(&self, batch: RecordBatch, schema: &SchemaRef) -> Option<RecordBatch> {
        let mut columns = batch.columns().to_vec();
        let mut converter = Converter::default();
        for &(i, unit) in &self.columns {
            let text = columns[i].as_any().downcast_ref::<StringArray>()?;
            columns[i] = converter.column(text, unit)?;
        }
        RecordBatch::try_new(schema.clone(), columns).ok()
    }
}

/// Text → epoch values, remembering the last date's day number.
#[derive(Default)]
struct Converter {
    last_date: Option<([u8; 10], i64)>,
}

impl Converter {
    fn column(&mut self, text: &StringArray, unit: TimeUnit) -> Option<ArrayRef> {
        let mut values = Vec::with_capacity(text.len());
        for i in 0..text.len() {
            values.push(if text.is_null(i) {
                0
            } else {
                self.value(text.value(i), unit)?
            });
        }
        let nulls = text.nulls().cloned();
        Some(match unit {
            TimeUnit::Second => Arc::new(PrimitiveArray::<TimestampSecondType>::new(values.into(), nulls)),
            TimeUnit::Millisecond => Arc::new(PrimitiveArray::<TimestampMillisecondType>::new(values.into(), nulls)),
            TimeUnit::Microsecond => Arc::new(PrimitiveArray::<TimestampMicrosecondType>::new(values.into(), nulls)),
            TimeUnit::Nanosecond => Arc::new(PrimitiveArray::<TimestampNanosecondType>::new(values.into(), nulls)),
        })
    }

    /// The value arrow-json gives `s` in a `Timestamp(unit, None)` column, if it gives one.
    fn value(&mut self, s: &str, unit: TimeUnit) -> Option<i64> {
        let (secs, nanos) = match self.common_shape(s.as_bytes()) {
            Some(t) => t,
            None => {
                let t = string_to_datetime(&Utc, s).ok()?;
                (t.timestamp(), t.timestamp_subsec_nanos())
            }
        };
        // As chrono's timestamp_{millis,micros,nanos_opt}: whole seconds (floored) scaled, plus the
        // non-negative fraction.
        match unit {
            TimeUnit::Second => Some(secs),
            TimeUnit::Millisecond => Some(secs * 1_000 + i64::from(nanos / 1_000_000)),
            TimeUnit::Microsecond => Some(secs * 1_000_000 + i64::from(nanos / 1_000)),
            TimeUnit::Nanosecond => secs.checked_mul(1_000_000_000)?.checked_add(i64::from(nanos)),
        }
    }

    /// Seconds since the epoch and nanoseconds of `YYYY-MM-DDTHH:MM:SS[.f{1,9}][Z]`, a valid
    /// date and time of day with seconds below 60; `None` for anything else (the general parser
    /// decides those).
    fn common_shape(&mut self, b: &[u8]) -> Option<(i64, u32)> {
        if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
            return None;
        }
        let digit = |i: usize| -> Option<u32> {
            let d = b[i].wrapping_sub(b'0');
            (d < 10).then_some(u32::from(d))
        };
        let two = |i: usize| -> Option<u32> { Some(digit(i)? * 10 + digit(i + 1)?) };
        let days = match self.last_date {
            Some((date, days)) if date[..] == b[..10] => days,
            _ => {
                let year = two(0)? * 100 + two(2)?;
                let date = NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, two(5)?, two(8)?)?;
                // Days from 0001-01-01 (day 1) to 1970-01-01.
                let days = i64::from(date.num_days_from_ce()) - 719_163;
                let mut key = [0; 10];
                key.copy_from_slice(&b[..10]);
                self.last_date = Some((key, days));
                days
            }
        };
        let (h, m, s) = (two(11)?, two(14)?, two(17)?);
        if h > 23 || m > 59 || s > 59 {
            return None;
        }
        let mut nanos = 0;
        let mut at = 19;
        if b.get(at) == Some(&b'.') {
            at += 1;
            let start = at;
            while at < b.len() && at - start < 9 {
                match digit(at) {
                    Some(d) => nanos = nanos * 10 + d,
                    None => break,
                }
                at += 1;
            }
            let n = at - start;
            if n == 0 || b.get(at).is_some_and(u8::is_ascii_digit) {
                return None;
            }
            nanos *= 10u32.pow(9 - n as u32);
        }
        match &b[at..] {
            b"" | b"Z" => {}
            _ => return None,
        }
        Some((days * 86_400 + i64::from(h * 3_600 + m * 60 + s), nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What arrow-json's decoder gives: `string_to_datetime` in UTC, then chrono's conversion.
    fn arrow(s: &str, unit: TimeUnit) -> Option<i64> {
        let t = string_to_datetime(&Utc, s).ok()?;
        match unit {
            TimeUnit::Second => Some(t.timestamp()),
            TimeUnit::Millisecond => Some(t.timestamp_millis()),
            TimeUnit::Microsecond => Some(t.timestamp_micros()),
            TimeUnit::Nanosecond => t.timestamp_nanos_opt(),
        }
    }

    /// Strings near the common shape: random digits (valid and not), separators, fractions of 0
    /// to 11 digits, endings, years before 1970, Feb 29ths, hour 24, second 60.
    fn near_misses(n: usize) -> Vec<String> {
        let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = move |m: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % m
        };
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let year = [1970, 2024, 2025, 1900, 2000, 1, 0, 9999, 1969][next(9) as usize];
            let month = next(14);
            let day = next(33);
            let (h, mi, s) = (next(26), next(62), next(62));
            let sep = ["T", "T", "T", " ", "t", "-"][next(6) as usize];
            let frac = match next(6) {
                0 => String::new(),
                1 => ".".into(),
                k => format!(
                    ".{}",
                    (0..(k as usize * 2 - 1))
                        .map(|_| char::from(b'0' + next(10) as u8))
                        .collect::<String>()
                ),
            };
            let end = ["Z", "Z", "", "z", "+01:00", "Zx", " "][next(7) as usize];
            let mut t = format!("{year:04}-{month:02}-{day:02}{sep}{h:02}:{mi:02}:{s:02}{frac}{end}");
            if next(20) == 0 {
                // a byte out of place
                let i = next(t.len() as u64) as usize;
                t.replace_range(i..=i, ["x", "1", ":", "-", "."][next(5) as usize]);
            }
            out.push(t);
        }
        out
    }

    #[test]
    fn the_common_shape_reads_exactly_as_arrow_does() {
        let mut fast_taken = 0;
        for s in near_misses(200_000).iter().map(String::as_str).chain([
            "2025-12-31T23:59:58.393Z",
            "1969-12-31T23:59:59.999999999Z",
            "2024-02-29T00:00:00",
        ]) {
            let mut c = Converter::default();
            if c.common_shape(s.as_bytes()).is_some() {
                fast_taken += 1;
            }
            for unit in [
                TimeUnit::Second,
                TimeUnit::Millisecond,
                TimeUnit::Microsecond,
                TimeUnit::Nanosecond,
            ] {
                assert_eq!(c.value(s, unit), arrow(s, unit), "{s:?} in {unit:?}");
            }
        }
        // The shape must be the common case of the generated strings, or the test proves little.
        assert!(fast_taken > 20_000, "only {fast_taken} strings took the common shape");
    }

    #[test]
    fn a_cached_date_is_only_reused_for_the_same_date() {
        let mut c = Converter::default();
        for (s, want) in [
            ("2025-12-31T23:59:58Z", 1_767_225_598),
            ("2025-12-31T00:00:00Z", 1_767_139_200),
            ("2026-01-01T00:00:00Z", 1_767_225_600),
            ("2025-13-01T00:00:00Z", -1),
        ] {
            assert_eq!(c.value(s, TimeUnit::Second).unwrap_or(-1), want, "{s}");
        }
    }

    #[test]
    fn a_column_keeps_its_nulls_and_refuses_what_arrow_refuses() {
        let text = StringArray::from(vec![
            Some("2025-12-31T23:59:58.393Z"),
            None,
            Some("2025-12-31 23:59:58+01:00"),
        ]);
        let mut c = Converter::default();
        let col = c.column(&text, TimeUnit::Millisecond).expect("converts");
        let col = col
            .as_any()
            .downcast_ref::<PrimitiveArray<TimestampMillisecondType>>()
            .expect("ms");
        assert_eq!(col.value(0), 1_767_225_598_393);
        assert!(col.is_null(1));
        assert_eq!(col.value(2), 1_767_221_998_000);
        let bad = StringArray::from(vec![Some("2025-12-31T23:59:58Z"), Some("yesterday")]);
        assert!(c.column(&bad, TimeUnit::Millisecond).is_none());
    }
}

//! Rows as text for expected blocks: one line per row, cells separated by ` | `, a header line of
//! column names first. Values are Arrow's display text (`NULL` for null, `(empty)` for an empty
//! string); `\`, `|`, line breaks and leading/trailing spaces are escaped, so every value has one
//! spelling and cells compare after trimming the padding.

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::compute::{SortColumn, concat_batches, lexsort_to_indices, take_record_batch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

use crate::error::Result;

/// A result as text cells.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

fn escape(v: &str) -> String {
    if v.is_empty() {
        return "(empty)".into();
    }
    let n = v.chars().count();
    let mut out = String::with_capacity(v.len());
    for (i, c) in v.chars().enumerate() {
        match c {
            '\\' => out.push_str("\\\\"),
            '|' => out.push_str("\\|"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            ' ' if i == 0 || i + 1 == n => out.push_str("\\s"),
            c => out.push(c),
        }
    }
    out
}

/// One batch of all rows, sorted by every column in order (ascending, nulls first): the canonical
/// order of rows whose order the engine does not define.
pub fn sorted(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<RecordBatch> {
    let all = concat_batches(schema, batches)?;
    if all.num_rows() < 2 {
        return Ok(all);
    }
    let columns: Vec<SortColumn> = all
        .columns()
        .iter()
        .map(|c: &ArrayRef| SortColumn {
            values: c.clone(),
            options: None,
        })
        .collect();
    match lexsort_to_indices(&columns, None) {
        Ok(idx) => Ok(take_record_batch(&all, &idx)?),
        // A column type Arrow cannot sort: sort by the text instead.
        Err(_) => Ok(all),
    }
}

/// The text of `batches` (of `schema`).
pub fn table(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Table> {
    let opts = FormatOptions::default().with_null("\u{0}NULL");
    let mut rows = Vec::new();
    for b in batches {
        let fmts: Vec<ArrayFormatter> = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts))
            .collect::<std::result::Result<_, _>>()?;
        for r in 0..b.num_rows() {
            rows.push(
                fmts.iter()
                    .map(|f| {
                        let v = f.value(r).to_string();
                        if v == "\u{0}NULL" {
                            "NULL".to_string()
                        } else {
                            escape(&v)
                        }
                    })
                    .collect(),
            );
        }
    }
    Ok(Table {
        header: schema.fields().iter().map(|f| escape(f.name())).collect(),
        rows,
    })
}

impl Table {
    /// Sort rows by their text (a fallback and for `rowsort` over text).
    pub fn sort_text(&mut self) {
        self.rows.sort();
    }
}

/// Split an expected line into trimmed cells at unescaped `|`.
pub fn split(line: &str) -> Vec<String> {
    let mut cells = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                cur.push(c);
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            '|' => cells.push(std::mem::take(&mut cur).trim().to_string()),
            c => cur.push(c),
        }
    }
    cells.push(cur.trim().to_string());
    cells
}

fn widths<'a>(rows: impl Iterator<Item = &'a Vec<String>>) -> Vec<usize> {
    let mut w: Vec<usize> = Vec::new();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            let n = c.chars().count();
            if i >= w.len() {
                w.push(n);
            } else {
                w[i] = w[i].max(n);
            }
        }
    }
    w
}

fn line(cells: &[String], widths: &[usize]) -> String {
    let mut s = String::new();
    for (i, c) in cells.iter().enumerate() {
        if i > 0 {
            s.push_str(" | ");
        }
        s.push_str(c);
        if i + 1 < cells.len() {
            let pad = widths.get(i).copied().unwrap_or(0).saturating_sub(c.chars().count());
            s.extend(std::iter::repeat_n(' ', pad));
        }
    }
    s.trim_end().to_string()
}

/// The block's lines: the header, then the rows, columns aligned.
pub fn render(t: &Table) -> Vec<String> {
    let w = widths(std::iter::once(&t.header).chain(&t.rows));
    std::iter::once(&t.header).chain(&t.rows).map(|r| line(r, &w)).collect()
}

/// Rows of cells, each with its 1-based line in the test file.
pub type NumberedRows = Vec<(usize, Vec<String>)>;

/// The expected block's lines (with their line numbers) as a header and rows. An empty block
/// expects no rows and names no columns.
pub fn expected_table(lines: &[(usize, String)]) -> (Option<Vec<String>>, NumberedRows) {
    let mut it = lines.iter();
    let header = it.next().map(|(_, l)| split(l));
    (header, it.map(|(n, l)| (*n, split(l))).collect())
}

/// How an expected block differs from the actual rows: `None` when they match, else a report whose
/// first line says what differs, then a diff (`-` expected, `+` actual), and the 1-based line of the
/// first expected row that differs, if any.
pub fn compare(expected: &[(usize, String)], actual: &Table, rowsort: bool) -> Option<(String, Option<usize>)> {
    let (header, mut want) = expected_table(expected);
    let header_ok = header.as_ref().is_none_or(|h| *h == actual.header);
    let mut got = actual.rows.clone();
    if rowsort {
        want.sort_by(|a, b| a.1.cmp(&b.1));
        got.sort();
    }
    let got = &got;
    let rows_ok = want.len() == got.len() && want.iter().zip(got).all(|(w, g)| &w.1 == g);
    if header_ok && rows_ok {
        return None;
    }
    let mut report = String::new();
    let mut first_line = None;
    if !header_ok {
        report.push_str(&format!(
            "columns differ: expected {}, got {}\n",
            header.as_ref().map(|h| h.join(" | ")).unwrap_or_default(),
            actual.header.join(" | ")
        ));
        first_line = expected.first().map(|(n, _)| *n);
    }
    if rows_ok {
        return Some((report, first_line));
    }
    report.push_str(&format!(
        "expected {} row{}, got {}{}:\n",
        want.len(),
        if want.len() == 1 { "" } else { "s" },
        got.len(),
        if rowsort { " (rowsort)" } else { "" }
    ));
    let ops = diff(
        &want.iter().map(|w| &w.1).collect::<Vec<_>>(),
        &got.iter().collect::<Vec<_>>(),
    );
    let w = widths(
        std::iter::once(&actual.header)
            .chain(want.iter().map(|w| &w.1))
            .chain(got.iter()),
    );
    report.push_str(&format!("    {}\n", line(&actual.header, &w)));
    for op in ops {
        match op {
            Op::Same(i) => report.push_str(&format!("    {}\n", line(&want[i].1, &w))),
            Op::Removed(i) => {
                first_line.get_or_insert(want[i].0);
                report.push_str(&format!("  - {}   (line {})\n", line(&want[i].1, &w), want[i].0));
            }
            Op::Added(j) => report.push_str(&format!("  + {}\n", line(&got[j], &w))),
        }
    }
    if first_line.is_none() {
        // Only missing rows at the end: point at the block's last line.
        first_line = expected.last().map(|(n, _)| *n);
    }
    Some((report, first_line))
}

enum Op {
    Same(usize),
    Removed(usize),
    Added(usize),
}

/// A line diff (longest common subsequence); long inputs fall back to all-removed, all-added.
fn diff<T: PartialEq>(a: &[T], b: &[T]) -> Vec<Op> {
    let (n, m) = (a.len(), b.len());
    if n.saturating_mul(m) > 4_000_000 {
        return (0..n).map(Op::Removed).chain((0..m).map(Op::Added)).collect();
    }
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            out.push(Op::Same(i));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push(Op::Removed(i));
            i += 1;
        } else {
            out.push(Op::Added(j));
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    fn batch() -> (SchemaRef, RecordBatch) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
        ]));
        let b = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec![Some("b|c"), None, Some(""), Some("a")])),
                Arc::new(Int64Array::from(vec![Some(10), Some(2), None, Some(9)])),
            ],
        )
        .expect("batch");
        (schema, b)
    }

    #[test]
    fn renders_escapes_sorts_and_splits() {
        let (schema, b) = batch();
        let t = table(&schema, &[sorted(&schema, &[b]).expect("sort")]).expect("table");
        assert_eq!(
            render(&t),
            vec![
                "k       | n",
                "NULL    | 2",
                "(empty) | NULL",
                "a       | 9",
                "b\\|c    | 10"
            ]
        );
        assert_eq!(split("b\\|c    | 10"), vec!["b\\|c", "10"]);
        assert_eq!(escape(" x "), "\\sx\\s");
    }

    #[test]
    fn compares_and_reports_a_diff_with_lines() {
        let (schema, b) = batch();
        let t = table(&schema, &[sorted(&schema, &[b]).expect("sort")]).expect("table");
        let block: Vec<(usize, String)> = render(&t).into_iter().enumerate().map(|(i, l)| (i + 10, l)).collect();
        assert_eq!(compare(&block, &t, false), None);
        let mut changed = block.clone();
        changed[3].1 = "a | 8".into();
        let (report, line) = compare(&changed, &t, false).expect("differs");
        assert_eq!(line, Some(13));
        assert!(
            report.contains("  - a       | 8   (line 13)\n  + a       | 9\n"),
            "{report}"
        );
        assert!(report.contains("  + a       | 9"), "{report}");
        let mut shuffled = block.clone();
        shuffled.swap(1, 4);
        assert!(compare(&shuffled, &t, false).is_some());
        assert_eq!(compare(&shuffled, &t, true), None, "rowsort");
        assert_eq!(compare(&[], &Table::default(), false), None, "empty block, no rows");
        assert!(compare(&[(1, "x".into())], &t, false).is_some());
    }
}

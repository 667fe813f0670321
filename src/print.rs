//! Printing result batches as a table, CSV or JSON lines.

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrintFormat {
    Table,
    Csv,
    Json,
}

impl std::str::FromStr for PrintFormat {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "table" => Ok(PrintFormat::Table),
            "csv" => Ok(PrintFormat::Csv),
            "json" => Ok(PrintFormat::Json),
            other => Err(Error::option(
                "format",
                format!("unknown format '{other}'; valid: table, csv, json"),
            )),
        }
    }
}

pub fn format_batches(batches: &[RecordBatch], format: PrintFormat) -> Result<String> {
    let batches: Vec<RecordBatch> = batches.iter().filter(|b| b.num_rows() > 0).cloned().collect();
    Ok(match format {
        PrintFormat::Table => {
            if batches.is_empty() {
                String::new()
            } else {
                pretty_format_batches(&batches)?.to_string() + "\n"
            }
        }
        PrintFormat::Csv => {
            let mut out = Vec::new();
            {
                let mut w = datafusion::arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(&mut out);
                for b in &batches {
                    w.write(b)?;
                }
            }
            String::from_utf8_lossy(&out).into_owned()
        }
        PrintFormat::Json => {
            let mut s = String::new();
            for b in &batches {
                s.push_str(&String::from_utf8_lossy(&crate::format::to_json_lines(b)?));
            }
            s
        }
    })
}

pub fn row_count(batches: &[RecordBatch]) -> usize {
    batches.iter().map(|b| b.num_rows()).sum()
}

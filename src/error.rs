//! Errors, typed by who must act: the user (bad SQL, bad options, bad input files), an external system
//! (disk, later Kafka/HBase), or us (an internal invariant broke).

use std::path::PathBuf;

use datafusion::error::DataFusionError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// SQL that does not parse; `line`/`col` are 1-based and absolute in the text the user gave.
    #[error("{line}:{col}: {message}")]
    Sql { line: u64, col: u64, message: String },
    /// SQL that parses but cannot be planned or run as asked.
    #[error("{0}")]
    Plan(String),
    /// A bad `WITH (...)` option or config key; the message names the key.
    #[error("option '{key}': {message}")]
    Option { key: String, message: String },
    /// A statement refused by the [`crate::policy::Policy`] (a path outside the allowed
    /// directories, a forbidden librdkafka key, a host not allowed); the message names the key.
    #[error("option '{key}': refused: {message}")]
    Forbidden { key: String, message: String },
    /// A cap on what one request may take was reached (rows or bytes of a result, memory of a
    /// query); the message names the cap and how to stay under it.
    #[error("{0}")]
    Limit(String),
    /// A file the user named cannot be read or written.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// An external system failed (disk, network service).
    #[error("{0}")]
    External(String),
    /// DataFusion reported an error while planning or executing.
    #[error("{0}")]
    DataFusion(#[from] DataFusionError),
    /// A bug in Freshet.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn plan(msg: impl Into<String>) -> Self {
        Error::Plan(msg.into())
    }

    pub fn option(key: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Option {
            key: key.into(),
            message: message.into(),
        }
    }

    pub fn forbidden(key: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Forbidden {
            key: key.into(),
            message: message.into(),
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Shift a SQL position by the line/column where the statement started in its file.
    pub fn offset(self, line0: u64, col0: u64) -> Self {
        match self {
            Error::Sql { line, col, message } => {
                let col = if line == 1 { col + col0.saturating_sub(1) } else { col };
                Error::Sql {
                    line: line + line0.saturating_sub(1),
                    col,
                    message,
                }
            }
            other => other,
        }
    }
}

impl From<datafusion::arrow::error::ArrowError> for Error {
    fn from(e: datafusion::arrow::error::ArrowError) -> Self {
        Error::DataFusion(DataFusionError::ArrowError(Box::new(e), None))
    }
}

impl From<datafusion::sql::sqlparser::parser::ParserError> for Error {
    fn from(e: datafusion::sql::sqlparser::parser::ParserError) -> Self {
        parser_error(&e.to_string())
    }
}

/// sqlparser puts the position at the end of its message as "at Line: L, Column: C".
pub fn parser_error(msg: &str) -> Error {
    let msg = msg.strip_prefix("sql parser error: ").unwrap_or(msg);
    if let Some(i) = msg.rfind(" at Line: ") {
        let tail = &msg[i + " at Line: ".len()..];
        let mut parts = tail.split(", Column: ");
        let line = parts.next().and_then(|l| l.trim().parse().ok());
        let col = parts.next().and_then(|c| c.trim().parse().ok());
        if let (Some(line), Some(col)) = (line, col) {
            return Error::Sql {
                line,
                col,
                message: msg[..i].to_string(),
            };
        }
    }
    Error::Sql {
        line: 1,
        col: 1,
        message: msg.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parser_positions_are_extracted_and_offset() {
        let e = parser_error("sql parser error: Expected: ), found: x at Line: 2, Column: 7");
        assert_eq!(e.to_string(), "2:7: Expected: ), found: x");
        let e = e.offset(10, 5);
        assert_eq!(e.to_string(), "11:7: Expected: ), found: x");
        let e = parser_error("Expected: ), found: x at Line: 1, Column: 3").offset(4, 5);
        assert_eq!(e.to_string(), "4:7: Expected: ), found: x");
    }
}

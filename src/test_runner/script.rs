//! The `.fslt` file format: records separated by blank lines (see docs/testing.md).
//!
//! A record starts with a directive line. `statement`, `query` and `input` take a body (the lines up
//! to the next blank line); `query`, `emitted` and `contents` take an expected block after a `----`
//! line (up to the next blank line). The other directives are one line each. `#` starts a comment
//! line between records (and inside `input` bodies).

/// Where an expected block sits in the file (0-based line indexes), for comparison and `--complete`.
#[derive(Debug, Clone, PartialEq)]
pub struct Expected {
    /// The `----` line.
    pub dashes: usize,
    /// One past the block's last line.
    pub end: usize,
    /// The block's lines with their 1-based line numbers.
    pub lines: Vec<(usize, String)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    /// Rows the sink of query NAME was given since the last `emitted NAME`.
    Emitted(String),
    /// What the sink or materialized view NAME holds now.
    Contents(String),
    /// A bounded SELECT (over materialized views, tables, `_late`, `_errors`).
    Query { sql: String, line: usize },
}

#[derive(Debug, Clone, PartialEq)]
pub enum InputRows {
    /// Inline rows with their 1-based line numbers; the format is given or guessed.
    Inline {
        format: Option<InputFormat>,
        rows: Vec<(usize, String)>,
    },
    /// `from PATH`: rows from a file (relative to the test file), format by extension.
    File(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    Csv,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Directive {
    Statement {
        /// `statement error TEXT`: the statement must fail with a message containing TEXT.
        error: Option<String>,
        sql: String,
        /// 1-based line of the SQL's first line.
        line: usize,
    },
    Include(String),
    Input {
        name: String,
        rows: InputRows,
    },
    Flush,
    Watermark {
        source: Option<String>,
        text: String,
    },
    End(Option<String>),
    AdvanceProcessingTime {
        text: String,
    },
    Restart {
        query: Option<String>,
        crash: bool,
    },
    Check {
        check: Check,
        rowsort: bool,
        expected: Option<Expected>,
        /// 0-based index of the record's last line before its expected block (where `--complete`
        /// inserts one if there is none).
        last: usize,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// 1-based line of the directive.
    pub line: usize,
    pub directive: Directive,
}

/// A format error at a 1-based line.
#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

fn blank(l: &str) -> bool {
    l.trim().is_empty()
}

fn comment(l: &str) -> bool {
    l.trim_start().starts_with('#')
}

/// The lines of a body: from `from` up to the next blank line (0-based, exclusive end).
fn body_end(lines: &[&str], from: usize) -> usize {
    (from..lines.len()).find(|&j| blank(lines[j])).unwrap_or(lines.len())
}

/// An expected block starting at `i` if the line there is `----`.
fn expected_at(lines: &[&str], i: usize) -> Option<Expected> {
    if lines.get(i).is_none_or(|l| l.trim() != "----") {
        return None;
    }
    let end = body_end(lines, i + 1);
    Some(Expected {
        dashes: i,
        end,
        lines: (i + 1..end).map(|j| (j + 1, lines[j].to_string())).collect(),
    })
}

pub fn parse(text: &str) -> Result<Vec<Record>, ParseError> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i];
        if blank(l) || comment(l) {
            i += 1;
            continue;
        }
        let line = i + 1;
        let err = |message: String| ParseError { line, message };
        let words: Vec<&str> = l.split_whitespace().collect();
        let arg = |n: usize| words.get(n).map(|w| w.to_string());
        let (directive, next) = match words[0] {
            "statement" => {
                let error = match words.get(1).copied() {
                    Some("ok") if words.len() == 2 => None,
                    Some("error") => Some(
                        l.trim()
                            .splitn(3, char::is_whitespace)
                            .nth(2)
                            .unwrap_or("")
                            .trim()
                            .to_string(),
                    ),
                    _ => return Err(err("expected `statement ok` or `statement error [message]`".into())),
                };
                let end = body_end(&lines, i + 1);
                if end == i + 1 {
                    return Err(err("`statement` needs SQL on the lines below it".into()));
                }
                let sql = lines[i + 1..end].join("\n");
                (
                    Directive::Statement {
                        error,
                        sql,
                        line: i + 2,
                    },
                    end,
                )
            }
            "include" if words.len() == 2 => (Directive::Include(words[1].to_string()), i + 1),
            "input" => match words.as_slice() {
                [_, name, "from", path] => (
                    Directive::Input {
                        name: name.to_string(),
                        rows: InputRows::File(path.to_string()),
                    },
                    i + 1,
                ),
                [_, name, rest @ ..] if rest.len() <= 1 => {
                    let format = match rest.first().copied() {
                        None => None,
                        Some("csv") => Some(InputFormat::Csv),
                        Some("json") => Some(InputFormat::Json),
                        Some(other) => return Err(err(format!("unknown input format '{other}'; valid: csv, json"))),
                    };
                    let end = body_end(&lines, i + 1);
                    let rows = (i + 1..end)
                        .filter(|&j| !comment(lines[j]))
                        .map(|j| (j + 1, lines[j].to_string()))
                        .collect();
                    (
                        Directive::Input {
                            name: name.to_string(),
                            rows: InputRows::Inline { format, rows },
                        },
                        end,
                    )
                }
                _ => {
                    return Err(err(
                        "expected `input NAME [csv|json]` (rows below) or `input NAME from PATH`".into(),
                    ));
                }
            },
            "flush" if words.len() == 1 => (Directive::Flush, i + 1),
            "watermark" if words.len() >= 2 => {
                // `watermark [SOURCE] TIMESTAMP`; a timestamp starts with a digit (a name cannot) and
                // may hold a space (`2026-01-01 00:01:00`).
                let (source, text) = if words[1].starts_with(|c: char| c.is_ascii_digit()) {
                    (None, words[1..].join(" "))
                } else {
                    (arg(1), words[2..].join(" "))
                };
                if text.is_empty() || text.split_whitespace().count() > 2 {
                    return Err(err("expected `watermark [SOURCE] TIMESTAMP`".into()));
                }
                (Directive::Watermark { source, text }, i + 1)
            }
            "end" if words.len() <= 2 => (Directive::End(arg(1)), i + 1),
            "advance" if words.len() == 4 && words[1] == "processing" && words[2] == "time" => (
                Directive::AdvanceProcessingTime {
                    text: words[3].to_string(),
                },
                i + 1,
            ),
            "restart" | "crash" if words.len() <= 2 => (
                Directive::Restart {
                    query: arg(1),
                    crash: words[0] == "crash",
                },
                i + 1,
            ),
            "emitted" | "contents" => {
                let (name, rowsort) = match words.as_slice() {
                    [_, name] => (name.to_string(), false),
                    [_, name, "rowsort"] => (name.to_string(), true),
                    _ => return Err(err(format!("expected `{} NAME [rowsort]`", words[0]))),
                };
                let check = if words[0] == "emitted" {
                    Check::Emitted(name)
                } else {
                    Check::Contents(name)
                };
                let expected = expected_at(&lines, i + 1);
                let next = expected.as_ref().map_or(i + 1, |e| e.end);
                (
                    Directive::Check {
                        check,
                        rowsort,
                        expected,
                        last: i,
                    },
                    next,
                )
            }
            "query" => {
                let rowsort = match words.as_slice() {
                    [_] => false,
                    [_, "rowsort"] => true,
                    _ => return Err(err("expected `query [rowsort]`".into())),
                };
                let mut j = i + 1;
                while j < lines.len() && !blank(lines[j]) && lines[j].trim() != "----" {
                    j += 1;
                }
                if j == i + 1 {
                    return Err(err("`query` needs a SELECT on the lines below it".into()));
                }
                let sql = lines[i + 1..j].join("\n");
                let expected = expected_at(&lines, j);
                let next = expected.as_ref().map_or(j, |e| e.end);
                (
                    Directive::Check {
                        check: Check::Query { sql, line: i + 2 },
                        rowsort,
                        expected,
                        last: j - 1,
                    },
                    next,
                )
            }
            other => {
                return Err(err(format!(
                    "unknown directive '{other}' (or wrong arguments); valid: statement, include, input, flush, \
                     watermark, end, advance processing time, restart, crash, emitted, contents, query"
                )));
            }
        };
        if matches!(
            directive,
            Directive::Include(_)
                | Directive::Flush
                | Directive::Watermark { .. }
                | Directive::End(_)
                | Directive::AdvanceProcessingTime { .. }
                | Directive::Restart { .. }
                | Directive::Input {
                    rows: InputRows::File(_),
                    ..
                }
        ) && lines
            .get(next)
            .is_some_and(|l| !blank(l) && !comment(l) && l.trim() == "----")
        {
            return Err(ParseError {
                line: next + 1,
                message: "`----` after a directive that has no expected output".into(),
            });
        }
        out.push(Record { line, directive });
        i = next;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_records_bodies_and_blocks() {
        let text = "# a test\nstatement ok\nCREATE SOURCE s (a BIGINT)\nWITH (connector = 'test')\n\ninput s\n1\n# skipped\n2\n\nflush\nwatermark s 2026-01-01T00:00:00Z\nend\nadvance processing time 10s\ncrash q\n\nemitted q rowsort\n----\na\n1\n\ncontents q\n\nquery\nSELECT 1 AS x\n----\nx\n1\n\nstatement error not found\nSELECT * FROM nope\n";
        let r = parse(text).expect("parses");
        let d: Vec<&Directive> = r.iter().map(|r| &r.directive).collect();
        assert!(matches!(
            d[0],
            Directive::Statement {
                error: None,
                line: 3,
                ..
            }
        ));
        match d[1] {
            Directive::Input {
                name,
                rows: InputRows::Inline { format: None, rows },
            } => {
                assert_eq!(name, "s");
                assert_eq!(rows, &vec![(7, "1".to_string()), (9, "2".to_string())]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(d[2], &Directive::Flush);
        assert_eq!(
            d[3],
            &Directive::Watermark {
                source: Some("s".into()),
                text: "2026-01-01T00:00:00Z".into()
            }
        );
        assert_eq!(d[4], &Directive::End(None));
        assert_eq!(d[5], &Directive::AdvanceProcessingTime { text: "10s".into() });
        assert_eq!(
            d[6],
            &Directive::Restart {
                query: Some("q".into()),
                crash: true
            }
        );
        match d[7] {
            Directive::Check {
                check: Check::Emitted(n),
                rowsort: true,
                expected: Some(e),
                last: 16,
            } => {
                assert_eq!(n, "q");
                assert_eq!((e.dashes, e.end), (17, 20));
                assert_eq!(e.lines, vec![(19, "a".to_string()), (20, "1".to_string())]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            d[8],
            Directive::Check {
                expected: None,
                last: 21,
                ..
            }
        ));
        assert!(matches!(
            d[9],
            Directive::Check {
                check: Check::Query { line: 25, .. },
                expected: Some(_),
                ..
            }
        ));
        assert!(matches!(d[10], Directive::Statement { error: Some(e), .. } if e == "not found"));
        assert_eq!(r[10].line, 30);
    }

    #[test]
    fn reports_format_errors_at_their_line() {
        let e = parse("flush\n\nwatermark a b c d\n").expect_err("bad");
        assert_eq!(e.line, 3);
        let e = parse("watermark s\n").expect_err("no time");
        assert_eq!(e.line, 1);
        let r = parse("watermark 2026-01-01 00:00:01.5\nwatermark s 2026-01-01 00:00:02\n").expect("parses");
        assert_eq!(
            r[0].directive,
            Directive::Watermark {
                source: None,
                text: "2026-01-01 00:00:01.5".into()
            }
        );
        assert_eq!(
            r[1].directive,
            Directive::Watermark {
                source: Some("s".into()),
                text: "2026-01-01 00:00:02".into()
            }
        );
        let e = parse("statement ok\n\n").expect_err("no sql");
        assert_eq!(e.line, 1);
        let e = parse("\nfrobnicate\n").expect_err("unknown");
        assert_eq!(e.line, 2);
        assert!(e.message.contains("unknown directive"));
    }
}

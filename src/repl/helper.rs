//! The rustyline helper: completion of keywords, catalog names and columns; a hint for the one
//! possible completion; keyword highlighting; and the validator that keeps reading lines until a
//! statement ends with `;`.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};

use rustyline::completion::{Completer, FilenameCompleter, Pair};
use rustyline::highlight::{CmdKind, Highlighter};
use rustyline::hint::Hinter;
use rustyline::validate::{ValidationContext, ValidationResult, Validator};
use rustyline::{Context, Helper};

use super::command;

/// Keywords and keyword phrases offered by completion. Upper-case entries follow the case the user
/// types; lower-case ones (column names every window query has) are inserted as they are.
pub const KEYWORDS: &[&str] = &[
    "CREATE SOURCE",
    "CREATE TABLE",
    "CREATE SINK",
    "CREATE VIEW",
    "CREATE MATERIALIZED VIEW",
    "SELECT",
    "FROM",
    "WHERE",
    "GROUP BY",
    "ORDER BY",
    "HAVING",
    "LIMIT",
    "JOIN",
    "LEFT JOIN",
    "INNER JOIN",
    "ON",
    "AS",
    "AND",
    "OR",
    "NOT",
    "NULL",
    "IS NULL",
    "IS NOT NULL",
    "NOT NULL",
    "IN",
    "BETWEEN",
    "LIKE",
    "CASE",
    "WHEN",
    "THEN",
    "ELSE",
    "END",
    "ASC",
    "DESC",
    "CAST",
    "TRUE",
    "FALSE",
    "TUMBLE",
    "HOP",
    "SESSION",
    "INTERVAL",
    "SECOND",
    "MINUTE",
    "HOUR",
    "DAY",
    "WATERMARK FOR",
    "WITH",
    "SHOW SOURCES",
    "SHOW SINKS",
    "SHOW VIEWS",
    "SHOW QUERIES",
    "SHOW TABLES",
    "DESCRIBE",
    "DROP SOURCE",
    "DROP TABLE",
    "DROP SINK",
    "DROP VIEW",
    "DROP MATERIALIZED VIEW",
    "IF EXISTS",
    "EXPLAIN",
    "COUNT",
    "SUM",
    "MIN",
    "MAX",
    "AVG",
    "DISTINCT",
    "BIGINT",
    "INT",
    "INTEGER",
    "DOUBLE",
    "FLOAT",
    "VARCHAR",
    "TEXT",
    "BOOLEAN",
    "TIMESTAMP",
    "window_start",
    "window_end",
];

const FORMATS: &[&str] = &["table", "csv", "json"];

/// The REPL's rustyline helper. `words` holds the catalog's object and column names; the loop
/// refreshes it after every statement.
pub struct ReplHelper {
    words: Arc<Mutex<Vec<String>>>,
    files: FilenameCompleter,
}

impl ReplHelper {
    pub fn new(words: Arc<Mutex<Vec<String>>>) -> Self {
        ReplHelper {
            words,
            files: FilenameCompleter::new(),
        }
    }

    fn words(&self) -> Vec<String> {
        self.words.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Helper for ReplHelper {}

impl Completer for ReplHelper {
    type Candidate = Pair;

    fn complete(&self, line: &str, pos: usize, ctx: &Context<'_>) -> rustyline::Result<(usize, Vec<Pair>)> {
        if is_include(line, pos) {
            return self.files.complete(line, pos, ctx);
        }
        let (start, candidates) = complete(line, pos, &self.words());
        Ok((
            start,
            candidates
                .into_iter()
                .map(|c| Pair {
                    display: c.clone(),
                    replacement: c,
                })
                .collect(),
        ))
    }
}

impl Hinter for ReplHelper {
    type Hint = String;

    fn hint(&self, line: &str, pos: usize, _ctx: &Context<'_>) -> Option<String> {
        if pos != line.len() || is_include(line, pos) {
            return None;
        }
        hint(line, pos, &self.words())
    }
}

impl Highlighter for ReplHelper {
    fn highlight<'l>(&self, line: &'l str, _pos: usize) -> Cow<'l, str> {
        highlight_sql(line)
    }

    fn highlight_hint<'h>(&self, hint: &'h str) -> Cow<'h, str> {
        Cow::Owned(format!("\x1b[2m{hint}\x1b[0m"))
    }

    fn highlight_char(&self, _line: &str, _pos: usize, kind: CmdKind) -> bool {
        // Typing can turn a word into a keyword (or a quote into a string): redraw the line.
        kind != CmdKind::MoveCursor
    }
}

impl Validator for ReplHelper {
    fn validate(&self, ctx: &mut ValidationContext) -> rustyline::Result<ValidationResult> {
        Ok(if is_complete(ctx.input()) {
            ValidationResult::Valid(None)
        } else {
            ValidationResult::Incomplete
        })
    }
}

/// Is `input` ready to run? Backslash commands (and `quit`/`exit`) are complete at once; SQL is
/// complete when its last character outside quotes and comments is `;`. Blank input is complete
/// (the loop ignores it).
pub fn is_complete(input: &str) -> bool {
    let trimmed = input.trim();
    if trimmed.is_empty() || trimmed.starts_with('\\') || command::is_quit_word(trimmed) {
        return true;
    }
    let scan = scan_sql(input);
    !scan.open && scan.last == Some(';')
}

struct Scan {
    /// Inside a quote or block comment at the end.
    open: bool,
    /// The last character outside quotes and comments that is not whitespace.
    last: Option<char>,
}

fn scan_sql(input: &str) -> Scan {
    let mut chars = input.chars().peekable();
    let mut last = None;
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' | '`' => {
                // A doubled quote ('it''s') closes and reopens: the same result as an escape.
                let mut closed = false;
                for d in chars.by_ref() {
                    if d == c {
                        closed = true;
                        break;
                    }
                }
                if !closed {
                    return Scan { open: true, last };
                }
                last = Some(c);
            }
            '-' if chars.peek() == Some(&'-') => {
                for d in chars.by_ref() {
                    if d == '\n' {
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut prev = ' ';
                let mut closed = false;
                for d in chars.by_ref() {
                    if prev == '*' && d == '/' {
                        closed = true;
                        break;
                    }
                    prev = d;
                }
                if !closed {
                    return Scan { open: true, last };
                }
            }
            c if c.is_whitespace() => {}
            c => last = Some(c),
        }
    }
    Scan { open: false, last }
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Whether the cursor is in the argument of `\i` (file names are completed there).
fn is_include(line: &str, pos: usize) -> bool {
    let before = line.get(..pos).unwrap_or(line).trim_start();
    matches!(before.split_whitespace().next(), Some("\\i" | "\\include")) && before.contains(char::is_whitespace)
}

/// `s` starts with `prefix`, ignoring case.
fn starts_with_ci(s: &str, prefix: &str) -> bool {
    let mut s = s.chars().flat_map(char::to_lowercase);
    prefix.chars().flat_map(char::to_lowercase).all(|p| s.next() == Some(p))
}

fn has_lower(s: &str) -> bool {
    s.chars().any(char::is_lowercase)
}

/// Completions for the word before `pos` in `line`: the byte offset where the replaced word starts
/// and the candidates (sorted, without duplicates). `words` are catalog names and columns.
pub fn complete(line: &str, pos: usize, words: &[String]) -> (usize, Vec<String>) {
    let Some(before) = line.get(..pos) else {
        return (pos, Vec::new());
    };
    let start = before
        .char_indices()
        .rev()
        .take_while(|(_, c)| is_ident_char(*c))
        .last()
        .map_or(pos, |(i, _)| i);
    let prefix = &before[start..];
    let head = before[..start].trim_start();
    let mut out: Vec<String> = Vec::new();

    if head.starts_with('\\') || (head.is_empty() && before.trim_start().starts_with('\\')) {
        let cmd_start = before.len() - before.trim_start().len();
        let cmd_text = &before[cmd_start..];
        if !cmd_text.contains(char::is_whitespace) {
            // The command name itself, backslash included.
            out.extend(
                command::NAMES
                    .iter()
                    .filter(|n| n.starts_with(cmd_text))
                    .map(|n| n.to_string()),
            );
            out.sort();
            out.dedup();
            return (cmd_start, out);
        }
        let cmd = cmd_text.split_whitespace().next().unwrap_or_default();
        match cmd {
            "\\d" | "\\describe" | "\\pause" | "\\resume" => {
                out.extend(words.iter().filter(|w| starts_with_ci(w, prefix)).cloned())
            }
            "\\format" => out.extend(
                FORMATS
                    .iter()
                    .filter(|f| starts_with_ci(f, prefix))
                    .map(|f| f.to_string()),
            ),
            "\\timing" => out.extend(
                ["on", "off"]
                    .iter()
                    .filter(|f| starts_with_ci(f, prefix))
                    .map(|f| f.to_string()),
            ),
            _ => {}
        }
        out.sort();
        out.dedup();
        return (start, out);
    }

    // The words right before the one being completed, for keyword phrases ("GROUP B" → "BY").
    let previous: Vec<&str> = before[..start]
        .split_whitespace()
        .rev()
        .take_while(|w| w.chars().all(is_ident_char))
        .take(3)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let lower = if prefix.is_empty() {
        previous.last().is_some_and(|w| has_lower(w))
    } else {
        has_lower(prefix)
    };
    let only_after_previous = before[..start].ends_with(char::is_whitespace) || start == 0;
    let mut continuations: Vec<String> = Vec::new();

    for phrase in KEYWORDS {
        let parts: Vec<&str> = phrase.split(' ').collect();
        for j in 0..parts.len() {
            if j > previous.len() || (j > 0 && !only_after_previous) {
                break;
            }
            // With nothing typed, offer only the continuation of a phrase already begun.
            if prefix.is_empty() && j == 0 {
                continue;
            }
            let before_words = &previous[previous.len() - j..];
            if !before_words
                .iter()
                .zip(&parts[..j])
                .all(|(a, b)| a.eq_ignore_ascii_case(b))
            {
                continue;
            }
            if !starts_with_ci(parts[j], prefix) {
                continue;
            }
            let rest = parts[j..].join(" ");
            let rest = if !has_lower(phrase) && lower {
                rest.to_lowercase()
            } else {
                rest
            };
            if j > 0 {
                continuations.push(rest)
            } else {
                out.push(rest)
            }
        }
    }
    // The rest of a phrase already begun ("GROUP B" → "BY") is all that makes sense there.
    if !continuations.is_empty() {
        continuations.sort();
        continuations.dedup();
        return (start, continuations);
    }
    out.extend(words.iter().filter(|w| starts_with_ci(w, prefix)).cloned());
    out.sort();
    out.dedup();
    (start, out)
}

/// The rest of the only completion of the word at the end of `line`, if there is exactly one and
/// something of the word was typed.
pub fn hint(line: &str, pos: usize, words: &[String]) -> Option<String> {
    let (start, candidates) = complete(line, pos, words);
    let typed = line.get(start..pos)?;
    if typed.is_empty() || typed == "\\" {
        return None;
    }
    match candidates.as_slice() {
        [only] if starts_with_ci(only, typed) => {
            let rest: String = only.chars().skip(typed.chars().count()).collect();
            (!rest.is_empty()).then_some(rest)
        }
        _ => None,
    }
}

/// The byte length of a span opened by `open` at the start of `rest` and closed by `close` (the
/// whole of `rest` if it is not closed); `None` if `rest` does not start with `open`.
fn span(rest: &str, open: &str, close: &str) -> Option<usize> {
    let inner = rest.strip_prefix(open)?;
    Some(inner.find(close).map_or(rest.len(), |i| open.len() + i + close.len()))
}

fn is_keyword(word: &str) -> bool {
    // The objects SHOW lists are common column names ("views"): not highlighted.
    const NOT_HIGHLIGHTED: &[&str] = &["SOURCES", "SINKS", "VIEWS", "QUERIES", "TABLES"];
    !NOT_HIGHLIGHTED.iter().any(|k| k.eq_ignore_ascii_case(word))
        && KEYWORDS
            .iter()
            .any(|phrase| !has_lower(phrase) && phrase.split(' ').any(|k| k.eq_ignore_ascii_case(word)))
}

/// SQL with ANSI colours: keywords bold blue, strings green, comments dim. The display width is
/// unchanged (escape codes only). Backslash commands are left plain.
pub fn highlight_sql(line: &str) -> Cow<'_, str> {
    if line.trim_start().starts_with('\\') {
        return Cow::Borrowed(line);
    }
    const KEYWORD: &str = "\x1b[1;34m";
    const STRING: &str = "\x1b[32m";
    const COMMENT: &str = "\x1b[2m";
    const RESET: &str = "\x1b[0m";
    let mut out = String::with_capacity(line.len() + 32);
    let mut changed = false;
    let mut rest = line;
    while let Some(c) = rest.chars().next() {
        let (len, style) = if let Some(n) = span(rest, "'", "'") {
            (n, Some(STRING))
        } else if rest.starts_with("--") {
            (rest.find('\n').unwrap_or(rest.len()), Some(COMMENT))
        } else if let Some(n) = span(rest, "/*", "*/") {
            (n, Some(COMMENT))
        } else if let Some(n) = span(rest, "\"", "\"") {
            (n, None)
        } else if is_ident_char(c) {
            let end = rest.find(|c: char| !is_ident_char(c)).unwrap_or(rest.len());
            let word = &rest[..end];
            let keyword = !word.starts_with(|c: char| c.is_ascii_digit()) && is_keyword(word);
            (end, keyword.then_some(KEYWORD))
        } else {
            (c.len_utf8(), None)
        };
        let (piece, tail) = rest.split_at(len);
        match style {
            Some(style) => {
                out.push_str(style);
                out.push_str(piece);
                out.push_str(RESET);
                changed = true;
            }
            None => out.push_str(piece),
        }
        rest = tail;
    }
    if changed { Cow::Owned(out) } else { Cow::Borrowed(line) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words() -> Vec<String> {
        ["course_events", "course_id", "region", "s", "user_id"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    #[test]
    fn validator_waits_for_semicolon() {
        assert!(!is_complete("SELECT 1"));
        assert!(is_complete("SELECT 1;"));
        assert!(is_complete("SELECT 1;  \n "));
        assert!(!is_complete("SELECT 1\nFROM t"));
        assert!(is_complete("SELECT 1\nFROM t;"));
        assert!(is_complete("\\d"));
        assert!(is_complete("  \\timing"));
        assert!(is_complete(""));
        assert!(is_complete("quit"));
        // `;` inside quotes or comments does not end a statement.
        assert!(!is_complete("SELECT ';"));
        assert!(!is_complete("SELECT 'a;'"));
        assert!(is_complete("SELECT 'a;';"));
        assert!(is_complete("SELECT 'it''s';"));
        assert!(!is_complete("SELECT 1 -- done;"));
        assert!(is_complete("SELECT 1; -- done"));
        assert!(!is_complete("SELECT 1 /* ; */"));
        assert!(!is_complete("SELECT 1; /* open"));
        assert!(is_complete("SELECT \"a;b\" FROM t;"));
    }

    #[test]
    fn completes_keywords_phrases_and_names() {
        let w = words();
        assert_eq!(complete("SEL", 3, &w), (0, vec!["SELECT".to_string()]));
        assert_eq!(complete("sel", 3, &w), (0, vec!["select".to_string()]));
        let (start, c) = complete("SELECT * FROM s GROUP B", 23, &w);
        assert_eq!(start, 22);
        assert_eq!(c, vec!["BY".to_string()]);
        let (_, c) = complete("CREATE MAT", 10, &w);
        assert_eq!(c, vec!["MATERIALIZED VIEW".to_string()]);
        let (_, c) = complete("CREATE ", 7, &w);
        assert_eq!(
            c,
            ["MATERIALIZED VIEW", "SINK", "SOURCE", "TABLE", "VIEW"].map(String::from)
        );
        let (_, c) = complete("select * from s where region is n", 33, &w);
        assert_eq!(c, ["not null", "null"].map(String::from));
        let (_, c) = complete("SELECT cou", 10, &w);
        assert!(
            c.contains(&"count".to_string()) && c.contains(&"course_id".to_string()),
            "{c:?}"
        );
        let (_, c) = complete("SELECT window_s", 15, &w);
        assert_eq!(c, vec!["window_start".to_string()]);
        let (_, c) = complete("SELECT * FROM course_e", 22, &w);
        assert_eq!(c, vec!["course_events".to_string()]);
        let (_, c) = complete("SHOW Q", 6, &w);
        assert_eq!(c, vec!["QUERIES".to_string()]);
        let (_, c) = complete("WATERMARK F", 11, &w);
        assert_eq!(c, vec!["FOR".to_string()]);
    }

    #[test]
    fn completes_backslash_commands() {
        let w = words();
        assert_eq!(complete("\\ti", 3, &w), (0, vec!["\\timing".to_string()]));
        assert_eq!(complete("\\format c", 9, &w), (8, vec!["csv".to_string()]));
        assert_eq!(
            complete("\\d cou", 6, &w),
            (3, vec!["course_events".to_string(), "course_id".to_string()])
        );
        assert!(is_include("\\i que", 6));
        assert!(!is_include("\\i", 2));
    }

    #[test]
    fn hints_the_only_completion() {
        let w = words();
        assert_eq!(hint("SELE", 4, &w), Some("CT".to_string()));
        assert_eq!(hint("select * from course_e", 22, &w), Some("vents".to_string()));
        assert_eq!(hint("SELECT cou", 10, &w), None);
        assert_eq!(hint("SELECT ", 7, &w), None);
        assert_eq!(hint("\\tim", 4, &w), Some("ing".to_string()));
    }

    #[test]
    fn highlights_keywords_strings_and_comments() {
        let h = highlight_sql("SELECT x, 'a' FROM t -- c");
        assert!(h.contains("\x1b[1;34mSELECT\x1b[0m"));
        assert!(h.contains("\x1b[32m'a'\x1b[0m"));
        assert!(h.contains("\x1b[2m-- c\x1b[0m"));
        assert!(matches!(highlight_sql("x + y"), Cow::Borrowed(_)));
        assert!(matches!(highlight_sql("views + 1"), Cow::Borrowed(_)));
        assert!(matches!(highlight_sql("\\d s"), Cow::Borrowed(_)));
        // Unterminated quotes and multibyte text do not panic.
        let _ = highlight_sql("SELECT 'é");
        let _ = highlight_sql("/* é");
        let _ = highlight_sql("\"é");
    }
}

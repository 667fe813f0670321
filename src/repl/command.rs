//! Backslash commands: parsed here, run by [`super::Repl`].

use crate::print::PrintFormat;

/// Command names, for completion.
pub const NAMES: &[&str] = &[
    "\\?",
    "\\help",
    "\\q",
    "\\quit",
    "\\d",
    "\\describe",
    "\\timing",
    "\\format",
    "\\i",
    "\\include",
    "\\pause",
    "\\resume",
];

pub const HELP: &str = "\
Commands:
  \\?                     this help
  \\q                     quit (also Ctrl-D, quit, exit)
  \\d                     list sources, sinks, views and tables
  \\d NAME                describe NAME's columns
  \\timing [on|off]       print how long each statement takes (toggles without an argument)
  \\format table|csv|json how to print rows (shows the current one without an argument)
  \\i FILE                run the SQL statements of FILE, stopping at the first error
  \\pause NAME            stop the continuous query NAME (a sink or materialized view), keeping it
  \\resume NAME           start NAME again (after \\pause, or once it finished or failed)

Statements end with ';' and may span lines:
  CREATE SOURCE name (col TYPE, ..., WATERMARK FOR col AS col - INTERVAL '5' SECOND) WITH (connector = ...);
  CREATE TABLE name (...) WITH (...);          a bounded lookup table
  CREATE SINK name WITH (connector = ...) AS SELECT ...;
  CREATE [MATERIALIZED] VIEW name AS SELECT ...;
  SELECT ... FROM TUMBLE(src, time_col, INTERVAL '1' MINUTE) GROUP BY ..., window_start, window_end;
  SHOW SOURCES|SINKS|VIEWS|TABLES|QUERIES;   DESCRIBE name;   DROP ... name;   EXPLAIN SELECT ...;

A SELECT over a source is live: its table redraws until the source ends; Ctrl-C stops it.
Tab completes keywords, object names and columns.

With --server URL every statement runs on that `freshet serve` (SHOW QUERIES lists its queries), and
\\i sends the whole file at once. The server refuses a SELECT over a stream: register it with
CREATE MATERIALIZED VIEW name AS SELECT ... and SELECT from the view.
";

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Help,
    Quit,
    /// `\d`: every object.
    List,
    /// `\d NAME`, the name already normalized like an SQL identifier.
    Describe(String),
    /// `\timing`: `None` toggles.
    Timing(Option<bool>),
    /// `\format`: `None` shows the current format.
    Format(Option<PrintFormat>),
    /// `\i FILE`.
    Include(String),
    /// `\pause NAME`, the name normalized like an SQL identifier.
    Pause(String),
    /// `\resume NAME`.
    Resume(String),
}

/// `quit` and `exit` (with or without `;`) leave the REPL like `\q`.
pub fn is_quit_word(input: &str) -> bool {
    let word = input.trim().trim_end_matches(';').trim();
    word.eq_ignore_ascii_case("quit") || word.eq_ignore_ascii_case("exit")
}

/// A name as `DESCRIBE` would read it: unquoted names are lower-cased, `"Quoted"` ones kept.
fn identifier(text: &str) -> String {
    match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(quoted) => quoted.replace("\"\"", "\""),
        None => text.to_ascii_lowercase(),
    }
}

/// Parse a line starting with `\`. The error is the message to show.
pub fn parse(line: &str) -> Result<Command, String> {
    let line = line.trim().trim_end_matches(';').trim_end();
    let (name, arg) = match line.split_once(char::is_whitespace) {
        Some((n, a)) => (n, a.trim()),
        None => (line, ""),
    };
    let no_arg = |c: Command| {
        if arg.is_empty() {
            Ok(c)
        } else {
            Err(format!("{name} takes no argument"))
        }
    };
    match name {
        "\\?" | "\\h" | "\\help" => no_arg(Command::Help),
        "\\q" | "\\quit" => no_arg(Command::Quit),
        "\\d" | "\\describe" => Ok(if arg.is_empty() {
            Command::List
        } else {
            Command::Describe(identifier(arg))
        }),
        "\\timing" => match arg.to_ascii_lowercase().as_str() {
            "" => Ok(Command::Timing(None)),
            "on" => Ok(Command::Timing(Some(true))),
            "off" => Ok(Command::Timing(Some(false))),
            other => Err(format!("\\timing takes on or off, not '{other}'")),
        },
        "\\format" => {
            if arg.is_empty() {
                Ok(Command::Format(None))
            } else {
                arg.parse::<PrintFormat>()
                    .map(|f| Command::Format(Some(f)))
                    .map_err(|_| format!("unknown format '{arg}'; valid: table, csv, json"))
            }
        }
        "\\i" | "\\include" => {
            if arg.is_empty() {
                Err("\\i needs a file name".to_string())
            } else {
                Ok(Command::Include(arg.to_string()))
            }
        }
        "\\pause" | "\\resume" => {
            if arg.is_empty() {
                Err(format!("{name} needs the name of a sink or materialized view"))
            } else if name == "\\pause" {
                Ok(Command::Pause(identifier(arg)))
            } else {
                Ok(Command::Resume(identifier(arg)))
            }
        }
        other => Err(format!("unknown command '{other}'; \\? lists the commands")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands() {
        assert_eq!(parse("\\?"), Ok(Command::Help));
        assert_eq!(parse("\\q"), Ok(Command::Quit));
        assert_eq!(parse("\\q;"), Ok(Command::Quit));
        assert_eq!(parse("\\d"), Ok(Command::List));
        assert_eq!(
            parse("\\d  Course_Events ;"),
            Ok(Command::Describe("course_events".into()))
        );
        assert_eq!(parse("\\d \"Mixed\""), Ok(Command::Describe("Mixed".into())));
        assert_eq!(parse("\\timing"), Ok(Command::Timing(None)));
        assert_eq!(parse("\\timing OFF"), Ok(Command::Timing(Some(false))));
        assert_eq!(parse("\\format csv"), Ok(Command::Format(Some(PrintFormat::Csv))));
        assert_eq!(parse("\\format"), Ok(Command::Format(None)));
        assert_eq!(parse("\\i a b.sql"), Ok(Command::Include("a b.sql".into())));
        assert_eq!(parse("\\pause Top"), Ok(Command::Pause("top".into())));
        assert_eq!(parse("\\resume \"Top\";"), Ok(Command::Resume("Top".into())));
        assert!(parse("\\pause").is_err());
        assert!(parse("\\format xml").is_err());
        assert!(parse("\\i").is_err());
        assert!(parse("\\q now").is_err());
        assert!(parse("\\zz").expect_err("unknown").contains("unknown command"));
        assert!(parse("\\").is_err());
        assert!(is_quit_word("exit;") && is_quit_word(" QUIT ") && !is_quit_word("quit it"));
    }
}

//! # Freshet
//!
//! A SQL-driven stream processor. The pipeline in ten lines, and where each part lives:
//!
//! 1. [`sql::parser`] reads scripts: `CREATE SOURCE`/`TABLE`/`SINK`/`[MATERIALIZED] VIEW`, `SHOW`,
//!    `DESCRIBE`, `DROP`, `EXPLAIN` and queries, with line:column errors; [`sql::catalog`] keeps them.
//! 2. [`connector`] holds every source (`generator`, `file`) and sink (`parquet`, `file`, `console`,
//!    in-memory result tables), listed in one registry (`open_source`, `open_sink`).
//! 3. [`format`] decodes JSON/CSV into Arrow, isolating each bad record with its reason (`_errors`).
//! 4. [`engine::plan`] turns a query into a stateless, incremental-window or buffered-window plan;
//!    [`engine::window`] holds the keyed window state (panes for HOP, merging sessions).
//! 5. [`engine::query`] is the micro-batch loop: poll sources, split late rows (`_late`), run
//!    DataFusion over the batch, merge state, advance watermarks, emit to the sink.
//! 6. [`session`] executes statements against one catalog; `freshet run` and the REPL ([`repl`]) use it.
//! 7. [`collect`] is the Flume-style collector in front of Kafka (`freshet collect`).
//! 8. [`store`] persists a session's catalog in a data directory; [`server`] serves it over HTTP,
//!    with `/metrics` written by [`metrics`] (the collector's too) and every request checked by
//!    [`guard`].
//! 9. [`policy`] decides what SQL may touch outside the process (paths, librdkafka keys, hosts).
//! 10. [`check`] is `freshet check`: every statement of a file parsed and planned, nothing run.
//!
//! `main.rs` is only the command line. [`fuzz`] holds the fuzz targets over every reader of untrusted
//! input (docs/fuzzing.md).

pub mod check;
pub mod collect;
pub mod connector;
pub mod engine;
pub mod error;
pub mod format;
pub mod fuzz;
pub mod guard;
pub mod metrics;
pub mod operator;
pub mod plan;
pub mod policy;
pub mod print;
pub mod repl;
pub mod server;
pub mod session;
pub mod sql;
pub mod state;
pub mod store;
pub mod test_runner;
pub mod time;

pub use error::{Error, Result};

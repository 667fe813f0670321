//! Freshet's integration tests: one binary (see Cargo.toml `autotests = false`).

mod bad_input;
mod checkpoints;
mod cli;
mod collector;
mod deep;
mod error_streams;
mod faults;
mod hbase_idempotent;
mod hbase_thrift2;
mod joins;
mod kafka_exactly_once;
mod kafka_kills;
mod nexmark;
mod oracle;
mod over;
mod restart;
mod security;
mod server;
mod services;
mod shapes;
mod shared_reader;
mod support;
mod time_joins;

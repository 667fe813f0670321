//! Freshet's integration tests: one binary (see Cargo.toml `autotests = false`).

mod bad_input;
mod cli;
mod collector;
mod joins;
mod over;
mod oracle;
mod restart;
mod server;
mod services;
mod support;
mod time_joins;

//! The streaming engine: the micro-batch loop that drives sources, the operator graph and sinks
//! ([`query`]) with its latency histogram ([`latency`]), and lookup tables ([`lookup`]). Planning is
//! in [`crate::plan`], the operators in [`crate::operator`].

pub mod latency;
pub mod lookup;
pub mod query;
pub mod slot;

//! The streaming engine: planning continuous queries ([`plan`]), window state ([`window`]), and the
//! micro-batch loop that drives sources, DataFusion and sinks ([`query`]).

pub mod lookup;
pub mod plan;
pub mod query;
pub mod slot;
pub mod window;

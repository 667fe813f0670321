//! The streaming engine: the micro-batch loop that drives sources, the operator graph and sinks
//! ([`query`]), and lookup tables ([`lookup`]). Planning is in [`crate::plan`], the operators in
//! [`crate::operator`].

pub mod lookup;
pub mod query;
pub mod slot;

//! SQL: Freshet's statements on top of sqlparser, and the catalog they act on.

pub mod catalog;
pub mod depth;
pub mod parser;

//! Window joins and interval joins against batch oracles (to be written).

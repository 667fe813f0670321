//! Joins against batch oracles (to be written).

//! Top-N, deduplication and OVER aggregates against batch oracles (to be written).

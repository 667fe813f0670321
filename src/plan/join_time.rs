//! Planning rules for time-bounded stream–stream joins: window joins (both inputs windowed alike,
//! joined on `window_start` and `window_end`) and interval joins (one side's time attribute bounded
//! by the other's). [`super::join::plan_join`] tries these before falling back to a regular join.

use datafusion::logical_expr::Join;

use super::convert::Converter;
use crate::error::Result;

/// A window join of the converted inputs `left` and `right`, if `join` is one.
pub fn try_window_join(_conv: &mut Converter<'_>, _join: &Join, _left: usize, _right: usize) -> Result<Option<usize>> {
    Ok(None)
}

/// An interval join of the converted inputs `left` and `right`, if `join` is one.
pub fn try_interval_join(
    _conv: &mut Converter<'_>,
    _join: &Join,
    _left: usize,
    _right: usize,
) -> Result<Option<usize>> {
    Ok(None)
}

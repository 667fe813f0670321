//! Planning rules for `… OVER (…)`: Top-N and deduplication (`ROW_NUMBER() … WHERE rn <= N`), and
//! OVER aggregates.

use datafusion::logical_expr::{Filter, Window};

use super::convert::Converter;
use super::locate::Site;
use crate::error::Result;

/// A filter that makes a Top-N of a `ROW_NUMBER()` below it; `None` if it is a plain filter.
pub fn plan_filter(_conv: &mut Converter<'_>, _filter: &Filter) -> Result<Option<usize>> {
    Ok(None)
}

pub fn plan_window(conv: &mut Converter<'_>, _w: &Window) -> Result<usize> {
    Err(conv.locate.refuse(Site::Over, "OVER is not supported yet"))
}

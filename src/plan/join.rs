//! Planning rules for joins: lookup joins to bounded tables, window joins, interval joins and
//! regular stream–stream joins.

use datafusion::logical_expr::Join;

use super::convert::Converter;
use super::locate::Site;
use crate::error::Result;

pub fn plan_join(conv: &mut Converter<'_>, _join: &Join) -> Result<usize> {
    let n = conv.joins_seen;
    conv.joins_seen += 1;
    Err(conv.locate.refuse(Site::Join(n), "joins are not supported yet"))
}

//! The interactive SQL shell (filled in below).

use std::path::PathBuf;

use crate::engine::query::EngineConfig;
use crate::error::Result;

pub async fn run(_config: EngineConfig, _history: Option<PathBuf>) -> Result<()> {
    Ok(())
}

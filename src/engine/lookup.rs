//! Lookup tables (`CREATE TABLE … WITH (…)`) as DataFusion tables: read whole when a query starts,
//! and re-read when older than `refresh_interval_ms`, if set, so a long-running query sees profile or
//! catalog updates. The reload happens on the query's own thread, between micro-batches.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::Session;
use datafusion::datasource::TableProvider;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_plan::ExecutionPlan;

use crate::connector;
use crate::sql::parser::SourceDef;

#[derive(Debug)]
pub struct LookupTable {
    def: SourceDef,
    refresh: Option<Duration>,
    cache: Mutex<(Instant, Vec<RecordBatch>)>,
}

impl LookupTable {
    pub fn load(def: &SourceDef) -> crate::error::Result<Self> {
        let refresh = def
            .options
            .parse_opt::<u64>("refresh_interval_ms")?
            .map(Duration::from_millis);
        let rows = connector::load_table(def)?;
        Ok(LookupTable {
            def: def.clone(),
            refresh,
            cache: Mutex::new((Instant::now(), rows)),
        })
    }

    fn rows(&self) -> Result<Vec<RecordBatch>> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(every) = self.refresh
            && cache.0.elapsed() >= every
        {
            match connector::load_table(&self.def) {
                Ok(rows) => *cache = (Instant::now(), rows),
                // Keep serving the last good copy; try again after another interval.
                Err(e) => {
                    eprintln!(
                        "table '{}': refresh failed, keeping the previous rows: {e}",
                        self.def.name
                    );
                    cache.0 = Instant::now();
                }
            }
        }
        Ok(cache.1.clone())
    }
}

#[async_trait]
impl TableProvider for LookupTable {
    fn schema(&self) -> SchemaRef {
        self.def.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let rows = self.rows()?;
        MemorySourceConfig::try_new_exec(&[rows], self.def.schema.clone(), projection.cloned())
            .map(|e| e as Arc<dyn ExecutionPlan>)
            .map_err(|e| DataFusionError::Plan(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::parser::{Statement, parse_one};

    fn table(path: &std::path::Path, refresh: &str) -> LookupTable {
        let Ok(Statement::CreateSource(def)) = parse_one(&format!(
            "CREATE TABLE t (id BIGINT, name VARCHAR) WITH (connector = 'file', format = 'csv', path = '{}'{refresh})",
            path.display()
        )) else {
            panic!("parse")
        };
        LookupTable::load(&def).expect("load")
    }

    fn count(t: &LookupTable) -> usize {
        t.rows().expect("rows").iter().map(|b| b.num_rows()).sum()
    }

    #[test]
    fn refreshes_only_when_asked() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("t.csv");
        std::fs::write(&path, "id,name\n1,a\n").expect("write");
        let fixed = table(&path, "");
        let fresh = table(&path, ", refresh_interval_ms = '0'");
        std::fs::write(&path, "id,name\n1,a\n2,b\n").expect("write");
        assert_eq!(count(&fixed), 1, "without refresh_interval_ms the snapshot stays");
        assert_eq!(count(&fresh), 2, "with it the table is re-read");
    }
}

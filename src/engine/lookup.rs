//! Lookup tables (`CREATE TABLE … WITH (…)`) as DataFusion tables: read whole when a query starts,
//! and re-read when older than `refresh_interval_ms`, if set, so a long-running query sees profile or
//! catalog updates. The reload happens on the query's own thread, between micro-batches.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::datasource::TableProvider;
use datafusion::error::Result;
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_plan::ExecutionPlan;

use super::slot::SlotTable;
use crate::connector;
use crate::sql::parser::SourceDef;

/// A [`SlotTable`] holding the table's rows, refilled when they are older than `refresh`.
#[derive(Debug)]
pub struct LookupTable {
    def: SourceDef,
    refresh: Option<Duration>,
    loaded: Mutex<Instant>,
    rows: SlotTable,
}

impl LookupTable {
    pub fn load(def: &SourceDef) -> crate::error::Result<Self> {
        let refresh = def
            .options
            .parse_opt::<u64>("refresh_interval_ms")?
            .map(Duration::from_millis);
        let rows = SlotTable::new(def.schema.clone());
        rows.set(connector::load_table(def)?);
        Ok(LookupTable {
            def: def.clone(),
            refresh,
            loaded: Mutex::new(Instant::now()),
            rows,
        })
    }

    /// How often the table is re-read (`refresh_interval_ms`), if it is.
    pub fn refresh_interval(&self) -> Option<Duration> {
        self.refresh
    }

    /// Re-read the table if a refresh is due; a failed refresh keeps the previous rows.
    fn refresh_if_due(&self) {
        let Some(every) = self.refresh else { return };
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if loaded.elapsed() < every {
            return;
        }
        match connector::load_table(&self.def) {
            Ok(rows) => self.rows.set(rows),
            Err(e) => eprintln!(
                "table '{}': refresh failed, keeping the previous rows: {e}",
                self.def.name
            ),
        }
        *loaded = Instant::now();
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
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.refresh_if_due();
        self.rows.scan(state, projection, filters, limit).await
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
        t.refresh_if_due();
        t.rows.batches().iter().map(|b| b.num_rows()).sum()
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

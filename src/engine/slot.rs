//! A table whose contents are swapped between micro-batches, so that a continuous query is planned
//! once (logical plan cached) and each batch only re-runs physical planning and execution.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::Session;
use datafusion::datasource::TableProvider;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::Result;
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_plan::ExecutionPlan;

#[derive(Debug, Clone)]
pub struct SlotTable {
    schema: SchemaRef,
    batches: Arc<Mutex<Vec<RecordBatch>>>,
}

impl SlotTable {
    pub fn new(schema: SchemaRef) -> Self {
        SlotTable {
            schema,
            batches: Arc::new(Mutex::new(Vec::new())),
        }
    }

    pub fn set(&self, batches: Vec<RecordBatch>) {
        *self.batches.lock().unwrap_or_else(|p| p.into_inner()) = batches;
    }

    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// The rows currently in the slot.
    pub fn batches(&self) -> Vec<RecordBatch> {
        self.batches.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[async_trait]
impl TableProvider for SlotTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
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
        Ok(MemorySourceConfig::try_new_exec(
            &[self.batches()],
            self.schema.clone(),
            projection.cloned(),
        )?)
    }
}

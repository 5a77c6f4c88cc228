//! SQL tables whose scans of embedding columns go through reclag's fast list reader.
//!
//! DataFusion's Parquet scan assembles a `FixedSizeList<Float32>` from its repetition
//! and definition levels one value at a time, which made `SELECT count(*) ... WHERE
//! reclag_is_ood(...)` six times slower than `reclag score` on the same file. A
//! [`FastListTable`] wraps the [`ListingTable`] that `reclag sql` registers. A scan
//! that reads a float list column of a table without partition columns streams the
//! files through `io::read_ahead_each` instead. Every other scan (no list column, a
//! hive lake, `count(*)` answered from the footers) is the listing table's own, with its
//! pruning and statistics.

use std::fmt;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::listing::ListingTable;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};

use crate::fastlist::float_list;
use crate::io::ParquetFile;
use crate::store::Location;

/// A listing table whose float-list scans read through the fast reader.
#[derive(Debug)]
pub struct FastListTable {
    inner: Arc<ListingTable>,
    /// The table's files, all with one schema; `None` where the fast scan does not
    /// apply (partition columns, differing files, no float list column).
    files: Option<Vec<Location>>,
}

impl FastListTable {
    /// `files` are the table's files with their schemas; the fast scan is used only
    /// where every one has the table's columns, in order.
    pub fn new(inner: Arc<ListingTable>, files: Vec<(Location, SchemaRef)>) -> Self {
        let schema = inner.schema();
        let same = |f: &SchemaRef| {
            f.fields().len() == schema.fields().len()
                && f.fields()
                    .iter()
                    .zip(schema.fields())
                    .all(|(a, b)| a.name() == b.name())
        };
        let eligible = inner.options().table_partition_cols.is_empty()
            && !files.is_empty()
            && files.iter().all(|(_, s)| same(s))
            && schema
                .fields()
                .iter()
                .any(|f| float_list(f.data_type()).is_some());
        FastListTable {
            files: eligible.then(|| files.into_iter().map(|(l, _)| l).collect()),
            inner,
        }
    }

    /// Whether scans that read a float list column take the fast reader.
    pub fn fast(&self) -> bool {
        self.files.is_some()
    }
}

#[async_trait]
impl TableProvider for FastListTable {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    /// The listing table's answer, with `Exact` lowered to `Inexact`: a fast scan
    /// ignores the filters, so DataFusion must apply every one of them above it.
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(self
            .inner
            .supports_filters_pushdown(filters)?
            .into_iter()
            .map(|p| match p {
                TableProviderFilterPushDown::Exact => TableProviderFilterPushDown::Inexact,
                other => other,
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let schema = self.inner.schema();
        let columns: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..schema.fields().len()).collect(),
        };
        let lists = columns
            .iter()
            .any(|&c| float_list(schema.field(c).data_type()).is_some());
        let Some(files) = self.files.as_ref().filter(|_| lists) else {
            return self.inner.scan(state, projection, filters, limit).await;
        };
        let projected = Arc::new(schema.project(&columns)?);
        let stream = Arc::new(FastScan {
            files: files.clone(),
            columns,
            schema: projected.clone(),
        });
        Ok(Arc::new(StreamingTableExec::try_new(
            projected,
            vec![stream],
            None,
            vec![],
            false,
            limit,
        )?))
    }
}

/// One scan's stream: the files read in one reader chain on a thread of its own (the
/// decoding is CPU work, kept off tokio's threads), cast to the table's types.
struct FastScan {
    files: Vec<Location>,
    /// Table column indices, in the order the scan wants them.
    columns: Vec<usize>,
    schema: SchemaRef,
}

impl fmt::Debug for FastScan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FastScan")
            .field("files", &self.files.len())
            .field("columns", &self.columns)
            .finish()
    }
}

fn external(e: crate::error::Error) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

impl PartitionStream for FastScan {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let (tx, rx) = tokio::sync::mpsc::channel::<DfResult<RecordBatch>>(2);
        let (files, columns, schema) = (
            self.files.clone(),
            self.columns.clone(),
            self.schema.clone(),
        );
        std::thread::spawn(move || {
            // The reader hands columns in file order; `order[k]` is where the scan's
            // `k`-th column is among them.
            let mut sorted = columns.clone();
            sorted.sort_unstable();
            sorted.dedup();
            let order: Vec<usize> = columns
                .iter()
                .map(|c| sorted.binary_search(c).unwrap_or(0))
                .collect();
            let opened = match files
                .iter()
                .map(ParquetFile::open)
                .collect::<Result<Vec<_>, _>>()
            {
                Ok(f) => f,
                Err(e) => {
                    let _ = tx.blocking_send(Err(external(e)));
                    return;
                }
            };
            let each = opened.into_iter().map(|f| (f, None)).collect();
            crate::io::read_ahead_each(each, Some(&sorted), |_, b| {
                let b = b
                    .map_err(external)
                    .and_then(|b| conform(&schema, &order, &b));
                let stop = b.is_err();
                tx.blocking_send(b).is_ok() && !stop
            });
        });
        let batches =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), batches))
    }
}

/// `batch`'s columns in the scan's order, cast where the table declares another type
/// (DataFusion reads strings as `Utf8View`, for one).
fn conform(schema: &SchemaRef, order: &[usize], batch: &RecordBatch) -> DfResult<RecordBatch> {
    let mut cols = Vec::with_capacity(order.len());
    for (field, &at) in schema.fields().iter().zip(order) {
        let col = batch.column(at);
        cols.push(if col.data_type() == field.data_type() {
            col.clone()
        } else {
            datafusion::arrow::compute::cast(col, field.data_type())?
        });
    }
    Ok(RecordBatch::try_new(schema.clone(), cols)?)
}

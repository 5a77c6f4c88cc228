//! SQL tables whose scans of embedding columns go through reclag's fast list reader.
//!
//! DataFusion's Parquet scan assembles a `FixedSizeList<Float32>` from its repetition
//! and definition levels one value at a time, which made `SELECT count(*) ... WHERE
//! reclag_is_ood(...)` six times slower than `reclag score` on the same file. A
//! [`FastListTable`] wraps the [`ListingTable`] that `reclag sql` registers. A scan
//! that reads a float list column streams the files through `io::read_ahead_each`
//! instead. In a hive lake the listing table still picks the files: it prunes the
//! partitions the query's filters rule out, and each file's partition values are
//! appended to its rows. Every other scan (no list column, `count(*)` answered from the
//! footers) is the listing table's own, with its pruning and statistics.

use std::fmt;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::listing::ListingTable;
use datafusion::datasource::listing::helpers::expr_applicable_for_cols;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};

use crate::io::ParquetFile;
use crate::store::Location;
use reclag_parquet::float_list;

/// A listing table whose float-list scans read through the fast reader.
#[derive(Debug)]
pub struct FastListTable {
    inner: Arc<ListingTable>,
    /// The table's files, all with the table's file columns; `None` where the fast
    /// scan does not apply (differing files, no float list column).
    files: Option<Vec<Location>>,
}

impl FastListTable {
    /// `files` are the table's files with their schemas; the fast scan is used only
    /// where every one has the table's file columns (those before the partition
    /// columns), in order.
    pub fn new(inner: Arc<ListingTable>, files: Vec<(Location, SchemaRef)>) -> Self {
        let schema = inner.schema();
        let file_columns = file_columns(&inner);
        let same = |f: &SchemaRef| {
            f.fields().len() == file_columns
                && f.fields()
                    .iter()
                    .zip(schema.fields())
                    .all(|(a, b)| a.name() == b.name())
        };
        let eligible = !files.is_empty()
            && files.iter().all(|(_, s)| same(s))
            && schema.fields()[..file_columns]
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

    /// How many of the table's columns come from the files (the partition columns
    /// follow).
    pub fn file_columns(&self) -> usize {
        file_columns(&self.inner)
    }

    /// Every file with its partition values, as the listing table lists them; `None`
    /// where the fast scan does not apply or the listing has a file not checked when
    /// the table was registered.
    pub async fn files(
        &self,
        state: &dyn Session,
    ) -> DfResult<Option<Vec<(Location, Vec<ScalarValue>)>>> {
        match &self.files {
            Some(files) => self.scan_files(state, files, &[]).await,
            None => Ok(None),
        }
    }

    /// The files a scan reads, each with its partition values (in the order of the
    /// table's partition columns). Without partition columns, every file; in a hive
    /// lake, the files of the partitions `filters` leave, as the listing table lists
    /// them for its own scan. `None` if it lists a file whose columns were not checked
    /// when the table was registered (one written since): the listing table's scan
    /// reconciles such a file's schema, the fast reader does not.
    async fn scan_files(
        &self,
        state: &dyn Session,
        files: &[Location],
        filters: &[Expr],
    ) -> DfResult<Option<Vec<(Location, Vec<ScalarValue>)>>> {
        if self.inner.options().table_partition_cols.is_empty() {
            return Ok(Some(
                files.iter().map(|f| (f.clone(), Vec::new())).collect(),
            ));
        }
        // Only filters on partition columns alone prune partitions; the listing
        // table's scan hands over just those, and so must this one.
        let names: Vec<&str> = self
            .inner
            .options()
            .table_partition_cols
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        let pruning: Vec<Expr> = filters
            .iter()
            .filter(|f| expr_applicable_for_cols(&names, f))
            .cloned()
            .collect();
        let listed = self
            .inner
            .list_files_for_scan(state, &pruning, None)
            .await?;
        let known: std::collections::HashSet<&object_store::path::Path> =
            files.iter().map(|f| &f.key).collect();
        let root = &files[0];
        Ok(listed
            .file_groups
            .iter()
            .flat_map(|g| g.iter())
            .map(|f| {
                known.contains(&f.object_meta.location).then(|| {
                    (
                        root.child(f.object_meta.location.clone())
                            .with_size(f.object_meta.size),
                        f.partition_values.clone(),
                    )
                })
            })
            .collect())
    }
}

/// One file of a table, as its footer describes it.
pub struct Footer {
    pub loc: Location,
    pub schema: SchemaRef,
    /// Rows in each row group.
    pub row_groups: Vec<u64>,
}

/// The files of `specs` (files, prefixes, globs or lakes) with their footers, read on
/// a blocking thread: listing and footer reads wait on the network for an object store.
pub async fn footers(
    stores: &Arc<crate::store::Stores>,
    specs: &[String],
) -> crate::error::Result<Vec<Footer>> {
    let (stores, owned) = (stores.clone(), specs.to_vec());
    tokio::task::spawn_blocking(move || {
        crate::io::expand_inputs(&stores, &owned)?
            .into_iter()
            .map(|loc| {
                let f = ParquetFile::open(&loc)?;
                let row_groups = f
                    .metadata()
                    .map(|(m, _)| {
                        m.row_groups()
                            .iter()
                            .map(|g| g.num_rows().max(0) as u64)
                            .collect()
                    })
                    .unwrap_or_default();
                Ok(Footer {
                    schema: f.schema.clone(),
                    loc,
                    row_groups,
                })
            })
            .collect()
    })
    .await
    .map_err(|e| {
        crate::error::Error::Usage(format!("reading the footers of {}: {e}", specs.join(", ")))
    })?
}

/// How many of the table's columns come from the files (the partition columns follow).
fn file_columns(table: &ListingTable) -> usize {
    table.schema().fields().len() - table.options().table_partition_cols.len()
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
        let Some(files) = self.scan_files(state, files, filters).await? else {
            return self.inner.scan(state, projection, filters, limit).await;
        };
        let projected = Arc::new(schema.project(&columns)?);
        let stream = Arc::new(FastScan {
            files,
            file_columns: file_columns(&self.inner),
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

/// One scan's stream: the files read by [`scan_stream`].
struct FastScan {
    /// Each file with its partition values.
    files: Vec<(Location, Vec<ScalarValue>)>,
    /// Table columns below this index are the files'; the rest are partition columns.
    file_columns: usize,
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

pub(crate) fn external(e: crate::error::Error) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

impl PartitionStream for FastScan {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let units = self
            .files
            .iter()
            .map(|(loc, partition)| ScanUnit {
                loc: loc.clone(),
                partition: partition.clone(),
                row_groups: None,
            })
            .collect();
        scan_stream(
            units,
            self.file_columns,
            self.columns.clone(),
            self.schema.clone(),
        )
    }
}

/// One file (or some of its row groups) of a fast scan, with its partition values.
#[derive(Clone, Debug)]
pub struct ScanUnit {
    pub loc: Location,
    /// In the order of the table's partition columns.
    pub partition: Vec<ScalarValue>,
    /// Read only these row groups (every one when `None`).
    pub row_groups: Option<Vec<usize>>,
}

/// Streams `units` through the fast reader in one reader chain on a thread of its own
/// (the decoding is CPU work, kept off tokio's threads), each batch in the order of
/// `columns` (table column indices; those from `file_columns` on are partition
/// columns) and cast to `schema`'s types. A local scan and a cluster executor's scan
/// both run this.
pub fn scan_stream(
    units: Vec<ScanUnit>,
    file_columns: usize,
    columns: Vec<usize>,
    schema: SchemaRef,
) -> SendableRecordBatchStream {
    let (tx, rx) = tokio::sync::mpsc::channel::<DfResult<RecordBatch>>(2);
    let conformed = schema.clone();
    std::thread::spawn(move || {
        // The reader hands the file columns in file order; each of the scan's
        // columns is one of those or a partition value.
        let mut sorted: Vec<usize> = columns
            .iter()
            .copied()
            .filter(|&c| c < file_columns)
            .collect();
        sorted.sort_unstable();
        sorted.dedup();
        let order: Vec<Source> = columns
            .iter()
            .map(|&c| match sorted.binary_search(&c) {
                Ok(at) => Source::File(at),
                Err(_) => Source::Partition(c - file_columns),
            })
            .collect();
        let opened = match units
            .iter()
            .map(|u| {
                let f = ParquetFile::open(&u.loc)?;
                Ok(match &u.row_groups {
                    Some(rg) => f.with_row_groups(rg.clone()),
                    None => f,
                })
            })
            .collect::<crate::error::Result<Vec<_>>>()
        {
            Ok(f) => f,
            Err(e) => {
                let _ = tx.blocking_send(Err(external(e)));
                return;
            }
        };
        let each = opened.into_iter().map(|f| (f, None)).collect();
        crate::io::read_ahead_each(each, Some(&sorted), |i, b| {
            let b = b
                .map_err(external)
                .and_then(|b| conform(&conformed, &order, &units[i].partition, &b.into_rows()));
            let stop = b.is_err();
            tx.blocking_send(b).is_ok() && !stop
        });
    });
    let batches =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
    Box::pin(RecordBatchStreamAdapter::new(schema, batches))
}

/// Where a scanned column comes from.
#[derive(Clone, Copy)]
enum Source {
    /// The reader's batch, at this index.
    File(usize),
    /// The file's partition value, for this partition column.
    Partition(usize),
}

/// `batch`'s columns in the scan's order, with the file's partition values repeated
/// down its rows, cast where the table declares another type (DataFusion reads strings
/// as `Utf8View`, for one).
fn conform(
    schema: &SchemaRef,
    order: &[Source],
    partition: &[ScalarValue],
    batch: &RecordBatch,
) -> DfResult<RecordBatch> {
    let mut cols = Vec::with_capacity(order.len());
    for (field, &source) in schema.fields().iter().zip(order) {
        let col = match source {
            Source::File(at) => batch.column(at).clone(),
            Source::Partition(k) => partition
                .get(k)
                .ok_or_else(|| {
                    DataFusionError::Internal(format!(
                        "no value of partition column '{}' for a listed file",
                        field.name()
                    ))
                })?
                .to_array_of_size(batch.num_rows())?,
        };
        cols.push(if col.data_type() == field.data_type() {
            col
        } else {
            datafusion::arrow::compute::cast(&col, field.data_type())?
        });
    }
    let options = arrow_array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    Ok(RecordBatch::try_new_with_options(
        schema.clone(),
        cols,
        &options,
    )?)
}

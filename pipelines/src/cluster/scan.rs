//! Tables as a cluster query ships them: the exact files the client listed, scanned on
//! the executors by the fast list reader.
//!
//! DataFusion's own codec writes a listing table as its URL, without its glob, and an
//! executor then scans with DataFusion's Parquet reader, about five times slower on
//! embedding columns. A [`ShippedTable`] instead carries its file list (each file with
//! its partition values and row-group sizes), so a glob reads the files it matched and
//! nothing else, whatever the prefix holds by the time the query runs. Its scan is a
//! [`FastScanExec`], which the cluster codec encodes (file list, projection, row-group
//! ranges per partition) and executors decode and run with `scan_stream`, the local
//! fast scan's reader.

use std::fmt;
use std::io::Cursor;
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, RecordBatch, cast::AsArray};
use arrow_schema::{DataType, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema, ScalarValue};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::listing::helpers::expr_applicable_for_cols;
use datafusion::datasource::physical_plan::{
    FileGroup, FileOpenFuture, FileOpener, FileScanConfig, FileScanConfigBuilder, FileSource,
};
use datafusion::datasource::projection::{ProjectionOpener, SplitProjection};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Column as PhysicalColumn;
use datafusion::physical_expr::projection::ProjectionExprs;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use futures::StreamExt;
use object_store::ObjectStore;
use serde::{Deserialize, Serialize};

use crate::ops::sql::table::{ScanUnit, scan_stream};
use crate::store::{Location, Stores};

/// One file of a shipped table.
#[derive(Clone, Debug)]
pub struct ShippedFile {
    pub loc: Location,
    /// In the order of the table's partition columns.
    pub partition: Vec<ScalarValue>,
    /// Rows in each row group, from the footer the client read.
    pub row_groups: Vec<u64>,
}

/// A table whose scans read exactly its files through the fast list reader, wherever
/// the plan runs.
#[derive(Debug)]
pub struct ShippedTable {
    schema: SchemaRef,
    /// Columns below this index come from the files; the rest are partition columns.
    file_columns: usize,
    files: Vec<ShippedFile>,
    /// Where a scan's files are read from (the planning process's stores).
    stores: Arc<Stores>,
}

impl ShippedTable {
    /// `files` must all have the table's file columns, in order (the client checks).
    pub fn new(
        schema: SchemaRef,
        file_columns: usize,
        files: Vec<ShippedFile>,
        stores: Arc<Stores>,
    ) -> Self {
        ShippedTable {
            schema,
            file_columns,
            files,
            stores,
        }
    }

    fn partition_names(&self) -> Vec<&str> {
        self.schema.fields()[self.file_columns..]
            .iter()
            .map(|f| f.name().as_str())
            .collect()
    }

    /// The files whose partition values pass every filter on partition columns alone
    /// (a hive lake's `WHERE day = '2026-12-01'` reads one directory).
    fn prune(&self, state: &dyn Session, filters: &[Expr]) -> DfResult<Vec<ShippedFile>> {
        let names = self.partition_names();
        let pruning: Vec<&Expr> = filters
            .iter()
            .filter(|f| !names.is_empty() && expr_applicable_for_cols(&names, f))
            .collect();
        if pruning.is_empty() || self.files.is_empty() {
            return Ok(self.files.clone());
        }
        let schema = Arc::new(
            self.schema
                .project(&(self.file_columns..self.schema.fields().len()).collect::<Vec<_>>())?,
        );
        let columns = (0..names.len())
            .map(|k| ScalarValue::iter_to_array(self.files.iter().map(|f| f.partition[k].clone())))
            .collect::<DfResult<Vec<ArrayRef>>>()?;
        let batch = RecordBatch::try_new(schema.clone(), columns)?;
        let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
        let mut keep = vec![true; self.files.len()];
        for filter in pruning {
            // The filters name columns with the table's qualifier; the batch has none.
            let bare = filter
                .clone()
                .transform(|e| {
                    Ok(match e {
                        Expr::Column(c) => {
                            Transformed::yes(Expr::Column(Column::new_unqualified(c.name)))
                        }
                        other => Transformed::no(other),
                    })
                })?
                .data;
            let expr = state.create_physical_expr(bare, &df_schema)?;
            let mask = expr.evaluate(&batch)?.into_array(batch.num_rows())?;
            let Some(mask) = mask.as_boolean_opt() else {
                continue;
            };
            for (k, keep) in keep.iter_mut().enumerate() {
                *keep &= mask.is_valid(k) && mask.value(k);
            }
        }
        Ok(self
            .files
            .iter()
            .zip(keep)
            .filter(|(_, k)| *k)
            .map(|(f, _)| f.clone())
            .collect())
    }
}

/// One partition of a scan: `(index into the files, row groups to read)`.
type Part = Vec<(usize, Vec<usize>)>;

/// Splits `files` into at most `n` partitions of consecutive row groups with about
/// the same number of rows each, so every executor core gets a share of a lake of few
/// large files as well as of many small ones.
fn split(files: &[ShippedFile], n: usize) -> Vec<Part> {
    let total: u64 = files.iter().flat_map(|f| &f.row_groups).sum();
    let groups: usize = files.iter().map(|f| f.row_groups.len()).sum();
    let n = n.clamp(1, groups.max(1));
    let per = total.div_ceil(n as u64).max(1);
    let mut parts: Vec<Part> = vec![Vec::new()];
    let mut rows = 0u64;
    for (i, f) in files.iter().enumerate() {
        for (g, &r) in f.row_groups.iter().enumerate() {
            if rows >= per && parts.len() < n {
                parts.push(Vec::new());
                rows = 0;
            }
            let part = parts.last_mut().expect("one partition at least");
            match part.last_mut() {
                Some((file, gs)) if *file == i => gs.push(g),
                _ => part.push((i, vec![g])),
            }
            rows += r;
        }
    }
    parts
}

#[async_trait]
impl TableProvider for ShippedTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// Partition filters prune files, but the scan does not apply them to rows:
    /// DataFusion keeps every filter above it.
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let columns: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        let files = self.prune(state, filters)?;
        let parts = split(&files, state.config().target_partitions());
        let ids: Vec<usize> = (0..parts.len()).collect();
        fast_scan(
            &self.schema,
            self.file_columns,
            &columns,
            &files,
            &parts,
            &ids,
            self.stores.clone(),
        )
    }
}

/// A file's row groups to read, attached to its `PartitionedFile`, with the index of
/// the partition it belongs to in the whole scan: Ballista hands each task a slice of
/// the partitions, re-indexed from 0, and a writer names its output after this one.
#[derive(Clone, Debug)]
struct RowGroups(Vec<usize>, usize);

/// The index in the whole scan of partition `partition` of a fast scan (`None` for
/// another plan, or a partition without files).
pub fn part_id(plan: &dyn ExecutionPlan, partition: usize) -> Option<usize> {
    let exec = (plan as &dyn std::any::Any).downcast_ref::<DataSourceExec>()?;
    let config =
        (exec.data_source().as_ref() as &dyn std::any::Any).downcast_ref::<FileScanConfig>()?;
    config
        .file_groups
        .get(partition)?
        .iter()
        .next()?
        .extension::<RowGroups>()
        .map(|r| r.1)
}

/// The fast list reader as a DataFusion file source. A scan is a `DataSourceExec`
/// whose file groups are the partitions of [`split`], each file carrying its
/// row-group range: the shape Ballista's scheduler knows how to hand out, a slice of
/// file groups per task (a scan node of our own would be run whole by every task).
#[derive(Clone)]
pub struct FastListSource {
    table_schema: TableSchema,
    projection: SplitProjection,
    stores: Arc<Stores>,
    metrics: ExecutionPlanMetricsSet,
}

impl FastListSource {
    /// `schema`: the table's; columns from `file_columns` on are partition columns.
    pub fn new(schema: &SchemaRef, file_columns: usize, stores: Arc<Stores>) -> Self {
        let file_schema = Arc::new(Schema::new_with_metadata(
            schema.fields()[..file_columns].to_vec(),
            schema.metadata().clone(),
        ));
        let table_schema = TableSchema::builder(file_schema)
            .with_table_partition_cols(schema.fields()[file_columns..].to_vec())
            .build();
        FastListSource {
            projection: SplitProjection::unprojected(&table_schema),
            table_schema,
            stores,
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    /// The table columns the scan outputs, if it outputs columns unchanged.
    fn column_indices(&self) -> Option<Vec<usize>> {
        let schema = self.table_schema.table_schema();
        self.projection
            .source
            .iter()
            .map(|p| {
                let c = p.expr.downcast_ref::<PhysicalColumn>()?;
                (schema.field(c.index()).name() == &p.alias).then_some(c.index())
            })
            .collect()
    }
}

impl fmt::Debug for FastListSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FastListSource")
            .field("columns", &self.column_indices())
            .finish()
    }
}

impl FileSource for FastListSource {
    fn create_file_opener(
        &self,
        _object_store: Arc<dyn ObjectStore>,
        base_config: &FileScanConfig,
        _partition: usize,
    ) -> DfResult<Arc<dyn FileOpener>> {
        let opener = Arc::new(FastListOpener {
            stores: self.stores.clone(),
            base: base_config.object_store_url.as_str().to_string(),
            columns: self.projection.file_indices.clone(),
            schema: Arc::new(
                self.table_schema
                    .file_schema()
                    .project(&self.projection.file_indices)?,
            ),
        });
        ProjectionOpener::try_new(
            self.projection.clone(),
            opener,
            self.table_schema.file_schema(),
        )
    }

    fn table_schema(&self) -> &TableSchema {
        &self.table_schema
    }

    fn with_batch_size(&self, _batch_size: usize) -> Arc<dyn FileSource> {
        Arc::new(self.clone())
    }

    fn metrics(&self) -> &ExecutionPlanMetricsSet {
        &self.metrics
    }

    fn file_type(&self) -> &str {
        "reclag_fast_list"
    }

    /// The partitions are row-group ranges of equal rows already; DataFusion's byte
    /// ranges would cut row groups.
    fn supports_repartitioning(&self) -> bool {
        false
    }

    /// Column selections only, so a shipped scan is its file groups and column
    /// indices; expressions stay in the plan above it.
    fn try_pushdown_projection(
        &self,
        projection: &ProjectionExprs,
    ) -> DfResult<Option<Arc<dyn FileSource>>> {
        let mut source = self.clone();
        source.projection = SplitProjection::new(
            self.table_schema.file_schema(),
            &source.projection.source.try_merge(projection)?,
        );
        Ok(source
            .column_indices()
            .is_some()
            .then(|| Arc::new(source) as Arc<dyn FileSource>))
    }

    fn projection(&self) -> Option<&ProjectionExprs> {
        Some(&self.projection.source)
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        datafusion::physical_plan::apply_expression_roots(self.projection.source.iter(), f)
    }
}

/// Opens one file of a fast scan: its row groups through the fast reader on a thread
/// of its own, the file columns in `columns` order.
struct FastListOpener {
    stores: Arc<Stores>,
    /// The store's base URL (`file:///`, `s3://bucket/`); files are keys below it.
    base: String,
    columns: Vec<usize>,
    schema: SchemaRef,
}

impl FileOpener for FastListOpener {
    fn open(&self, file: PartitionedFile) -> DfResult<FileOpenFuture> {
        let url = format!("{}{}", self.base, file.object_meta.location);
        let mut loc = self
            .stores
            .locate(&url)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        loc.size = Some(file.object_meta.size);
        let row_groups = file.extension::<RowGroups>().map(|r| r.0.clone());
        // The executor's log: which process read what (a cluster's operators, and
        // its tests, tell from this that the scans ran on the executors).
        eprintln!(
            "reclag: fast scan of {url} ({})",
            match &row_groups {
                Some(g) => format!("row groups {g:?}"),
                None => "every row group".to_string(),
            }
        );
        let unit = ScanUnit {
            loc,
            partition: vec![],
            row_groups,
        };
        // `scan_stream` reads file columns in the order asked; with no partition
        // columns in play here (ProjectionOpener adds them) the indices are the
        // file's.
        let stream = scan_stream(
            vec![unit],
            usize::MAX,
            self.columns.clone(),
            self.schema.clone(),
        );
        Ok(Box::pin(async move { Ok(stream.boxed()) }))
    }
}

/// The scan of `files` as `parts` (numbered `ids` in the whole scan), projected to
/// `columns` of `schema`.
fn fast_scan(
    schema: &SchemaRef,
    file_columns: usize,
    columns: &[usize],
    files: &[ShippedFile],
    parts: &[Part],
    ids: &[usize],
    stores: Arc<Stores>,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    let base = match files.first() {
        Some(f) => f.loc.base.as_str().to_string(),
        None => "file:///".to_string(),
    };
    let groups: Vec<FileGroup> = parts
        .iter()
        .zip(ids)
        .map(|(part, &id)| {
            FileGroup::new(
                part.iter()
                    .map(|(i, groups)| {
                        let f = &files[*i];
                        PartitionedFile::new(f.loc.key.to_string(), f.loc.size.unwrap_or_default())
                            .with_partition_values(f.partition.clone())
                            .with_extension(RowGroups(groups.clone(), id))
                    })
                    .collect(),
            )
        })
        .collect();
    let source = Arc::new(FastListSource::new(schema, file_columns, stores));
    let config = FileScanConfigBuilder::new(ObjectStoreUrl::parse(&base)?, source)
        .with_file_groups(groups)
        .with_projection_indices(Some(columns.to_vec()))?
        .build();
    Ok(DataSourceExec::from_data_source(config))
}

/// Bytes of a table or scan: a magic tag, the table's Arrow schema as an IPC stream
/// head (length-prefixed), then the rest as JSON.
const TABLE_TAG: &[u8] = b"reclag-shipped-table/1\n";
const SCAN_TAG: &[u8] = b"reclag-fast-scan/1\n";

#[derive(Serialize, Deserialize)]
struct FileJson {
    url: String,
    size: Option<u64>,
    /// Partition values as text (`None`: null), parsed back with the column's type.
    partition: Vec<Option<String>>,
    row_groups: Vec<u64>,
}

#[derive(Serialize, Deserialize)]
struct Body {
    file_columns: usize,
    files: Vec<FileJson>,
    /// A scan's projection and partitions; absent for a table.
    columns: Option<Vec<usize>>,
    parts: Option<Vec<Part>>,
    /// Each part's index in the whole scan (absent: 0, 1, ...).
    #[serde(default)]
    part_ids: Option<Vec<usize>>,
}

fn bad(what: impl fmt::Display) -> DataFusionError {
    DataFusionError::Plan(format!("serialized plan: a reclag table or scan: {what}"))
}

fn encode(tag: &[u8], schema: &SchemaRef, body: &Body, buf: &mut Vec<u8>) -> DfResult<()> {
    let mut head = Vec::new();
    {
        let mut w = arrow_ipc::writer::StreamWriter::try_new(&mut head, schema)?;
        w.finish()?;
    }
    buf.extend_from_slice(tag);
    buf.extend_from_slice(&(head.len() as u64).to_le_bytes());
    buf.extend_from_slice(&head);
    serde_json::to_writer(buf, body).map_err(bad)
}

fn decode(tag: &[u8], buf: &[u8]) -> Option<DfResult<(SchemaRef, Body)>> {
    let rest = buf.strip_prefix(tag)?;
    Some((|| {
        let (len, rest) = rest
            .split_first_chunk::<8>()
            .ok_or_else(|| bad("truncated before the schema"))?;
        let len = usize::try_from(u64::from_le_bytes(*len)).map_err(bad)?;
        if rest.len() < len {
            return Err(bad("truncated inside the schema"));
        }
        let (head, json) = rest.split_at(len);
        let schema = arrow_ipc::reader::StreamReader::try_new(Cursor::new(head), None)?.schema();
        let body: Body = serde_json::from_slice(json).map_err(bad)?;
        Ok((schema, body))
    })())
}

/// Partition values as text, `None` for null; [`files_from_json`] parses them back
/// with the columns' types.
fn partition_text(values: &[ScalarValue]) -> Vec<Option<String>> {
    values
        .iter()
        .map(|v| (!v.is_null()).then(|| v.to_string()))
        .collect()
}

fn files_json(files: &[ShippedFile]) -> Vec<FileJson> {
    files
        .iter()
        .map(|f| FileJson {
            url: f.loc.url(),
            size: f.loc.size,
            partition: partition_text(&f.partition),
            row_groups: f.row_groups.clone(),
        })
        .collect()
}

fn files_from_json(
    schema: &SchemaRef,
    file_columns: usize,
    files: Vec<FileJson>,
    stores: &Stores,
) -> DfResult<Vec<ShippedFile>> {
    let types: Vec<&DataType> = schema.fields()[file_columns.min(schema.fields().len())..]
        .iter()
        .map(|f| f.data_type())
        .collect();
    files
        .into_iter()
        .map(|f| {
            let mut loc = stores
                .locate(&f.url)
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
            loc.size = f.size;
            if f.partition.len() != types.len() {
                return Err(bad(format!(
                    "{} has {} partition values, expected {}",
                    f.url,
                    f.partition.len(),
                    types.len()
                )));
            }
            let partition = f
                .partition
                .into_iter()
                .zip(&types)
                .map(|(v, t)| match v {
                    Some(v) => ScalarValue::try_from_string(v, t),
                    None => ScalarValue::try_from(*t),
                })
                .collect::<DfResult<Vec<_>>>()?;
            Ok(ShippedFile {
                loc,
                partition,
                row_groups: f.row_groups,
            })
        })
        .collect()
}

/// Encodes a [`ShippedTable`]; `None` for another provider.
pub fn encode_table(table: &dyn TableProvider, buf: &mut Vec<u8>) -> Option<DfResult<()>> {
    let t = (table as &dyn std::any::Any).downcast_ref::<ShippedTable>()?;
    let body = Body {
        file_columns: t.file_columns,
        files: files_json(&t.files),
        columns: None,
        parts: None,
        part_ids: None,
    };
    Some(encode(TABLE_TAG, &t.schema, &body, buf))
}

/// Decodes what [`encode_table`] wrote; `None` for other bytes.
pub fn decode_table(buf: &[u8], stores: &Arc<Stores>) -> Option<DfResult<Arc<dyn TableProvider>>> {
    let decoded = decode(TABLE_TAG, buf)?;
    Some(decoded.and_then(|(schema, body)| {
        if body.file_columns > schema.fields().len() {
            return Err(bad("more file columns than the schema has"));
        }
        let files = files_from_json(&schema, body.file_columns, body.files, stores)?;
        Ok(Arc::new(ShippedTable::new(
            schema,
            body.file_columns,
            files,
            stores.clone(),
        )) as _)
    }))
}

/// Encodes a fast scan (a `DataSourceExec` over a [`FastListSource`]); `None` for
/// another node.
pub fn encode_scan(node: &Arc<dyn ExecutionPlan>, buf: &mut Vec<u8>) -> Option<DfResult<()>> {
    let exec = node.downcast_ref::<DataSourceExec>()?;
    let config =
        (exec.data_source().as_ref() as &dyn std::any::Any).downcast_ref::<FileScanConfig>()?;
    let source =
        (config.file_source().as_ref() as &dyn std::any::Any).downcast_ref::<FastListSource>()?;
    Some((|| {
        let columns = source
            .column_indices()
            .ok_or_else(|| bad("a projection other than a column selection"))?;
        let schema = source.table_schema.table_schema().clone();
        let file_columns = source.table_schema.file_schema().fields().len();
        let base = config.object_store_url.as_str();
        let mut files = Vec::new();
        let mut parts = Vec::new();
        let mut ids = Vec::new();
        for (n, group) in config.file_groups.iter().enumerate() {
            let mut part = Vec::new();
            let mut id = n;
            for f in group.iter() {
                let r = f
                    .extension::<RowGroups>()
                    .ok_or_else(|| bad("a file without its row groups"))?;
                id = r.1;
                part.push((files.len(), r.0.clone()));
                files.push(FileJson {
                    url: format!("{base}{}", f.object_meta.location),
                    size: Some(f.object_meta.size),
                    partition: partition_text(&f.partition_values),
                    row_groups: vec![],
                });
            }
            parts.push(part);
            ids.push(id);
        }
        let body = Body {
            file_columns,
            files,
            columns: Some(columns),
            parts: Some(parts),
            part_ids: Some(ids),
        };
        encode(SCAN_TAG, &schema, &body, buf)
    })())
}

/// Decodes what [`encode_scan`] wrote; `None` for other bytes.
pub fn decode_scan(buf: &[u8], stores: &Arc<Stores>) -> Option<DfResult<Arc<dyn ExecutionPlan>>> {
    let decoded = decode(SCAN_TAG, buf)?;
    Some(decoded.and_then(|(schema, body)| {
        let n = schema.fields().len();
        let (Some(columns), Some(parts)) = (body.columns, body.parts) else {
            return Err(bad("a scan without its projection or partitions"));
        };
        if body.file_columns > n || columns.iter().any(|&c| c >= n) {
            return Err(bad(format!("a column index beyond the {n} columns")));
        }
        let files = files_from_json(&schema, body.file_columns, body.files, stores)?;
        if parts.iter().flatten().any(|(i, _)| *i >= files.len()) {
            return Err(bad("a partition names a file beyond the file list"));
        }
        let ids = body.part_ids.unwrap_or_else(|| (0..parts.len()).collect());
        if ids.len() != parts.len() {
            return Err(bad(format!(
                "{} partition ids for {} partitions",
                ids.len(),
                parts.len()
            )));
        }
        fast_scan(
            &schema,
            body.file_columns,
            &columns,
            &files,
            &parts,
            &ids,
            stores.clone(),
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(rows: &[u64]) -> ShippedFile {
        let stores = Stores::default();
        ShippedFile {
            loc: stores.locate("/tmp/x.parquet").unwrap(),
            partition: vec![],
            row_groups: rows.to_vec(),
        }
    }

    /// Partitions cover every row group once, in order, and balance rows.
    #[test]
    fn split_covers_every_row_group_once_in_balanced_parts() {
        let files = vec![file(&[100, 100, 100]), file(&[50]), file(&[100, 100, 50])];
        for n in 1..=9 {
            let parts = split(&files, n);
            assert!(
                !parts.is_empty() && parts.len() <= n.min(7),
                "{n}: {parts:?}"
            );
            let flat: Vec<(usize, usize)> = parts
                .iter()
                .flatten()
                .flat_map(|(i, gs)| gs.iter().map(move |g| (*i, *g)))
                .collect();
            let want: Vec<(usize, usize)> = files
                .iter()
                .enumerate()
                .flat_map(|(i, f)| (0..f.row_groups.len()).map(move |g| (i, g)))
                .collect();
            assert_eq!(flat, want, "{n}");
        }
        let files = &files;
        let rows = |p: &Part| -> u64 {
            p.iter()
                .flat_map(|(i, gs)| gs.iter().map(move |g| files[*i].row_groups[*g]))
                .sum()
        };
        let parts = split(files, 3);
        assert_eq!(parts.len(), 3);
        assert_eq!(
            parts.iter().map(rows).collect::<Vec<_>>(),
            vec![200, 250, 150]
        );
        assert_eq!(
            split(&[], 4),
            vec![Vec::new()],
            "no files: one empty partition"
        );
    }

    /// A shipped table and a fast scan decode to what was encoded (files, sizes,
    /// partition values by type, row groups, projection); damaged bytes fail with what
    /// is wrong, never a panic; foreign bytes are left to the next codec.
    #[test]
    fn tables_and_scans_round_trip_and_damage_is_an_error() {
        use arrow_schema::{DataType, Field};
        let stores = Arc::new(Stores::default());
        let schema = Arc::new(Schema::new(vec![
            Field::new("embedding", DataType::Float32, true),
            Field::new("day", DataType::Utf8, true),
            Field::new("hour", DataType::Int32, true),
        ]));
        let files: Vec<ShippedFile> = [
            ("/lake/a.parquet", 10, "2026-12-01", Some(3)),
            ("/lake/b.parquet", 20, "2026-12-02", None),
        ]
        .into_iter()
        .map(|(p, size, day, hour)| ShippedFile {
            loc: stores.locate(p).unwrap().with_size(size),
            partition: vec![ScalarValue::from(day), ScalarValue::Int32(hour)],
            row_groups: vec![5, 7],
        })
        .collect();
        let table = ShippedTable::new(schema.clone(), 1, files.clone(), stores.clone());
        let mut buf = Vec::new();
        encode_table(&table, &mut buf).unwrap().unwrap();
        let back = decode_table(&buf, &stores).unwrap().unwrap();
        let back = (back.as_ref() as &dyn std::any::Any)
            .downcast_ref::<ShippedTable>()
            .unwrap();
        assert_eq!(back.schema, schema);
        assert_eq!(back.file_columns, 1);
        for (a, b) in back.files.iter().zip(&files) {
            assert_eq!(
                (a.loc.url(), a.loc.size, &a.partition, &a.row_groups),
                (b.loc.url(), b.loc.size, &b.partition, &b.row_groups)
            );
        }

        let parts = split(&files, 3);
        // Numbered as a task's slice of a larger scan would be.
        let ids: Vec<usize> = (0..parts.len()).map(|i| 7 + 2 * i).collect();
        let scan = fast_scan(&schema, 1, &[2, 0], &files, &parts, &ids, stores.clone()).unwrap();
        let mut sbuf = Vec::new();
        encode_scan(&scan, &mut sbuf).unwrap().unwrap();
        let again = decode_scan(&sbuf, &stores).unwrap().unwrap();
        let mut again_buf = Vec::new();
        encode_scan(&again, &mut again_buf).unwrap().unwrap();
        assert_eq!(again_buf, sbuf, "a decoded scan encodes to the same bytes");
        assert_eq!(again.schema().field(0).name(), "hour");
        assert_eq!(
            again.properties().output_partitioning().partition_count(),
            parts.len()
        );
        for (p, id) in ids.iter().enumerate() {
            assert_eq!(part_id(again.as_ref(), p), Some(*id), "partition {p}");
        }

        for (bytes, want) in [
            (
                buf[..TABLE_TAG.len() + 4].to_vec(),
                "truncated before the schema",
            ),
            (
                buf[..TABLE_TAG.len() + 12].to_vec(),
                "truncated inside the schema",
            ),
            (buf[..buf.len() - 5].to_vec(), "reclag table or scan"),
        ] {
            let e = decode_table(&bytes, &stores)
                .unwrap()
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
        assert!(decode_table(b"something else", &stores).is_none());
        assert!(
            decode_scan(&buf, &stores).is_none(),
            "a table is not a scan"
        );
    }
}

//! `reclag score --cluster`: the batch path on a Ballista cluster. The executors score
//! and write; the client plans, checks and publishes.
//!
//! The client lists the inputs, reads their footers, runs every check a local run makes
//! before reading a row, and submits a physical plan: a fast scan of the files split
//! into row-group ranges, under a [`ScoreWriteExec`]. Each task scores its ranges with
//! the local batch kernel and writes `part-NNNNN.parquet` (NNNNN: the range's index in
//! the whole scan, so a retried task rewrites the same file with the same bytes) into a
//! staging directory beside the output. Only when every part reports back, with every
//! input row accounted for, does the client publish: a local staging directory is
//! renamed to the output; on an object store each part is copied under the output
//! prefix and the staging objects removed.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::UInt64Type;
use arrow_array::{ArrayRef, RecordBatch, StringArray, UInt64Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt;
use object_store::ObjectStoreExt;
use reclag::{Model, Precision, Route, ScoreOutput, Work};
use reclag_udfs::{ModelPin, ModelRegistry};
use serde::{Deserialize, Serialize};

use super::scan::{ShippedFile, ShippedTable, part_id};
use crate::error::{Error, Result};
use crate::io::Sink;
use crate::ops::route::Routing;
use crate::ops::score::{ScoreJob, output_arrays, output_fields, p_values, score_batch};
use crate::store::Stores;

const TAG: &[u8] = b"reclag-score-write/1\n";

/// Output partitions when `--partitions` is not given: one per input row group, so
/// every executor core has work, capped so a lake of small row groups does not become
/// thousands of small files.
const MAX_DEFAULT_PARTS: usize = 256;

/// What a task needs besides its input rows; encoded as JSON in the plan.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Spec {
    model_url: String,
    model_sha256: String,
    precision: String,
    embedding: String,
    routing: RoutingSpec,
    /// Input columns copied to the output, in output order.
    keep: Vec<String>,
    /// The directory (a path or an object-store URL) the parts are written to.
    staging: String,
    /// `reclag filter`: write only the input rows on this side (`Some(true)`: the
    /// OOD ones), without the score columns. Rows with null outputs go to neither.
    #[serde(default)]
    keep_ood: Option<bool>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "snake_case")]
enum RoutingSpec {
    Best,
    Union,
    Column(String),
    Logits(String),
}

impl From<&Routing> for RoutingSpec {
    fn from(r: &Routing) -> Self {
        match r {
            Routing::Ungrouped(Route::Best) => RoutingSpec::Best,
            Routing::Ungrouped(Route::Union) => RoutingSpec::Union,
            Routing::Column(c) => RoutingSpec::Column(c.clone()),
            Routing::Logits(c) => RoutingSpec::Logits(c.clone()),
        }
    }
}

impl From<&RoutingSpec> for Routing {
    fn from(r: &RoutingSpec) -> Self {
        match r {
            RoutingSpec::Best => Routing::Ungrouped(Route::Best),
            RoutingSpec::Union => Routing::Ungrouped(Route::Union),
            RoutingSpec::Column(c) => Routing::Column(c.clone()),
            RoutingSpec::Logits(c) => Routing::Logits(c.clone()),
        }
    }
}

fn precision_from(s: &str) -> Option<Precision> {
    [Precision::Exact, Precision::F32Blocked]
        .into_iter()
        .find(|p| p.as_str() == s)
}

/// Scores each input partition and writes it as one Parquet file; outputs one row
/// per partition (see [`result_schema`]).
pub struct ScoreWriteExec {
    input: Arc<dyn ExecutionPlan>,
    spec: Spec,
    model: Arc<Model>,
    /// The parts' schema: the kept columns, then the score outputs.
    file_schema: SchemaRef,
    stores: Arc<Stores>,
    props: Arc<PlanProperties>,
}

impl fmt::Debug for ScoreWriteExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScoreWriteExec")
            .field("spec", &self.spec)
            .finish()
    }
}

/// One row per written part: its index in the scan, its URL, the rows read and
/// written, the rows flagged OOD and those with null outputs.
pub fn result_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("part", DataType::UInt64, false),
        Field::new("file", DataType::Utf8, false),
        Field::new("rows", DataType::UInt64, false),
        Field::new("rows_written", DataType::UInt64, false),
        Field::new("ood_rows", DataType::UInt64, false),
        Field::new("null_rows", DataType::UInt64, false),
    ]))
}

impl ScoreWriteExec {
    fn new(
        input: Arc<dyn ExecutionPlan>,
        spec: Spec,
        model: Arc<Model>,
        stores: Arc<Stores>,
    ) -> DfResult<Self> {
        let in_schema = input.schema();
        let mut fields = Vec::with_capacity(spec.keep.len() + 6);
        for k in &spec.keep {
            fields.push(in_schema.field_with_name(k)?.clone());
        }
        if spec.keep_ood.is_none() {
            fields.extend(output_fields(&model));
        }
        let props = PlanProperties::new(
            EquivalenceProperties::new(result_schema()),
            Partitioning::UnknownPartitioning(
                input.properties().output_partitioning().partition_count(),
            ),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Ok(ScoreWriteExec {
            input,
            spec,
            model,
            file_schema: Arc::new(Schema::new(fields)),
            stores,
            props: Arc::new(props),
        })
    }
}

impl DisplayAs for ScoreWriteExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "ScoreWriteExec: model={} embedding={} parts={}/part-*.parquet",
            self.spec.model_url, self.spec.embedding, self.spec.staging
        )
    }
}

impl ExecutionPlan for ScoreWriteExec {
    fn name(&self) -> &str {
        "ScoreWriteExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    /// Each partition is written as it was read: splitting or merging partitions
    /// would change which rows a part file holds.
    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return Err(DataFusionError::Internal(format!(
                "ScoreWriteExec takes one input, got {}",
                children.len()
            )));
        }
        Ok(Arc::new(ScoreWriteExec::new(
            children.swap_remove(0),
            self.spec.clone(),
            self.model.clone(),
            self.stores.clone(),
        )?))
    }

    fn execute(
        &self,
        partition: usize,
        ctx: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let part = part_id(self.input.as_ref(), partition);
        let mut input = self.input.execute(partition, ctx)?;
        let task = PartTask {
            spec: self.spec.clone(),
            model: self.model.clone(),
            file_schema: self.file_schema.clone(),
            stores: self.stores.clone(),
        };
        let fut = async move {
            let Some(part) = part else {
                // A partition without files (an empty input): nothing to write.
                return Ok(RecordBatch::new_empty(result_schema()));
            };
            let file = format!(
                "{}/part-{part:05}.parquet",
                task.spec.staging.trim_end_matches('/')
            );
            let (tx, rx) = tokio::sync::mpsc::channel::<std::result::Result<RecordBatch, ()>>(2);
            let name = file.clone();
            // Scoring and encoding are CPU work: off the runtime's threads.
            let writer = tokio::task::spawn_blocking(move || task.write(&name, rx));
            let mut failed = None;
            while let Some(b) = input.next().await {
                let sent = match b {
                    Ok(b) => tx.send(Ok(b)).await,
                    Err(e) => {
                        failed = Some(e);
                        tx.send(Err(())).await
                    }
                };
                if failed.is_some() || sent.is_err() {
                    break;
                }
            }
            drop(tx);
            let written = writer
                .await
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
            if let Some(e) = failed {
                return Err(e);
            }
            let [rows, kept, ood, null] =
                written.map_err(|e| DataFusionError::External(Box::new(e)))?;
            eprintln!("reclag: wrote {file} ({kept} of {rows} rows)");
            let cols: Vec<ArrayRef> = vec![
                Arc::new(UInt64Array::from(vec![part as u64])),
                Arc::new(StringArray::from(vec![file])),
                Arc::new(UInt64Array::from(vec![rows])),
                Arc::new(UInt64Array::from(vec![kept])),
                Arc::new(UInt64Array::from(vec![ood])),
                Arc::new(UInt64Array::from(vec![null])),
            ];
            Ok(RecordBatch::try_new(result_schema(), cols)?)
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            result_schema(),
            futures::stream::once(fut),
        )))
    }
}

/// One task's writer, on a blocking thread.
struct PartTask {
    spec: Spec,
    model: Arc<Model>,
    file_schema: SchemaRef,
    stores: Arc<Stores>,
}

impl PartTask {
    /// Scores the batches from `rx` into `file`: rows read, rows written, OOD rows and
    /// null rows. An
    /// `Err` from the reader, or any error here, leaves no file under the part's name
    /// (the temporary or the multipart upload is dropped).
    fn write(
        self,
        file: &str,
        mut rx: tokio::sync::mpsc::Receiver<std::result::Result<RecordBatch, ()>>,
    ) -> Result<[u64; 4]> {
        let routing = Routing::from(&self.spec.routing);
        let path = PathBuf::from(file);
        let mut sink = Sink::create(&self.stores, file, self.file_schema.clone())?;
        let mut out = ScoreOutput::default();
        let (mut rows, mut kept, mut ood, mut null) = (0u64, 0u64, 0u64, 0u64);
        while let Some(item) = rx.blocking_recv() {
            let Ok(batch) = item else {
                return Err(Error::Usage(format!(
                    "{file}: the scan failed; the part was not written"
                )));
            };
            let groups = score_batch(
                &self.model,
                &batch,
                &self.spec.embedding,
                &routing,
                Work::WithDynamics,
                &path,
                &mut out,
            )?;
            let p = p_values(&self.model, &out, groups.as_deref(), routing.route())?;
            null += out.valid.iter().filter(|v| !**v).count() as u64;
            ood += out
                .valid
                .iter()
                .zip(&out.is_ood)
                .filter(|(v, o)| **v && **o)
                .count() as u64;
            let mut cols: Vec<ArrayRef> = Vec::with_capacity(self.file_schema.fields().len());
            for k in &self.spec.keep {
                cols.push(batch.column_by_name(k).cloned().ok_or_else(|| {
                    Error::Usage(format!("{file}: column '{k}' is not in the scan"))
                })?);
            }
            let arrow_err = |source| Error::Arrow {
                path: path.clone(),
                source,
            };
            let ob = match self.spec.keep_ood {
                None => {
                    cols.extend(output_arrays(std::mem::take(&mut out), p));
                    RecordBatch::try_new(self.file_schema.clone(), cols).map_err(arrow_err)?
                }
                Some(side) => {
                    let mask: arrow_array::BooleanArray = out
                        .valid
                        .iter()
                        .zip(&out.is_ood)
                        .map(|(v, o)| Some(*v && *o == side))
                        .collect();
                    let b =
                        RecordBatch::try_new(self.file_schema.clone(), cols).map_err(arrow_err)?;
                    arrow_select::filter::filter_record_batch(&b, &mask).map_err(arrow_err)?
                }
            };
            rows += batch.num_rows() as u64;
            kept += ob.num_rows() as u64;
            if ob.num_rows() > 0 || self.spec.keep_ood.is_none() {
                sink.write(&ob)?;
            }
        }
        sink.finish()?;
        Ok([rows, kept, ood, null])
    }
}

/// Encodes a [`ScoreWriteExec`]; `None` for another node.
pub fn encode(node: &Arc<dyn ExecutionPlan>, buf: &mut Vec<u8>) -> Option<DfResult<()>> {
    let exec = node.downcast_ref::<ScoreWriteExec>()?;
    buf.extend_from_slice(TAG);
    Some(
        serde_json::to_writer(buf, &exec.spec)
            .map_err(|e| DataFusionError::Plan(format!("encoding ScoreWriteExec: {e}"))),
    )
}

/// Decodes what [`encode`] wrote, loading the pinned model through `registry`
/// (refused if its checksum changed); `None` for other bytes.
pub fn decode(
    buf: &[u8],
    inputs: &[Arc<dyn ExecutionPlan>],
    registry: &ModelRegistry,
    share: bool,
    stores: &Arc<Stores>,
) -> Option<DfResult<Arc<dyn ExecutionPlan>>> {
    let json = buf.strip_prefix(TAG)?;
    Some((|| {
        let bad = |what: String| {
            DataFusionError::Plan(format!("serialized plan: a reclag score writer: {what}"))
        };
        let spec: Spec = serde_json::from_slice(json).map_err(|e| bad(e.to_string()))?;
        let [input] = inputs else {
            return Err(bad(format!("{} inputs, expected 1", inputs.len())));
        };
        let precision = precision_from(&spec.precision)
            .ok_or_else(|| bad(format!("unknown precision '{}'", spec.precision)))?;
        let pin = ModelPin {
            key: spec.model_url.clone(),
            url: Some(spec.model_url.clone()),
            sha256: spec.model_sha256.clone(),
        };
        let model = registry
            .scoped(std::slice::from_ref(&pin), share)
            .and_then(|r| r.resolve(&pin.key))
            .map_err(|e| DataFusionError::Execution(format!("reclag score: {e}")))?;
        let model = with_precision(model, precision);
        Ok(Arc::new(ScoreWriteExec::new(
            input.clone(),
            spec,
            model,
            stores.clone(),
        )?) as _)
    })())
}

fn with_precision(model: Arc<Model>, precision: Precision) -> Arc<Model> {
    if model.precision() == precision {
        return model;
    }
    let mut m = (*model).clone();
    m.set_precision(precision);
    Arc::new(m)
}

/// Totals of a cluster scoring run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterScoreSummary {
    pub rows: u64,
    /// Rows in the output: every row for `score`, one side's for `filter`.
    pub rows_written: u64,
    pub ood_rows: u64,
    pub null_rows: u64,
    /// Part files published.
    pub parts: usize,
    pub p_values: bool,
}

/// Runs `job` on the cluster at `url`: the output is a directory (or prefix) of
/// `part-NNNNN.parquet` files, `partitions` of them at most (default: one per input
/// row group, at most 256), published only when every part is written. With
/// `keep_ood`, `reclag filter` instead: every input column of the rows on that side
/// (`true`: the OOD rows), and no score columns.
pub async fn score_on_cluster(
    job: &ScoreJob,
    url: &str,
    model_spec: &str,
    precision: Precision,
    partitions: Option<usize>,
    keep_ood: Option<bool>,
) -> Result<ClusterScoreSummary> {
    let stores = job.stores().clone();
    if job.inputs().iter().any(|i| i == crate::io::STDIO) || job.output() == crate::io::STDIO {
        return Err(Error::Usage(
            "--cluster reads Parquet files the executors can reach and writes a Parquet directory; standard input and output (`-`) stay local: drop --cluster".into(),
        ));
    }
    let probe = url.to_string();
    tokio::task::spawn_blocking(move || super::check_reachable(&probe))
        .await
        .map_err(|e| Error::Usage(format!("--cluster {url}: {e}")))??;
    let (host, port) = super::scheduler_address(url)?;

    // The model, pinned by the URL executors load it from and its checksum.
    let (stores2, spec2) = (stores.clone(), model_spec.to_string());
    let (model, model_url) =
        tokio::task::spawn_blocking(move || crate::store::load_model_from(&stores2, &spec2))
            .await
            .map_err(|e| Error::Usage(format!("loading {model_spec}: {e}")))??;
    let sha256 = reclag::format::checksum(&model);
    let model = with_precision(Arc::new(model), precision);

    // The inputs: every file's footer, one schema (the local rule), the same column
    // order (the shipped scan reads columns by position).
    let footers = crate::ops::sql::table::footers(&stores, job.inputs()).await?;
    let Some(first) = footers.first() else {
        return Err(Error::Usage(format!(
            "--input {}: no Parquet files found",
            job.inputs().join(" ")
        )));
    };
    let paths: Vec<PathBuf> = footers.iter().map(|f| f.loc.display_path()).collect();
    let schemas: Vec<(&Path, &Schema)> = paths
        .iter()
        .zip(&footers)
        .map(|(p, f)| (p.as_path(), f.schema.as_ref()))
        .collect();
    crate::io::check_schemas(&schemas)?;
    let schema = first.schema.clone();
    for (p, f) in paths.iter().zip(&footers) {
        let names =
            |s: &Schema| -> Vec<String> { s.fields().iter().map(|f| f.name().clone()).collect() };
        if names(&f.schema) != names(&schema) {
            return Err(Error::SchemaMismatch {
                file: p.clone(),
                columns: names(&f.schema),
                detail: format!(
                    "its columns are those of {} in another order; a cluster scan reads columns by position, so rewrite the file with the same order or score without --cluster",
                    paths[0].display()
                ),
            });
        }
    }
    let (emb, keep) = match keep_ood {
        None => job.checked_columns(&model, &schema, &paths[0])?,
        // A filter writes the input columns only, whatever their names.
        Some(_) => {
            let checked = job.clone().keep_columns(Some(Vec::new()));
            let (emb, _) = checked.checked_columns(&model, &schema, &paths[0])?;
            (emb, (0..schema.fields().len()).collect())
        }
    };
    let total_rows: u64 = footers.iter().flat_map(|f| f.row_groups.iter()).sum();
    let row_groups: usize = footers.iter().map(|f| f.row_groups.len()).sum();

    // The output and its staging directory beside it.
    let out = Output::new(&stores, job.output())?;
    out.remove_stale()?;
    let staging = out.staging()?;

    let mut columns: Vec<usize> = keep.clone();
    columns.push(emb);
    if let Some(c) = job.routing_of().column() {
        columns.push(crate::io::column_index(&schema, c).map_err(Error::in_file(&paths[0]))?);
    }
    columns.sort_unstable();
    columns.dedup();
    let files: Vec<ShippedFile> = footers
        .iter()
        .map(|f| ShippedFile {
            loc: f.loc.clone(),
            partition: vec![],
            row_groups: f.row_groups.clone(),
        })
        .collect();
    let n = schema.fields().len();
    let table = ShippedTable::new(schema.clone(), n, files, stores.clone());
    let parts = partitions
        .unwrap_or_else(|| row_groups.clamp(1, MAX_DEFAULT_PARTS))
        .max(1);
    let planner =
        SessionContext::new_with_config(SessionConfig::new().with_target_partitions(parts));
    let scan = table
        .scan(&planner.state(), Some(&columns), &[], None)
        .await
        .map_err(|e| Error::Usage(format!("planning the scan: {e}")))?;
    let expected_parts = scan.properties().output_partitioning().partition_count();
    let spec = Spec {
        model_url,
        model_sha256: sha256,
        precision: precision.as_str().to_string(),
        embedding: job.embedding_column().to_string(),
        routing: RoutingSpec::from(job.routing_of()),
        keep: keep
            .iter()
            .map(|&i| schema.field(i).name().clone())
            .collect(),
        staging: staging.clone(),
        keep_ood,
    };
    let plan: Arc<dyn ExecutionPlan> = Arc::new(
        ScoreWriteExec::new(scan, spec, model.clone(), stores.clone())
            .map_err(|e| Error::Usage(format!("planning: {e}")))?,
    );

    let result = submit(&host, port, plan, &stores).await;
    let parts_written =
        match result.and_then(|batches| check_parts(&batches, expected_parts, total_rows)) {
            Ok(p) => p,
            Err(e) => {
                out.discard_staging(&staging);
                return Err(e);
            }
        };
    out.publish(&staging, &parts_written)?;
    let mut s = ClusterScoreSummary {
        parts: parts_written.len(),
        p_values: model.calibration().is_some(),
        ..Default::default()
    };
    for p in &parts_written {
        s.rows += p.rows;
        s.rows_written += p.rows_written;
        s.ood_rows += p.ood_rows;
        s.null_rows += p.null_rows;
    }
    Ok(s)
}

async fn submit(
    host: &str,
    port: u16,
    plan: Arc<dyn ExecutionPlan>,
    stores: &Arc<Stores>,
) -> Result<Vec<RecordBatch>> {
    use ballista::prelude::SessionConfigExt;
    let codec = super::cluster_codec(stores.clone(), false);
    let config = SessionConfig::new_with_ballista()
        .with_ballista_logical_extension_codec(codec.clone())
        .with_ballista_physical_extension_codec(codec.clone());
    let session_id = format!(
        "reclag-score-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    );
    let failed = |e: &dyn fmt::Display| {
        Error::Usage(format!(
            "scoring on the cluster at df://{host}:{port} failed; nothing was published: {e}"
        ))
    };
    let stream = ballista_core::execution_plans::execute_physical_plan::<
        datafusion_proto::protobuf::PhysicalPlanNode,
    >(
        format!("http://{host}:{port}"),
        &ballista_core::config::BallistaConfig::default(),
        plan,
        codec.as_ref(),
        session_id,
        config,
    )
    .await
    .map_err(|e| failed(&e))?;
    datafusion::physical_plan::common::collect(stream)
        .await
        .map_err(|e| failed(&e))
}

/// A part as its task reported it.
#[derive(Clone, Debug)]
struct Written {
    part: u64,
    rows: u64,
    rows_written: u64,
    ood_rows: u64,
    null_rows: u64,
}

/// Every part once, every input row written: else nothing is published.
fn check_parts(batches: &[RecordBatch], expected: usize, rows: u64) -> Result<Vec<Written>> {
    let mut parts = Vec::new();
    for b in batches {
        let u = |i: usize| b.column(i).as_primitive::<UInt64Type>();
        for r in 0..b.num_rows() {
            parts.push(Written {
                part: u(0).value(r),
                rows: u(2).value(r),
                rows_written: u(3).value(r),
                ood_rows: u(4).value(r),
                null_rows: u(5).value(r),
            });
        }
    }
    parts.sort_by_key(|p| p.part);
    let ids: Vec<u64> = parts.iter().map(|p| p.part).collect();
    let written: u64 = parts.iter().map(|p| p.rows).sum();
    let want: Vec<u64> = (0..expected as u64).collect();
    if written != rows || (rows > 0 && ids != want) {
        return Err(Error::Usage(format!(
            "the cluster reported parts {ids:?} holding {written} rows, expected parts 0..{expected} holding {rows}; nothing was published"
        )));
    }
    Ok(parts)
}

/// The output of a cluster run: a local directory or an object-store prefix.
struct Output {
    stores: Arc<Stores>,
    loc: crate::store::Location,
    /// The local directory, through a symbolic link the user named.
    local: Option<PathBuf>,
}

const STAGING_MARK: &str = ".reclag-staging-";

impl Output {
    fn new(stores: &Arc<Stores>, spec: &str) -> Result<Self> {
        let loc = stores.locate(spec.trim_end_matches('/'))?;
        let local = match &loc.local {
            None => None,
            Some(p) => {
                let p = match std::fs::symlink_metadata(p) {
                    Ok(m) if m.file_type().is_symlink() => {
                        std::fs::canonicalize(p).map_err(|source| Error::Io {
                            context: format!("resolving the output link {}", p.display()),
                            source,
                        })?
                    }
                    _ => p.clone(),
                };
                if let Ok(m) = std::fs::metadata(&p)
                    && !m.is_dir()
                    && !m.is_file()
                {
                    return Err(Error::Usage(format!(
                        "--output {}: not a directory or a regular file; a cluster run writes a directory of part files",
                        p.display()
                    )));
                }
                Some(p)
            }
        };
        Ok(Output {
            stores: stores.clone(),
            loc,
            local,
        })
    }

    /// The output's last path segment and its parent (a directory or a key prefix).
    fn name(&self) -> (String, String) {
        let key = self.loc.key.as_ref();
        match key.rsplit_once('/') {
            Some((parent, name)) => (parent.to_string(), name.to_string()),
            None => (String::new(), key.to_string()),
        }
    }

    /// A staging directory of this process's, beside the output (on the same
    /// filesystem, so the publishing rename is atomic).
    fn staging(&self) -> Result<String> {
        let pid = std::process::id();
        match &self.local {
            Some(p) => {
                let (dir, name) = dir_and_name(p);
                let s = dir.join(format!(".{name}{STAGING_MARK}{pid}"));
                let _ = std::fs::remove_dir_all(&s);
                std::fs::create_dir_all(&s).map_err(|source| Error::Io {
                    context: format!("creating the staging directory {}", s.display()),
                    source,
                })?;
                Ok(s.to_string_lossy().into_owned())
            }
            None => {
                let (parent, name) = self.name();
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or_default();
                let prefix = if parent.is_empty() {
                    String::new()
                } else {
                    format!("{parent}/")
                };
                Ok(format!(
                    "{}{prefix}.{name}{STAGING_MARK}{pid}-{nanos}",
                    self.loc.base
                ))
            }
        }
    }

    /// Staging directories of earlier runs on this machine whose process is gone
    /// (killed before it could clean up).
    fn remove_stale(&self) -> Result<()> {
        let Some(p) = &self.local else {
            return Ok(());
        };
        let (dir, name) = dir_and_name(p);
        let prefix = format!(".{name}{STAGING_MARK}");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(());
        };
        for e in entries.flatten() {
            let file_name = e.file_name();
            let Some(pid) = file_name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
                continue;
            };
            let Ok(pid) = pid.parse::<i32>() else {
                continue;
            };
            if !process_alive(pid) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        Ok(())
    }

    /// Best effort after a failure: the error that caused it is what the user needs.
    fn discard_staging(&self, staging: &str) {
        if self.local.is_some() {
            let _ = std::fs::remove_dir_all(staging);
            return;
        }
        let store = self.loc.store.clone();
        let prefix = self.stores.locate(staging).map(|l| l.key);
        crate::store::block_on(async move {
            if let Ok(prefix) = prefix {
                delete_prefix(&store, &prefix).await;
            }
        });
    }

    fn publish(&self, staging: &str, parts: &[Written]) -> Result<()> {
        if let Some(out) = &self.local {
            return publish_local(Path::new(staging), out);
        }
        let store = self.loc.store.clone();
        let out_prefix = self.loc.key.clone();
        let staged = self.stores.locate(staging)?.key;
        let names: Vec<String> = parts
            .iter()
            .map(|p| format!("part-{:05}.parquet", p.part))
            .collect();
        let display = self.loc.display.clone();
        crate::store::block_on(async move {
            let io = |e: object_store::Error| Error::Usage(format!("publishing {display}: {e}"));
            for n in &names {
                let from = staged.clone().join(n.as_str());
                let to = out_prefix.clone().join(n.as_str());
                store.copy(&from, &to).await.map_err(io)?;
            }
            // Parts of an earlier run with more partitions.
            let mut listed = store.list(Some(&out_prefix));
            let mut old = Vec::new();
            while let Some(m) = listed.next().await {
                let m = m.map_err(io)?;
                let name = m.location.filename().unwrap_or_default().to_string();
                if name.starts_with("part-") && !names.contains(&name) {
                    old.push(m.location);
                }
            }
            for o in old {
                store.delete(&o).await.map_err(io)?;
            }
            delete_prefix(&store, &staged).await;
            Ok(())
        })
    }
}

async fn delete_prefix(
    store: &Arc<dyn object_store::ObjectStore>,
    prefix: &object_store::path::Path,
) {
    let mut listed = store.list(Some(prefix));
    let mut keys = Vec::new();
    while let Some(Ok(m)) = listed.next().await {
        keys.push(m.location);
    }
    for k in keys {
        let _ = store.delete(&k).await;
    }
}

fn dir_and_name(p: &Path) -> (PathBuf, String) {
    let dir = p.parent().map(Path::to_path_buf).unwrap_or_default();
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    (dir, name)
}

fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Renames `staging` to `out`, moving an earlier output aside first and removing it
/// after, so `out` is at every moment either the old output or the new one.
fn publish_local(staging: &Path, out: &Path) -> Result<()> {
    let io = |what: String| {
        move |source| Error::Io {
            context: what,
            source,
        }
    };
    // Temporaries of killed tasks (hidden names) do not belong in the output.
    if let Ok(entries) = std::fs::read_dir(staging) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with('.') {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let (dir, name) = dir_and_name(out);
    let old = dir.join(format!(".{name}.reclag-old-{}", std::process::id()));
    let existed = std::fs::symlink_metadata(out).is_ok();
    if existed {
        std::fs::rename(out, &old).map_err(io(format!(
            "moving the earlier output {} aside",
            out.display()
        )))?;
    }
    std::fs::rename(staging, out).map_err(io(format!(
        "publishing {} as {}",
        staging.display(),
        out.display()
    )))?;
    if existed {
        let removed = if old.is_dir() {
            std::fs::remove_dir_all(&old)
        } else {
            std::fs::remove_file(&old)
        };
        removed.map_err(io(format!("removing the earlier output {}", old.display())))?;
    }
    Ok(())
}

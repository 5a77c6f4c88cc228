//! `reclag drift run`: score each new partition of a lake, test its OOD rate against
//! the model's calibrated rate, and publish metrics, the worst rows and a report.
//!
//! Every output is a pure function of (spec, model, partition data), and each is
//! written whole under its final name (temporary name + rename on disk, a single PUT
//! on object stores). The state file, written last for each partition, only records
//! which partitions are done. So a run killed at any point and rerun rewrites the same
//! bytes for the partition it was in and never duplicates a row.

mod fused;
pub mod lock;
pub mod report;
pub mod spec;
pub mod stats;
pub mod watch;
pub mod webhook;
pub mod window;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use arrow_array::builder::{BooleanBuilder, Float64Builder, StringBuilder, UInt64Builder};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, UInt64Type};
use arrow_array::{Array, ArrayRef, RecordBatch, StringArray, UInt32Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use bytes::Bytes;
use reclag::{Model, ScoreOutput, Work};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::io::ParquetFile;
use crate::route::Routing;
use crate::store::{Location, Stores};
use reclag_parquet::Part;
pub use spec::{DriftSpec, Partitioning};

/// Exit code of a run that found drift (0: none, 1: error).
pub const EXIT_DRIFT: u8 = 2;
pub const STATE_FILE: &str = "_state.json";

/// [`DriftJob::lock_wait`]'s default: long enough for a backfill started beside a
/// nightly run to queue behind it, short enough that a hung run is noticed.
pub const DEFAULT_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(600);
/// The score's column in the worst rows.
const WORST_SCORE: &str = "reclag_score";
/// Score quantiles kept per partition for the report's histograms (0.5 % steps).
const QUANTILES: usize = 201;

/// Which partitions a run considers; partitions already processed are skipped in every
/// mode, so reruns add nothing.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Select {
    #[default]
    All,
    Only(String),
    Since(String),
}

/// Called with a checkpoint name (`"metrics:<partition>"`, `"worst:<partition>"`,
/// `"state:<partition>"`) after that output is written; returning `true` stops the run
/// there as if the process had died. Crash tests use it.
pub type FaultHook = Arc<dyn Fn(&str) -> bool + Send + Sync>;
/// The run's notion of now. It decides which time windows have closed (and the
/// summary's start time), never what an output holds: each output is a function of
/// its window's rows alone, so reruns stay byte-identical.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// A drift run: build with [`DriftJob::new`], adjust, then [`DriftJob::run`].
pub struct DriftJob {
    spec: DriftSpec,
    stores: Arc<Stores>,
    select: Select,
    dry_run: bool,
    clock: Clock,
    fault: Option<FaultHook>,
    cancel: Option<Arc<std::sync::atomic::AtomicBool>>,
    fused: bool,
    strict: bool,
    lock_wait: std::time::Duration,
    lock_stale_after: std::time::Duration,
}

/// What a partition contributed, as recorded in the state file and the summary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartitionRecord {
    pub partition: String,
    /// `"done"` or `"skipped"`.
    pub status: String,
    /// Why a partition was skipped (shown in the report).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default)]
    pub rows: u64,
    #[serde(default)]
    pub ood_rows: u64,
    #[serde(default)]
    pub ood_rate: f64,
    #[serde(default)]
    pub expected_rate: f64,
    #[serde(default)]
    pub p_value: f64,
    #[serde(default)]
    pub drift: bool,
    /// Groups whose own test alerted.
    #[serde(default)]
    pub drift_groups: Vec<String>,
    /// Score quantiles at 0.5 % steps, for the report's histogram.
    #[serde(default)]
    pub score_quantiles: Vec<f64>,
    /// Share of scored rows whose conformal p-value is below `alert.p_level` (the
    /// model has calibration scores).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_p_rate: Option<f64>,
    /// Rows per p-value bin of width 1/[`P_BINS`], for the report's histogram.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub p_histogram: Vec<u64>,
    #[serde(default)]
    pub groups: Vec<GroupRecord>,
    /// The most OOD rows, their scalar columns as text, for the report's table.
    #[serde(default)]
    pub worst: Vec<WorstRow>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub group: String,
    pub rows: u64,
    pub ood_rows: u64,
    pub ood_rate: f64,
    pub p_value: f64,
    pub drift: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_p_rate: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorstRow {
    pub score: f64,
    pub columns: Vec<(String, String)>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    pub model_sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<ReferenceRecord>,
    pub partitions: BTreeMap<String, PartitionRecord>,
}

/// The reference data's OOD rates, measured once and kept with the state so every
/// partition is judged against the same numbers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReferenceRecord {
    pub url: String,
    pub rows: u64,
    /// Counts, not rates, so a rerun that reads the state back judges with exactly
    /// the same numbers.
    pub ood_rows: u64,
    /// Group → (rows, OOD rows).
    pub groups: BTreeMap<String, (u64, u64)>,
    pub score_quantiles: Vec<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_p_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub p_histogram: Vec<u64>,
}

impl ReferenceRecord {
    pub fn ood_rate(&self) -> f64 {
        self.ood_rows as f64 / self.rows.max(1) as f64
    }
}

/// Bins of the p-value histograms.
pub const P_BINS: usize = 20;

/// A reference group with fewer rows than this uses the overall reference rate.
const MIN_REFERENCE_GROUP_ROWS: u64 = 20;

/// The compact form of a partition in the stdout summary.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PartitionBrief {
    pub partition: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub rows: u64,
    pub ood_rows: u64,
    pub ood_rate: f64,
    pub expected_rate: f64,
    pub p_value: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub low_p_rate: Option<f64>,
    pub drift_groups: Vec<String>,
}

impl From<&PartitionRecord> for PartitionBrief {
    fn from(r: &PartitionRecord) -> Self {
        PartitionBrief {
            partition: r.partition.clone(),
            reason: r.reason.clone(),
            rows: r.rows,
            ood_rows: r.ood_rows,
            ood_rate: r.ood_rate,
            expected_rate: r.expected_rate,
            p_value: r.p_value,
            low_p_rate: r.low_p_rate,
            drift_groups: r.drift_groups.clone(),
        }
    }
}

/// The one-line JSON a run prints.
#[derive(Clone, Debug, Serialize)]
pub struct DriftSummary {
    pub started_at_unix: u64,
    pub source: String,
    pub output: String,
    pub model_sha256: String,
    pub dry_run: bool,
    /// Partitions this run would process (dry run) or processed (skipped ones included).
    pub partitions: Vec<String>,
    pub skipped: Vec<PartitionBrief>,
    pub drifted: Vec<PartitionBrief>,
    pub already_done: usize,
    /// What the OOD rates were judged against: `alert.expected_rate`, the reference,
    /// or the model's calibration level (and why that may not fit the data).
    pub baseline: String,
    /// Time windows with rows that are still open (end + lateness after now); a later
    /// run processes them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<String>,
    pub drift: bool,
    /// Set when the run stopped early at a shutdown request (between partitions).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
    /// What happened to the webhook POST, when one is configured and due.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
}

impl DriftSummary {
    pub fn json_line(&self) -> String {
        serde_json::to_string(self).expect("the summary serializes")
    }
}

/// Statistics of one group (or the whole partition) while its rows stream by.
#[derive(Default)]
struct Acc {
    rows: u64,
    null_rows: u64,
    ood_rows: u64,
    score_sum: f64,
    energies: Vec<f64>,
    scores: Vec<f64>,
    /// Rows with a p-value, those below the level, and the histogram.
    p_rows: u64,
    p_low: u64,
    p_hist: Vec<u64>,
}

/// How a row's p-value is found: the model's calibration scores, the route of rows
/// without a group, and the level `alert.p_level`.
#[derive(Clone, Copy)]
struct PValues<'m> {
    model: &'m Model,
    sets: Option<&'m reclag::conformal::CalibrationSets>,
    route: reclag::Route,
    level: f64,
}

impl PValues<'_> {
    fn of(&self, scored: Option<(f64, f64)>, group: Option<u32>) -> Option<f64> {
        let (score, _) = scored?;
        let a = self.model.against(group, self.route);
        Some(self.sets?.against(a).p_value(score))
    }
}

impl Acc {
    /// One row: its score and energy (`None` for a row that could not be scored) and
    /// its p-value (`None` without calibration scores).
    fn add(&mut self, scored: Option<(f64, f64)>, p: Option<f64>, level: f64) {
        self.rows += 1;
        if let Some(p) = p {
            self.p_rows += 1;
            self.p_low += u64::from(p < level);
            if self.p_hist.is_empty() {
                self.p_hist = vec![0; P_BINS];
            }
            self.p_hist[((p * P_BINS as f64) as usize).min(P_BINS - 1)] += 1;
        }
        let Some((score, energy)) = scored else {
            self.null_rows += 1;
            return;
        };
        // The rate the calibration controls: A ≤ τ (score ≤ 0), the MAP decision of
        // the first step. The trajectory flag can differ (in union mode it reaches
        // the origin far more often), so it is not what τ's quantile promises.
        self.ood_rows += u64::from(score <= 0.0);
        self.score_sum += score;
        self.energies.push(energy);
        self.scores.push(score);
    }

    fn scored(&self) -> u64 {
        self.rows - self.null_rows
    }

    fn low_p_rate(&self) -> Option<f64> {
        (self.p_rows > 0).then(|| self.p_low as f64 / self.p_rows as f64)
    }

    /// Adds another partition's rows (a reference period spans several).
    fn merge(&mut self, o: Acc) {
        self.rows += o.rows;
        self.null_rows += o.null_rows;
        self.ood_rows += o.ood_rows;
        self.score_sum += o.score_sum;
        self.energies.extend(o.energies);
        self.scores.extend(o.scores);
        self.p_rows += o.p_rows;
        self.p_low += o.p_low;
        if self.p_hist.is_empty() {
            self.p_hist = o.p_hist;
        } else {
            for (a, b) in self.p_hist.iter_mut().zip(o.p_hist) {
                *a += b;
            }
        }
    }
}

/// The worst rows seen so far: original columns plus the score, with the keys that
/// make their order total (score, file, row) so reruns pick the same rows.
struct Worst {
    k: usize,
    batch: Option<RecordBatch>,
    keys: Vec<(f64, u32, u64)>,
}

impl Worst {
    fn offer(
        &mut self,
        batch: &RecordBatch,
        out: &ScoreOutput,
        file: u32,
        base: u64,
        mask: Option<&[bool]>,
    ) -> Result<()> {
        if self.k == 0 {
            return Ok(());
        }
        let mut cand: Vec<(f64, u32, u64)> = (0..batch.num_rows())
            .filter(|&i| out.valid[i] && mask.is_none_or(|m| m[i]))
            .map(|i| (out.score[i], file, base + i as u64))
            .collect();
        if cand.len() > self.k {
            cand.select_nth_unstable_by(self.k - 1, worst_order);
            cand.truncate(self.k);
        }
        if cand.is_empty() {
            return Ok(());
        }
        let idx = UInt32Array::from_iter_values(cand.iter().map(|c| (c.2 - base) as u32));
        let cols: Vec<ArrayRef> = batch
            .columns()
            .iter()
            .map(|c| arrow_select::take::take(c, &idx, None))
            .collect::<std::result::Result<_, _>>()
            .map_err(arrow_err)?;
        let fields = batch.schema().fields().iter().cloned().collect();
        let part = worst_rows(fields, cols, cand.iter().map(|c| c.0))?;
        self.merge(part, cand)
    }

    /// Rows already picked as their row group's worst (`fused::DriftRows`): the
    /// file's columns, the score, and each row's place in its row group, which
    /// starts at row `base` of file `file`.
    fn offer_picked(&mut self, picked: &RecordBatch, file: u32, base: u64) -> Result<()> {
        let n = picked.num_columns();
        let at = picked.column(n - 1).as_primitive::<UInt64Type>();
        let score = picked.column(n - 2).as_primitive::<Float64Type>();
        let keys = (0..picked.num_rows())
            .map(|i| (score.value(i), file, base + at.value(i)))
            .collect();
        let part = picked
            .project(&(0..n - 1).collect::<Vec<_>>())
            .map_err(arrow_err)?;
        self.merge(part, keys)
    }

    /// Keeps the `k` worst of the rows kept so far and `part`, whose keys are `cand`.
    fn merge(&mut self, part: RecordBatch, cand: Vec<(f64, u32, u64)>) -> Result<()> {
        if self.k == 0 || cand.is_empty() {
            return Ok(());
        }
        let merged = match self.batch.take() {
            None => part,
            Some(prev) => {
                if prev.schema() != part.schema() {
                    return Err(Error::Usage(format!(
                        "the files of one partition have different columns: {} vs {}",
                        schema_names(&prev.schema()),
                        schema_names(&part.schema())
                    )));
                }
                arrow_select::concat::concat_batches(&prev.schema(), [&prev, &part])
                    .map_err(arrow_err)?
            }
        };
        self.keys.extend(cand);
        let mut order_idx: Vec<usize> = (0..self.keys.len()).collect();
        order_idx.sort_by(|&a, &b| worst_order(&self.keys[a], &self.keys[b]));
        order_idx.truncate(self.k);
        let take = UInt32Array::from_iter_values(order_idx.iter().map(|&i| i as u32));
        self.keys = order_idx.iter().map(|&i| self.keys[i]).collect();
        let cols = merged
            .columns()
            .iter()
            .map(|c| arrow_select::take::take(c, &take, None))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(arrow_err)?;
        self.batch = Some(RecordBatch::try_new(merged.schema(), cols).map_err(arrow_err)?);
        Ok(())
    }
}

/// The worst rows' total order, (score, file, row): reruns pick the same rows.
pub(crate) fn worst_order(a: &(f64, u32, u64), b: &(f64, u32, u64)) -> std::cmp::Ordering {
    a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2))
}

/// A worst-rows batch: the file's columns and then the score. Both paths build it
/// here, so rows picked while pages were decoded concatenate with rows picked from
/// whole batches.
fn worst_rows(
    mut fields: Vec<arrow_schema::FieldRef>,
    mut cols: Vec<ArrayRef>,
    scores: impl Iterator<Item = f64>,
) -> Result<RecordBatch> {
    fields.push(Arc::new(Field::new(WORST_SCORE, DataType::Float64, true)));
    cols.push(Arc::new(arrow_array::Float64Array::from_iter_values(
        scores,
    )));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).map_err(arrow_err)
}

fn schema_names(s: &Schema) -> String {
    s.fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn arrow_err(e: arrow_schema::ArrowError) -> Error {
    Error::Usage(format!("assembling the worst rows: {e}"))
}

/// A partition: its value (`2026-11-21`) and where its rows are.
struct Partition {
    value: String,
    source: PartSource,
}

enum PartSource {
    /// A hive directory.
    Dir(Location),
    /// A time window: row groups of files, and a filter on the timestamp column.
    Window(window::TimeWindows, window::Window),
    /// A time window already in the state (its rows are not looked at again).
    Done,
}

impl Partition {
    fn describe(&self) -> String {
        match &self.source {
            PartSource::Dir(dir) => dir.display.clone(),
            _ => format!("window {}", self.value),
        }
    }
}

/// A file and the row groups to read (all when `None`).
type FileRowGroups = (Location, Option<Vec<usize>>);

/// The partitions a run can see, and time windows that are not closed yet.
struct Found {
    parts: Vec<Partition>,
    pending: Vec<String>,
}

/// What processing a partition produced.
/// A partition's time window: its layout and index; `None` for a hive partition.
type Window<'p> = Option<(&'p window::TimeWindows, i64)>;

/// Whether `e` says a file's contents are unusable (not Parquet, corrupt, a column
/// of another type), which skips its partition, rather than that the store failed
/// (refused, unreachable), which fails the run so a rerun retries the partition.
fn unreadable(e: &Error) -> bool {
    match e {
        Error::Parquet { source, .. } => {
            !matches!(source, parquet::errors::ParquetError::External(_))
        }
        Error::Arrow { .. } | Error::InFile { .. } | Error::Core(_) => true,
        Error::Io { .. } | Error::Polars { .. } | Error::Usage(_) => false,
    }
}

/// A partition's opened files, or why it is skipped.
enum Prepared<'p> {
    Ready(Vec<ParquetFile>, Window<'p>),
    Skipped(String),
}

/// What a partition's rows gave: statistics and worst rows.
struct Gathered {
    whole: Acc,
    groups: Vec<Acc>,
    worst: Worst,
}

/// Partitions opened and read as one chain: enough to keep both cores busy across
/// partition boundaries, few enough that a backfill of thousands of partitions does
/// not hold every footer at once.
const CHAINED_PARTITIONS: usize = 8;

enum Processed {
    Done {
        record: Box<PartitionRecord>,
        metrics: RecordBatch,
        worst: Option<RecordBatch>,
    },
    Skipped(String),
}

impl DriftJob {
    pub fn new(spec: DriftSpec, stores: Arc<Stores>) -> Self {
        DriftJob {
            spec,
            stores,
            select: Select::All,
            dry_run: false,
            clock: Arc::new(SystemTime::now),
            fault: None,
            cancel: None,
            fused: crate::io::read_settings().fused,
            strict: false,
            lock_wait: DEFAULT_LOCK_WAIT,
            lock_stale_after: lock::DEFAULT_STALE_AFTER,
        }
    }

    /// How long an object-store lock may go without its holder's heartbeat before a
    /// waiting run takes it over (a run killed with `kill -9` leaves its lock behind).
    pub fn lock_stale_after(mut self, after: std::time::Duration) -> Self {
        self.lock_stale_after = after;
        self
    }

    /// How long a run waits for another run on the same output to finish before it
    /// exits naming that run ([`lock`]).
    pub fn lock_wait(mut self, wait: std::time::Duration) -> Self {
        self.lock_wait = wait;
        self
    }

    /// Makes a partition that would be skipped (no files, a missing column, a file
    /// that cannot be read) fail the run instead; the partitions before it are still
    /// published.
    pub fn strict(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }

    pub fn select(mut self, select: Select) -> Self {
        self.select = select;
        self
    }

    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    pub fn fault_hook(mut self, hook: FaultHook) -> Self {
        self.fault = Some(hook);
        self
    }

    /// When the flag is set the run stops before its next partition; everything it
    /// finished stays committed (SIGTERM handling for `watch`).
    pub fn cancel_flag(mut self, flag: Arc<std::sync::atomic::AtomicBool>) -> Self {
        self.cancel = Some(flag);
        self
    }

    /// Whether row groups the fast reader takes are scored page by page as they are
    /// decoded (the default; `RECLAG_FUSED=0` turns it off) or built into Arrow
    /// batches first. Both give the same bytes; tests compare them.
    pub fn fused(mut self, on: bool) -> Self {
        self.fused = on;
        self
    }

    pub fn spec(&self) -> &DriftSpec {
        &self.spec
    }

    fn out(&self, rel: &str) -> Result<Location> {
        let base = self.spec.output.url.trim_end_matches('/');
        self.stores.locate(&format!("{base}/{rel}"))
    }

    fn checkpoint(&self, name: &str) -> Result<()> {
        if self.fault.as_ref().is_some_and(|f| f(name)) {
            return Err(Error::Usage(format!("fault injected after {name}")));
        }
        Ok(())
    }

    fn load_state(&self) -> Result<State> {
        let loc = self.out(STATE_FILE)?;
        match loc.head()? {
            None => Ok(State {
                version: 1,
                ..Default::default()
            }),
            Some(_) => {
                let bytes = loc.get()?;
                serde_json::from_slice(&bytes).map_err(|e| {
                    Error::Usage(format!(
                        "{}: not a reclag drift state file ({e}); point output.url at a new location or delete the file to start over",
                        loc.display
                    ))
                })
            }
        }
    }

    fn selected(&self, value: &str) -> bool {
        match &self.select {
            Select::All => true,
            Select::Only(v) => value == v,
            Select::Since(v) => value >= v.as_str(),
        }
    }

    fn partitions(&self, state: &State, now: i64) -> Result<Found> {
        let root = self
            .stores
            .locate(self.spec.source.url.trim_end_matches('/'))?;
        let key = match self.spec.partitioning().map_err(Error::Usage)? {
            Partitioning::Hive { key } => key,
            Partitioning::Time(tw) => return self.windows(&root, &tw, state, now),
        };
        let prefix = format!("{key}=");
        let mut parts = Vec::new();
        for dir in root.list_dirs()? {
            let Some(name) = dir.filename() else { continue };
            let Some(value) = name.strip_prefix(&prefix) else {
                continue;
            };
            parts.push(Partition {
                value: value.to_string(),
                source: PartSource::Dir(root.child(dir.clone())),
            });
        }
        if parts.is_empty() {
            return Err(Error::Usage(format!(
                "{}: no partitions {prefix}VALUE below it; check source.url and source.partitioning",
                root.display
            )));
        }
        parts.sort_by(|a, b| a.value.cmp(&b.value));
        Ok(Found {
            parts,
            pending: vec![],
        })
    }

    /// The closed, selected time windows not yet in the state (found from the
    /// timestamp column), plus the state's windows, so `--partition` and the summary
    /// see every window the job knows.
    fn windows(
        &self,
        root: &Location,
        tw: &window::TimeWindows,
        state: &State,
        now: i64,
    ) -> Result<Found> {
        let files = crate::io::parquet_files_below(root)?;
        if files.is_empty() {
            return Err(Error::Usage(format!(
                "{}: no Parquet files below it; check source.url",
                root.display
            )));
        }
        let found = tw.discover(&files, |w| {
            let label = tw.label(w);
            !state.partitions.contains_key(&label) && self.selected(&label)
        })?;
        let mut parts: Vec<Partition> = state
            .partitions
            .keys()
            .map(|value| Partition {
                value: value.clone(),
                source: PartSource::Done,
            })
            .collect();
        let mut pending = vec![];
        for (index, w) in found {
            if tw.closed(index, now) {
                parts.push(Partition {
                    value: tw.label(index),
                    source: PartSource::Window(tw.clone(), w),
                });
            } else {
                pending.push(tw.label(index));
            }
        }
        parts.sort_by(|a, b| a.value.cmp(&b.value));
        Ok(Found { parts, pending })
    }

    /// Runs the job: every selected partition not yet in the state, in order.
    pub fn run(&self) -> Result<DriftSummary> {
        let started = (self.clock)()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let (model, _) = crate::store::load_model_from(&self.stores, &self.spec.model.url)
            .map_err(|e| Error::Usage(format!("model.url: {e}")))?;
        let sha = reclag::format::checksum(&model);
        // Held from before the state is read until the run ends, so a concurrent run
        // sees every partition this one records.
        let _lock = match self.dry_run {
            true => None,
            false => Some(lock::RunLock::acquire_with(
                &self.out(lock::LOCK_FILE)?,
                self.lock_wait,
                self.lock_stale_after,
                &lock::this_run(started),
            )?),
        };
        let mut state = self.load_state()?;
        if !state.model_sha256.is_empty() && state.model_sha256 != sha {
            return Err(Error::Usage(format!(
                "{}: this output was produced with model {}, but model.url now has checksum {sha}; use a new output.url for the new model (metrics from two models are not comparable)",
                self.spec.output.url, state.model_sha256
            )));
        }
        state.model_sha256 = sha.clone();
        let Found {
            parts: all,
            pending,
        } = self.partitions(&state, started as i64)?;
        if let Some(r) = &self.spec.reference {
            let desc = r.describe();
            match &state.reference {
                Some(have) if have.url == desc => {}
                Some(have) => {
                    return Err(Error::Usage(format!(
                        "{}: this output was judged against reference {}, but the reference is now {desc}; use a new output.url (rates against two references are not comparable)",
                        self.spec.output.url, have.url
                    )));
                }
                None if !self.dry_run => {
                    state.reference = Some(self.measure_reference(&model, r, &all)?)
                }
                None => {}
            }
        }
        let is_reference = |v: &str| self.spec.reference.as_ref().is_some_and(|r| r.holds(v));
        if let Select::Only(p) = &self.select
            && is_reference(p)
        {
            return Err(Error::Usage(format!(
                "--partition {p}: it is part of the reference ({}), the baseline the other partitions are judged against",
                self.spec
                    .reference
                    .as_ref()
                    .map(|r| r.describe())
                    .unwrap_or_default()
            )));
        }
        let all: Vec<Partition> = all
            .into_iter()
            .filter(|p| !is_reference(&p.value))
            .collect();
        let known: Vec<&str> = all.iter().map(|p| p.value.as_str()).collect();
        if let Select::Only(p) = &self.select
            && !known.contains(&p.as_str())
        {
            return Err(Error::Usage(format!(
                "--partition {p}: no such partition (found: {})",
                known.join(", ")
            )));
        }
        let selected: Vec<&Partition> = all.iter().filter(|p| self.selected(&p.value)).collect();
        let already_done = selected
            .iter()
            .filter(|p| state.partitions.contains_key(&p.value))
            .count();
        let todo: Vec<&Partition> = selected
            .into_iter()
            .filter(|p| !state.partitions.contains_key(&p.value))
            .collect();
        let mut summary = DriftSummary {
            started_at_unix: started,
            source: self.spec.source.url.clone(),
            output: self.spec.output.url.clone(),
            model_sha256: sha,
            dry_run: self.dry_run,
            partitions: todo.iter().map(|p| p.value.clone()).collect(),
            skipped: vec![],
            drifted: vec![],
            already_done,
            baseline: baseline(&model, &self.spec, state.reference.as_ref()),
            pending,
            drift: false,
            interrupted: false,
            webhook: None,
        };
        if self.dry_run {
            return Ok(summary);
        }
        // From here on, `partitions` lists what this run actually processed.
        summary.partitions.clear();
        let bar = crate::progress::bar(todo.len() as u64, "partitions", "drift");
        // Commits one partition's outputs, in order; `false` once cancelled.
        let mut commit = |part: &Partition,
                          processed: Processed,
                          state: &mut State|
         -> Result<bool> {
            if let Some(l) = &_lock {
                l.check()?;
            }
            if self
                .cancel
                .as_ref()
                .is_some_and(|c| c.load(std::sync::atomic::Ordering::SeqCst))
            {
                summary.interrupted = true;
                return Ok(false);
            }
            let record = match processed {
                Processed::Skipped(reason) if self.strict => {
                    return Err(Error::Usage(format!(
                        "partition {}: {reason} (--strict: a partition that would be skipped fails the run; the partitions before it are published)",
                        part.value
                    )));
                }
                Processed::Skipped(reason) => {
                    let r = PartitionRecord {
                        partition: part.value.clone(),
                        status: "skipped".into(),
                        reason: Some(reason),
                        rows: 0,
                        ood_rows: 0,
                        ood_rate: 0.0,
                        expected_rate: 0.0,
                        p_value: 1.0,
                        drift: false,
                        drift_groups: vec![],
                        score_quantiles: vec![],
                        low_p_rate: None,
                        p_histogram: vec![],
                        groups: vec![],
                        worst: vec![],
                    };
                    summary.skipped.push((&r).into());
                    r
                }
                Processed::Done {
                    record,
                    metrics,
                    worst,
                } => {
                    let name = format!("part-{}.parquet", file_safe(&part.value));
                    self.out(&format!("metrics/{name}"))?
                        .put(parquet_bytes(&metrics)?)?;
                    self.checkpoint(&format!("metrics:{}", part.value))?;
                    if let Some(w) = worst {
                        self.out(&format!("worst/{name}"))?
                            .put(parquet_bytes(&w)?)?;
                    }
                    self.checkpoint(&format!("worst:{}", part.value))?;
                    if record.drift {
                        summary.drifted.push(record.as_ref().into());
                    }
                    *record
                }
            };
            summary.partitions.push(part.value.clone());
            state.partitions.insert(part.value.clone(), record);
            self.save_state(state)?;
            self.checkpoint(&format!("state:{}", part.value))?;
            bar.inc(1);
            Ok(true)
        };
        let routing = self.routing();
        let mut rest: &[&Partition] = &todo;
        while !rest.is_empty() {
            let chain = &rest[..rest.len().min(CHAINED_PARTITIONS)];
            // A partition that was skipped or failed to open is read as no files; its
            // verdict (or error) is committed in its turn, after the ones before it.
            let mut reads = Vec::with_capacity(chain.len());
            let mut not_read: Vec<Option<Result<Processed>>> = Vec::with_capacity(chain.len());
            for part in chain {
                let (files, window, verdict) = match self.prepare(&model, part) {
                    Ok(Prepared::Ready(files, window)) => (files, window, None),
                    Ok(Prepared::Skipped(reason)) => {
                        (vec![], None, Some(Ok(Processed::Skipped(reason))))
                    }
                    Err(e) => (vec![], None, Some(Err(e))),
                };
                reads.push((files, window));
                not_read.push(verdict);
            }
            let files_in: Vec<usize> = reads.iter().map(|(f, _)| f.len()).collect();
            let mut go_on = true;
            let unreadable =
                self.accumulate(&model, &routing, reads, self.spec.report.top_k, |i, g| {
                    let processed = match not_read[i].take() {
                        Some(verdict) => verdict?,
                        None => self.conclude(&model, chain[i], &state, files_in[i], g)?,
                    };
                    go_on = commit(chain[i], processed, &mut state)?;
                    Ok(go_on)
                })?;
            if !go_on {
                break;
            }
            rest = match unreadable {
                None => &rest[chain.len()..],
                // The partitions before the unreadable one are committed; it is
                // skipped with the reason, and the next chain starts after it.
                Some((p, e)) => {
                    let reason = format!("could not be read: {e}");
                    if !commit(chain[p], Processed::Skipped(reason), &mut state)? {
                        break;
                    }
                    &rest[p + 1..]
                }
            };
        }
        bar.finish_and_clear();
        let html = report::render(&self.spec, &state, &summary.baseline);
        self.out("report.html")?.put(Bytes::from(html))?;
        summary.drift = !summary.drifted.is_empty();
        if let Some(w) = &self.spec.webhook
            && (summary.drift || w.on == "always")
        {
            summary.webhook = Some(match webhook::post(w, &summary.json_line()) {
                Ok(attempts) => format!("delivered (attempt {attempts})"),
                Err(e) => {
                    eprintln!("warning: {e}");
                    format!("failed: {e}")
                }
            });
        }
        Ok(summary)
    }

    fn save_state(&self, state: &State) -> Result<()> {
        let mut text = serde_json::to_string_pretty(state).expect("the state serializes");
        text.push('\n');
        self.out(STATE_FILE)?.put(Bytes::from(text))
    }

    /// Scores every row of the reference (data elsewhere, or partitions of the
    /// source, among `found`) against the model, once.
    fn measure_reference(
        &self,
        model: &Model,
        r: &spec::ReferenceSpec,
        found: &[Partition],
    ) -> Result<ReferenceRecord> {
        let desc = r.describe();
        let routing = self.routing();
        let reads: Vec<(Vec<ParquetFile>, Window<'_>)> = match r.form() {
            spec::Reference::Url(url) => {
                let files = crate::io::open_all(&self.stores, &[url.to_string()])
                    .map_err(|e| Error::Usage(format!("reference.url: {e}")))?;
                vec![(files, None)]
            }
            form => {
                let parts: Vec<&Partition> = found.iter().filter(|p| r.holds(&p.value)).collect();
                let values: Vec<&str> = found.iter().map(|p| p.value.as_str()).collect();
                if let spec::Reference::Partitions(named) = form
                    && let Some(missing) = named.iter().find(|v| !values.contains(&v.as_str()))
                {
                    return Err(Error::Usage(format!(
                        "reference.partitions: no partition {missing} in {} (found: {})",
                        self.spec.source.url,
                        values.join(", ")
                    )));
                }
                if parts.is_empty() {
                    return Err(Error::Usage(format!(
                        "reference: no partitions of {} in the {desc} (found: {})",
                        self.spec.source.url,
                        values.join(", ")
                    )));
                }
                let mut reads = vec![];
                for p in parts {
                    match self.prepare(model, p)? {
                        Prepared::Ready(files, window) => reads.push((files, window)),
                        Prepared::Skipped(why) => {
                            return Err(Error::Usage(format!(
                                "reference partition {}: {why}; the baseline needs every reference partition",
                                p.value
                            )));
                        }
                    }
                }
                reads
            }
        };
        let k = model.groups().len();
        let mut whole = Acc::default();
        let mut groups: Vec<Acc> = (0..k).map(|_| Acc::default()).collect();
        if let Some((_, e)) = self.accumulate(model, &routing, reads, 0, |_, g| {
            whole.merge(g.whole);
            for (a, b) in groups.iter_mut().zip(g.groups) {
                a.merge(b);
            }
            Ok(true)
        })? {
            return Err(Error::Usage(format!("reference ({desc}): {e}")));
        }
        if whole.scored() == 0 {
            return Err(Error::Usage(format!(
                "reference ({desc}): no scorable rows; point it at in-distribution data with the '{}' column",
                self.spec.source.embedding
            )));
        }
        whole.scores.sort_by(f64::total_cmp);
        Ok(ReferenceRecord {
            url: desc,
            rows: whole.scored(),
            ood_rows: whole.ood_rows,
            groups: groups
                .iter()
                .enumerate()
                .filter(|(_, a)| a.scored() > 0)
                .map(|(gi, a)| (group_name(model, gi), (a.scored(), a.ood_rows)))
                .collect(),
            score_quantiles: quantiles(&whole.scores),
            low_p_rate: whole.low_p_rate(),
            p_histogram: whole.p_hist,
        })
    }

    /// Scores every row of each partition's files into its statistics and worst rows
    /// and hands them to `each` in partition order (`Ok(false)` stops the reading).
    /// Decoding overlaps scoring as in `reclag score`, and one reader chain spans the
    /// partitions: the next partition's row groups decode while this one's last is
    /// still being scored, where reading partition by partition left a core idle at
    /// every boundary.
    fn accumulate(
        &self,
        model: &Model,
        routing: &Routing,
        parts: Vec<(Vec<ParquetFile>, Window<'_>)>,
        top_k: usize,
        mut each: impl FnMut(usize, Gathered) -> Result<bool>,
    ) -> Result<Option<(usize, Error)>> {
        let k = model.groups().len();
        let fresh = || Gathered {
            whole: Acc::default(),
            groups: (0..k).map(|_| Acc::default()).collect(),
            worst: Worst {
                k: top_k,
                batch: None,
                keys: vec![],
            },
        };
        let shared = Arc::new(model.clone());
        let pv = PValues {
            model,
            sets: model.calibration(),
            route: routing.route(),
            level: self.spec.alert.p_level,
        };
        let (mut part_of, mut paths, mut reads) = (vec![], vec![], vec![]);
        let mut windows = vec![];
        for (p, (files, window)) in parts.into_iter().enumerate() {
            // A file whose embedding does not resolve is left to the usual path,
            // which reports it.
            let fused = files.first().filter(|_| self.fused).and_then(|first| {
                let emb = first.column_index(&self.spec.source.embedding).ok()?;
                fused::FusedDrift::new(
                    shared.clone(),
                    routing.clone(),
                    window.map(|(tw, w)| (tw.clone(), w)),
                    top_k,
                    first.schema.clone(),
                    emb,
                    first.path.clone(),
                )
                .map(Arc::new)
            });
            for f in files {
                part_of.push(p);
                paths.push(f.path.clone());
                let consumer = fused
                    .clone()
                    .map(|f| f as Arc<dyn reclag_parquet::Fused<Output = fused::DriftPart>>);
                reads.push((f, consumer));
            }
            windows.push(window);
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(2);
        std::thread::scope(|scope| {
            scope.spawn(move || {
                crate::io::read_ahead_each(reads, None, |i, b| {
                    let stop = b.is_err();
                    tx.send((i, b)).is_ok() && !stop
                })
            });
            let mut out = ScoreOutput::default();
            let (mut file, mut base) = (usize::MAX, 0u64);
            let (mut idx, mut keep) = (vec![], vec![]);
            let (mut cur, mut g) = (0, fresh());
            // Returning early drops `rx`, which stops the reader.
            for (fi, item) in rx {
                // Partitions before this input's are whole, even when it failed:
                // they are committed before its error is raised.
                let p = part_of[fi];
                while cur < p {
                    if !each(cur, std::mem::replace(&mut g, fresh()))? {
                        return Ok(None);
                    }
                    cur += 1;
                }
                let part = match item {
                    Ok(part) => part,
                    Err(e) if unreadable(&e) => return Ok(Some((p, e))),
                    Err(e) => return Err(e),
                };
                if fi != file {
                    (file, base) = (fi, 0);
                }
                let window = windows[p];
                let Gathered {
                    whole,
                    groups,
                    worst,
                } = &mut g;
                let batch = match part {
                    Part::Rows(batch) => batch,
                    Part::Fused(fused::DriftPart::Stats(rows)) => {
                        for i in 0..rows.rows() {
                            if !rows.in_window(i) {
                                continue;
                            }
                            let scored = rows.scored(i);
                            let p = pv.of(scored, rows.group(i));
                            whole.add(scored, p, pv.level);
                            if let Some(gi) = rows.group(i) {
                                groups[gi as usize].add(scored, p, pv.level);
                            }
                        }
                        base += rows.rows() as u64;
                        continue;
                    }
                    Part::Fused(fused::DriftPart::Picked(batch)) => {
                        worst.offer_picked(&batch, fi as u32, base)?;
                        continue;
                    }
                };
                let g = match crate::score::score_batch(
                    model,
                    &batch,
                    &self.spec.source.embedding,
                    routing,
                    Work::EnergyOnly,
                    &paths[fi],
                    &mut out,
                )
                .map_err(|e| crate::score::offset_rows(e, base as usize))
                {
                    Ok(g) => g,
                    Err(e) if unreadable(&e) => return Ok(Some((p, e))),
                    Err(e) => return Err(e),
                };
                // A time window takes the rows whose timestamp falls in it. The whole
                // batch is scored first, so an error names the row in its file.
                let mask = match window {
                    Some((tw, w)) => {
                        tw.indices(
                            crate::io::batch_column(&batch, &tw.column, &paths[fi])?,
                            &mut idx,
                        );
                        keep.clear();
                        keep.extend(idx.iter().map(|x| *x == Some(w)));
                        Some(keep.as_slice())
                    }
                    None => None,
                };
                for i in 0..batch.num_rows() {
                    if mask.is_some_and(|m| !m[i]) {
                        continue;
                    }
                    let scored = out.valid[i].then(|| (out.score[i], out.energy[i]));
                    let gi = g.as_ref().and_then(|g| g[i]);
                    let p = pv.of(scored, gi);
                    whole.add(scored, p, pv.level);
                    if let Some(gi) = gi {
                        groups[gi as usize].add(scored, p, pv.level);
                    }
                }
                worst.offer(&batch, &out, fi as u32, base, mask)?;
                base += batch.num_rows() as u64;
            }
            while cur < windows.len() {
                if !each(cur, std::mem::replace(&mut g, fresh()))? {
                    return Ok(None);
                }
                cur += 1;
            }
            Ok(None)
        })
    }

    fn routing(&self) -> Routing {
        match &self.spec.source.group {
            Some(g) => Routing::Column(g.clone()),
            None => Routing::Ungrouped(self.spec.source.route.unwrap_or_default()),
        }
    }

    /// Opens a partition's files, or says why it is skipped.
    fn prepare<'p>(&self, model: &Model, part: &'p Partition) -> Result<Prepared<'p>> {
        let (files, window): (Vec<FileRowGroups>, _) = match &part.source {
            PartSource::Dir(dir) => (
                crate::io::parquet_files_below(dir)?
                    .into_iter()
                    .map(|l| (l, None))
                    .collect(),
                None,
            ),
            PartSource::Window(tw, w) => (
                w.files
                    .iter()
                    .map(|(l, rgs)| (l.clone(), Some(rgs.clone())))
                    .collect(),
                Some((tw, w.index)),
            ),
            PartSource::Done => {
                return Err(Error::Usage(format!(
                    "internal: window {} is already processed",
                    part.value
                )));
            }
        };
        if files.is_empty() {
            return Ok(Prepared::Skipped(format!(
                "no Parquet files in {}",
                part.describe()
            )));
        }
        let routing = self.routing();
        let mut opened = Vec::with_capacity(files.len());
        for (loc, rgs) in &files {
            let mut file = match ParquetFile::open(loc) {
                Ok(f) => f,
                Err(e) if unreadable(&e) => {
                    return Ok(Prepared::Skipped(format!("could not be read: {e}")));
                }
                Err(e) => return Err(e),
            };
            if let Some(rgs) = rgs {
                file = file.with_row_groups(rgs.clone());
            }
            if let Err(reason) = file.check_scoring_columns(
                model.dim(),
                &self.spec.source.embedding,
                routing.column(),
            ) {
                return Ok(Prepared::Skipped(reason));
            }
            opened.push(file);
        }
        Ok(Prepared::Ready(opened, window))
    }

    /// A partition's record, metrics and worst rows from what its rows gave.
    fn conclude(
        &self,
        model: &Model,
        part: &Partition,
        state: &State,
        files: usize,
        Gathered {
            mut whole,
            mut groups,
            worst,
        }: Gathered,
    ) -> Result<Processed> {
        let routing = self.routing();
        if whole.rows == 0 {
            return Ok(Processed::Skipped(format!(
                "no rows in {files} file(s) of {}",
                part.describe()
            )));
        }
        let reference = state.reference.as_ref();
        let expected = expected_rate(model, &self.spec, reference, None);
        let alert = &self.spec.alert;
        let present = groups.iter().filter(|g| g.scored() > 0).count().max(1);
        let mut metrics = MetricsBuilder::default();
        let verdict = |acc: &Acc, level: f64, group: Option<&str>| -> (f64, f64, bool) {
            let n = acc.scored();
            let rate = if n == 0 {
                0.0
            } else {
                acc.ood_rows as f64 / n as f64
            };
            let p = match reference_counts(&self.spec, reference, group) {
                Some((m, r)) => stats::fisher_sf(acc.ood_rows, n, r, m),
                None => stats::binomial_sf(
                    acc.ood_rows,
                    n,
                    expected_rate(model, &self.spec, reference, group),
                ),
            };
            let drift =
                n >= alert.min_rows && (p < level || alert.max_rate.is_some_and(|m| rate > m));
            (rate, p, drift)
        };
        let (rate, p, drift) = verdict(&whole, alert.alpha, None);
        metrics.push(&part.value, None, &mut whole, expected, rate, p, drift);
        let mut drift_groups = vec![];
        let mut group_records = vec![];
        for (gi, acc) in groups.iter_mut().enumerate() {
            if acc.rows == 0 {
                continue;
            }
            // Bonferroni across the groups present, so ten groups do not make ten
            // chances of a false alarm.
            let name = group_name(model, gi);
            let g_expected =
                expected_rate(model, &self.spec, state.reference.as_ref(), Some(&name));
            let (rate, p, gdrift) = verdict(acc, alert.alpha / present as f64, Some(&name));
            if gdrift {
                drift_groups.push(name.clone());
            }
            group_records.push(GroupRecord {
                group: name.clone(),
                rows: acc.rows,
                ood_rows: acc.ood_rows,
                ood_rate: rate,
                p_value: p,
                drift: gdrift,
                low_p_rate: acc.low_p_rate(),
            });
            metrics.push(&part.value, Some(&name), acc, g_expected, rate, p, gdrift);
        }
        let mut scores = std::mem::take(&mut whole.scores);
        scores.sort_by(f64::total_cmp);
        let score_quantiles = quantiles(&scores);
        let worst = match worst.batch {
            Some(b) => Some(self.explain_worst(model, &part.value, b, &routing)?),
            None => None,
        };
        let record = PartitionRecord {
            partition: part.value.clone(),
            status: "done".into(),
            reason: None,
            rows: whole.rows,
            ood_rows: whole.ood_rows,
            ood_rate: rate,
            expected_rate: expected,
            p_value: p,
            drift: drift || !drift_groups.is_empty(),
            drift_groups,
            score_quantiles,
            low_p_rate: whole.low_p_rate(),
            p_histogram: std::mem::take(&mut whole.p_hist),
            groups: group_records,
            worst: worst.as_ref().map(worst_preview).unwrap_or_default(),
        };
        Ok(Processed::Done {
            record: Box::new(record),
            metrics: metrics.finish()?,
            worst,
        })
    }

    /// Adds the partition and `reclag_explain` to the worst rows.
    fn explain_worst(
        &self,
        model: &Model,
        partition: &str,
        batch: RecordBatch,
        routing: &Routing,
    ) -> Result<RecordBatch> {
        let path = PathBuf::from(partition);
        let col = crate::io::batch_column(&batch, &self.spec.source.embedding, &path)?;
        let rows = reclag::arrow::embedding_rows(
            col.as_ref(),
            &self.spec.source.embedding,
            Some(model.dim()),
        )
        .map_err(Error::in_file(&path))?;
        let groups = routing.resolve(model, &batch, &path)?;
        let mut ex = reclag::Explanation::default();
        model.explain_into(&rows, groups.as_deref(), &mut ex)?;
        let explain = reclag::arrow::explain_array(model, ex);
        let mut fields: Vec<Field> = vec![Field::new("partition", DataType::Utf8, false)];
        fields.extend(batch.schema().fields().iter().map(|f| f.as_ref().clone()));
        fields.push(Field::new(
            "reclag_explain",
            explain.data_type().clone(),
            true,
        ));
        let mut cols: Vec<ArrayRef> = vec![Arc::new(StringArray::from(vec![
            partition;
            batch.num_rows()
        ]))];
        cols.extend(batch.columns().iter().cloned());
        cols.push(explain);
        RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).map_err(arrow_err)
    }
}

/// The worst rows' scalar columns as text (embeddings and other lists are left out).
fn worst_preview(batch: &RecordBatch) -> Vec<WorstRow> {
    use datafusion::arrow::util::display::array_value_to_string;
    let score = batch.column_by_name(WORST_SCORE).and_then(|c| {
        c.as_any()
            .downcast_ref::<arrow_array::Float64Array>()
            .cloned()
    });
    let shown: Vec<(String, &ArrayRef)> = batch
        .schema()
        .fields()
        .iter()
        .zip(batch.columns())
        .filter(|(f, _)| {
            !f.data_type().is_nested() && f.name() != "partition" && f.name() != WORST_SCORE
        })
        .map(|(f, c)| (f.name().clone(), c))
        .take(6)
        .collect();
    (0..batch.num_rows())
        .map(|i| WorstRow {
            score: score.as_ref().map_or(f64::NAN, |s| s.value(i)),
            columns: shown
                .iter()
                .map(|(n, c)| {
                    let v = if c.is_null(i) {
                        "null".to_string()
                    } else {
                        array_value_to_string(c, i).unwrap_or_default()
                    };
                    (n.clone(), v)
                })
                .collect(),
        })
        .collect()
}

fn quantiles(sorted: &[f64]) -> Vec<f64> {
    (0..QUANTILES)
        .filter_map(|i| stats::quantile_sorted(sorted, i as f64 / (QUANTILES - 1) as f64))
        .collect()
}

/// The OOD rate in-distribution rows should show, for the whole partition (`group`
/// `None`) or one group: `alert.expected_rate` if set; else the reference's rate (the
/// group's own when the reference has enough of its rows); else the `ood_rate` the
/// model was calibrated at.
pub fn expected_rate(
    model: &Model,
    spec: &DriftSpec,
    reference: Option<&ReferenceRecord>,
    group: Option<&str>,
) -> f64 {
    if let Some(r) = spec.alert.expected_rate {
        return r;
    }
    if let Some((n, ood)) = reference_counts(spec, reference, group) {
        return ood as f64 / n.max(1) as f64;
    }
    crate::calibrate::model_rate(model).unwrap_or(0.05)
}

/// The reference's `(rows, OOD rows)` a partition (`group` `None`) or group is judged
/// against, when the expected rate comes from a reference: the group's own where the
/// reference has enough of its rows, else the whole reference's.
pub(crate) fn reference_counts(
    spec: &DriftSpec,
    reference: Option<&ReferenceRecord>,
    group: Option<&str>,
) -> Option<(u64, u64)> {
    if spec.alert.expected_rate.is_some() {
        return None;
    }
    let r = reference?;
    Some(
        group
            .and_then(|g| r.groups.get(g).copied())
            .filter(|(n, _)| *n >= MIN_REFERENCE_GROUP_ROWS)
            .unwrap_or((r.rows, r.ood_rows)),
    )
}

/// What the OOD rates are judged against, in words for the summary and the report.
pub fn baseline(model: &Model, spec: &DriftSpec, reference: Option<&ReferenceRecord>) -> String {
    if let Some(r) = spec.alert.expected_rate {
        return format!("alert.expected_rate = {r}");
    }
    if let Some(r) = reference {
        return format!(
            "the reference ({}): {:.2} % of its {} rows flagged; each partition's count is compared with the reference's by a one-sided Fisher exact test (per group where the reference has {MIN_REFERENCE_GROUP_ROWS} rows or more)",
            r.url,
            100.0 * r.ood_rate(),
            r.rows
        );
    }
    if let Some(r) = &spec.reference {
        return format!(
            "the reference ({}), measured by the first run that is not a dry run",
            r.describe()
        );
    }
    let level = expected_rate(model, spec, None, None);
    format!(
        "the model's calibration level, ood_rate = {level}: the share of its own held-out calibration rows it flags. Fresh ID data can be flagged more often (held-out training rows look more in-distribution to a network trained on them), so clean partitions may alert; give the job a [reference] of clean partitions, or re-threshold the model with `reclag calibrate`"
    )
}

fn group_name(model: &Model, gi: usize) -> String {
    match &model.groups()[gi].key {
        Some(reclag::GroupKey::Int(v)) => v.to_string(),
        Some(reclag::GroupKey::Str(v)) => v.clone(),
        None => gi.to_string(),
    }
}

/// Partition values become file names; anything but `[A-Za-z0-9._-]` is escaped.
fn file_safe(value: &str) -> String {
    value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c.to_string()
            } else {
                format!("%{:02X}", c as u32)
            }
        })
        .collect()
}

/// The metrics table schema: one row per partition × group; the whole partition has a
/// null group.
pub fn metrics_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("partition", DataType::Utf8, false),
        Field::new("group", DataType::Utf8, true),
        Field::new("rows", DataType::UInt64, false),
        Field::new("null_rows", DataType::UInt64, false),
        Field::new("ood_rows", DataType::UInt64, false),
        Field::new("ood_rate", DataType::Float64, true),
        Field::new("expected_rate", DataType::Float64, false),
        Field::new("p_value", DataType::Float64, false),
        Field::new("energy_p05", DataType::Float64, true),
        Field::new("energy_p50", DataType::Float64, true),
        Field::new("energy_p95", DataType::Float64, true),
        Field::new("mean_score", DataType::Float64, true),
        Field::new("drift", DataType::Boolean, false),
        Field::new("low_p_rate", DataType::Float64, true),
    ]))
}

#[derive(Default)]
struct MetricsBuilder {
    partition: StringBuilder,
    group: StringBuilder,
    rows: UInt64Builder,
    null_rows: UInt64Builder,
    ood_rows: UInt64Builder,
    ood_rate: Float64Builder,
    expected: Float64Builder,
    p_value: Float64Builder,
    e05: Float64Builder,
    e50: Float64Builder,
    e95: Float64Builder,
    mean_score: Float64Builder,
    drift: BooleanBuilder,
    low_p_rate: Float64Builder,
}

impl MetricsBuilder {
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        partition: &str,
        group: Option<&str>,
        acc: &mut Acc,
        expected: f64,
        rate: f64,
        p: f64,
        drift: bool,
    ) {
        let n = acc.scored();
        self.partition.append_value(partition);
        self.group.append_option(group);
        self.rows.append_value(acc.rows);
        self.null_rows.append_value(acc.null_rows);
        self.ood_rows.append_value(acc.ood_rows);
        self.ood_rate.append_option((n > 0).then_some(rate));
        self.expected.append_value(expected);
        self.p_value.append_value(p);
        acc.energies.sort_by(f64::total_cmp);
        for (b, q) in [
            (&mut self.e05, 0.05),
            (&mut self.e50, 0.5),
            (&mut self.e95, 0.95),
        ] {
            b.append_option(stats::quantile_sorted(&acc.energies, q));
        }
        self.mean_score
            .append_option((n > 0).then(|| acc.score_sum / n as f64));
        self.drift.append_value(drift);
        self.low_p_rate.append_option(acc.low_p_rate());
    }

    fn finish(mut self) -> Result<RecordBatch> {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.partition.finish()),
            Arc::new(self.group.finish()),
            Arc::new(self.rows.finish()),
            Arc::new(self.null_rows.finish()),
            Arc::new(self.ood_rows.finish()),
            Arc::new(self.ood_rate.finish()),
            Arc::new(self.expected.finish()),
            Arc::new(self.p_value.finish()),
            Arc::new(self.e05.finish()),
            Arc::new(self.e50.finish()),
            Arc::new(self.e95.finish()),
            Arc::new(self.mean_score.finish()),
            Arc::new(self.drift.finish()),
            Arc::new(self.low_p_rate.finish()),
        ];
        RecordBatch::try_new(metrics_schema(), cols).map_err(arrow_err)
    }
}

/// A whole Parquet file in memory (metrics and worst rows are small), so it can be
/// published with one atomic write.
fn parquet_bytes(batch: &RecordBatch) -> Result<Bytes> {
    let mut buf = Vec::new();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
        .build();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut buf, batch.schema(), Some(props))
        .map_err(|source| Error::Parquet {
            path: PathBuf::from("<drift output>"),
            source,
        })?;
    w.write(batch)
        .and_then(|()| w.close().map(|_| ()))
        .map_err(|source| Error::Parquet {
            path: PathBuf::from("<drift output>"),
            source,
        })?;
    Ok(Bytes::from(buf))
}

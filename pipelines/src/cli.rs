//! The `reclag` command line. Argument structs live in the library so tests drive the
//! exact same parser in-process; `main.rs` only maps errors to exit codes.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand, ValueEnum};
use reclag::baselines::Baseline;
use reclag::{Init, LabelKind, Normalize, Recipe, Route, TrainParams};

use crate::error::{Error, Result};
use crate::eval::{EvalJob, parse_named};
use crate::route::Routing;
use crate::score::ScoreJob;
use crate::store::{StoreEnv, Stores};
use crate::train::TrainJob;

const ABOUT: &str = "Find out-of-distribution (OOD) rows in tables of embeddings with RecLag.";
const LONG_ABOUT: &str = "\
Find out-of-distribution (OOD) rows in tables of embeddings with RecLag, a modern
Hopfield network whose rectified memory Lagrangian makes the origin an attractor:
rows that fall into it are OOD.

Typical workflow:
  reclag train --input train.parquet --embedding embedding --label label --output model.parquet
  reclag score --model model.parquet --input new.parquet --output scored.parquet --group label
  reclag eval  --model model.parquet --id test.parquet --ood web=web.parquet --group-from-logits logits
  reclag calibrate --model model.parquet --input fresh-id.parquet --output model-v2.parquet

Try it with no data of your own:
  reclag demo";

#[derive(Parser, Debug)]
#[command(name = "reclag", version, about = ABOUT, long_about = LONG_ABOUT, after_long_help = crate::store::ENV_HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Fit a model from an in-distribution (ID) table.
    Train(TrainArgs),
    /// Add OOD scores to every row of a table.
    Score(ScoreArgs),
    /// Measure how well the model separates ID from OOD tables (AUROC, FPR95, AUPR).
    Eval(EvalArgs),
    /// Show what a model file contains: groups, sizes, thresholds, provenance.
    Inspect(InspectArgs),
    /// Run SQL over Parquet tables with the reclag functions (reclag_score, ...).
    Sql(SqlArgs),
    /// Keep only the in-distribution rows of a Parquet dataset (or only the OOD ones).
    Filter(FilterArgs),
    /// Re-threshold a model on new ID rows (new τ and calibration scores, same memories).
    Calibrate(CalibrateArgs),
    /// Detect drift in a partitioned lake, partition by partition (for nightly jobs).
    #[command(subcommand)]
    Drift(DriftCommand),
    /// Train, score and evaluate on a bundled real sample; no network or data needed.
    Demo(DemoArgs),
}

#[derive(Subcommand, Debug)]
pub enum DriftCommand {
    /// Score every partition not processed yet, test its OOD rate, publish metrics,
    /// the worst rows and report.html. Exit code 0: no drift; 2: drift; 1: error.
    Run(DriftRunArgs),
    /// Run a drift job now and then every --every, for machines without cron or a
    /// scheduler; one JSON line per run. SIGTERM or Ctrl-C stop it cleanly (a run in
    /// progress stops before its next partition).
    Watch(DriftWatchArgs),
}

#[derive(Args, Debug)]
pub struct DriftWatchArgs {
    /// The job spec (TOML); see `reclag drift run --help`.
    pub job: PathBuf,
    /// How often: 30s, 15m, 6h, 24h, 1d, 1h30m.
    #[arg(long, default_value = "24h", value_name = "DURATION")]
    pub every: String,
}

#[derive(Args, Debug)]
#[command(after_long_help = "\
The job spec (TOML; examples in pipelines/jobs/):

  [source]
  url = \"s3://lake/events\"        # or a local path
  partitioning = \"hive:date\"      # directories date=YYYY-MM-DD, or:
  # partitioning = \"time:event_time\" # a timestamp column cut into UTC windows
  # window = \"1d\"                   #   of this length (6h, 30m, ...), processed
  # lateness = \"2h\"                 #   once closed (end + lateness ≤ now)
  embedding = \"embedding\"
  group = \"label\"                 # optional: per-group rates and routing
  # route = \"union\"               # without group: best margin (default) or union
  [model]
  url = \"models/prod.parquet\"
  [output]
  url = \"drift-out/\"              # metrics/, worst/, report.html, _state.json
  [alert]
  alpha = 0.01                     # level of the one-sided test of the OOD rate
  min_rows = 100
  # max_rate = 0.2                 # also alert above this absolute OOD rate
  # expected_rate = 0.05           # default: the reference's rate, else the model's
  #                                #   calibration ood_rate
  # p_level = 0.05                 # metrics count rows with conformal p-value below it
  [report]
  top_k = 20                       # worst rows kept per partition
  # [reference]                    # the baseline the expected rate comes from:
  # partitions = [\"2026-11-01\", \"2026-11-02\"] # clean partitions of the source, or
  # from = \"2026-11-01\"              #   a period of them (to is required),
  # to = \"2026-11-07\"
  # url = \"s3://lake/validation/\"   #   or ID data elsewhere
  # Reference partitions are the baseline, never judged. Without a reference the
  # expected rate is the model's calibration level, which fresh ID data can exceed
  # (embeddings from a network trained on the model's table make its held-out rows
  # look more in-distribution): clean days may then alert. The summary's `baseline`
  # and the report say which was used.

Outputs are committed per partition; a killed run rerun gives the same bytes, and
partitions already processed are skipped. Query the metrics with
  reclag sql --table m=drift-out/metrics/ \"SELECT * FROM m WHERE drift\"
Prints one JSON line: the partitions processed, skipped (and why) and drifted.")]
pub struct DriftRunArgs {
    /// The job spec (TOML).
    pub job: PathBuf,
    /// Process only this partition value (e.g. 2026-11-21), if not done yet.
    #[arg(long, conflicts_with = "since", value_name = "P")]
    pub partition: Option<String>,
    /// Process partitions with values ≥ P (in sort order) that are not done yet.
    #[arg(long, value_name = "P")]
    pub since: Option<String>,
    /// Check the spec, the model and the lake, and list what would be processed.
    #[arg(long)]
    pub dry_run: bool,
    /// Fail the run (exit 1) at the first partition that would be skipped: no
    /// Parquet files, a missing column, a dimension mismatch, or a file that cannot be
    /// read (not Parquet, corrupt, a column of another type). Without it such a
    /// partition is recorded as skipped with the reason (summary and report) and the
    /// run goes on.
    #[arg(long)]
    pub strict: bool,
    /// One run per output at a time: a run holds `_lock` in the output location while
    /// it runs. Another run waits this long for it (30s, 10m, 2h), then exits naming
    /// the holder; 0s exits at once.
    #[arg(long, default_value = "10m", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub lock_wait: std::time::Duration,
    /// On an object store, a run keeps its `_lock` object fresh with a heartbeat
    /// (every quarter of this); a lock unchanged this long belongs to a run that was
    /// killed, and a waiting run takes it over. Keep it well below --lock-wait.
    #[arg(long, default_value = "2m", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub lock_stale_after: std::time::Duration,
}

#[derive(Args, Debug)]
#[command(after_long_help = "\
Every input column is kept. Rows whose embedding is null or non-finite are neither ID
nor OOD and are kept by neither --keep id nor --keep ood; the summary counts them with
the rows dropped. Batches from reclag's Parquet reader are filtered one at a time by
the Polars expression is_ood and written as they come, so memory stays bounded for
data larger than RAM. The output is written to a temporary name and renamed when
complete.

Examples:
  reclag filter --model model.parquet --input 'new/*.parquet' --group label \\
      --keep id --output clean.parquet
  reclag filter --model model.parquet --input new/ --keep ood --output quarantine.parquet
  reclag filter --model model.parquet --input new/ --keep ood --fdr 0.1 --output suspects.parquet")]
pub struct FilterArgs {
    /// The model file: a path or URL.
    #[arg(long, value_name = "MODEL")]
    pub model: String,
    /// Parquet file(s), directories of them, or globs; local paths or object-store
    /// URLs (s3://, gs://, az://). All must share one schema.
    #[arg(long, required = true, num_args = 1.., value_name = "PATH")]
    pub input: Vec<String>,
    /// Which rows to keep: id (the model accepts them) or ood (quarantine).
    #[arg(long, value_enum)]
    pub keep: crate::filter::Keep,
    /// Decide by false-discovery rate instead of each row's threshold: a row is OOD
    /// when Benjamini–Hochberg at level Q over the p-values of every input row rejects
    /// it, so at most a share Q of the rows flagged OOD are expected to be ID (for ID
    /// rows exchangeable with the model's calibration rows). Q in (0, 1). Two passes
    /// over the input: the first scores every row and keeps a count per distinct
    /// p-value (at most one per calibration score, whatever the input size), the
    /// second filters.
    #[arg(long, value_name = "Q")]
    pub fdr: Option<f64>,
    /// The output Parquet file (local).
    #[arg(long, value_name = "OUT")]
    pub output: String,
    /// Embedding column: FixedSizeList/List/LargeList of Float32 or Float64.
    #[arg(long, default_value = "embedding", value_name = "COL")]
    pub embedding: String,
    /// Route each row to the group named by this column (integer or string class
    /// label); a null label, or no --group, routes by largest margin.
    #[arg(long, value_name = "COL")]
    pub group: Option<String>,
    /// Without --group: `best` (default) scores each row against the group of
    /// largest margin; `union` against every group's memories at once with the union
    /// threshold τ*, decided on the first step (spec §4).
    #[arg(long, value_enum, value_name = "ROUTE", conflicts_with = "group")]
    pub route: Option<RouteArg>,
}

#[derive(Args, Debug)]
#[command(after_long_help = "\
Functions (each takes model, embedding [, group]; model is a name given with
--model, or a model file path or URL, as a string literal):
  reclag_score, reclag_energy, reclag_ood_probability, reclag_is_ood, reclag_attractor,
  reclag_p_value (spec §11; needs a model with calibration scores), reclag_explain
A NULL or omitted group routes the row to the group of largest margin.

Example:
  reclag sql --table events=events/ --model prod=model.parquet \\
    \"SELECT id, reclag_score('prod', embedding, label) AS s FROM events
     WHERE reclag_is_ood('prod', embedding, label)\" --output flagged.parquet

SHOW FUNCTIONS and information_schema describe the functions.")]
pub struct SqlArgs {
    /// The query.
    pub query: String,
    /// A table: NAME=URL of a Parquet file, a directory or prefix of them, a glob
    /// (lake/*/part-*.parquet), or a hive-partitioned lake (key=value directories
    /// become columns). URL: a path, file://, s3://, gs:// or az://. Repeatable.
    #[arg(long, value_name = "NAME=URL", value_parser = parse_named)]
    pub table: Vec<(String, String)>,
    /// A model: NAME=URL of a model file (path or object-store URL). Repeatable.
    #[arg(long, value_name = "NAME=URL", value_parser = parse_named)]
    pub model: Vec<(String, String)>,
    /// Write the result here: a local file (written to a temporary name, then
    /// renamed), for Parquet an object-store URL (published when complete), or `-`
    /// for CSV or NDJSON streamed to standard output. Without it the result prints as
    /// tables of up to 1,024 rows each, as the rows arrive.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// table, parquet, csv or ndjson (default: from the --output extension, else table).
    #[arg(long)]
    pub format: Option<String>,
}

#[derive(Args, Debug)]
#[command(after_long_help = "\
Memory: rows are read in batches. Without --max-rows-per-group every valid row is
kept (4·d bytes each). With --max-rows-per-group N each group keeps a seeded
uniform sample (reservoir) of at most N rows, so memory is bounded by
groups × N × d × 4 bytes however large the input is.

Determinism: the same input, parameters and --seed give a byte-identical model.

Example:
  reclag train --input data/train/ --embedding embedding --label label \\
      --output model.parquet --max-rows-per-group 100000")]
pub struct TrainArgs {
    /// Parquet file(s), directories or prefixes of them, or globs like dir/*.parquet;
    /// paths or s3://, gs://, az:// URLs.
    #[arg(long, required = true, num_args = 1.., value_name = "URL")]
    pub input: Vec<String>,
    /// Embedding column: FixedSizeList/List/LargeList of Float32 or Float64.
    #[arg(long, default_value = "embedding", value_name = "COL")]
    pub embedding: String,
    /// Class label column (integer or string); one group is fitted per label.
    /// Without it the whole table is one group.
    #[arg(long, value_name = "COL")]
    pub label: Option<String>,
    /// Where to write the model (one Parquet file, written atomically): a path or URL.
    #[arg(long, value_name = "MODEL")]
    pub output: String,
    /// The training recipe: `whitened` (default, spec §10) or `paper` (§1–§9, the
    /// method as published; reproduces the reference numbers).
    #[arg(long, value_enum, default_value_t = RecipeArg::Whitened)]
    pub recipe: RecipeArg,
    /// Memory patterns per group (M); a group with fewer rows uses one per row.
    /// Default: 64 with the whitened recipe, 10 with paper.
    #[arg(long)]
    pub memories: Option<usize>,
    /// Inverse temperature β, or `auto`: chosen from 1, 2, 3, 5, 7, 10, 15, 20 by
    /// leave-one-group-out on the calibration rows (each group in turn plays OOD
    /// against the others; no OOD data needed). Default: auto with the whitened
    /// recipe (10 when there is one group, or a group has under 20 held-out rows),
    /// 5 with paper.
    #[arg(long, value_name = "BETA|auto")]
    pub beta: Option<String>,
    /// Passes over the training rows (default 50).
    #[arg(long, help_heading = "Paper recipe (SFNN training)")]
    pub epochs: Option<usize>,
    /// Rows per Adam step (default 50).
    #[arg(long, help_heading = "Paper recipe (SFNN training)")]
    pub batch_size: Option<usize>,
    /// Adam learning rate (default 1e-3).
    #[arg(long, help_heading = "Paper recipe (SFNN training)")]
    pub lr: Option<f64>,
    /// Norm the initial memories are rescaled to (default 10).
    #[arg(long, help_heading = "Paper recipe (SFNN training)")]
    pub init_norm: Option<f64>,
    /// Initial memories (default random).
    #[arg(long, value_enum, help_heading = "Paper recipe (SFNN training)")]
    pub init: Option<InitArg>,
    /// Row preprocessing; l2 divides each row by its norm.
    #[arg(long, value_enum, default_value_t = NormalizeArg::L2)]
    pub normalize: NormalizeArg,
    /// Fraction of held-out ID rows to flag: each τ is this quantile of ID energies.
    #[arg(long, default_value_t = 0.05)]
    pub ood_rate: f64,
    /// Seeded share of each group held out for calibrating τ (never fitted on).
    /// A group whose share would be under 20 rows is calibrated on its training rows.
    #[arg(long, default_value_t = 0.1)]
    pub calibration_fraction: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Keep at most N rows per group (seeded reservoir sample); bounds memory.
    #[arg(long, value_name = "N")]
    pub max_rows_per_group: Option<usize>,
    /// Maximum dynamics steps when scoring with this model.
    #[arg(long, default_value_t = 16)]
    pub max_iter: usize,
    /// Convergence tolerance of the dynamics.
    #[arg(long, default_value_t = 1e-6)]
    pub tol: f64,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum InitArg {
    Random,
    #[value(name = "kmeans++")]
    KMeansPlusPlus,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum NormalizeArg {
    None,
    L2,
}

#[derive(Args, Debug, Clone)]
pub struct RoutingArgs {
    /// Route each row to the group named by this column (integer or string);
    /// null values are routed by best margin.
    #[arg(long, value_name = "COL", conflicts_with = "group_from_logits")]
    pub group: Option<String>,
    /// Route each row to the group whose integer label is argmax of this logits column.
    #[arg(long, value_name = "COL")]
    pub group_from_logits: Option<String>,
    /// Without --group or --group-from-logits, where each row is scored: `best`
    /// (default) routes it to the group of largest margin A_g − τ_g and runs that
    /// group's dynamics; `union` scores it against every group's memories at once
    /// with the union threshold τ*, deciding is_ood on the first step.
    #[arg(long, value_enum, value_name = "ROUTE", conflicts_with_all = ["group", "group_from_logits"])]
    pub route: Option<RouteArg>,
}

const PRECISION_HELP: &str = "How a whitened model's two d-long products (the whitening and the \
dot products with every memory) are summed: `exact` sums in f64 as the spec asks; `f32-blocked` \
sums f32 products in f32 over 32 terms and those sums in f64: measured 1.2-1.3x faster, with \
energies within 1e-7 of exact and no flag changed (BENCHMARKS.md). Paper-recipe models ignore it";

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum PrecisionArg {
    Exact,
    F32Blocked,
}

impl From<PrecisionArg> for reclag::Precision {
    fn from(p: PrecisionArg) -> reclag::Precision {
        match p {
            PrecisionArg::Exact => reclag::Precision::Exact,
            PrecisionArg::F32Blocked => reclag::Precision::F32Blocked,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum RouteArg {
    Best,
    Union,
}

impl From<RouteArg> for Route {
    fn from(r: RouteArg) -> Route {
        match r {
            RouteArg::Best => Route::Best,
            RouteArg::Union => Route::Union,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum RecipeArg {
    /// §10: l2, centre, whiten, l2; spherical k-means memories; β chosen by
    /// leave-one-group-out; rows without a group routed by best margin.
    Whitened,
    /// §1–§9: the paper's SFNN-trained memories on l2 rows.
    Paper,
}

#[derive(Args, Debug)]
#[command(after_long_help = "\
Output columns (added after the input columns):
  reclag_score            A_β(Ξx) − τ; > 0 is the ID side
  reclag_energy           A_β(Ξx), the log-mean-exp Hopfield energy
  reclag_ood_probability  posterior of the OOD component, σ(β(τ − A))
  reclag_is_ood           the dynamics reached the origin
  reclag_attractor        memory index the row converged to, −1 if OOD
  reclag_p_value          conformal p-value (spec §11): (1 + #{c ≤ score}) / (n + 1)
                          over the model's n calibration scores of the same kind
                          (the row's group's own, or best-route ones); small means
                          unlike the ID data. Only for models with calibration scores
                          (trained by this release, or passed through `reclag calibrate`)
Rows with a null embedding or a NaN/inf component get null outputs.
A local output is written to a temporary name and renamed when complete (through
a symbolic link to the file it names; a FIFO or device such as /dev/stdout is
refused: use --output -); temporaries of killed runs are removed by the next run.
An object-store output is one PUT, or from 10 MiB a multipart upload published only
when complete and aborted if the run fails (see `reclag --help` for timeouts and
retries). All
files of --input must have the same columns.

Memory is bounded by the input's row-group size, never by its length: rows stream
through in batches of at most 16384 rows or 32 MiB, two queued per stage; the fast
reader holds up to three row groups of up to 256 MiB decoded, and a file with larger
row groups is read page by page instead (slower: write row groups of at most 256 MiB
for full speed); output row groups close at 128 MiB. An object-store input also holds
one row group's compressed column chunks per read.

Examples:
  reclag score --model model.parquet --input events/ --output scored.parquet \\
      --group label --keep-columns id,label
  reclag score --model s3://models/prod.parquet --input 's3://lake/day=*/*.parquet' \\
      --output s3://lake-scored/today.parquet
  some-tool --arrow-ipc | reclag score --model m.parquet --input - --output - | next-tool")]
pub struct ScoreArgs {
    /// The model file: a path or URL.
    #[arg(long, value_name = "MODEL")]
    pub model: String,
    /// Parquet file(s), directories or prefixes of them, globs, or URLs; `-` reads an
    /// Arrow IPC stream from stdin.
    #[arg(long, required = true, num_args = 1.., value_name = "URL")]
    pub input: Vec<String>,
    /// A Parquet path or URL; `-` writes an Arrow IPC stream to stdout.
    #[arg(long, value_name = "OUT")]
    pub output: String,
    /// Embedding column: FixedSizeList/List/LargeList of Float32 or Float64.
    #[arg(long, default_value = "embedding", value_name = "COL")]
    pub embedding: String,
    #[command(flatten)]
    pub routing: RoutingArgs,
    #[arg(long, value_enum, default_value = "exact", value_name = "P", help = PRECISION_HELP)]
    pub precision: PrecisionArg,
    /// Input columns to copy to the output (default: all).
    #[arg(long, value_delimiter = ',', value_name = "COL,...")]
    pub keep_columns: Option<Vec<String>>,
    /// Benchmarks only: decode the input and discard it (writes nothing). `as-score`
    /// (the default) decodes what `score` decodes, the way it does; `arrow` builds
    /// every column's Arrow arrays, the embedding included.
    #[arg(long, hide = true, value_enum, num_args = 0..=1, default_missing_value = "as-score")]
    pub decode_only: Option<crate::score::DecodeOnly>,
}

#[derive(Args, Debug)]
#[command(after_long_help = "\
Baselines (spec §9) need: he, she, mahalanobis, knn → --train (the ID training
table, with --label for per-group ones); msp, energy → a logits column.

Example (the protocol of the shared reference numbers):
  reclag eval --model model.parquet --id id_test.parquet \\
      --ood mnist=ood_mnist.parquet --ood letters=ood_font_letters.parquet \\
      --group-from-logits logits --train id_train.parquet --label label \\
      --baselines he,she,mahalanobis,knn,msp,energy --format json")]
pub struct EvalArgs {
    /// The model file: a path or URL.
    #[arg(long, value_name = "MODEL")]
    pub model: String,
    /// The in-distribution test table(s).
    #[arg(long, required = true, num_args = 1.., value_name = "PATH")]
    pub id: Vec<String>,
    /// An OOD table, named for the report. Repeat for several.
    #[arg(long, required = true, value_name = "NAME=PATH", value_parser = parse_named)]
    pub ood: Vec<(String, String)>,
    /// Embedding column: FixedSizeList/List/LargeList of Float32 or Float64.
    #[arg(long, default_value = "embedding", value_name = "COL")]
    pub embedding: String,
    #[command(flatten)]
    pub routing: RoutingArgs,
    #[arg(long, value_enum, default_value = "exact", value_name = "P", help = PRECISION_HELP)]
    pub precision: PrecisionArg,
    /// Comma-separated: he, she, mahalanobis, knn, msp, energy.
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub baselines: Vec<String>,
    /// Logits column for msp/energy (default: the --group-from-logits column).
    #[arg(long, value_name = "COL")]
    pub logits: Option<String>,
    /// The ID training table, the reference of he/she/mahalanobis/knn.
    #[arg(long, num_args = 1.., value_name = "PATH")]
    pub train: Vec<String>,
    /// Label column of --train (default: label, when the model has groups).
    #[arg(long, value_name = "COL")]
    pub label: Option<String>,
    /// k of the KNN baseline.
    #[arg(long, default_value_t = 50)]
    pub knn_k: usize,
    /// Cap the baseline reference at N rows per group (seeded sample).
    #[arg(long, value_name = "N")]
    pub reference_rows_per_group: Option<usize>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

#[derive(Args, Debug)]
#[command(after_long_help = "\
Spec §11's re-thresholding. Every τ_g (and τ*) becomes the --ood-rate quantile of the
new rows' energies in group g, and the calibration scores behind reclag_p_value are
replaced by theirs; memories, β and preprocessing are kept, so it takes seconds where
training takes minutes. The new model records the source model's checksum.

When to use it: the rows a model was calibrated on (held out of its training table)
are not the rows it meets. Embeddings from a network trained on the same table make
held-out training rows look more in-distribution than fresh rows, so fresh ID data is
flagged above the nominal rate and its p-values are too small. Calibrating on a sample
of fresh ID rows (a clean day, a validation set) restores both.

Rows are routed by their label (--label, default: the column the model was trained
with); rows with a null label or a null or non-finite embedding are skipped and
counted. Each group needs at least 1/ood-rate rows.

Examples:
  reclag calibrate --model prod.parquet --input validation.parquet --output prod-v2.parquet
  reclag calibrate --model prod.parquet --input 'lake/date=2026-11-2*/*.parquet' \\
      --ood-rate 0.01 --output prod-1pct.parquet")]
pub struct CalibrateArgs {
    /// The model file: a path or URL.
    #[arg(long, value_name = "MODEL")]
    pub model: String,
    /// New ID rows: Parquet file(s), directories, prefixes or globs; paths or URLs.
    #[arg(long, required = true, num_args = 1.., value_name = "URL")]
    pub input: Vec<String>,
    /// Where to write the new model (a path or URL).
    #[arg(long, value_name = "MODEL")]
    pub output: String,
    /// Share of ID rows to flag: each τ is this quantile of the new rows' energies.
    /// Default: the model's current level.
    #[arg(long, value_name = "R")]
    pub ood_rate: Option<f64>,
    /// The label column routing rows to groups. Default: the column the model was
    /// trained with (models from older releases do not record it).
    #[arg(long, value_name = "COL")]
    pub label: Option<String>,
    /// Embedding column.
    #[arg(long, default_value = "embedding", value_name = "COL")]
    pub embedding: String,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The model file: a path or URL.
    pub model: String,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Working directory for the sample, the model and the scored output
    /// (default: a fresh temporary directory, removed afterwards).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// What the `reclag` binary does: runs `args` against the process's environment and
/// standard output, prints an error to standard error, and gives the exit code
/// (0 done, 2 drift found, 1 error). A closed standard output (`| head`) ends the
/// command quietly with 0.
pub fn main_with<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    crate::alloc::tune();
    crate::io::configure_reading(read_settings_from_env());
    // Not locked: `reclag score --output -` writes its Arrow stream to stdout too.
    let mut stdout = std::io::stdout();
    match run(args, &mut stdout) {
        Ok(code) => code,
        Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Err(e) => {
            eprint!("{}", error_chain(&e));
            ExitCode::from(1)
        }
    }
}

/// How the binary decodes inputs: `RECLAG_FAST_DECODE=0` reads every column with
/// parquet's general reader and `RECLAG_FUSED=0` scores whole Arrow columns instead
/// of pages (both for comparison); `RECLAG_ROW_GROUPS_IN_FLIGHT=N` decodes N row groups
/// at once (default: one per core).
fn read_settings_from_env() -> crate::io::ReadSettings {
    let on = |key: &str| std::env::var(key).map_or(true, |v| v != "0");
    let mut s = crate::io::ReadSettings {
        fast_decode: on("RECLAG_FAST_DECODE"),
        fused: on("RECLAG_FUSED"),
        ..Default::default()
    };
    if let Some(n) = std::env::var("RECLAG_ROW_GROUPS_IN_FLIGHT")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
    {
        s.row_groups_in_flight = n;
    }
    s
}

/// `error: <message>`, then each cause the message does not already state, one per
/// line, so nothing in the chain is lost and nothing is said twice.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut said = e.to_string();
    let mut out = format!("error: {said}\n");
    let mut cause = e.source();
    while let Some(c) = cause {
        let msg = c.to_string();
        if !msg.is_empty() && !said.contains(&msg) {
            out.push_str(&format!("  caused by: {msg}\n"));
            said.push_str(&msg);
        }
        cause = c.source();
    }
    out
}

/// Parses `args` (including the program name) and runs the command, writing results
/// to `out`.
pub fn run<I, T>(args: I, out: &mut dyn Write) -> Result<ExitCode>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    run_with(args, StoreEnv::from_process(), out)
}

/// [`run`] with object stores configured from `env` instead of the process
/// environment.
pub fn run_with<I, T>(args: I, env: StoreEnv, out: &mut dyn Write) -> Result<ExitCode>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    run_in(args, Stores::new(env), out)
}

/// [`run`] against given stores (and their standard input and output).
pub fn run_in<I, T>(args: I, stores: Stores, out: &mut dyn Write) -> Result<ExitCode>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    match Cli::try_parse_from(args) {
        Ok(cli) => dispatch(cli, Arc::new(stores), out),
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) =>
        {
            write!(out, "{e}").map_err(io_err)?;
            Ok(ExitCode::SUCCESS)
        }
        // clap renders its own "error: " prefix; `main` adds one to every error.
        Err(e) => {
            let text = e.to_string();
            let text = text.strip_prefix("error: ").unwrap_or(&text).trim_end();
            Err(Error::Usage(text.to_string()))
        }
    }
}

/// Resolves on SIGTERM (systemd, Kubernetes, `kill`) or Ctrl-C.
async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A multi-threaded tokio runtime for the commands that need one (SQL, watch).
fn runtime(context: &str) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            context: context.into(),
            source,
        })
}

fn io_err(source: std::io::Error) -> Error {
    Error::Io {
        context: "writing output".into(),
        source,
    }
}

pub fn dispatch(cli: Cli, stores: Arc<Stores>, out: &mut dyn Write) -> Result<ExitCode> {
    match cli.command {
        Command::Train(a) => {
            let job = train_job(a, stores)?;
            let model = crate::train::run(&job)?;
            writeln!(
                out,
                "trained {} group(s), d={}, tau*={:.6}; wrote {}",
                model.groups().len(),
                model.dim(),
                model.tau_star(),
                job.output
            )
            .map_err(io_err)?;
            for g in model.groups() {
                if g.m < job.params.memories {
                    writeln!(
                        out,
                        "note: group {} had {} training rows, fewer than --memories {}; it uses {} memories",
                        g.key.as_ref().map_or("(all)".into(), |k| k.to_string()),
                        g.n_train,
                        job.params.memories,
                        g.m
                    )
                    .map_err(io_err)?;
                }
            }
        }
        Command::Score(a) => {
            let mut model = crate::store::load_model(&stores, &a.model)?;
            model.set_precision(a.precision.into());
            let job = ScoreJob {
                inputs: a.input,
                output: a.output,
                embedding: a.embedding,
                routing: Routing::with_route(
                    a.routing.group,
                    a.routing.group_from_logits,
                    a.routing.route.map(Route::from),
                )?,
                keep_columns: a.keep_columns,
                stores,
                decode_only: a.decode_only,
            };
            let s = crate::score::run(&model, &job)?;
            if !s.p_values && job.decode_only.is_none() {
                eprintln!(
                    "note: {} has no calibration scores (an older model file), so the output has no reclag_p_value; add them with `reclag calibrate`",
                    a.model
                );
            }
            if job.decode_only.is_some() {
                writeln!(
                    out,
                    "decoded {} rows (decode only: nothing written)",
                    s.rows
                )
                .map_err(io_err)?;
                return Ok(ExitCode::SUCCESS);
            }
            let msg = format!(
                "scored {} rows ({} OOD, {} null) into {}",
                s.rows,
                s.ood_rows,
                s.null_rows,
                if job.output == crate::io::STDIO {
                    "<stdout>"
                } else {
                    &job.output
                }
            );
            // Standard output carries the Arrow stream; the summary must not corrupt it.
            if job.output == crate::io::STDIO {
                eprintln!("{msg}");
            } else {
                writeln!(out, "{msg}").map_err(io_err)?;
            }
        }
        Command::Filter(a) => {
            let model = Arc::new(crate::store::load_model(&stores, &a.model)?);
            let job = crate::filter::FilterJob {
                inputs: a.input,
                output: a.output,
                embedding: a.embedding,
                group: a.group,
                route: a.route.map_or(Route::Best, Route::from),
                keep: a.keep,
                fdr: a.fdr,
                stores,
            };
            let s = crate::filter::run(&model, &job)?;
            writeln!(
                out,
                "kept {} of {} rows ({}) from {} file(s) into {}",
                s.rows_kept,
                s.rows_in,
                match job.keep {
                    crate::filter::Keep::Id => "in-distribution",
                    crate::filter::Keep::Ood => "OOD",
                },
                s.files,
                job.output
            )
            .map_err(io_err)?;
            if let (Some(q), Some(t)) = (job.fdr, s.fdr_threshold) {
                writeln!(
                    out,
                    "Benjamini–Hochberg at q={q}: {} of {} scored rows rejected as OOD (p ≤ {t:.6})",
                    s.rejected, s.scored
                )
                .map_err(io_err)?;
            }
        }
        Command::Calibrate(a) => {
            let model = crate::store::load_model(&stores, &a.model)?;
            let job = crate::calibrate::CalibrateJob {
                inputs: a.input,
                embedding: a.embedding,
                label: a.label,
                ood_rate: a.ood_rate,
                model_url: a.model,
                output: a.output,
                stores,
            };
            let (_, s) = crate::calibrate::run(&model, &job)?;
            writeln!(
                out,
                "recalibrated {} group(s) on {} rows at ood-rate {} (label {}; skipped {} with a null label, {} with a null or non-finite embedding); wrote {}",
                s.groups.len(),
                s.rows,
                s.ood_rate,
                s.label.as_deref().unwrap_or("-"),
                s.skipped_null_label,
                s.skipped_invalid,
                job.output
            )
            .map_err(io_err)?;
            writeln!(
                out,
                "{:<12} {:>8} {:>12} {:>12} {:>22}",
                "group", "rows", "tau before", "tau after", "flagged at old tau"
            )
            .map_err(io_err)?;
            for g in &s.groups {
                writeln!(
                    out,
                    "{:<12} {:>8} {:>12.6} {:>12.6} {:>21.1}%",
                    g.group,
                    g.rows,
                    g.tau_before,
                    g.tau_after,
                    100.0 * g.flagged_before
                )
                .map_err(io_err)?;
            }
        }
        Command::Drift(DriftCommand::Watch(a)) => {
            let spec = crate::drift::DriftSpec::from_file(&a.job)?;
            let every = crate::drift::watch::parse_every(&a.every)?;
            let job = crate::drift::DriftJob::new(spec, stores);
            let rt = runtime("starting the scheduler")?;
            rt.block_on(crate::drift::watch::watch(
                job,
                every,
                terminated(),
                |r| match r {
                    Ok(s) => {
                        let _ = writeln!(out, "{}", s.json_line());
                        let _ = out.flush();
                    }
                    Err(e) => eprintln!("error: {e} (watching on; next run in {})", a.every),
                },
            ));
        }
        Command::Drift(DriftCommand::Run(a)) => {
            let spec = crate::drift::DriftSpec::from_file(&a.job)?;
            let select = match (a.partition, a.since) {
                (Some(p), _) => crate::drift::Select::Only(p),
                (None, Some(p)) => crate::drift::Select::Since(p),
                (None, None) => crate::drift::Select::All,
            };
            let summary = crate::drift::DriftJob::new(spec, stores)
                .select(select)
                .dry_run(a.dry_run)
                .strict(a.strict)
                .lock_stale_after(a.lock_stale_after)
                .lock_wait(a.lock_wait)
                .run()?;
            writeln!(out, "{}", summary.json_line()).map_err(io_err)?;
            if summary.drift {
                return Ok(ExitCode::from(crate::drift::EXIT_DRIFT));
            }
        }
        Command::Eval(a) => {
            let mut model = crate::store::load_model(&stores, &a.model)?;
            model.set_precision(a.precision.into());
            let format = a.format;
            let job = eval_job(a, &model, stores)?;
            let rows = crate::eval::run(&model, &job)?;
            match format {
                Format::Json => writeln!(out, "{}", crate::eval::to_json(&rows)).map_err(io_err)?,
                Format::Table => write!(out, "{}", crate::eval::to_table(&rows)).map_err(io_err)?,
            }
        }
        Command::Inspect(a) => {
            let model = crate::store::load_model(&stores, &a.model)?;
            let sum = reclag::format::checksum(&model);
            write!(out, "{}", crate::inspect::render(&model, &sum)).map_err(io_err)?;
        }
        Command::Sql(a) => {
            let job = crate::sql::SqlJob {
                format: crate::sql::SqlFormat::choose(a.format.as_deref(), a.output.as_deref())?,
                query: a.query,
                tables: a.table,
                models: a.model,
                output: a.output,
                stores,
            };
            let rt = runtime("starting the query runtime")?;
            let summary = rt.block_on(crate::sql::run_to(&job, out))?;
            write!(out, "{summary}").map_err(io_err)?;
        }
        Command::Demo(a) => crate::demo::run(a.dir, out)?,
    }
    Ok(ExitCode::SUCCESS)
}

pub fn train_job(a: TrainArgs, stores: Arc<Stores>) -> Result<TrainJob> {
    let (recipe, defaults) = match a.recipe {
        RecipeArg::Whitened => (Recipe::Whitened, TrainParams::default()),
        RecipeArg::Paper => (Recipe::Paper, TrainParams::paper()),
    };
    // The SFNN settings mean nothing to k-means: say so rather than ignore them.
    let sfnn: Vec<&str> = [
        ("--epochs", a.epochs.is_some()),
        ("--batch-size", a.batch_size.is_some()),
        ("--lr", a.lr.is_some()),
        ("--init-norm", a.init_norm.is_some()),
        ("--init", a.init.is_some()),
    ]
    .into_iter()
    .filter_map(|(f, given)| given.then_some(f))
    .collect();
    if recipe == Recipe::Whitened && !sfnn.is_empty() {
        return Err(Error::Usage(format!(
            "{} set(s) the paper recipe's SFNN training; the whitened recipe (the default) fits its memories by spherical k-means. Add --recipe paper, or drop {}",
            sfnn.join(", "),
            if sfnn.len() == 1 { "it" } else { "them" }
        )));
    }
    // `auto` with the paper recipe reaches `TrainParams::check`, which refuses it.
    let (beta, beta_auto) = match a.beta.as_deref() {
        None => (defaults.beta, defaults.beta_auto),
        Some("auto") => (defaults.beta, true),
        Some(b) => (
            b.parse::<f64>().map_err(|_| {
                Error::Usage(format!("--beta takes a number or `auto`; found '{b}'"))
            })?,
            false,
        ),
    };
    Ok(TrainJob {
        inputs: a.input,
        embedding: a.embedding,
        label: a.label,
        output: a.output,
        max_rows_per_group: a.max_rows_per_group,
        stores,
        params: TrainParams {
            recipe,
            memories: a.memories.unwrap_or(defaults.memories),
            beta,
            beta_auto,
            epochs: a.epochs.unwrap_or(defaults.epochs),
            batch_size: a.batch_size.unwrap_or(defaults.batch_size),
            lr: a.lr.unwrap_or(defaults.lr),
            init_norm: a.init_norm.unwrap_or(defaults.init_norm),
            init: match a.init {
                None => defaults.init,
                Some(InitArg::Random) => Init::Random,
                Some(InitArg::KMeansPlusPlus) => Init::KMeansPlusPlus,
            },
            normalize: match a.normalize {
                NormalizeArg::None => Normalize::None,
                NormalizeArg::L2 => Normalize::L2,
            },
            ood_rate: a.ood_rate,
            calibration_fraction: a.calibration_fraction,
            seed: a.seed,
            max_iter: a.max_iter,
            tol: a.tol,
            ..defaults
        },
    })
}

fn eval_job(a: EvalArgs, model: &reclag::Model, stores: Arc<Stores>) -> Result<EvalJob> {
    let baselines = a
        .baselines
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| Baseline::parse(s.trim()))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let logits = a.logits.or_else(|| a.routing.group_from_logits.clone());
    let label = match (model.label_kind(), a.label) {
        (_, Some(l)) => Some(l),
        (LabelKind::None, None) => None,
        (_, None) => Some("label".to_string()),
    };
    Ok(EvalJob {
        id: a.id,
        ood: a.ood,
        embedding: a.embedding,
        routing: Routing::with_route(
            a.routing.group,
            a.routing.group_from_logits,
            a.routing.route.map(Route::from),
        )?,
        baselines,
        logits,
        train: a.train,
        label,
        knn_k: a.knn_k,
        reference_rows_per_group: a.reference_rows_per_group,
        stores,
    })
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    /// Every cause is printed once: those the message already states are not repeated.
    #[test]
    fn errors_print_their_whole_chain_once() {
        let root = Layer("connection refused", None);
        let mid = Layer("reading s3://b/k: connection refused", Some(Box::new(root)));
        let top = Layer("scoring failed", Some(Box::new(mid)));
        assert_eq!(
            error_chain(&top),
            "error: scoring failed\n  caused by: reading s3://b/k: connection refused\n"
        );
        let hidden = Layer(
            "the model file is corrupt",
            Some(Box::new(Layer("bad magic bytes", None))),
        );
        assert_eq!(
            error_chain(&hidden),
            "error: the model file is corrupt\n  caused by: bad magic bytes\n"
        );
        assert_eq!(error_chain(&Layer("plain", None)), "error: plain\n");
    }
}

//! `reclag filter`: keep the ID (or the OOD) rows of a table.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use reclag::Route;

use crate::error::Result;
use crate::ops::filter::FilterJob;
use crate::store::Stores;

use super::args::*;
use super::*;

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
    pub keep: crate::ops::filter::Keep,
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
    /// Filter on a Ballista cluster: df://HOST:PORT of a `reclag cluster scheduler`.
    /// The executors write --output as a directory (or object-store prefix) of
    /// part-NNNNN.parquet files, one per partition, published only when every part is
    /// written; rows keep their input order across the parts in name order. Not with
    /// --fdr (its first pass over every row's p-value runs locally). Inputs, model and
    /// output must be reachable from every executor.
    #[arg(long, value_name = "df://HOST:PORT", conflicts_with = "fdr")]
    pub cluster: Option<String>,
    /// With --cluster: the number of partitions, so of tasks and part files (default:
    /// one per input row group, at most 256).
    #[arg(long, value_name = "N", requires = "cluster")]
    pub partitions: Option<usize>,
}

impl From<(FilterArgs, Arc<Stores>)> for FilterJob {
    fn from((a, stores): (FilterArgs, Arc<Stores>)) -> Self {
        FilterJob::new(stores, a.input, a.output, a.keep)
            .embedding(a.embedding)
            .group(a.group)
            .route(a.route.map_or(Route::Best, Route::from))
            .fdr(a.fdr)
    }
}

pub(super) fn run(a: FilterArgs, stores: Arc<Stores>, out: &mut dyn Write) -> Result<ExitCode> {
    if let Some(url) = a.cluster.clone() {
        return run_on_cluster(a, &url, stores, out);
    }
    let model = Arc::new(crate::store::load_model(&stores, &a.model)?);
    let (keep, output, fdr) = (a.keep, a.output.clone(), a.fdr);
    let s = FilterJob::from((a, stores)).run(&model)?;
    writeln!(
        out,
        "kept {} of {} rows ({}) from {} file(s) into {}",
        s.rows_kept,
        s.rows_in,
        match keep {
            crate::ops::filter::Keep::Id => "in-distribution",
            crate::ops::filter::Keep::Ood => "OOD",
        },
        s.files,
        output
    )
    .map_err(io_err)?;
    if let (Some(q), Some(t)) = (fdr, s.fdr_threshold) {
        writeln!(
            out,
            "Benjamini–Hochberg at q={q}: {} of {} scored rows rejected as OOD (p ≤ {t:.6})",
            s.rejected, s.scored
        )
        .map_err(io_err)?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "cluster")]
fn run_on_cluster(
    a: FilterArgs,
    url: &str,
    stores: Arc<Stores>,
    out: &mut dyn Write,
) -> Result<ExitCode> {
    use crate::ops::filter::Keep;
    use crate::ops::route::Routing;
    let routing = match (a.group, a.route) {
        (Some(g), _) => Routing::Column(g),
        (None, r) => Routing::Ungrouped(r.map_or(Route::Best, Route::from)),
    };
    let job = crate::ops::score::ScoreJob::new(stores, a.input, a.output.clone())
        .embedding(a.embedding)
        .routing(routing);
    let rt = runtime("starting the cluster client")?;
    let s = rt.block_on(crate::cluster::score::score_on_cluster(
        &job,
        url,
        &a.model,
        reclag::Precision::Exact,
        a.partitions,
        Some(a.keep == Keep::Ood),
    ))?;
    writeln!(
        out,
        "kept {} of {} rows ({}) into {} ({} part files, written by the cluster at {url})",
        s.rows_written,
        s.rows,
        match a.keep {
            Keep::Id => "in-distribution",
            Keep::Ood => "OOD",
        },
        a.output,
        s.parts
    )
    .map_err(io_err)?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(feature = "cluster"))]
fn run_on_cluster(
    _a: FilterArgs,
    url: &str,
    _stores: Arc<Stores>,
    _out: &mut dyn Write,
) -> Result<ExitCode> {
    Err(crate::error::Error::without_cluster(url))
}

//! `reclag score`: add the OOD columns to every row of a table.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use reclag::Route;

use crate::error::Result;
use crate::ops::route::Routing;
use crate::ops::score::ScoreJob;
use crate::store::Stores;

use super::args::*;
use super::*;

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
through in batches of at most 16384 rows or 32 MiB (8 MiB where read page by page),
two queued per stage; the fast
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
    pub decode_only: Option<crate::ops::score::DecodeOnly>,
    /// Score on a Ballista cluster: df://HOST:PORT of a `reclag cluster scheduler`.
    /// The executors read the inputs and write --output as a directory (or
    /// object-store prefix) of part-NNNNN.parquet files, one per partition, published
    /// only when every part is written; row order is kept across the parts in name
    /// order. Inputs, model and output must be reachable from every executor (object
    /// storage, or a filesystem mounted at the same path everywhere).
    #[arg(long, value_name = "df://HOST:PORT")]
    pub cluster: Option<String>,
    /// With --cluster: the number of partitions, so of tasks and part files (default:
    /// one per input row group, at most 256). Each holds whole row groups.
    #[arg(long, value_name = "N", requires = "cluster")]
    pub partitions: Option<usize>,
}

impl TryFrom<(ScoreArgs, Arc<Stores>)> for ScoreJob {
    type Error = crate::error::Error;

    fn try_from((a, stores): (ScoreArgs, Arc<Stores>)) -> Result<Self> {
        Ok(ScoreJob::new(stores, a.input, a.output)
            .embedding(a.embedding)
            .routing(Routing::with_route(
                a.routing.group,
                a.routing.group_from_logits,
                a.routing.route.map(Route::from),
            )?)
            .keep_columns(a.keep_columns)
            .decode_only(a.decode_only))
    }
}

pub(super) fn run(a: ScoreArgs, stores: Arc<Stores>, out: &mut dyn Write) -> Result<ExitCode> {
    if let Some(url) = a.cluster.clone() {
        return run_on_cluster(a, &url, stores, out);
    }
    let mut model = crate::store::load_model(&stores, &a.model)?;
    model.set_precision(a.precision.into());
    let (output, decode_only, model_name) = (a.output.clone(), a.decode_only, a.model.clone());
    let s = ScoreJob::try_from((a, stores))?.run(&model)?;
    if !s.p_values && decode_only.is_none() {
        eprintln!(
            "note: {} has no calibration scores (an older model file), so the output has no reclag_p_value; add them with `reclag calibrate`",
            model_name
        );
    }
    if decode_only.is_some() {
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
        if output == crate::io::STDIO {
            "<stdout>"
        } else {
            &output
        }
    );
    // Standard output carries the Arrow stream; the summary must not corrupt it.
    if output == crate::io::STDIO {
        eprintln!("{msg}");
    } else {
        writeln!(out, "{msg}").map_err(io_err)?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "cluster")]
fn run_on_cluster(
    a: ScoreArgs,
    url: &str,
    stores: Arc<Stores>,
    out: &mut dyn Write,
) -> Result<ExitCode> {
    if a.decode_only.is_some() {
        return Err(crate::error::Error::Usage(
            "--decode-only measures the local reader; drop --cluster".into(),
        ));
    }
    let (model, output, partitions) = (a.model.clone(), a.output.clone(), a.partitions);
    let precision = a.precision.into();
    let job = ScoreJob::try_from((a, stores))?;
    let rt = runtime("starting the cluster client")?;
    let s = rt.block_on(crate::cluster::score::score_on_cluster(
        &job, url, &model, precision, partitions, None,
    ))?;
    if !s.p_values {
        eprintln!(
            "note: {model} has no calibration scores (an older model file), so the output has no reclag_p_value; add them with `reclag calibrate`"
        );
    }
    writeln!(
        out,
        "scored {} rows ({} OOD, {} null) into {output} ({} part files, written by the cluster at {url})",
        s.rows, s.ood_rows, s.null_rows, s.parts
    )
    .map_err(io_err)?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(feature = "cluster"))]
fn run_on_cluster(
    _a: ScoreArgs,
    url: &str,
    _stores: Arc<Stores>,
    _out: &mut dyn Write,
) -> Result<ExitCode> {
    Err(crate::error::Error::without_cluster(url))
}

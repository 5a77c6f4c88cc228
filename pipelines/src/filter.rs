//! `reclag filter`: keep the in-distribution rows (or the OOD ones) of a Parquet
//! dataset, with every column, through Polars' streaming engine: `scan_parquet` →
//! `filter(is_ood)` → `sink_parquet`, so memory is bounded by Polars' batches, not by
//! the dataset.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use polars::prelude::{
    Expr, FileWriteFormat, LazyFrame, ParquetWriteOptions, PlRefPath, ScanArgsParquet,
    SinkDestination, SinkTarget, UnifiedSinkArgs, col,
};
use reclag::Model;

use crate::error::{Error, Result};
use crate::io::{ParquetFile, expand_inputs};
use crate::store::Stores;

/// Which side of the split to keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Keep {
    /// Rows the model accepts as in-distribution.
    Id,
    /// Rows whose trajectory ends at the origin.
    Ood,
}

#[derive(Clone, Debug)]
pub struct FilterJob {
    pub inputs: Vec<String>,
    pub output: String,
    pub embedding: String,
    pub group: Option<String>,
    pub keep: Keep,
    pub stores: Arc<Stores>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterSummary {
    pub files: usize,
    pub rows_in: u64,
    pub rows_kept: u64,
}

/// The predicate the split uses. Rows with a null or non-finite embedding get a null
/// flag and are kept on neither side; the summary counts them with the rows dropped.
pub fn keep_predicate(
    model: &Arc<Model>,
    embedding: &str,
    group: Option<&str>,
    keep: Keep,
) -> Expr {
    let flag = reclag_udfs::polars::is_ood(col(embedding), model, group.map(col));
    match keep {
        Keep::Id => flag.not(),
        Keep::Ood => flag,
    }
}

fn polars_err(context: impl Into<String>) -> impl FnOnce(polars::prelude::PolarsError) -> Error {
    move |source| Error::Usage(format!("{}: {source}", context.into()))
}

/// Local paths of the inputs, each checked to have the embedding (of the model's
/// dimension) and group columns, so a bad file is named before Polars starts.
fn local_inputs(model: &Model, job: &FilterJob) -> Result<(Vec<PathBuf>, u64)> {
    let mut paths = Vec::new();
    let mut rows = 0;
    for loc in expand_inputs(&job.stores, &job.inputs)? {
        let Some(local) = loc.local.clone() else {
            return Err(Error::Usage(format!(
                "{}: reclag filter reads local Parquet files; for object storage use `reclag score` or `reclag sql` (their inputs can be s3://, gs:// or az:// URLs)",
                loc.display
            )));
        };
        let file = ParquetFile::open(&loc)?;
        file.check_scoring_columns(model.dim(), &job.embedding, job.group.as_deref())
            .map_err(|e| {
                Error::Usage(format!(
                    "{e}; name the columns with --embedding and --group (no --group scores against the union of all groups)"
                ))
            })?;
        rows += file.rows;
        paths.push(local);
    }
    Ok((paths, rows))
}

/// Runs the split. The output is written under a temporary name beside it and renamed
/// when Polars has finished, so a reader never sees a partial file and a rerun after a
/// crash starts clean.
pub fn run(model: &Arc<Model>, job: &FilterJob) -> Result<FilterSummary> {
    if job.output.contains("://") && !job.output.starts_with("file://") {
        return Err(Error::Usage(format!(
            "--output {}: reclag filter writes local Parquet; write locally and upload, or use `reclag score --output {}` and filter in SQL",
            job.output, job.output
        )));
    }
    let (paths, rows_in) = local_inputs(model, job)?;
    let out = job.stores.locate(&job.output)?;
    let out_path = out
        .local
        .clone()
        .ok_or_else(|| Error::Usage(format!("--output {}: not a local path", job.output)))?;
    let tmp = temp_sibling(&out_path);
    let sources = paths
        .iter()
        .map(|p| PlRefPath::new(p.to_string_lossy().as_ref()))
        .collect();
    let args = ScanArgsParquet {
        glob: false,
        ..Default::default()
    };
    let lf = LazyFrame::scan_parquet_files(sources, args)
        .map_err(polars_err("scanning the inputs"))?
        .filter(keep_predicate(
            model,
            &job.embedding,
            job.group.as_deref(),
            job.keep,
        ));
    let result = sink_parquet(lf, &tmp).and_then(|()| {
        std::fs::rename(&tmp, &out_path).map_err(|source| Error::Io {
            context: format!("renaming {} to {}", tmp.display(), out_path.display()),
            source,
        })
    });
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let rows_kept = ParquetFile::open(&out)?.rows;
    Ok(FilterSummary {
        files: paths.len(),
        rows_in,
        rows_kept,
    })
}

/// Streams `lf` into a Parquet file at `path` with Polars' streaming engine.
pub fn sink_parquet(lf: LazyFrame, path: &Path) -> Result<()> {
    let target = SinkTarget::Path(PlRefPath::new(path.to_string_lossy().as_ref()));
    lf.sink(
        SinkDestination::File { target },
        FileWriteFormat::Parquet(Arc::new(ParquetWriteOptions::default())),
        UnifiedSinkArgs::default(),
    )
    .and_then(|lf| lf.collect())
    .map(|_| ())
    .map_err(polars_err(format!("writing {}", path.display())))
}

fn temp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

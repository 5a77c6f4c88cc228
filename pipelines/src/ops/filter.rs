//! `reclag filter`: keep the in-distribution rows (or the OOD ones) of a Parquet
//! dataset, with every column: the Polars predicate `is_ood` on frames from reclag's
//! reader ([`Frames`]), written by Polars' Parquet writer a row group at a time, so
//! memory is bounded by the frames in flight, not by the dataset. Polars'
//! `scan_parquet` would give the same rows ([`sink_parquet`] is that path, for plans
//! users build themselves) at a fifth of the speed (BENCHMARKS.md).

use std::path::Path;
use std::sync::Arc;

use polars::prelude::{
    CompatLevel, DataFrame, Expr, FileWriteFormat, IntoLazy, LazyFrame, ParquetCompression,
    ParquetWriteOptions, ParquetWriter, PlRefPath, PolarsError, PolarsResult, SchemaExt,
    SinkDestination, SinkTarget, StatisticsOptions, UnifiedSinkArgs, col, get_encodings, lit,
};
use polars_parquet::read::ParquetError;
use polars_parquet::write::{
    CompressedPage, Compressor, Encoding, ParquetType, Version, WriteOptions, array_to_columns,
};
use reclag::Model;

use crate::error::{Error, Result};
use crate::io::{AtomicFile, open_all};
use crate::ops::frames::Frames;
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
    inputs: Vec<String>,
    output: String,
    embedding: String,
    group: Option<String>,
    /// Where rows without a group go (no `group`, or a null value in it).
    route: reclag::Route,
    keep: Keep,
    /// Decide by Benjamini–Hochberg at this level over every row's p-value instead
    /// of each row's threshold.
    fdr: Option<f64>,
    stores: Arc<Stores>,
}

impl FilterJob {
    /// Writes the rows of `inputs` on the `keep` side to `output`, through `stores`:
    /// the column `embedding`, every row routed by best margin, each decided by its
    /// own threshold, until set otherwise.
    pub fn new(
        stores: Arc<Stores>,
        inputs: Vec<String>,
        output: impl Into<String>,
        keep: Keep,
    ) -> Self {
        FilterJob {
            inputs,
            output: output.into(),
            embedding: "embedding".into(),
            group: None,
            route: reclag::Route::Best,
            keep,
            fdr: None,
            stores,
        }
    }

    setters! {
        embedding: String,
        /// The group column (`None`: every row routed by `route`).
        group: Option<String>,
        route: reclag::Route,
        /// Decide by Benjamini–Hochberg at level `q` (`None`: each row's threshold).
        fdr: Option<f64>,
    }

    pub fn run(&self, model: &Arc<Model>) -> Result<FilterSummary> {
        run(model, self)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct FilterSummary {
    pub files: usize,
    pub rows_in: u64,
    pub rows_kept: u64,
    /// With `fdr`: rows with a p-value, and how many Benjamini–Hochberg rejected.
    pub scored: u64,
    pub rejected: u64,
    /// With `fdr`: the largest rejected p-value (`None`: nothing rejected).
    pub fdr_threshold: Option<f64>,
}

/// The predicate the split uses. Rows with a null or non-finite embedding get a null
/// flag and are kept on neither side; the summary counts them with the rows dropped.
pub fn keep_predicate(
    model: &Arc<Model>,
    embedding: &str,
    group: Option<&str>,
    route: reclag::Route,
    keep: Keep,
) -> Expr {
    let flag = reclag_udfs::polars::routed(
        reclag_udfs::Output::IsOod,
        col(embedding),
        model,
        group.map(col),
        route,
    );
    match keep {
        Keep::Id => flag.not(),
        Keep::Ood => flag,
    }
}

/// Rows of an output row group at most, as `score` writes...
const ROW_GROUP: usize = 65_536;
/// ...and bytes at most: a row group is held while it is encoded, one per core, so
/// with 2 KiB embeddings 64Ki rows would put a quarter of a GiB in flight per core.
const ROW_GROUP_BYTES: usize = 64 << 20;

/// Runs the split: frames from reclag's reader ([`Frames`]), each filtered by the
/// Polars predicate, written by Polars' Parquet writer through an [`AtomicFile`].
fn run(model: &Arc<Model>, job: &FilterJob) -> Result<FilterSummary> {
    if job.output.contains("://") && !job.output.starts_with("file://") {
        return Err(Error::Usage(format!(
            "--output {}: reclag filter writes local Parquet; write locally and upload, or use `reclag score --output {}` and filter in SQL",
            job.output, job.output
        )));
    }
    if job.group.is_some() && job.route == reclag::Route::Union {
        return Err(Error::Usage(
            "--route picks the group of rows without one; it cannot be combined with --group"
                .into(),
        ));
    }
    let files = open_all(&job.stores, &job.inputs)?;
    for f in &files {
        f.check_scoring_columns(model.dim(), &job.embedding, job.group.as_deref())
            .map_err(|e| {
                Error::Usage(format!(
                    "{e}; name the columns with --embedding and --group (without --group each row is routed by --route)"
                ))
            })?;
    }
    let n_files = files.len();
    let mut fdr = None;
    if let Some(q) = job.fdr {
        if !(q > 0.0 && q < 1.0) {
            return Err(Error::Usage(format!(
                "--fdr must be in (0, 1) (exclusive), found {q}"
            )));
        }
        model
            .require_calibration()
            .map_err(|e| Error::Usage(format!("--fdr needs p-values: {e}")))?;
        fdr = Some(p_value_threshold(model, job, q)?);
    }
    let out = job.stores.locate(&job.output)?;
    let out_path = out
        .local
        .clone()
        .ok_or_else(|| Error::Usage(format!("--output {}: not a local path", job.output)))?;
    let frames = Frames::new(files)?;
    let rows_in = frames.rows();
    let predicate = match &fdr {
        None => keep_predicate(
            model,
            &job.embedding,
            job.group.as_deref(),
            job.route,
            job.keep,
        ),
        Some(t) => {
            // Nothing rejected: no p-value is ≤ −1. A null p-value (no score) is kept
            // on neither side, as with the threshold rule.
            let t = t.threshold.unwrap_or(-1.0);
            let p = reclag_udfs::polars::routed(
                reclag_udfs::Output::PValue,
                col(&job.embedding),
                model,
                job.group.as_deref().map(col),
                job.route,
            );
            match job.keep {
                Keep::Id => p.gt(lit(t)),
                Keep::Ood => p.lt_eq(lit(t)),
            }
        }
    };
    let (out, file) = AtomicFile::create(&out_path)?;
    let rows_kept = write_kept(frames, predicate, &file, out.tmp())?;
    out.commit(&file)?;
    Ok(FilterSummary {
        files: n_files,
        rows_in,
        rows_kept,
        scored: fdr.as_ref().map_or(0, |f| f.scored),
        rejected: fdr.as_ref().map_or(0, |f| f.rejected),
        fdr_threshold: fdr.and_then(|f| f.threshold),
    })
}

/// The first pass of `--fdr`.
struct FdrPass {
    scored: u64,
    rejected: u64,
    threshold: Option<f64>,
}

/// Scores every input row (energies only: p-values need no dynamics) reading just
/// the embedding and group columns, and counts each distinct p-value. A p-value is
/// `j / (n + 1)` for one of the model's calibration sets, so the counts are bounded by
/// the model, not the input; Benjamini–Hochberg needs nothing else.
fn p_value_threshold(model: &Model, job: &FilterJob, q: f64) -> Result<FdrPass> {
    use std::collections::HashMap;
    let routing = match &job.group {
        Some(g) => crate::ops::route::Routing::Column(g.clone()),
        None => crate::ops::route::Routing::Ungrouped(job.route),
    };
    let files = open_all(&job.stores, &job.inputs)?;
    let total: u64 = files.iter().map(|f| f.rows).sum();
    let pb = crate::progress::bar(total, "rows", "p-values (pass 1 of 2)");
    let mut counts: HashMap<u64, u64> = HashMap::new();
    let mut out = reclag::ScoreOutput::default();
    let mut p = Vec::new();
    for f in files {
        let mut cols = vec![f.column_index(&job.embedding)?];
        if let Some(g) = &job.group {
            cols.push(f.column_index(g)?);
        }
        cols.sort_unstable();
        let path = f.path.clone();
        for batch in f.read(Some(&cols))? {
            let batch = batch?;
            let groups = crate::ops::score::score_batch(
                model,
                &batch,
                &job.embedding,
                &routing,
                reclag::Work::EnergyOnly,
                &path,
                &mut out,
            )?;
            model.p_values_into(&out, groups.as_deref(), routing.route(), &mut p)?;
            for v in p.iter().filter(|v| !v.is_nan()) {
                *counts.entry(v.to_bits()).or_default() += 1;
            }
            pb.inc(batch.num_rows() as u64);
        }
    }
    pb.finish_and_clear();
    let mut sorted: Vec<(f64, u64)> = counts
        .into_iter()
        .map(|(b, c)| (f64::from_bits(b), c))
        .collect();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let threshold = reclag::conformal::benjamini_hochberg_threshold(&sorted, q);
    Ok(FdrPass {
        scored: sorted.iter().map(|(_, c)| c).sum(),
        rejected: threshold.map_or(0, |t| {
            sorted
                .iter()
                .take_while(|(v, _)| *v <= t)
                .map(|(_, c)| c)
                .sum()
        }),
        threshold,
    })
}

/// One row group's pages, per leaf column, encoded and compressed.
type Encoded = PolarsResult<(u64, Vec<Vec<CompressedPage>>)>;

/// What encoding a row group needs from the writer, taken once.
struct Layout {
    fields: Vec<ParquetType>,
    encodings: Vec<Vec<Encoding>>,
    options: WriteOptions,
}

impl Layout {
    /// Encodes and compresses `group` (one chunk per column) in memory, columns in
    /// parallel: the work Polars' streaming sink does per row group, eagerly, so
    /// several row groups can be encoded at once and written in order.
    fn encode(&self, group: &DataFrame) -> Encoded {
        use rayon::prelude::*;
        let Some(batch) = group.iter_chunks(CompatLevel::newest(), false).next() else {
            return Ok((0, Vec::new()));
        };
        let columns = batch
            .columns()
            .par_iter()
            .zip(&self.fields)
            .zip(&self.encodings)
            .map(|((array, field), encodings)| {
                array_to_columns(array, field.clone(), self.options, encodings)?
                    .into_iter()
                    .map(|pages| {
                        let pages = pages.map(|page| {
                            page.map_err(|e| ParquetError::FeatureNotSupported(e.to_string()))
                        });
                        Compressor::new_from_vec(pages, self.options.compression, Vec::new())
                            .collect::<Result<Vec<_>, ParquetError>>()
                            .map_err(PolarsError::from)
                    })
                    .collect::<PolarsResult<Vec<_>>>()
            })
            .collect::<PolarsResult<Vec<_>>>()?;
        Ok((batch.len() as u64, columns.into_iter().flatten().collect()))
    }
}

/// Filters every frame and writes the kept rows to `file` (at `path`).
///
/// Encoding and compressing the kept rows costs far more than reading and filtering
/// them (the writer walks every embedding value for its levels and statistics), so
/// row groups are encoded in parallel, one per core, while the next ones are
/// filtered, and written in order.
fn write_kept(frames: Frames, predicate: Expr, file: &std::fs::File, path: &Path) -> Result<u64> {
    let empty = frames.empty()?;
    let writing = format!("writing {}", path.display());
    let compression = ParquetCompression::default();
    let mut writer = ParquetWriter::new(file)
        .with_compression(compression)
        .batched(empty.schema())
        .map_err(Error::polars(&writing))?;
    let layout = Layout {
        fields: writer.parquet_schema().fields().to_vec(),
        encodings: get_encodings(&empty.schema().to_arrow(CompatLevel::newest()))
            .iter()
            .cloned()
            .collect(),
        // What `ParquetWriter` writes with these settings.
        options: WriteOptions {
            statistics: StatisticsOptions::default(),
            version: Version::V1,
            compression: compression.into(),
            data_page_size: None,
        },
    };
    let pb = crate::progress::bar(frames.rows(), "rows", "filtering");
    let together = rayon::current_num_threads().max(1);
    let kept = std::thread::scope(|scope| -> Result<u64> {
        let layout = &layout;
        let mut encoding: Option<std::thread::ScopedJoinHandle<'_, Vec<Encoded>>> = None;
        // Writes what was being encoded, then starts encoding `groups`.
        let mut hand_over = |groups: Vec<DataFrame>| -> Result<()> {
            if let Some(h) = encoding.take() {
                for encoded in h.join().expect("encoding does not panic") {
                    let (rows, pages) = encoded.map_err(Error::polars(&writing))?;
                    if rows > 0 {
                        writer
                            .write_row_group(rows, &pages)
                            .map_err(Error::polars(&writing))?;
                    }
                }
            }
            if !groups.is_empty() {
                encoding = Some(scope.spawn(move || {
                    use rayon::prelude::*;
                    groups.par_iter().map(|g| layout.encode(g)).collect()
                }));
            }
            Ok(())
        };
        let mut groups = Vec::with_capacity(together);
        let mut pending = empty.clone();
        let mut kept = 0u64;
        let seal = |pending: &mut DataFrame, groups: &mut Vec<DataFrame>| {
            // One chunk per column: one row group.
            let mut group = std::mem::replace(pending, empty.clone());
            group.rechunk_mut_par();
            groups.push(group);
        };
        for frame in frames {
            let frame = frame?;
            let rows = frame.height() as u64;
            let frame = frame
                .lazy()
                .filter(predicate.clone())
                .collect()
                .map_err(Error::polars("filtering a frame"))?;
            pb.inc(rows);
            kept += frame.height() as u64;
            pending
                .vstack_mut_owned(frame)
                .map_err(Error::polars("gathering kept rows"))?;
            let row_bytes = pending.estimated_size() / pending.height().max(1);
            if pending.height() >= ROW_GROUP.min(ROW_GROUP_BYTES / row_bytes.max(1)) {
                seal(&mut pending, &mut groups);
                if groups.len() == together {
                    hand_over(std::mem::take(&mut groups))?;
                }
            }
        }
        if pending.height() > 0 {
            seal(&mut pending, &mut groups);
        }
        hand_over(groups)?;
        hand_over(Vec::new())?;
        Ok(kept)
    })?;
    writer.finish().map_err(Error::polars(&writing))?;
    pb.finish_and_clear();
    Ok(kept)
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
    .map_err(Error::polars(format!("writing {}", path.display())))
}

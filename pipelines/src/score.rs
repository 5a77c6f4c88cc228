//! `reclag score`: Parquet in, the input columns plus the five per-row outputs out.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field};
use reclag::{Model, ScoreOutput, Work};

use crate::error::{Error, Result};
use crate::io::{Sink, batch_column, open_all, schema_with};
use crate::progress::bar;
use crate::route::Routing;
use crate::store::Stores;

pub const OUTPUT_COLUMNS: [&str; 5] = [
    "reclag_score",
    "reclag_energy",
    "reclag_ood_probability",
    "reclag_is_ood",
    "reclag_attractor",
];

pub fn output_fields() -> Vec<Field> {
    vec![
        Field::new(OUTPUT_COLUMNS[0], DataType::Float64, true),
        Field::new(OUTPUT_COLUMNS[1], DataType::Float64, true),
        Field::new(OUTPUT_COLUMNS[2], DataType::Float64, true),
        Field::new(OUTPUT_COLUMNS[3], DataType::Boolean, true),
        Field::new(OUTPUT_COLUMNS[4], DataType::Int32, true),
    ]
}

#[derive(Clone, Debug)]
pub struct ScoreJob {
    pub inputs: Vec<String>,
    /// A path, an object-store URL, or `-` for an Arrow IPC stream on stdout.
    pub output: String,
    pub embedding: String,
    pub routing: Routing,
    pub keep_columns: Option<Vec<String>>,
    pub stores: Arc<Stores>,
    /// Decode the input through the same reader and discard it, writing nothing: the
    /// floor `reclag score` is measured against in the benchmarks.
    pub decode_only: bool,
}

/// Totals of a scoring run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScoreSummary {
    pub rows: u64,
    pub null_rows: u64,
    pub ood_rows: u64,
}

/// Scores one batch's embeddings; rows are null where the embedding is. Returns each
/// row's group (`None` for all-union), for callers that aggregate by group.
pub fn score_batch(
    model: &Model,
    batch: &RecordBatch,
    embedding: &str,
    routing: &Routing,
    work: Work,
    path: &Path,
    out: &mut ScoreOutput,
) -> Result<Option<Vec<Option<u32>>>> {
    let col = batch_column(batch, embedding, path)?;
    let rows = reclag::arrow::embedding_rows(col.as_ref(), embedding, Some(model.dim()))
        .map_err(Error::in_file(path))?;
    let groups = routing.resolve(model, batch, path)?;
    model.score_into(&rows, groups.as_deref(), work, out)?;
    Ok(groups)
}

/// The five output arrays, in [`OUTPUT_COLUMNS`] order.
pub fn output_arrays(out: ScoreOutput) -> Vec<ArrayRef> {
    let a = reclag::arrow::output_arrays(out);
    vec![a.score, a.energy, a.ood_probability, a.is_ood, a.attractor]
}

pub fn run(model: &Model, job: &ScoreJob) -> Result<ScoreSummary> {
    let files = open_all(&job.stores, &job.inputs)?;
    let first = &files[0];
    // Every check that can fail does so before any row is read.
    let emb = first.column_index(&job.embedding)?;
    reclag::arrow::check_embedding_type(
        first.schema.field(emb).data_type(),
        &job.embedding,
        Some(model.dim()),
    )
    .map_err(Error::in_file(&first.path))?;
    if let Some(c) = job.routing.column() {
        first.column_index(c)?;
    }
    let keep: Vec<usize> = match &job.keep_columns {
        None => (0..first.schema.fields().len()).collect(),
        Some(cols) => cols
            .iter()
            .map(|c| first.column_index(c))
            .collect::<Result<_>>()?,
    };
    for &i in &keep {
        let name = first.schema.field(i).name();
        if OUTPUT_COLUMNS.contains(&name.as_str()) {
            return Err(Error::Usage(format!(
                "input column '{name}' would be overwritten by the output; drop it with --keep-columns"
            )));
        }
    }
    if job.decode_only {
        return decode_only(files);
    }
    let schema = schema_with(&first.schema, &keep, output_fields());
    let total: u64 = files.iter().map(|f| f.rows).sum();
    let pb = bar(total, "rows", "scoring");
    let sink = Sink::create(&job.stores, &job.output, schema.clone())?;
    let summary = pipeline(model, job, files, &keep, schema, sink, &pb)?;
    pb.finish_and_clear();
    Ok(summary)
}

fn decode_only(files: Vec<crate::io::ParquetFile>) -> Result<ScoreSummary> {
    let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
    std::thread::scope(|scope| {
        scope.spawn(move || crate::io::read_ahead(files, tx));
        let mut rows = 0u64;
        for item in rx {
            rows += std::hint::black_box(item?.1).num_rows() as u64;
        }
        Ok(ScoreSummary {
            rows,
            ..Default::default()
        })
    })
}

/// Batches in flight between stages. Two per queue keep every stage busy while
/// bounding memory to a handful of batches, whatever the input size.
const QUEUE: usize = 2;

/// Decode, score and encode overlap: a reader thread decodes batches, the calling
/// thread scores them (rayon inside the core), and a writer thread encodes and uploads.
/// Each stage is sequential, so output order equals input order and a re-run gives
/// the same bytes. The first error stops every stage and the output is not published.
fn pipeline(
    model: &Model,
    job: &ScoreJob,
    files: Vec<crate::io::ParquetFile>,
    keep: &[usize],
    schema: arrow_schema::SchemaRef,
    mut sink: Sink,
    pb: &indicatif::ProgressBar,
) -> Result<ScoreSummary> {
    use std::sync::mpsc::sync_channel;
    let (to_score, scored_rx) = sync_channel::<Result<(usize, RecordBatch)>>(QUEUE);
    let (to_write, write_rx) = sync_channel::<RecordBatch>(QUEUE);
    let paths: Vec<PathBuf> = files.iter().map(|f| f.path.clone()).collect();
    std::thread::scope(|scope| {
        scope.spawn(move || crate::io::read_ahead(files, to_score));
        let writer = scope.spawn(move || -> Result<Sink> {
            for b in write_rx {
                sink.write(&b)?;
            }
            Ok(sink)
        });
        let scored = score_all(model, job, &paths, keep, &schema, scored_rx, &to_write, pb);
        drop(to_write);
        // The writer's own error is the root cause when it stopped first.
        let sink = writer.join().expect("the writer thread does not panic");
        let summary = scored?;
        sink?.finish()?;
        Ok(summary)
    })
}

#[allow(clippy::too_many_arguments)]
fn score_all(
    model: &Model,
    job: &ScoreJob,
    paths: &[PathBuf],
    keep: &[usize],
    schema: &arrow_schema::SchemaRef,
    batches: std::sync::mpsc::Receiver<Result<(usize, RecordBatch)>>,
    to_write: &std::sync::mpsc::SyncSender<RecordBatch>,
    pb: &indicatif::ProgressBar,
) -> Result<ScoreSummary> {
    let mut out = ScoreOutput::default();
    let mut summary = ScoreSummary::default();
    let (mut file, mut seen) = (usize::MAX, 0usize);
    for item in batches {
        let (i, batch) = item?;
        if i != file {
            (file, seen) = (i, 0);
        }
        let path = &paths[i];
        score_batch(
            model,
            &batch,
            &job.embedding,
            &job.routing,
            Work::WithDynamics,
            path,
            &mut out,
        )
        .map_err(|e| offset_rows(e, seen))?;
        summary.null_rows += out.valid.iter().filter(|v| !**v).count() as u64;
        summary.ood_rows += out
            .valid
            .iter()
            .zip(&out.is_ood)
            .filter(|(v, o)| **v && **o)
            .count() as u64;
        let mut cols: Vec<ArrayRef> = keep.iter().map(|&i| batch.column(i).clone()).collect();
        cols.extend(output_arrays(std::mem::take(&mut out)));
        let ob = RecordBatch::try_new(schema.clone(), cols).map_err(|source| Error::Arrow {
            path: PathBuf::from(&job.output),
            source,
        })?;
        summary.rows += batch.num_rows() as u64;
        seen += batch.num_rows();
        pb.inc(batch.num_rows() as u64);
        if to_write.send(ob).is_err() {
            // The writer failed; its error is reported by the caller.
            break;
        }
    }
    Ok(summary)
}

/// Row numbers in core errors are batch-relative; make them file-relative.
pub fn offset_rows(e: Error, offset: usize) -> Error {
    match e {
        Error::InFile {
            path,
            source:
                reclag::Error::Dimension {
                    column,
                    expected,
                    found,
                    row: Some(r),
                },
        } => Error::InFile {
            path,
            source: reclag::Error::Dimension {
                column,
                expected,
                found,
                row: Some(r + offset),
            },
        },
        other => other,
    }
}

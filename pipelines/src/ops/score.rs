//! `reclag score`: Parquet in, the input columns plus the per-row outputs out: the five
//! of spec §4, and §11's p-value when the model keeps calibration scores.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, RecordBatch};
use reclag::{Model, ScoreOutput, Work};

use crate::error::{Error, Result};
use crate::io::{Sink, batch_column, open_all, schema_with};
use crate::ops::route::Routing;
use crate::progress::bar;
use crate::store::Stores;
use reclag_parquet::{Fused, FusedGroup, Part};

pub use reclag::arrow::{OUTPUT_COLUMNS, output_fields};

#[derive(Clone, Debug)]
pub struct ScoreJob {
    inputs: Vec<String>,
    /// A path, an object-store URL, or `-` for an Arrow IPC stream on stdout.
    output: String,
    embedding: String,
    routing: Routing,
    keep_columns: Option<Vec<String>>,
    stores: Arc<Stores>,
    /// Decode the input and discard it, writing nothing: the floors `reclag score` is
    /// measured against in the benchmarks.
    decode_only: Option<DecodeOnly>,
}

impl ScoreJob {
    /// Scores `inputs` (files, prefixes, globs or URLs, or `-`) into `output`, reading
    /// and writing through `stores`: the column `embedding`, every row routed by best
    /// margin, every input column kept, until set otherwise.
    pub fn new(stores: Arc<Stores>, inputs: Vec<String>, output: impl Into<String>) -> Self {
        ScoreJob {
            inputs,
            output: output.into(),
            embedding: "embedding".into(),
            routing: Routing::Ungrouped(reclag::Route::default()),
            keep_columns: None,
            stores,
            decode_only: None,
        }
    }

    setters! {
        embedding: String,
        routing: Routing,
        /// The input columns copied to the output (`None`: all of them).
        keep_columns: Option<Vec<String>>,
        decode_only: Option<DecodeOnly>,
    }

    /// The embedding column's index and the indices of the columns kept, in a table
    /// of `schema` (from the file `path`), after every check a run makes before it
    /// reads a row: the embedding's type and width, the group column, and kept
    /// columns that the outputs would overwrite.
    pub fn checked_columns(
        &self,
        model: &Model,
        schema: &arrow_schema::Schema,
        path: &Path,
    ) -> Result<(usize, Vec<usize>)> {
        let index = |c: &str| crate::io::column_index(schema, c).map_err(Error::in_file(path));
        let emb = index(&self.embedding)?;
        reclag::arrow::check_embedding_type(
            schema.field(emb).data_type(),
            &self.embedding,
            Some(model.dim()),
        )
        .map_err(Error::in_file(path))?;
        if let Some(c) = self.routing.column() {
            index(c)?;
        }
        let keep: Vec<usize> = match &self.keep_columns {
            None => (0..schema.fields().len()).collect(),
            Some(cols) => cols.iter().map(|c| index(c)).collect::<Result<_>>()?,
        };
        for &i in &keep {
            let name = schema.field(i).name();
            if OUTPUT_COLUMNS.contains(&name.as_str()) {
                return Err(Error::Usage(format!(
                    "input column '{name}' would be overwritten by the output; drop it with --keep-columns"
                )));
            }
        }
        Ok((emb, keep))
    }

    pub fn inputs(&self) -> &[String] {
        &self.inputs
    }

    pub fn output(&self) -> &str {
        &self.output
    }

    pub fn embedding_column(&self) -> &str {
        &self.embedding
    }

    pub fn routing_of(&self) -> &Routing {
        &self.routing
    }

    pub fn stores(&self) -> &Arc<Stores> {
        &self.stores
    }

    /// Runs the job with `model`: decode, score and write overlap, and the output
    /// appears whole or not at all.
    pub fn run(&self, model: &Model) -> Result<ScoreSummary> {
        run(model, self)
    }
}

/// What a decode-only run decodes (`reclag score --decode-only [as-score|arrow]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DecodeOnly {
    /// Exactly what `score` decodes, through the same reader (pages read in place
    /// where `score` reads them so), each row's values read once for a checksum
    /// instead of scored: the floor of `score` itself.
    AsScore,
    /// Arrow record batches holding every column, the embedding included: what a
    /// caller of the reader gets.
    Arrow,
}

/// Totals of a scoring run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScoreSummary {
    pub rows: u64,
    pub null_rows: u64,
    pub ood_rows: u64,
    /// Whether the output has `reclag_p_value` (the model keeps calibration scores).
    pub p_values: bool,
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
    model.score_routed(&rows, groups.as_deref(), routing.route(), work, out)?;
    Ok(groups)
}

/// The output arrays, in [`OUTPUT_COLUMNS`] order: the p-values last when given.
pub fn output_arrays(out: ScoreOutput, p_value: Option<Vec<f64>>) -> Vec<ArrayRef> {
    let a = reclag::arrow::output_arrays(out);
    let mut v = vec![a.score, a.energy, a.ood_probability, a.is_ood, a.attractor];
    v.extend(p_value.map(reclag::arrow::p_value_array));
    v
}

fn run(model: &Model, job: &ScoreJob) -> Result<ScoreSummary> {
    let files = open_all(&job.stores, &job.inputs)?;
    let first = &files[0];
    // Every check that can fail does so before any row is read.
    let (emb, keep) = job.checked_columns(model, &first.schema, &first.path)?;
    // Scoring pages as they are decoded needs the embedding gone from the output (it
    // is never materialised then) and every input sharing the first file's schema
    // (checked by `open_all`).
    let fuse = crate::io::read_settings().fused && !keep.contains(&emb);
    match job.decode_only {
        Some(DecodeOnly::AsScore) if fuse => {
            let dim = model.dim();
            let column = job.embedding.clone();
            let checksum = Checksum { dim, column };
            return decode_only(
                files,
                Some(Arc::new(checksum) as Arc<dyn Fused<Output = usize>>),
            );
        }
        Some(_) => return decode_only(files, None),
        None => {}
    }
    let schema = schema_with(&first.schema, &keep, output_fields(model));
    let fused: Option<Arc<dyn Fused<Output = RecordBatch>>> = fuse.then(|| {
        Arc::new(FusedScore {
            model: Arc::new(model.clone()),
            column: job.embedding.clone(),
            routing: job.routing.clone(),
            keep: keep
                .iter()
                .map(|&i| first.schema.field(i).name().clone())
                .collect(),
            schema: schema.clone(),
            path: first.path.clone(),
        }) as Arc<dyn Fused<Output = RecordBatch>>
    });
    let total: u64 = files.iter().map(|f| f.rows).sum();
    let pb = bar(total, "rows", "scoring");
    let sink = Sink::create(&job.stores, &job.output, schema.clone())?;
    let mut summary = pipeline(model, job, files, fused, &keep, schema, sink, &pb)?;
    pb.finish_and_clear();
    summary.p_values = model.calibration().is_some();
    Ok(summary)
}

fn decode_only(
    files: Vec<crate::io::ParquetFile>,
    fused: Option<Arc<dyn Fused<Output = usize>>>,
) -> Result<ScoreSummary> {
    let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
    std::thread::scope(|scope| {
        scope.spawn(move || crate::io::read_ahead_fused(files, fused, tx));
        let mut rows = 0u64;
        for item in rx {
            rows += match item?.1 {
                Part::Rows(b) => std::hint::black_box(b).num_rows(),
                Part::Fused(n) => n,
            } as u64;
        }
        Ok(ScoreSummary {
            rows,
            ..Default::default()
        })
    })
}

/// The consumer [`DecodeOnly::AsScore`] puts where `score` puts the model: it reads
/// every value once (a wrapping sum of the bits, which the compiler vectorises), so
/// the pages are decoded and touched as scoring touches them, and checks that every
/// row of the group arrived.
struct Checksum {
    dim: usize,
    column: String,
}

impl Fused for Checksum {
    type Output = usize;

    fn column(&self) -> &str {
        &self.column
    }

    fn start(&self, others: &[RecordBatch]) -> Option<Box<dyn FusedGroup<Output = usize>>> {
        Some(Box::new(ChecksumRows {
            dim: self.dim,
            rows: others.iter().map(RecordBatch::num_rows).sum(),
            done: 0,
            sum: 0,
        }))
    }
}

struct ChecksumRows {
    dim: usize,
    rows: usize,
    done: usize,
    sum: u32,
}

fn bits_sum(b: &[u8]) -> u32 {
    b.chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .fold(0u32, u32::wrapping_add)
}

impl FusedGroup for ChecksumRows {
    type Output = usize;

    fn rows(&mut self, values: &[f32]) {
        let s = values.iter().fold(0u32, |a, v| a.wrapping_add(v.to_bits()));
        self.sum = self.sum.wrapping_add(s);
        self.done += values.len() / self.dim.max(1);
    }

    fn rows_at(&mut self, buf: &[u8], at: &[usize]) {
        let len = 4 * self.dim;
        for &a in at {
            // A row out of the buffer is not counted, so `finish` reports it.
            if let Some(row) = buf.get(a..a + len) {
                self.sum = self.sum.wrapping_add(bits_sum(row));
                self.done += 1;
            }
        }
    }

    fn finish(self: Box<Self>, _others: Vec<RecordBatch>) -> reclag_parquet::Result<Vec<usize>> {
        std::hint::black_box(self.sum);
        if self.done != self.rows {
            return Err(parquet::errors::ParquetError::General(format!(
                "decoded {} of {} rows of a row group",
                self.done, self.rows
            )));
        }
        Ok(vec![self.rows])
    }
}

/// Batches in flight between stages. Two per queue keep every stage busy while
/// bounding memory to a handful of batches, whatever the input size.
const QUEUE: usize = 2;

/// Decode, score and encode overlap: a reader thread decodes batches, the calling
/// thread scores them (rayon inside the core), and a writer thread encodes and uploads.
/// Each stage is sequential, so output order equals input order and a re-run gives
/// the same bytes. The first error stops every stage and the output is not published.
#[allow(clippy::too_many_arguments)]
fn pipeline(
    model: &Model,
    job: &ScoreJob,
    files: Vec<crate::io::ParquetFile>,
    fused: Option<Arc<dyn Fused<Output = RecordBatch>>>,
    keep: &[usize],
    schema: arrow_schema::SchemaRef,
    mut sink: Sink,
    pb: &indicatif::ProgressBar,
) -> Result<ScoreSummary> {
    use std::sync::mpsc::sync_channel;
    let (to_score, scored_rx) = sync_channel::<Result<(usize, Part<RecordBatch>)>>(QUEUE);
    let (to_write, write_rx) = sync_channel::<RecordBatch>(QUEUE);
    let paths: Vec<PathBuf> = files.iter().map(|f| f.path.clone()).collect();
    std::thread::scope(|scope| {
        scope.spawn(move || crate::io::read_ahead_fused(files, fused, to_score));
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
    batches: std::sync::mpsc::Receiver<Result<(usize, Part<RecordBatch>)>>,
    to_write: &std::sync::mpsc::SyncSender<RecordBatch>,
    pb: &indicatif::ProgressBar,
) -> Result<ScoreSummary> {
    let mut out = ScoreOutput::default();
    let mut summary = ScoreSummary::default();
    let (mut file, mut seen) = (usize::MAX, 0usize);
    for item in batches {
        let (i, part) = item?;
        if i != file {
            (file, seen) = (i, 0);
        }
        let path = &paths[i];
        let batch = match part {
            Part::Rows(batch) => batch,
            // Scored as it was decoded (see `FusedScore`).
            Part::Fused(batch) => {
                let is_ood = batch
                    .column_by_name(OUTPUT_COLUMNS[3])
                    .expect("the output schema has it")
                    .as_boolean();
                summary.null_rows += is_ood.null_count() as u64;
                summary.ood_rows += is_ood.true_count() as u64;
                summary.rows += batch.num_rows() as u64;
                seen += batch.num_rows();
                pb.inc(batch.num_rows() as u64);
                if to_write.send(batch).is_err() {
                    break;
                }
                continue;
            }
        };
        let groups = score_batch(
            model,
            &batch,
            &job.embedding,
            &job.routing,
            Work::WithDynamics,
            path,
            &mut out,
        )
        .map_err(|e| offset_rows(e, seen))?;
        let p = p_values(model, &out, groups.as_deref(), job.routing.route())?;
        summary.null_rows += out.valid.iter().filter(|v| !**v).count() as u64;
        summary.ood_rows += out
            .valid
            .iter()
            .zip(&out.is_ood)
            .filter(|(v, o)| **v && **o)
            .count() as u64;
        let mut cols: Vec<ArrayRef> = keep.iter().map(|&i| batch.column(i).clone()).collect();
        cols.extend(output_arrays(std::mem::take(&mut out), p));
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

/// Scores each row group's embedding page by page as the fast decoder hands it over
/// (the rows are then still in L2), and assembles the output batches from the kept
/// columns and the scores: the embedding is never held whole. Any row group it cannot
/// take (a group that does not resolve, for instance) is declined and scored the usual
/// way, which also reports the error with its row.
struct FusedScore {
    model: Arc<Model>,
    column: String,
    routing: Routing,
    keep: Vec<String>,
    schema: arrow_schema::SchemaRef,
    /// Only for `Routing::resolve`'s signature: its errors are dropped here (see
    /// `start`).
    path: PathBuf,
}

impl Fused for FusedScore {
    type Output = RecordBatch;

    fn column(&self) -> &str {
        &self.column
    }

    fn start(&self, others: &[RecordBatch]) -> Option<Box<dyn FusedGroup<Output = RecordBatch>>> {
        let groups = fused_groups(&self.model, &self.routing, others, &self.path)?;
        let rows = others.iter().map(RecordBatch::num_rows).sum();
        Some(Box::new(FusedRows {
            scorer: GroupScorer::new(self.model.clone(), groups, self.routing.route(), rows),
            keep: self.keep.clone(),
            schema: self.schema.clone(),
            out: ScoreOutput::default(),
            p: Vec::new(),
        }))
    }
}

/// A fused row group's groups, batch by batch (no copy of the columns into one
/// batch): `Some(None)` without routing. `None` declines the row group, for an error
/// too: the usual path then reports it, with the right file and row.
pub(crate) fn fused_groups(
    model: &Model,
    routing: &Routing,
    others: &[RecordBatch],
    path: &std::path::Path,
) -> Option<Option<Vec<Option<u32>>>> {
    let mut groups: Option<Vec<Option<u32>>> = None;
    for b in others {
        if let Some(g) = routing.resolve(model, b, path).ok()? {
            groups.get_or_insert_with(Vec::new).extend(g);
        }
    }
    let rows: usize = others.iter().map(RecordBatch::num_rows).sum();
    if others.is_empty() || groups.as_ref().is_some_and(|g| g.len() != rows) {
        return None;
    }
    Some(groups)
}

/// A fused row group's scoring, for `score` and drift alike: its rows arrive in
/// pieces, each scored on this thread with its slice of the group's groups. After a
/// failure nothing more is scored, and [`GroupScorer::check`] reports the row group
/// as incomplete.
pub(crate) struct GroupScorer {
    model: Arc<Model>,
    groups: Option<Vec<Option<u32>>>,
    route: reclag::Route,
    rows: usize,
    done: usize,
    failed: bool,
    out: ScoreOutput,
}

impl GroupScorer {
    pub fn new(
        model: Arc<Model>,
        groups: Option<Vec<Option<u32>>>,
        route: reclag::Route,
        rows: usize,
    ) -> Self {
        GroupScorer {
            model,
            groups,
            route,
            rows,
            done: 0,
            failed: false,
            out: ScoreOutput::default(),
        }
    }

    /// Scores the next rows: the group row of the first and their outputs, or `None`
    /// once anything failed.
    pub fn score(&mut self, rows: &reclag::Rows<'_>, work: Work) -> Option<(usize, &ScoreOutput)> {
        let n = rows.len();
        if self.failed || self.done + n > self.rows {
            self.failed = true;
            return None;
        }
        let g = self.groups.as_ref().map(|g| &g[self.done..self.done + n]);
        if self
            .model
            .score_into_here(rows, g, self.route, work, &mut self.out)
            .is_err()
        {
            self.failed = true;
            return None;
        }
        self.done += n;
        Some((self.done - n, &self.out))
    }

    /// §11's p-values of the rows [`GroupScorer::score`] just returned (starting at
    /// group row `start`), appended to `p`; nothing when the model has no
    /// calibration scores.
    pub fn p_values(&self, start: usize, p: &mut Vec<f64>) {
        let n = self.out.len();
        let g = self.groups.as_ref().map(|g| &g[start..start + n]);
        let mut chunk = Vec::new();
        if self
            .model
            .p_values_into(&self.out, g, self.route, &mut chunk)
            .is_ok()
        {
            p.extend_from_slice(&chunk);
        }
    }

    /// `Ok` once every row of the group was scored.
    pub fn check(&self) -> parquet::errors::Result<()> {
        if self.failed || self.done != self.rows {
            return Err(parquet::errors::ParquetError::General(format!(
                "scored {} of {} rows of a row group",
                self.done, self.rows
            )));
        }
        Ok(())
    }

    pub fn into_groups(self) -> Option<Vec<Option<u32>>> {
        self.groups
    }
}

struct FusedRows {
    scorer: GroupScorer,
    keep: Vec<String>,
    schema: arrow_schema::SchemaRef,
    out: ScoreOutput,
    /// Filled when the model keeps calibration scores.
    p: Vec<f64>,
}

impl FusedRows {
    /// Scores the next rows of the group into `out`.
    fn take(&mut self, rows: &reclag::Rows<'_>) {
        let Some((start, _)) = self.scorer.score(rows, Work::WithDynamics) else {
            return;
        };
        self.scorer.p_values(start, &mut self.p);
        let t = &self.scorer.out;
        let o = &mut self.out;
        o.score.extend_from_slice(&t.score);
        o.energy.extend_from_slice(&t.energy);
        o.ood_probability.extend_from_slice(&t.ood_probability);
        o.is_ood.extend_from_slice(&t.is_ood);
        o.attractor.extend_from_slice(&t.attractor);
        o.valid.extend_from_slice(&t.valid);
    }
}

impl FusedGroup for FusedRows {
    type Output = RecordBatch;

    fn rows(&mut self, values: &[f32]) {
        let d = self.scorer.model.dim();
        self.take(&reclag::Rows::dense_f32(values, d));
    }

    fn rows_at(&mut self, buf: &[u8], at: &[usize]) {
        let d = self.scorer.model.dim();
        self.take(&reclag::Rows::scattered_f32_le(buf, at, d));
    }

    fn finish(
        self: Box<Self>,
        others: Vec<RecordBatch>,
    ) -> reclag_parquet::Result<Vec<RecordBatch>> {
        use parquet::errors::ParquetError;
        self.scorer.check()?;
        let mut batches = Vec::with_capacity(others.len());
        let mut start = 0;
        for b in &others {
            let n = b.num_rows();
            let mut cols: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
            for k in &self.keep {
                cols.push(b.column_by_name(k).cloned().ok_or_else(|| {
                    ParquetError::General(format!("column '{k}' was not decoded"))
                })?);
            }
            let r = start..start + n;
            let o = &self.out;
            let p = self
                .scorer
                .model
                .calibration()
                .map(|_| self.p[r.clone()].to_vec());
            cols.extend(output_arrays(
                ScoreOutput {
                    score: o.score[r.clone()].to_vec(),
                    energy: o.energy[r.clone()].to_vec(),
                    ood_probability: o.ood_probability[r.clone()].to_vec(),
                    is_ood: o.is_ood[r.clone()].to_vec(),
                    group: vec![],
                    attractor: o.attractor[r.clone()].to_vec(),
                    steps: vec![],
                    valid: o.valid[r].to_vec(),
                },
                p,
            ));
            batches.push(RecordBatch::try_new(self.schema.clone(), cols)?);
            start += n;
        }
        Ok(batches)
    }
}

/// §11's p-values of rows just scored, when the model keeps calibration scores.
pub fn p_values(
    model: &Model,
    out: &ScoreOutput,
    groups: Option<&[Option<u32>]>,
    route: reclag::Route,
) -> Result<Option<Vec<f64>>> {
    if model.calibration().is_none() {
        return Ok(None);
    }
    let mut p = Vec::new();
    model.p_values_into(out, groups, route, &mut p)?;
    Ok(Some(p))
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

//! Scoring a partition (and the reference): per-row statistics gathered whole-table
//! and per group, p-values against the model's calibration scores.

use std::sync::Arc;

use arrow_array::RecordBatch;
use reclag::{Model, ScoreOutput, Work};

use super::*;
use crate::error::{Error, Result};
use crate::io::ParquetFile;
use crate::ops::route::Routing;
use reclag_parquet::Part;

/// Statistics of one group (or the whole partition) while its rows stream by.
#[derive(Default)]
pub(super) struct Acc {
    pub(super) rows: u64,
    pub(super) null_rows: u64,
    pub(super) ood_rows: u64,
    pub(super) score_sum: f64,
    pub(super) energies: Vec<f64>,
    pub(super) scores: Vec<f64>,
    /// Rows with a p-value, those below the level, and the histogram.
    pub(super) p_rows: u64,
    pub(super) p_low: u64,
    pub(super) p_hist: Vec<u64>,
}

/// How a row's p-value is found: the model's calibration scores, the route of rows
/// without a group, and the level `alert.p_level`.
#[derive(Clone, Copy)]
pub(super) struct PValues<'m> {
    pub(super) model: &'m Model,
    pub(super) sets: Option<&'m reclag::conformal::CalibrationSets>,
    pub(super) route: reclag::Route,
    pub(super) level: f64,
}

impl PValues<'_> {
    pub(super) fn of(&self, scored: Option<(f64, f64)>, group: Option<u32>) -> Option<f64> {
        let (score, _) = scored?;
        let a = self.model.against(group, self.route);
        Some(self.sets?.against(a).p_value(score))
    }
}

impl Acc {
    /// One row: its score and energy (`None` for a row that could not be scored) and
    /// its p-value (`None` without calibration scores).
    pub(super) fn add(&mut self, scored: Option<(f64, f64)>, p: Option<f64>, level: f64) {
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

    pub(super) fn scored(&self) -> u64 {
        self.rows - self.null_rows
    }

    pub(super) fn low_p_rate(&self) -> Option<f64> {
        (self.p_rows > 0).then(|| self.p_low as f64 / self.p_rows as f64)
    }

    /// Adds another partition's rows (a reference period spans several).
    pub(super) fn merge(&mut self, o: Acc) {
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

/// Whether `e` says a file's contents are unusable (not Parquet, corrupt, a column
/// of another type), which skips its partition, rather than that the store failed
/// (refused, unreachable), which fails the run so a rerun retries the partition.
pub(super) fn unreadable(e: &Error) -> bool {
    match e {
        Error::Parquet { source, .. } => {
            !matches!(source, parquet::errors::ParquetError::External(_))
        }
        Error::Arrow { .. } | Error::InFile { .. } | Error::Core(_) => true,
        Error::Io { .. }
        | Error::Polars { .. }
        | Error::Locked { .. }
        | Error::LockLost { .. }
        | Error::Unlockable { .. }
        | Error::NotFound { .. }
        | Error::NoInput { .. }
        | Error::Denied { .. }
        | Error::Store { .. }
        | Error::Credentials { .. }
        | Error::Location { .. }
        | Error::SchemaMismatch { .. }
        | Error::ModelChanged { .. }
        | Error::ReferenceChanged { .. }
        | Error::StrictSkip { .. }
        | Error::Usage(_) => false,
    }
}

/// A partition's opened files, or why it is skipped.
pub(super) enum Prepared<'p> {
    Ready(Vec<ParquetFile>, Window<'p>),
    Skipped(String),
}

/// What a partition's rows gave: statistics and worst rows.
pub(super) struct Gathered {
    pub(super) whole: Acc,
    pub(super) groups: Vec<Acc>,
    pub(super) worst: Worst,
}

/// Partitions opened and read as one chain: enough to keep both cores busy across
/// partition boundaries, few enough that a backfill of thousands of partitions does
/// not hold every footer at once.
pub(super) const CHAINED_PARTITIONS: usize = 8;

pub(super) enum Processed {
    Done {
        record: Box<PartitionRecord>,
        metrics: RecordBatch,
        worst: Option<RecordBatch>,
    },
    Skipped(String),
}

impl DriftJob {
    /// Scores every row of the reference (data elsewhere, or partitions of the
    /// source, among `found`) against the model, once.
    pub(super) fn measure_reference(
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
    pub(super) fn accumulate(
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
                let g = match crate::ops::score::score_batch(
                    model,
                    &batch,
                    &self.spec.source.embedding,
                    routing,
                    Work::EnergyOnly,
                    &paths[fi],
                    &mut out,
                )
                .map_err(|e| crate::ops::score::offset_rows(e, base as usize))
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

    pub(super) fn routing(&self) -> Routing {
        match &self.spec.source.group {
            Some(g) => Routing::Column(g.clone()),
            None => Routing::Ungrouped(self.spec.source.route.unwrap_or_default()),
        }
    }

    /// Opens a partition's files, or says why it is skipped.
    pub(super) fn prepare<'p>(&self, model: &Model, part: &'p Partition) -> Result<Prepared<'p>> {
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
}

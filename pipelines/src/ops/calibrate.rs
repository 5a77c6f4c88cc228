//! `reclag calibrate`: spec §11's re-thresholding. New ID rows give every `τ_g` and
//! `τ_*` and the calibration scores p-values are taken against; memories, β and
//! preprocessing stay. Rows are streamed: only `K + 1` energies per row are kept.

use std::sync::Arc;

use reclag::conformal::CalibrationEnergies;
use reclag::{LabelKind, Model, Provenance};

use crate::error::{Error, Result};
use crate::io::{batch_column, open_all};
use crate::progress::bar;
use crate::store::Stores;

#[derive(Clone, Debug)]
pub struct CalibrateJob {
    inputs: Vec<String>,
    embedding: String,
    /// The label column; `None` takes the one the model records.
    label: Option<String>,
    /// `None` keeps the model's level.
    ood_rate: Option<f64>,
    /// Where the source model came from (recorded in the new model's provenance).
    model_url: String,
    /// A path or object-store URL.
    output: String,
    stores: Arc<Stores>,
}

impl CalibrateJob {
    /// Re-thresholds the model loaded from `model_url` on the ID rows of `inputs` and
    /// writes it to `output`, through `stores`: the column `embedding`, the label column
    /// and OOD rate the model records, until set otherwise.
    pub fn new(
        stores: Arc<Stores>,
        inputs: Vec<String>,
        model_url: impl Into<String>,
        output: impl Into<String>,
    ) -> Self {
        CalibrateJob {
            inputs,
            embedding: "embedding".into(),
            label: None,
            ood_rate: None,
            model_url: model_url.into(),
            output: output.into(),
            stores,
        }
    }

    setters! {
        embedding: String,
        /// The label column (`None`: the one the model records).
        label: Option<String>,
        /// The new OOD rate (`None`: the model's).
        ood_rate: Option<f64>,
    }

    /// The re-thresholded model, written to the output, and what changed.
    pub fn run(&self, model: &Model) -> Result<(Model, CalibrateSummary)> {
        run(model, self)
    }
}

/// One group before and after.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupChange {
    pub group: String,
    pub rows: u64,
    pub tau_before: f64,
    pub tau_after: f64,
    /// Share of the new rows the old threshold flagged (margin ≤ 0 at `τ_before`).
    pub flagged_before: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CalibrateSummary {
    pub rows: u64,
    pub skipped_null_label: u64,
    pub skipped_invalid: u64,
    pub ood_rate: f64,
    pub label: Option<String>,
    pub groups: Vec<GroupChange>,
}

/// The level a model's thresholds were taken at: its calibration scores', else the
/// training parameters' (format version 2 files).
pub fn model_rate(model: &Model) -> Option<f64> {
    if let Some(c) = model.calibration() {
        return Some(c.ood_rate);
    }
    serde_json::from_str::<serde_json::Value>(&model.provenance().training)
        .ok()?
        .get("ood_rate")?
        .as_f64()
}

/// Re-thresholds `model` on the job's rows and writes the new model.
fn run(model: &Model, job: &CalibrateJob) -> Result<(Model, CalibrateSummary)> {
    let ood_rate = match job.ood_rate.or_else(|| model_rate(model)) {
        Some(r) => r,
        None => {
            return Err(Error::Usage(
                "the model does not record the ood-rate it was calibrated at; pass --ood-rate"
                    .into(),
            ));
        }
    };
    if !(ood_rate > 0.0 && ood_rate < 1.0) {
        return Err(Error::Usage(format!(
            "--ood-rate must be in (0, 1) (exclusive), found {ood_rate}"
        )));
    }
    let label = match (
        model.label_kind(),
        job.label.clone(),
        &model.provenance().label_column,
    ) {
        (LabelKind::None, Some(l), _) => {
            return Err(Error::Usage(format!(
                "--label {l}: the model was trained without labels (one group); omit --label"
            )));
        }
        (LabelKind::None, None, _) => None,
        (_, Some(l), _) => Some(l),
        (_, None, Some(l)) => Some(l.clone()),
        (_, None, None) => {
            return Err(Error::Usage(format!(
                "the model has {} groups but does not record its label column (an older model file); name it with --label",
                model.groups().len()
            )));
        }
    };
    let files = open_all(&job.stores, &job.inputs)?;
    let mut cols = Vec::new();
    for f in &files {
        let emb = f.column_index(&job.embedding)?;
        reclag::arrow::check_embedding_type(
            f.schema.field(emb).data_type(),
            &job.embedding,
            Some(model.dim()),
        )
        .map_err(Error::in_file(&f.path))?;
        if let Some(l) = &label {
            f.column_index(l).map_err(|e| {
                Error::Usage(format!(
                    "{e}; the model's groups are labels, name their column with --label"
                ))
            })?;
        }
    }
    let total: u64 = files.iter().map(|f| f.rows).sum();
    let pb = bar(total, "rows", "calibrating");
    let mut acc = CalibrationEnergies::new(model.groups().len());
    let (mut null_label, mut invalid) = (0u64, 0u64);
    for f in files {
        let path = f.path.clone();
        cols.clear();
        cols.push(f.column_index(&job.embedding)?);
        if let Some(l) = &label {
            cols.push(f.column_index(l)?);
        }
        cols.sort_unstable();
        let mut seen = 0usize;
        for batch in f.read(Some(&cols))? {
            let batch = batch?;
            let col = batch_column(&batch, &job.embedding, &path)?;
            let rows =
                reclag::arrow::embedding_rows(col.as_ref(), &job.embedding, Some(model.dim()))
                    .map_err(Error::in_file(&path))
                    .map_err(|e| crate::ops::score::offset_rows(e, seen))?;
            let groups = match &label {
                None => vec![Some(0); batch.num_rows()],
                Some(l) => reclag::arrow::resolve_groups(
                    model,
                    batch_column(&batch, l, &path)?.as_ref(),
                    l,
                )
                .map_err(Error::in_file(&path))?,
            };
            let labelled = groups.iter().filter(|g| g.is_some()).count();
            null_label += (groups.len() - labelled) as u64;
            let kept = model.calibration_energies(&rows, &groups, &mut acc)?;
            invalid += (labelled - kept) as u64;
            seen += batch.num_rows();
            pb.inc(batch.num_rows() as u64);
        }
    }
    pb.finish_and_clear();
    let provenance = Provenance {
        training: model.provenance().training.clone(),
        source: format!(
            "recalibrated from {} at ood_rate={ood_rate} on inputs={} embedding={} label={}; trained from {}",
            job.model_url,
            job.inputs.join(","),
            job.embedding,
            label.as_deref().unwrap_or("-"),
            model.provenance().source
        ),
        label_column: label.clone(),
        recalibrated_from: Some(reclag::format::checksum(model)),
    };
    let new = model.recalibrated(&acc, ood_rate, provenance)?;
    let sets = new.calibration().expect("a recalibrated model has scores");
    let groups = model
        .groups()
        .iter()
        .zip(new.groups())
        .zip(&sets.own)
        .map(|((old, g), own)| {
            // Margin at the old τ ≤ 0 ⟺ (A − τ_new) ≤ τ_old − τ_new.
            let shift = old.tau - g.tau;
            let flagged = own.scores().partition_point(|&s| s <= shift);
            GroupChange {
                group: g.key.as_ref().map_or("(all)".into(), |k| k.to_string()),
                rows: own.len() as u64,
                tau_before: old.tau,
                tau_after: g.tau,
                flagged_before: flagged as f64 / own.len().max(1) as f64,
            }
        })
        .collect();
    let bytes = reclag::format::to_bytes(&new)?;
    job.stores.locate(&job.output)?.put(bytes.into())?;
    Ok((
        new,
        CalibrateSummary {
            rows: acc.len() as u64,
            skipped_null_label: null_label,
            skipped_invalid: invalid,
            ood_rate,
            label,
            groups,
        },
    ))
}

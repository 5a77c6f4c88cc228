//! A partition's verdict and its outputs: the test against the expected rate, the
//! baseline it is judged against, and the metrics table.

use std::path::PathBuf;
use std::sync::Arc;

use arrow_array::builder::{BooleanBuilder, Float64Builder, StringBuilder, UInt64Builder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use bytes::Bytes;
use reclag::Model;

use super::*;
use crate::error::{Error, Result};

pub(super) fn quantiles(sorted: &[f64]) -> Vec<f64> {
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
    crate::ops::calibrate::model_rate(model).unwrap_or(0.05)
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

pub(super) fn group_name(model: &Model, gi: usize) -> String {
    match &model.groups()[gi].key {
        Some(reclag::GroupKey::Int(v)) => v.to_string(),
        Some(reclag::GroupKey::Str(v)) => v.clone(),
        None => gi.to_string(),
    }
}

/// Partition values become file names; anything but `[A-Za-z0-9._-]` is escaped.
pub(super) fn file_safe(value: &str) -> String {
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
pub(super) struct MetricsBuilder {
    pub(super) partition: StringBuilder,
    pub(super) group: StringBuilder,
    pub(super) rows: UInt64Builder,
    pub(super) null_rows: UInt64Builder,
    pub(super) ood_rows: UInt64Builder,
    pub(super) ood_rate: Float64Builder,
    pub(super) expected: Float64Builder,
    pub(super) p_value: Float64Builder,
    pub(super) e05: Float64Builder,
    pub(super) e50: Float64Builder,
    pub(super) e95: Float64Builder,
    pub(super) mean_score: Float64Builder,
    pub(super) drift: BooleanBuilder,
    pub(super) low_p_rate: Float64Builder,
}

impl MetricsBuilder {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn push(
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

    pub(super) fn finish(mut self) -> Result<RecordBatch> {
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
pub(super) fn parquet_bytes(batch: &RecordBatch) -> Result<Bytes> {
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

impl DriftJob {
    /// A partition's record, metrics and worst rows from what its rows gave.
    pub(super) fn conclude(
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
            status: PartitionStatus::Done,
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
}

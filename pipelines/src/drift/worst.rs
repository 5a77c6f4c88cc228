//! The worst rows of a partition: the `top_k` lowest scores kept with their columns,
//! explained, and previewed in the report.

use std::path::PathBuf;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, UInt64Type};
use arrow_array::{Array, ArrayRef, RecordBatch, StringArray, UInt32Array};
use arrow_schema::{DataType, Field, Schema};
use reclag::{Model, ScoreOutput};

use super::*;
use crate::error::{Error, Result};
use crate::ops::route::Routing;

/// The worst rows seen so far: original columns plus the score, with the keys that
/// make their order total (score, file, row) so reruns pick the same rows.
pub(super) struct Worst {
    pub(super) k: usize,
    pub(super) batch: Option<RecordBatch>,
    pub(super) keys: Vec<(f64, u32, u64)>,
}

impl Worst {
    pub(super) fn offer(
        &mut self,
        batch: &RecordBatch,
        out: &ScoreOutput,
        file: u32,
        base: u64,
        mask: Option<&[bool]>,
    ) -> Result<()> {
        if self.k == 0 {
            return Ok(());
        }
        let mut cand: Vec<(f64, u32, u64)> = (0..batch.num_rows())
            .filter(|&i| out.valid[i] && mask.is_none_or(|m| m[i]))
            .map(|i| (out.score[i], file, base + i as u64))
            .collect();
        if cand.len() > self.k {
            cand.select_nth_unstable_by(self.k - 1, worst_order);
            cand.truncate(self.k);
        }
        if cand.is_empty() {
            return Ok(());
        }
        let idx = UInt32Array::from_iter_values(cand.iter().map(|c| (c.2 - base) as u32));
        let cols: Vec<ArrayRef> = batch
            .columns()
            .iter()
            .map(|c| arrow_select::take::take(c, &idx, None))
            .collect::<std::result::Result<_, _>>()
            .map_err(arrow_err)?;
        let fields = batch.schema().fields().iter().cloned().collect();
        let part = worst_rows(fields, cols, cand.iter().map(|c| c.0))?;
        self.merge(part, cand)
    }

    /// Rows already picked as their row group's worst (`fused::DriftRows`): the
    /// file's columns, the score, and each row's place in its row group, which
    /// starts at row `base` of file `file`.
    pub(super) fn offer_picked(
        &mut self,
        picked: &RecordBatch,
        file: u32,
        base: u64,
    ) -> Result<()> {
        let n = picked.num_columns();
        let at = picked.column(n - 1).as_primitive::<UInt64Type>();
        let score = picked.column(n - 2).as_primitive::<Float64Type>();
        let keys = (0..picked.num_rows())
            .map(|i| (score.value(i), file, base + at.value(i)))
            .collect();
        let part = picked
            .project(&(0..n - 1).collect::<Vec<_>>())
            .map_err(arrow_err)?;
        self.merge(part, keys)
    }

    /// Keeps the `k` worst of the rows kept so far and `part`, whose keys are `cand`.
    pub(super) fn merge(&mut self, part: RecordBatch, cand: Vec<(f64, u32, u64)>) -> Result<()> {
        if self.k == 0 || cand.is_empty() {
            return Ok(());
        }
        let merged = match self.batch.take() {
            None => part,
            Some(prev) => {
                if prev.schema() != part.schema() {
                    return Err(Error::Usage(format!(
                        "the files of one partition have different columns: {} vs {}",
                        schema_names(&prev.schema()),
                        schema_names(&part.schema())
                    )));
                }
                arrow_select::concat::concat_batches(&prev.schema(), [&prev, &part])
                    .map_err(arrow_err)?
            }
        };
        self.keys.extend(cand);
        let mut order_idx: Vec<usize> = (0..self.keys.len()).collect();
        order_idx.sort_by(|&a, &b| worst_order(&self.keys[a], &self.keys[b]));
        order_idx.truncate(self.k);
        let take = UInt32Array::from_iter_values(order_idx.iter().map(|&i| i as u32));
        self.keys = order_idx.iter().map(|&i| self.keys[i]).collect();
        let cols = merged
            .columns()
            .iter()
            .map(|c| arrow_select::take::take(c, &take, None))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(arrow_err)?;
        self.batch = Some(RecordBatch::try_new(merged.schema(), cols).map_err(arrow_err)?);
        Ok(())
    }
}

/// The worst rows' total order, (score, file, row): reruns pick the same rows.
pub(crate) fn worst_order(a: &(f64, u32, u64), b: &(f64, u32, u64)) -> std::cmp::Ordering {
    a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2))
}

/// A worst-rows batch: the file's columns and then the score. Both paths build it
/// here, so rows picked while pages were decoded concatenate with rows picked from
/// whole batches.
pub(super) fn worst_rows(
    mut fields: Vec<arrow_schema::FieldRef>,
    mut cols: Vec<ArrayRef>,
    scores: impl Iterator<Item = f64>,
) -> Result<RecordBatch> {
    fields.push(Arc::new(Field::new(WORST_SCORE, DataType::Float64, true)));
    cols.push(Arc::new(arrow_array::Float64Array::from_iter_values(
        scores,
    )));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).map_err(arrow_err)
}

pub(super) fn schema_names(s: &Schema) -> String {
    s.fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn arrow_err(e: arrow_schema::ArrowError) -> Error {
    Error::Usage(format!("assembling the worst rows: {e}"))
}

/// The worst rows' scalar columns as text (embeddings and other lists are left out).
pub(super) fn worst_preview(batch: &RecordBatch) -> Vec<WorstRow> {
    use datafusion::arrow::util::display::array_value_to_string;
    let score = batch.column_by_name(WORST_SCORE).and_then(|c| {
        c.as_any()
            .downcast_ref::<arrow_array::Float64Array>()
            .cloned()
    });
    let shown: Vec<(String, &ArrayRef)> = batch
        .schema()
        .fields()
        .iter()
        .zip(batch.columns())
        .filter(|(f, _)| {
            !f.data_type().is_nested() && f.name() != "partition" && f.name() != WORST_SCORE
        })
        .map(|(f, c)| (f.name().clone(), c))
        .take(6)
        .collect();
    (0..batch.num_rows())
        .map(|i| WorstRow {
            score: score.as_ref().map_or(f64::NAN, |s| s.value(i)),
            columns: shown
                .iter()
                .map(|(n, c)| {
                    let v = if c.is_null(i) {
                        "null".to_string()
                    } else {
                        array_value_to_string(c, i).unwrap_or_default()
                    };
                    (n.clone(), v)
                })
                .collect(),
        })
        .collect()
}

impl DriftJob {
    /// Adds the partition and `reclag_explain` to the worst rows.
    pub(super) fn explain_worst(
        &self,
        model: &Model,
        partition: &str,
        batch: RecordBatch,
        routing: &Routing,
    ) -> Result<RecordBatch> {
        let path = PathBuf::from(partition);
        let col = crate::io::batch_column(&batch, &self.spec.source.embedding, &path)?;
        let rows = reclag::arrow::embedding_rows(
            col.as_ref(),
            &self.spec.source.embedding,
            Some(model.dim()),
        )
        .map_err(Error::in_file(&path))?;
        let groups = routing.resolve(model, &batch, &path)?;
        let mut ex = reclag::Explanation::default();
        model.explain_into(&rows, groups.as_deref(), &mut ex)?;
        let explain = reclag::arrow::explain_array(model, ex);
        let mut fields: Vec<Field> = vec![Field::new("partition", DataType::Utf8, false)];
        fields.extend(batch.schema().fields().iter().map(|f| f.as_ref().clone()));
        fields.push(Field::new(
            "reclag_explain",
            explain.data_type().clone(),
            true,
        ));
        let mut cols: Vec<ArrayRef> = vec![Arc::new(StringArray::from(vec![
            partition;
            batch.num_rows()
        ]))];
        cols.extend(batch.columns().iter().cloned());
        cols.push(explain);
        RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).map_err(arrow_err)
    }
}

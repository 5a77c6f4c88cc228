//! The drift pass over pages as they are decoded, as `reclag score` does it
//! (`reclag_parquet::Fused`): a partition's statistics need each row's score, energy,
//! group and window, and the worst rows need their embeddings, so the embedding column
//! is never built whole. Each row group hands back its statistics and, before them,
//! copies of its own worst rows. Building the column cost a drift run over a lake
//! twice the time of `reclag score` over the same rows.

use std::path::PathBuf;
use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, FixedSizeListArray, Float32Array, Float64Array, RecordBatch, UInt64Array,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::errors::ParquetError;
use reclag::{Model, Rows, Work};
use reclag_parquet::{Fused, FusedGroup};

use super::WORST_SCORE;
use super::window::TimeWindows;
use crate::ops::route::Routing;
use crate::ops::score::GroupScorer;

/// The last column of a batch of picked worst rows: each row's place in its group.
const PICKED_AT: &str = "row_in_group";

/// What the fused drift reader hands back for a row group it took.
pub(super) enum DriftPart {
    /// The row group's worst rows (see `Worst::offer_picked`): the file's columns, the
    /// score and each row's place in the group. They come before the group's
    /// statistics, so the group starts at the file row counted so far.
    Picked(RecordBatch),
    /// Row by row, in order: the statistics of every row of the group.
    Stats(RowStats),
}

/// Each row's score and energy (where it could be scored), group, and whether it is
/// in the window.
pub(super) struct RowStats {
    score: Vec<f64>,
    energy: Vec<f64>,
    valid: Vec<bool>,
    group: Option<Vec<Option<u32>>>,
    in_window: Vec<bool>,
}

impl RowStats {
    pub fn rows(&self) -> usize {
        self.score.len()
    }

    pub fn in_window(&self, i: usize) -> bool {
        self.in_window[i]
    }

    pub fn scored(&self, i: usize) -> Option<(f64, f64)> {
        self.valid[i].then(|| (self.score[i], self.energy[i]))
    }

    pub fn group(&self, i: usize) -> Option<u32> {
        self.group.as_ref().and_then(|g| g[i])
    }
}

impl FusedDrift {
    /// The consumer for files with `schema`'s columns, the embedding at `emb`;
    /// `None` where the embedding is not a list the fast reader takes.
    pub fn new(
        model: Arc<Model>,
        routing: Routing,
        window: Option<(TimeWindows, i64)>,
        top_k: usize,
        schema: SchemaRef,
        emb: usize,
        path: PathBuf,
    ) -> Option<Self> {
        let (item, dim) = reclag_parquet::float_list(schema.field(emb).data_type())?;
        let item = item.clone();
        let mut fields: Vec<arrow_schema::FieldRef> = schema.fields().iter().cloned().collect();
        fields.push(Arc::new(Field::new(WORST_SCORE, DataType::Float64, true)));
        fields.push(Arc::new(Field::new(PICKED_AT, DataType::UInt64, false)));
        Some(FusedDrift {
            model,
            routing,
            window,
            top_k,
            schema,
            picked: Arc::new(Schema::new(fields)),
            emb,
            item,
            dim,
            path,
        })
    }
}

/// The consumer for one partition's files. A row group whose columns differ from
/// `schema` (or whose group or timestamp column does not resolve) is declined, and the
/// usual path then scores it and reports the difference.
pub(super) struct FusedDrift {
    model: Arc<Model>,
    routing: Routing,
    window: Option<(TimeWindows, i64)>,
    top_k: usize,
    /// The first file's columns; `emb` is the embedding's place among them.
    schema: SchemaRef,
    /// `schema`, the score and [`PICKED_AT`]: the schema of every picked batch.
    picked: SchemaRef,
    emb: usize,
    /// The embedding's item field and size.
    item: Arc<Field>,
    dim: usize,
    /// Only for error-returning signatures, whose errors decline here.
    path: PathBuf,
}

impl Fused for FusedDrift {
    type Output = DriftPart;

    fn column(&self) -> &str {
        self.schema.field(self.emb).name()
    }

    fn start(&self, others: &[RecordBatch]) -> Option<Box<dyn FusedGroup<Output = DriftPart>>> {
        let first = others.first()?;
        let expected = self
            .schema
            .fields()
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != self.emb);
        if first.num_columns() != self.schema.fields().len() - 1
            || expected
                .zip(first.schema().fields())
                .any(|((_, want), got)| want != got)
        {
            return None;
        }
        let rows: usize = others.iter().map(RecordBatch::num_rows).sum();
        let groups =
            crate::ops::score::fused_groups(&self.model, &self.routing, others, &self.path)?;
        let mut in_window = Vec::with_capacity(rows);
        match &self.window {
            None => in_window.resize(rows, true),
            Some((tw, w)) => {
                let mut idx = vec![];
                for b in others {
                    tw.indices(b.column_by_name(&tw.column)?, &mut idx);
                    in_window.extend(idx.iter().map(|x| *x == Some(*w)));
                }
            }
        }
        Some(Box::new(DriftRows {
            scorer: GroupScorer::new(self.model.clone(), groups, self.routing.route(), rows),
            schema: self.schema.clone(),
            picked: self.picked.clone(),
            emb: self.emb,
            item: self.item.clone(),
            dim: self.dim,
            in_window,
            score: Vec::with_capacity(rows),
            energy: Vec::with_capacity(rows),
            valid: Vec::with_capacity(rows),
            worst: Picks::new(self.top_k, self.dim),
        }))
    }
}

struct DriftRows {
    scorer: GroupScorer,
    schema: SchemaRef,
    picked: SchemaRef,
    emb: usize,
    item: Arc<Field>,
    dim: usize,
    in_window: Vec<bool>,
    score: Vec<f64>,
    energy: Vec<f64>,
    valid: Vec<bool>,
    worst: Picks,
}

impl DriftRows {
    /// Scores the next rows; `copy(j, dst)` copies the `j`-th of them into `dst`,
    /// for the few that enter the group's worst rows.
    fn take(&mut self, rows: &Rows<'_>, copy: impl Fn(usize, &mut [f32])) {
        let Some((first, t)) = self.scorer.score(rows, Work::EnergyOnly) else {
            return;
        };
        for j in 0..t.score.len() {
            if t.valid[j] && self.in_window[first + j] {
                self.worst.offer(t.score[j], first + j, |dst| copy(j, dst));
            }
        }
        self.score.extend_from_slice(&t.score);
        self.energy.extend_from_slice(&t.energy);
        self.valid.extend_from_slice(&t.valid);
    }

    /// The picked rows as the file's columns, the score and [`PICKED_AT`].
    fn picked(&self, others: &[RecordBatch]) -> Result<RecordBatch, ParquetError> {
        let picks = self.worst.sorted();
        // Row `r` of the group is row `r - starts[b]` of `others[b]`.
        let starts: Vec<usize> = others
            .iter()
            .scan(0, |s, b| {
                let at = *s;
                *s += b.num_rows();
                Some(at)
            })
            .collect();
        let at: Vec<(usize, usize)> = picks
            .iter()
            .map(|p| {
                let b = starts.partition_point(|&s| s <= p.1) - 1;
                (b, p.1 - starts[b])
            })
            .collect();
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len() + 2);
        let mut other = 0;
        for i in 0..self.schema.fields().len() {
            if i == self.emb {
                let values: Vec<f32> = picks.iter().flat_map(|p| p.2).copied().collect();
                cols.push(Arc::new(FixedSizeListArray::try_new(
                    self.item.clone(),
                    self.dim as i32,
                    Arc::new(Float32Array::from(values)),
                    None,
                )?));
            } else {
                let arrays: Vec<&dyn Array> =
                    others.iter().map(|b| b.column(other).as_ref()).collect();
                cols.push(arrow_select::interleave::interleave(&arrays, &at)?);
                other += 1;
            }
        }
        cols.push(Arc::new(Float64Array::from_iter_values(
            picks.iter().map(|p| p.0),
        )));
        cols.push(Arc::new(UInt64Array::from_iter_values(
            picks.iter().map(|p| p.1 as u64),
        )));
        Ok(RecordBatch::try_new(self.picked.clone(), cols)?)
    }
}

impl FusedGroup for DriftRows {
    type Output = DriftPart;

    fn rows(&mut self, values: &[f32]) {
        let d = self.dim;
        self.take(&Rows::dense_f32(values, d), |j, dst| {
            dst.copy_from_slice(&values[j * d..(j + 1) * d]);
        });
    }

    fn rows_at(&mut self, buf: &[u8], at: &[usize]) {
        let d = self.dim;
        self.take(&Rows::scattered_f32_le(buf, at, d), |j, dst| {
            let row = &buf[at[j]..at[j] + 4 * d];
            for (o, b) in dst.iter_mut().zip(row.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        });
    }

    fn finish(self: Box<Self>, others: Vec<RecordBatch>) -> reclag_parquet::Result<Vec<DriftPart>> {
        self.scorer.check()?;
        let mut out = Vec::with_capacity(2);
        if !self.worst.heap.is_empty() {
            out.push(DriftPart::Picked(self.picked(&others)?));
        }
        let DriftRows {
            scorer,
            in_window,
            score,
            energy,
            valid,
            ..
        } = *self;
        out.push(DriftPart::Stats(RowStats {
            score,
            energy,
            valid,
            group: scorer.into_groups(),
            in_window,
        }));
        Ok(out)
    }
}

/// A row group's `k` worst rows so far by (score, row), with copies of their
/// embeddings. Rows arrive in order, so a later row never displaces an equal score.
/// A max-heap finds the row to drop in O(log k), so a large `top_k` stays cheap.
struct Picks {
    k: usize,
    dim: usize,
    heap: std::collections::BinaryHeap<Pick>,
    values: Vec<f32>,
}

/// A kept row: its score, its row in the group and the slot of its copy.
struct Pick(f64, usize, usize);

impl Ord for Pick {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&o.0).then(self.1.cmp(&o.1))
    }
}
impl PartialOrd for Pick {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl PartialEq for Pick {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o).is_eq()
    }
}
impl Eq for Pick {}

impl Picks {
    fn new(k: usize, dim: usize) -> Self {
        Picks {
            k,
            dim,
            heap: std::collections::BinaryHeap::with_capacity(k),
            values: vec![],
        }
    }

    fn offer(&mut self, score: f64, row: usize, copy: impl FnOnce(&mut [f32])) {
        let slot = if self.heap.len() < self.k {
            let slot = self.heap.len();
            self.values.resize((slot + 1) * self.dim, 0.0);
            slot
        } else {
            match self.heap.peek_mut() {
                Some(top) if score.total_cmp(&top.0).is_lt() => {
                    std::collections::binary_heap::PeekMut::pop(top).2
                }
                _ => return,
            }
        };
        copy(&mut self.values[slot * self.dim..(slot + 1) * self.dim]);
        self.heap.push(Pick(score, row, slot));
    }

    /// (score, row, copy) of every kept row, by row.
    fn sorted(&self) -> Vec<(f64, usize, &[f32])> {
        let mut v: Vec<(f64, usize, &[f32])> = self
            .heap
            .iter()
            .map(|p| (p.0, p.1, &self.values[p.2 * self.dim..(p.2 + 1) * self.dim]))
            .collect();
        v.sort_by_key(|p| p.1);
        v
    }
}

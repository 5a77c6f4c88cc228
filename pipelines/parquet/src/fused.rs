//! Consumers that take a list column's rows page by page, while they are in cache,
//! and hand back a typed result per row group instead of the column.

use arrow_array::RecordBatch;

/// A consumer of a row group's embedding rows *while they are in cache*: each page's
/// rows are handed over right after they are decompressed, so a scorer reads them from
/// L2 instead of from a row-group buffer in DRAM, and no such buffer is filled.
pub trait Fused: Send + Sync {
    /// What a row group it took comes back as (scored batches, statistics, ...).
    type Output;
    /// The list column whose pages it consumes.
    fn column(&self) -> &str;
    /// Called with the row group's other projected columns, in order (all rows of the
    /// group, other list columns included); `None` declines, and the row group is read
    /// the usual way.
    fn start(&self, others: &[RecordBatch]) -> Option<Box<dyn FusedGroup<Output = Self::Output>>>;
}

/// One row group's consumer (see [`Fused`]).
pub trait FusedGroup: Send {
    type Output;
    /// The next whole rows of the list column, in order, row-major.
    fn rows(&mut self, values: &[f32]);
    /// The next whole rows as little-endian f32 bytes, row `k` starting at byte
    /// `at[k]` of `buf`, at any alignment: a page read where it was decompressed.
    fn rows_at(&mut self, buf: &[u8], at: &[usize]);
    /// The row group's results, built from what was consumed and the other columns.
    fn finish(self: Box<Self>, others: Vec<RecordBatch>) -> crate::Result<Vec<Self::Output>>;
}

/// One item of a reader's output: the file's rows where they were read as such, or
/// what a [`Fused`] consumer made of a row group it took.
#[derive(Debug)]
pub enum Part<T> {
    Rows(RecordBatch),
    Fused(T),
}

impl Part<std::convert::Infallible> {
    /// The batch of a reader without a consumer, which only returns rows.
    pub fn into_rows(self) -> RecordBatch {
        match self {
            Part::Rows(b) => b,
            Part::Fused(never) => match never {},
        }
    }
}

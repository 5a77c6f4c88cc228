//! A fast Parquet reader for the column that dominates every embedding table:
//! `FixedSizeList<Float32, d>` stored PLAIN (after the few pages that index a
//! dictionary, where the writer started with one). The general Arrow reader rebuilds the
//! list from its repetition and definition levels one value at a time, which `perf`
//! showed to be most of the decode time. Here each page's levels are only *checked* run
//! by run (a list always starts at a multiple of `d`; no value is null), and the values
//! are copied straight from the decompressed page into one buffer that the batches share
//! without copies. Other columns go through parquet's own reader, and so does any row
//! group this path cannot prove it handles exactly (a null, an index outside the
//! dictionary, an unexpected encoding or level pattern): nothing is guessed.
//!
//! Row groups decode in parallel, by default one per core within a memory budget
//! ([`default_in_flight`], [`FastReader::in_flight`]), while the consumer takes the
//! earlier ones in order.
//!
//! The page decoding (pages, levels, dictionary) is kept hand-written because it wins
//! by more than noise against parquet's public column reader doing the same work (`ColumnReaderImpl::read_records`: values and
//! both levels into vectors, the levels then checked), on one row group of
//! 65,536 × 512 read on one thread (`cargo bench --bench decoders`): 31 ms against
//! 171 ms with v1 PLAIN pages (5.5×), 38 against 165 with v2 (4.4×), 33 against 176
//! with the writers' default dictionary then PLAIN (5.4×), and 171 against 211 ms when
//! every page indexes a dictionary (1.23×; the confidence intervals do not overlap).
//!
//! The layers, each in its own file, bottom up:
//! - `snappy`: snappy decompression that leaves long literals where they lie;
//! - `levels`: the RLE / bit-packed hybrid and the dense-list level rules;
//! - `dictionary`: dictionary pages and the indices into them;
//! - `in_place`: reading rows inside a v1 snappy page without writing them out;
//! - `pages`: walking a column chunk's pages and handing their values to a sink;
//! - `pool`: row-group buffers, recycled, and the Arrow buffers that lease them;
//! - `row_group`: one row group as batches (fast lists, the general reader for the
//!   rest, or a [`Fused`] consumer);
//! - `fetch`: where bytes come from (a local file, or ranges fetched from a store);
//! - [`plan`]: which columns of a file the fast path takes;
//! - `reader`: [`FastReader`], which schedules row groups over threads and returns
//!   their batches in order.

mod dictionary;
mod fetch;
mod fused;
mod in_place;
mod levels;
mod pages;
mod plan;
mod pool;
mod reader;
mod row_group;
mod snappy;

pub use fetch::{FetchRanges, Source};
pub use fused::{Fused, FusedGroup, Part};
pub use plan::{Plan, float_list, plan};
pub use pool::huge_pages;
pub use reader::{FastReader, IN_FLIGHT_BYTES, default_in_flight};

/// What decoding a row group gives: parquet's errors, with the file's context added by
/// the caller.
pub type Result<T> = parquet::errors::Result<T>;

#[cfg(test)]
mod test_rng;
#[cfg(test)]
mod tests;

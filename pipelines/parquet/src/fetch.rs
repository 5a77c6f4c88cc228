//! Where a file's bytes come from: a local file, which each decoding thread opens for
//! itself, or byte ranges fetched from a store, which the caller supplies (the reader
//! knows no store or runtime).

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use parquet::arrow::arrow_reader::ArrowReaderMetadata;
use parquet::errors::ParquetError;

use crate::plan::Plan;

/// Byte ranges of one remote file, fetched together (a store coalesces them into few
/// requests). Called on a decoding thread, never on an async runtime's worker.
pub trait FetchRanges: Send + Sync {
    fn fetch(&self, ranges: &[Range<u64>]) -> crate::Result<Vec<Bytes>>;
}

/// Where the fast path reads a file's bytes from.
#[derive(Clone)]
pub enum Source {
    /// Each decoding thread opens its own handle: clones of one `File` share a seek
    /// offset, and the Parquet reader seeks.
    Local(PathBuf),
    /// A remote file: each row group's projected column chunks are fetched in one
    /// call on the decoding thread, then decoded from memory like a local file, so the
    /// next row group downloads while this one is consumed.
    Ranges(Arc<dyn FetchRanges>),
}

/// The fetched column chunks of one row group, addressed by file offset: a
/// `ChunkReader` over the parts of a file the readers will touch.
#[derive(Clone)]
pub(crate) struct FetchedChunks {
    /// `(file offset, bytes)`, sorted by offset.
    pub parts: Vec<(u64, Bytes)>,
    pub len: u64,
}

impl FetchedChunks {
    /// The fetched part holding file offset `start`, and that part's offset.
    fn locate(&self, start: u64) -> crate::Result<(u64, &Bytes)> {
        let i = self.parts.partition_point(|(o, _)| *o <= start);
        i.checked_sub(1)
            .map(|i| (self.parts[i].0, &self.parts[i].1))
            .filter(|(o, b)| start <= o + b.len() as u64)
            .ok_or_else(|| {
                ParquetError::General(format!(
                    "offset {start} was not fetched (a column chunk outside its metadata's range?)"
                ))
            })
    }

    /// `len` bytes from `start`, which must lie in one fetched part.
    fn part(&self, start: u64, len: u64) -> crate::Result<Bytes> {
        let (o, b) = self.locate(start)?;
        let (from, to) = ((start - o) as usize, (start - o + len) as usize);
        if to > b.len() {
            return Err(ParquetError::General(format!(
                "bytes {start}..{} were not fetched",
                start + len
            )));
        }
        Ok(b.slice(from..to))
    }
}

impl parquet::file::reader::Length for FetchedChunks {
    fn len(&self) -> u64 {
        self.len
    }
}

impl parquet::file::reader::ChunkReader for FetchedChunks {
    type T = bytes::buf::Reader<Bytes>;

    fn get_read(&self, start: u64) -> crate::Result<Self::T> {
        use bytes::Buf;
        let (o, b) = self.locate(start)?;
        Ok(b.slice((start - o) as usize..).reader())
    }

    fn get_bytes(&self, start: u64, length: usize) -> crate::Result<Bytes> {
        self.part(start, length as u64)
    }
}

/// Fetches the column chunks of `plan`'s roots in row group `rg`.
pub(crate) fn fetch<T>(
    from: &dyn FetchRanges,
    meta: &ArrowReaderMetadata,
    plan: &Plan<T>,
    rg: usize,
) -> crate::Result<FetchedChunks> {
    let md = meta.metadata().row_group(rg);
    let pschema = meta.metadata().file_metadata().schema_descr();
    let mut ranges: Vec<Range<u64>> = (0..md.num_columns())
        .filter(|&c| plan.roots.contains(&pschema.get_column_root_idx(c)))
        .map(|c| {
            let (start, len) = md.column(c).byte_range();
            start..start + len
        })
        .collect();
    ranges.sort_by_key(|r| r.start);
    let len = ranges.iter().map(|r| r.end).max().unwrap_or(0);
    let bytes = from.fetch(&ranges)?;
    if bytes.len() != ranges.len() {
        return Err(ParquetError::General(format!(
            "asked for {} byte ranges, got {}",
            ranges.len(),
            bytes.len()
        )));
    }
    Ok(FetchedChunks {
        parts: ranges.iter().map(|r| r.start).zip(bytes).collect(),
        len,
    })
}

//! Walking a list column chunk's pages: levels checked, values handed to a sink as
//! little-endian f32 bytes (copied into row-group buffers, or given to a fused
//! consumer as whole rows, in place where they lie).
//!
//! Hand-written rather than parquet's column reader: see the crate docs for the
//! measurement.

use std::sync::Arc;

use arrow_buffer::ScalarBuffer;
use parquet::basic::{Compression, Encoding};
use parquet::column::page::Page;
use parquet::file::metadata::ColumnChunkMetaData;
use parquet::file::reader::ChunkReader;
use parquet::file::serialized_reader::SerializedPageReader;

use crate::dictionary::Dictionary;
use crate::fused::FusedGroup;
use crate::in_place::SnappyInPlace;
use crate::levels::{DenseLevels, PageV1, bit_width, levels_are_dense};
use crate::plan::ListColumn;
use crate::pool::{Pool, leased};

/// Where [`stream_chunk`] delivers a chunk's values, page by page, in order.
pub(crate) trait PageSink {
    /// A page's values: little-endian f32 bytes, a whole number of values. `false`
    /// declines the chunk.
    fn values(&mut self, b: &[u8]) -> bool;
    /// `Some(carried)` when whole rows may come through [`PageSink::rows_at`]:
    /// `carried` values of a row cut by the last page wait to be completed by the next
    /// [`PageSink::values`] first.
    fn in_place(&self) -> Option<usize> {
        None
    }
    /// Whole rows, row `k` at byte `at[k]` of `buf`.
    fn rows_at(&mut self, _buf: &[u8], _at: &[usize]) -> bool {
        false
    }
}

/// Appends the values to buffers of `per` values from the pool.
pub(crate) struct IntoBuffers<'p> {
    pub pool: &'p Arc<Pool>,
    pub per: usize,
    pub cur: Vec<f32>,
    pub done: Vec<ScalarBuffer<f32>>,
}

impl PageSink for IntoBuffers<'_> {
    fn values(&mut self, mut b: &[u8]) -> bool {
        while !b.is_empty() {
            if self.cur.len() == self.per {
                // Every buffer of a column has room for a whole batch, the last
                // one of a row group too, so any of them serves any batch later.
                let next = self.pool.take(self.per);
                let full = std::mem::replace(&mut self.cur, next);
                self.done.push(leased(full, self.pool));
            }
            let take = (4 * (self.per - self.cur.len())).min(b.len());
            extend_le(&mut self.cur, &b[..take]);
            b = &b[take..];
        }
        true
    }
}

/// Hands whole rows to a fused consumer; a row split across pages waits in `scratch`.
pub(crate) struct ToConsumer<T> {
    pub group: Box<dyn FusedGroup<Output = T>>,
    pub scratch: Vec<f32>,
    pub dim: usize,
}

impl<T> PageSink for ToConsumer<T> {
    fn values(&mut self, b: &[u8]) -> bool {
        feed(&mut self.scratch, b, self.dim, |v| self.group.rows(v));
        true
    }
    fn in_place(&self) -> Option<usize> {
        Some(self.scratch.len())
    }
    fn rows_at(&mut self, buf: &[u8], at: &[usize]) -> bool {
        self.group.rows_at(buf, at);
        true
    }
}

/// Hands each data page's values (little-endian f32 bytes) to `sink` in order, after
/// checking the page's levels. `Ok(false)` when the chunk is not a dense PLAIN (or
/// dictionary-indexed) `FixedSizeList` this path can read exactly (or `sink`
/// declined); the values handed over so far must then be discarded.
pub(crate) fn stream_chunk<R: ChunkReader + 'static>(
    file: &Arc<R>,
    chunk: &ColumnChunkMetaData,
    rows: usize,
    l: &ListColumn,
    sink: &mut impl PageSink,
) -> crate::Result<bool> {
    let total = rows * l.dim;
    let mut seen = 0usize;
    let def_width = bit_width(l.max_def);
    let rules = DenseLevels {
        dim: l.dim,
        max_def: l.max_def as u32,
    };
    // Snappy pages are decompressed here, into one buffer reused page after page:
    // the page reader would allocate and zero a fresh buffer for every page (a sixth
    // of decoding's time) and write it cold.
    let own_snappy = chunk.compression() == Compression::SNAPPY;
    let raw_chunk;
    let chunk = if own_snappy {
        raw_chunk = chunk
            .clone()
            .into_builder()
            .set_compression(Compression::UNCOMPRESSED)
            .build()?;
        &raw_chunk
    } else {
        chunk
    };
    let mut body: Vec<u8> = Vec::new();
    let mut in_place = SnappyInPlace::default();
    let mut dict = Dictionary::default();
    let pages = SerializedPageReader::new(file.clone(), chunk, rows, None)?;
    for page in pages {
        let start = seen;
        let (ok, n) = match page? {
            Page::DictionaryPage {
                buf,
                num_values,
                encoding,
                ..
            } => {
                let buf: &[u8] = if own_snappy {
                    unsnap(&buf, &mut body)?
                } else {
                    &buf
                };
                (dict.set(buf, num_values as usize, encoding), 0)
            }
            Page::DataPage {
                buf,
                num_values,
                encoding,
                def_level_encoding,
                rep_level_encoding,
                ..
            } => {
                let n = num_values as usize;
                let indexed = Dictionary::indexes(encoding);
                if (encoding != Encoding::PLAIN && !indexed)
                    || rep_level_encoding != Encoding::RLE
                    || (l.max_def > 0 && def_level_encoding != Encoding::RLE)
                {
                    return Ok(false);
                }
                let page = PageV1 {
                    n,
                    start,
                    def_width,
                    rules: &rules,
                };
                // Rows the consumer can take where they lie are read in the snappy
                // block itself (see `SnappyInPlace`); indexed pages hold no floats to place.
                let buf = match (own_snappy && !indexed, sink.in_place()) {
                    (true, Some(carried)) => match in_place.page(buf, &page, carried, sink)? {
                        Ok(ok) => {
                            if !ok {
                                return Ok(false);
                            }
                            seen += n;
                            continue;
                        }
                        Err(shared) => shared,
                    },
                    _ => buf,
                };
                let buf: &[u8] = if own_snappy {
                    unsnap(&buf, &mut body)?
                } else {
                    &buf
                };
                (
                    page.values(buf, |vals| dict.page_values(indexed, vals, n, sink)),
                    n,
                )
            }
            Page::DataPageV2 {
                buf,
                num_values,
                encoding,
                num_nulls,
                def_levels_byte_len,
                rep_levels_byte_len,
                is_compressed,
                ..
            } => {
                let n = num_values as usize;
                let (r, d) = (rep_levels_byte_len as usize, def_levels_byte_len as usize);
                let indexed = Dictionary::indexes(encoding);
                if (encoding != Encoding::PLAIN && !indexed) || num_nulls != 0 || buf.len() < r + d
                {
                    return Ok(false);
                }
                let (rep, def, vals) = (&buf[..r], &buf[r..r + d], &buf[r + d..]);
                let vals = if own_snappy && is_compressed {
                    unsnap(vals, &mut body)?
                } else {
                    vals
                };
                let ok = levels_are_dense(rep, def, n, start, def_width, &rules)
                    && dict.page_values(indexed, vals, n, sink);
                (ok, n)
            }
        };
        if !ok {
            return Ok(false);
        }
        seen += n;
    }
    Ok(seen == total)
}

/// Decompresses one snappy block into `out` (grown, never shrunk or re-zeroed).
pub(crate) fn unsnap<'a>(compressed: &[u8], out: &'a mut Vec<u8>) -> crate::Result<&'a [u8]> {
    let bad =
        |e: snap::Error| parquet::errors::ParquetError::General(format!("a snappy page: {e}"));
    let n = snap::raw::decompress_len(compressed).map_err(bad)?;
    if out.len() < n {
        out.resize(n, 0);
    }
    let k = snap::raw::Decoder::new()
        .decompress(compressed, &mut out[..n])
        .map_err(bad)?;
    Ok(&out[..k])
}

/// `rows` as whole rows of `dim`, in order: in place when [`as_f32`] allows, else
/// through `scratch`, which also carries a row split across pages to the next call.
pub(crate) fn feed(scratch: &mut Vec<f32>, mut b: &[u8], dim: usize, mut rows: impl FnMut(&[f32])) {
    if !scratch.is_empty() {
        let take = ((dim - scratch.len()) * 4).min(b.len());
        extend_le(scratch, &b[..take]);
        b = &b[take..];
        if scratch.len() < dim {
            return;
        }
        rows(scratch);
        scratch.clear();
    }
    match as_f32(b) {
        Some(v) => {
            let ready = v.len() / dim * dim;
            if ready > 0 {
                rows(&v[..ready]);
            }
            scratch.extend_from_slice(&v[ready..]);
        }
        None => {
            extend_le(scratch, b);
            let ready = scratch.len() / dim * dim;
            if ready > 0 {
                rows(&scratch[..ready]);
                scratch.drain(..ready);
            }
        }
    }
}

/// A PLAIN page's values in place, when the host is little-endian and they start on
/// a 4-byte boundary (as they do in the files we have seen); `None` means copy them.
pub(crate) fn as_f32(bytes: &[u8]) -> Option<&[f32]> {
    if cfg!(target_endian = "big") || !bytes.len().is_multiple_of(4) {
        return None;
    }
    // SAFETY: every bit pattern is a valid f32; `align_to` puts only whole, aligned
    // f32s in the middle part.
    let (head, mid, tail) = unsafe { bytes.align_to::<f32>() };
    (head.is_empty() && tail.is_empty()).then_some(mid)
}

/// Appends little-endian f32 bytes (a PLAIN page's values) to `out`: one `memcpy` on
/// a little-endian host. The value-by-value loop it replaces was a fifth of a drift
/// run's CPU, which decodes every row group into Arrow arrays.
pub(crate) fn extend_le(out: &mut Vec<f32>, bytes: &[u8]) {
    let n = bytes.len() / 4;
    if cfg!(target_endian = "little") {
        out.reserve(n);
        let len = out.len();
        // SAFETY: `reserve` made room for `n` more f32s after `len`; the source holds
        // `4·n` bytes and cannot overlap the Vec's own allocation (it is borrowed
        // while `out` is borrowed mutably); every bit pattern is a valid f32, and a
        // byte copy needs no alignment of the source.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                out.as_mut_ptr().add(len).cast::<u8>(),
                n * 4,
            );
            out.set_len(len + n);
        }
    } else {
        out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        );
    }
}

/// The first `n` values of a PLAIN page's value section, to `sink`.
pub(crate) fn plain_values(vals: &[u8], n: usize, sink: &mut impl PageSink) -> bool {
    vals.get(..n * 4).is_some_and(|v| sink.values(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages cut anywhere (mid-row, one value long, misaligned in memory) reach the
    /// consumer as the same whole rows, in place where aligned and copied where not.
    #[test]
    fn fed_pages_arrive_as_the_rows_they_hold() {
        let dim = 5;
        let values: Vec<f32> = (0..dim * 40).map(|i| i as f32 * 0.5 - 7.0).collect();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        // An over-allocated buffer lets a page start at any byte offset.
        let mut backing = vec![0u8; bytes.len() + 8];
        for shift in 0..4 {
            backing[shift..shift + bytes.len()].copy_from_slice(&bytes);
            let all = &backing[shift..shift + bytes.len()];
            for cuts in [
                vec![3, 7, 12, 40],
                vec![1, 2, 3, 4, 5, 6],
                vec![5, 10, 15, 20],
                vec![40],
            ] {
                let (mut got, mut scratch, mut calls) = (Vec::new(), Vec::new(), 0);
                let mut at = 0;
                for (k, &c) in cuts.iter().cycle().enumerate() {
                    if at == values.len() {
                        break;
                    }
                    let n = (c + k % 3).min(values.len() - at);
                    feed(&mut scratch, &all[at * 4..(at + n) * 4], dim, |r| {
                        assert_eq!(r.len() % dim, 0, "whole rows only");
                        got.extend_from_slice(r);
                        calls += 1;
                    });
                    at += n;
                }
                assert!(scratch.is_empty());
                assert_eq!(got, values, "shift {shift} cuts {cuts:?}");
                assert!(calls > 0);
            }
            assert_eq!(
                as_f32(all).is_some(),
                (all.as_ptr() as usize).is_multiple_of(4)
            );
        }
    }
}

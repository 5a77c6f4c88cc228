//! Dictionary pages and the indices into them: writers try a dictionary first, so the
//! first pages of a float column often index one before falling back to PLAIN.
//!
//! Hand-written rather than parquet's column reader: see the crate docs for the
//! measurement.

use parquet::basic::Encoding;

use crate::levels::rle_bit_packed;
use crate::pages::{PageSink, plain_values};

/// A column chunk's dictionary, for the pages written before the writer fell back to
/// PLAIN. Writers (arrow-rs, pyarrow, parquet-mr) try a dictionary first by default,
/// so a float column's first page or two hold indices into a dictionary page of
/// distinct floats, and the rest are PLAIN. Declining such chunks sent files written
/// with default settings through the general reader, about five times slower.
#[derive(Default)]
pub(crate) struct Dictionary {
    /// Little-endian f32 entries.
    entries: Vec<u8>,
    /// The page's values as f32 bytes, handed to the sink.
    out: Vec<u8>,
}

impl Dictionary {
    pub(crate) fn indexes(encoding: Encoding) -> bool {
        matches!(
            encoding,
            Encoding::RLE_DICTIONARY | Encoding::PLAIN_DICTIONARY
        )
    }

    /// Takes a dictionary page; `false` when it is not `n` PLAIN floats.
    pub(crate) fn set(&mut self, buf: &[u8], n: usize, encoding: Encoding) -> bool {
        if !matches!(encoding, Encoding::PLAIN | Encoding::PLAIN_DICTIONARY) {
            return false;
        }
        let Some(bytes) = n.checked_mul(4).and_then(|len| buf.get(..len)) else {
            return false;
        };
        self.entries.clear();
        self.entries.extend_from_slice(bytes);
        true
    }

    /// A data page's value section to `sink`: indices looked up here, or PLAIN floats
    /// as they are.
    pub(crate) fn page_values(
        &mut self,
        indexed: bool,
        vals: &[u8],
        n: usize,
        sink: &mut impl PageSink,
    ) -> bool {
        if indexed {
            self.values(vals, n, sink)
        } else {
            plain_values(vals, n, sink)
        }
    }

    /// Looks up `n` indices (a bit-width byte, then an RLE / bit-packed hybrid run)
    /// and hands the floats to `sink`. `false` for an index outside the dictionary or
    /// a short stream: the general reader then reads the chunk and reports it.
    fn values(&mut self, vals: &[u8], n: usize, sink: &mut impl PageSink) -> bool {
        let Some((&width, runs)) = vals.split_first() else {
            return n == 0;
        };
        let entries = self.entries.len() / 4;
        let Dictionary { entries: e, out } = self;
        out.clear();
        out.reserve(n * 4);
        let ok = rle_bit_packed(runs, n, u32::from(width), |v, count| {
            let v = v as usize;
            if v >= entries {
                return false;
            }
            let f = &e[v * 4..v * 4 + 4];
            for _ in 0..count {
                out.extend_from_slice(f);
            }
            true
        });
        ok && out.len() == n * 4 && sink.values(out)
    }
}

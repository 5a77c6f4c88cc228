//! Repetition and definition levels: the RLE / bit-packed hybrid they are stored in,
//! and the rules a dense `FixedSizeList` column's levels follow, checked run by run.
//!
//! Hand-written rather than parquet's column reader: see the crate docs for the
//! measurement.

/// Walks the first `n` values of an RLE / bit-packed hybrid stream of `width`-bit
/// values (up to 32), calling `each(value, count)` for each RLE run and for each
/// bit-packed value (count 1); stops with `false` when `each` does or the stream is
/// short.
pub(crate) fn rle_bit_packed(
    mut buf: &[u8],
    n: usize,
    width: u32,
    mut each: impl FnMut(u32, usize) -> bool,
) -> bool {
    if width > 32 {
        return false;
    }
    if width == 0 {
        // Every index is 0 (a one-entry dictionary); the stream still carries runs.
        return n == 0 || each(0, n);
    }
    let value_bytes = width.div_ceil(8) as usize;
    let mask = if width == 32 {
        u64::from(u32::MAX)
    } else {
        (1u64 << width) - 1
    };
    let mut i = 0usize;
    while i < n {
        let Some((header, used)) = varint(buf) else {
            return false;
        };
        buf = &buf[used..];
        if header & 1 == 0 {
            let count = ((header >> 1) as usize).min(n - i);
            let Some(raw) = buf.get(..value_bytes) else {
                return false;
            };
            let v = raw
                .iter()
                .enumerate()
                .fold(0u32, |v, (k, b)| v | u32::from(*b) << (8 * k));
            buf = &buf[value_bytes..];
            if count == 0 || !each(v, count) {
                return false;
            }
            i += count;
        } else {
            let groups = (header >> 1) as usize;
            let Some(bytes) = groups.checked_mul(width as usize) else {
                return false;
            };
            let Some(packed) = buf.get(..bytes) else {
                return false;
            };
            buf = &buf[bytes..];
            let count = (groups * 8).min(n - i);
            for k in 0..count {
                let bit = k * width as usize;
                // Up to 39 bits from the value's first byte: eight bytes, zero-padded
                // past the end of the group.
                let at = bit / 8;
                let mut word = [0u8; 8];
                let have = (packed.len() - at).min(8);
                word[..have].copy_from_slice(&packed[at..at + have]);
                let v = (u64::from_le_bytes(word) >> (bit % 8)) & mask;
                if !each(v as u32, 1) {
                    return false;
                }
            }
            i += count;
        }
    }
    true
}

/// A v1 data page's place in its chunk and the rules its levels must follow.
pub(crate) struct PageV1<'r> {
    pub n: usize,
    pub start: usize,
    pub def_width: u32,
    pub rules: &'r DenseLevels,
}

impl PageV1<'_> {
    /// The repetition levels, the definition levels (empty for a required list) and
    /// the rest of the decompressed page; `None` when the sections do not parse.
    pub(crate) fn sections<'b>(&self, buf: &'b [u8]) -> Option<(&'b [u8], &'b [u8], &'b [u8])> {
        let (rep, rest) = prefixed(buf)?;
        if self.rules.max_def == 0 {
            return Some((rep, &[], rest));
        }
        let (def, vals) = prefixed(rest)?;
        Some((rep, def, vals))
    }

    pub(crate) fn levels_ok(&self, rep: &[u8], def: &[u8]) -> bool {
        levels_are_dense(rep, def, self.n, self.start, self.def_width, self.rules)
    }

    /// Checks the decompressed page's levels and hands its value section to `hand`,
    /// as [`crate::pages::stream_chunk`] does with a page it reads the usual way.
    pub(crate) fn values(&self, buf: &[u8], hand: impl FnOnce(&[u8]) -> bool) -> bool {
        self.sections(buf)
            .is_some_and(|(rep, def, vals)| self.levels_ok(rep, def) && hand(vals))
    }
}

/// The repetition and definition levels of `n` values starting at value `start` of
/// the chunk follow the dense-list rules.
pub(crate) fn levels_are_dense(
    rep: &[u8],
    def: &[u8],
    n: usize,
    start: usize,
    def_width: u32,
    r: &DenseLevels,
) -> bool {
    levels_ok(rep, n, 1, |i, c, v| r.rep_run(start + i, c, v))
        && (r.max_def == 0 || levels_ok(def, n, def_width, |_, _, v| v == r.max_def))
}

/// A v1 level section: a 4-byte little-endian length, then that many bytes.
fn prefixed(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_le_bytes(buf.get(..4)?.try_into().ok()?) as usize;
    let end = 4usize.checked_add(len)?;
    Some((buf.get(4..end)?, &buf[end..]))
}

pub(crate) fn bit_width(max: i16) -> u32 {
    16 - (max as u16).leading_zeros()
}

/// Checks the first `n` levels of an RLE / bit-packed hybrid stream with
/// `run(i, count, v)`: RLE runs whole (the common case: about two runs per row, so the
/// check costs nothing next to the copy), bit-packed values one by one.
fn levels_ok(buf: &[u8], n: usize, width: u32, run: impl Fn(usize, usize, u32) -> bool) -> bool {
    if width == 0 || width > 16 {
        return false;
    }
    let mut i = 0usize;
    rle_bit_packed(buf, n, width, |v, count| {
        let ok = run(i, count, v);
        i += count;
        ok
    })
}

/// The level rules of a dense list column, by value and by run: a repetition level is
/// 0 exactly at the first value of each row (multiples of `dim`), a definition level
/// is always the maximum.
pub(crate) struct DenseLevels {
    pub dim: usize,
    pub max_def: u32,
}

impl DenseLevels {
    /// The rule for one value: the check runs bit-packed levels through `rep_run`
    /// with a count of 1, which a test holds equal to this.
    #[cfg(test)]
    fn rep(&self, p: usize, v: u32) -> bool {
        v == u32::from(!p.is_multiple_of(self.dim))
    }

    /// A run of `count` copies of `v` from position `p`, decided without walking it.
    fn rep_run(&self, p: usize, count: usize, v: u32) -> bool {
        let off = p % self.dim;
        match v {
            0 => self.dim == 1 || (count == 1 && off == 0),
            1 => off != 0 && off + count <= self.dim,
            _ => false,
        }
    }
}

fn varint(buf: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (k, b) in buf.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * k);
        if b & 0x80 == 0 {
            return Some((v, k + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rep_runs_are_decided_exactly() {
        let r = DenseLevels {
            dim: 512,
            max_def: 1,
        };
        assert!(r.rep_run(1, 511, 1));
        assert!(!r.rep_run(1, 512, 1), "a run of 1s over a row start");
        assert!(!r.rep_run(0, 2, 1));
        assert!(r.rep_run(512, 1, 0));
        assert!(!r.rep_run(512, 2, 0), "two row starts in a row");
        assert!(!r.rep_run(3, 1, 0));
        let one = DenseLevels { dim: 1, max_def: 1 };
        assert!(one.rep_run(0, 100, 0));
        assert!(!one.rep_run(0, 1, 1));
        // A run of one decides as the per-value rule does.
        for dim in [1, 2, 3, 512] {
            let r = DenseLevels { dim, max_def: 1 };
            for p in 0..2 * dim + 3 {
                for v in 0..3 {
                    assert_eq!(r.rep_run(p, 1, v), r.rep(p, v), "dim {dim} p {p} v {v}");
                }
            }
        }
    }
}

//! Borrowed views of embedding rows. The scoring kernels read straight out of the
//! caller's buffers (an Arrow child array, a Polars chunk, a test vector) and widen to
//! f64 only inside a block's scratch space.

/// The flat values buffer, in its native float width.
#[derive(Clone, Copy, Debug)]
pub enum Values<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
    /// Little-endian f32 at any byte alignment: a Parquet page read where it lies (a
    /// snappy literal starts wherever its tag ends), so that no copy is needed to
    /// align it. Row starts are byte offsets.
    F32Le(&'a [u8]),
}

impl Values<'_> {
    /// Elements for the float variants, bytes for [`Values::F32Le`].
    pub fn len(&self) -> usize {
        match self {
            Values::F32(v) => v.len(),
            Values::F64(v) => v.len(),
            Values::F32Le(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Units of the buffer per component.
    fn unit(&self) -> usize {
        match self {
            Values::F32Le(_) => 4,
            _ => 1,
        }
    }
}

/// One little-endian f32 that may sit at any address (alignment 1), so a row of them
/// can be borrowed from any byte offset of a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(transparent)]
pub struct F32Le(pub [u8; 4]);

impl From<F32Le> for f64 {
    #[inline(always)]
    fn from(v: F32Le) -> f64 {
        f64::from(f32::from_le_bytes(v.0))
    }
}

/// `bytes` (a whole number of values) as [`F32Le`]s, in place.
pub fn le_values(bytes: &[u8]) -> &[F32Le] {
    let (chunks, rest) = bytes.as_chunks::<4>();
    debug_assert!(rest.is_empty());
    // SAFETY: F32Le is a transparent wrapper of [u8; 4], so the slices share layout.
    unsafe { &*(chunks as *const [[u8; 4]] as *const [F32Le]) }
}

/// Where each row starts in the values buffer.
#[derive(Clone, Copy, Debug)]
pub enum Starts<'a> {
    /// Row `i` starts at `i * dim` (a `FixedSizeList` or a dense matrix).
    Fixed,
    /// `List` offsets (length `len + 1`); lengths are checked when the view is built.
    I32(&'a [i32]),
    /// `LargeList` offsets.
    I64(&'a [i64]),
    /// Row `i` starts at `at[i]`, rows in any order and with gaps between them (units
    /// of the values buffer: bytes for [`Values::F32Le`]).
    At(&'a [usize]),
}

/// `len` rows of dimension `dim`. A row is *null* when `validity` says so or when any
/// component is NaN or ±inf; null rows get null outputs (spec §4). This is the one
/// place that rule lives.
#[derive(Clone, Debug)]
pub struct Rows<'a> {
    pub(crate) values: Values<'a>,
    pub(crate) starts: Starts<'a>,
    pub(crate) dim: usize,
    pub(crate) len: usize,
    pub(crate) validity: Option<arrow_buffer::NullBuffer>,
}

impl<'a> Rows<'a> {
    /// A dense row-major matrix of f32.
    pub fn dense_f32(values: &'a [f32], dim: usize) -> Self {
        assert!(
            dim > 0 && values.len().is_multiple_of(dim),
            "values must be a whole number of rows"
        );
        Rows {
            values: Values::F32(values),
            starts: Starts::Fixed,
            dim,
            len: values.len() / dim,
            validity: None,
        }
    }

    /// A dense row-major matrix of f64.
    pub fn dense_f64(values: &'a [f64], dim: usize) -> Self {
        assert!(
            dim > 0 && values.len().is_multiple_of(dim),
            "values must be a whole number of rows"
        );
        Rows {
            values: Values::F64(values),
            starts: Starts::Fixed,
            dim,
            len: values.len() / dim,
            validity: None,
        }
    }

    /// Rows of little-endian f32 bytes, row `i` starting at byte `at[i]` of `buf`,
    /// at any alignment: the values of a page read in place.
    pub fn scattered_f32_le(buf: &'a [u8], at: &'a [usize], dim: usize) -> Self {
        assert!(dim > 0, "rows have at least one component");
        assert!(
            at.iter()
                .all(|&s| s.checked_add(dim * 4).is_some_and(|e| e <= buf.len())),
            "every row lies inside the buffer"
        );
        Rows {
            values: Values::F32Le(buf),
            starts: Starts::At(at),
            dim,
            len: at.len(),
            validity: None,
        }
    }

    /// Fully general constructor; the caller guarantees every valid row's slice is in
    /// bounds (the Arrow adapters in [`crate::arrow`] check it).
    pub(crate) fn from_parts(
        values: Values<'a>,
        starts: Starts<'a>,
        dim: usize,
        len: usize,
        validity: Option<arrow_buffer::NullBuffer>,
    ) -> Self {
        Rows {
            values,
            starts,
            dim,
            len,
            validity,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Whether the row is null by the validity bitmap alone (non-finite components are
    /// detected by the readers).
    #[inline]
    pub(crate) fn is_null(&self, i: usize) -> bool {
        self.validity.as_ref().is_some_and(|v| v.is_null(i))
    }

    #[inline]
    pub(crate) fn start_of(&self, i: usize) -> usize {
        self.start(i)
    }

    #[inline]
    fn start(&self, i: usize) -> usize {
        match self.starts {
            Starts::Fixed => i * self.dim * self.values.unit(),
            Starts::I32(o) => o[i] as usize,
            Starts::I64(o) => o[i] as usize,
            Starts::At(o) => o[i],
        }
    }

    /// Row `i` of an [`Values::F32Le`] view.
    #[inline]
    pub(crate) fn le_row<'b>(&self, bytes: &'b [u8], i: usize) -> &'b [F32Le] {
        let s = self.start(i);
        le_values(&bytes[s..s + 4 * self.dim])
    }

    /// Copies row `i` into `out` as f64. Returns `false` (and leaves `out` unspecified)
    /// when the row is null or has a non-finite component.
    #[inline]
    pub fn gather(&self, i: usize, out: &mut [f64]) -> bool {
        self.gather_norm(i, out).is_some()
    }

    /// [`Rows::gather`] that also returns `‖row‖`, computed in the same pass.
    #[inline]
    pub fn gather_norm(&self, i: usize, out: &mut [f64]) -> Option<f64> {
        debug_assert_eq!(out.len(), self.dim);
        if let Some(v) = &self.validity
            && v.is_null(i)
        {
            return None;
        }
        let s = self.start(i);
        let sq = match self.values {
            Values::F32(v) => widen_sq(&v[s..s + self.dim], out, f64::from),
            Values::F64(v) => widen_sq(&v[s..s + self.dim], out, |x| x),
            Values::F32Le(b) => widen_sq(self.le_row(b, i), out, f64::from),
        };
        // Any NaN or ±inf component makes the sum of squares non-finite, so one check
        // covers every component on the fast path. A non-finite sum can also come from
        // finite f64 components above ~1e154 overflowing when squared: those rows are
        // valid, and their norm is recomputed with scaling.
        if sq.is_finite() {
            return Some(sq.sqrt());
        }
        if !out.iter().all(|v| v.is_finite()) {
            return None;
        }
        let amax = out.iter().fold(0.0f64, |a, v| a.max(v.abs()));
        let scaled: f64 = out.iter().map(|v| (v / amax) * (v / amax)).sum();
        Some(amax * scaled.sqrt())
    }
}

/// `Some(‖row i‖)`, or `None` when the row is null or non-finite, without copying it.
impl Rows<'_> {
    #[inline]
    pub fn norm(&self, i: usize) -> Option<f64> {
        if let Some(v) = &self.validity
            && v.is_null(i)
        {
            return None;
        }
        let s = self.start(i);
        let sq = match self.values {
            Values::F32(v) => sum_sq(&v[s..s + self.dim], f64::from),
            Values::F64(v) => sum_sq(&v[s..s + self.dim], |x| x),
            Values::F32Le(b) => sum_sq(self.le_row(b, i), f64::from),
        };
        if sq.is_finite() {
            return Some(sq.sqrt());
        }
        // Same rule as `gather_norm`: NaN/inf → null, finite overflow → scaled norm.
        let mut buf = vec![0.0; self.dim];
        self.gather_norm(i, &mut buf)
    }
}

#[inline]
fn sum_sq<T: Copy>(src: &[T], widen: impl Fn(T) -> f64) -> f64 {
    let mut acc = [0.0f64; 8];
    let mut i = src.chunks_exact(8);
    for ic in &mut i {
        for k in 0..8 {
            let x = widen(ic[k]);
            acc[k] += x * x;
        }
    }
    let tail: f64 = i.remainder().iter().map(|&x| widen(x) * widen(x)).sum();
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// Copies `src` into `out` as f64 and returns the sum of squares. Eight independent
/// partial sums break the floating-point dependency chain so the loop vectorises (a
/// single running sum costs one FP-add latency per element, measured at half of the
/// whole scoring time).
#[inline]
fn widen_sq<T: Copy>(src: &[T], out: &mut [f64], widen: impl Fn(T) -> f64) -> f64 {
    let mut acc = [0.0f64; 8];
    let mut o = out.chunks_exact_mut(8);
    let mut i = src.chunks_exact(8);
    for (oc, ic) in (&mut o).zip(&mut i) {
        for k in 0..8 {
            let x = widen(ic[k]);
            oc[k] = x;
            acc[k] += x * x;
        }
    }
    let mut tail = 0.0;
    for (oo, &x) in o.into_remainder().iter_mut().zip(i.remainder()) {
        let x = widen(x);
        *oo = x;
        tail += x * x;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_rules_and_huge_finite_rows() {
        let v = [3.0, 4.0, f64::NAN, 1.0, 1e200, 1e200, f64::INFINITY, 0.0];
        let rows = Rows::dense_f64(&v, 2);
        let mut out = [0.0; 2];
        assert_eq!(rows.gather_norm(0, &mut out), Some(5.0));
        assert_eq!(rows.gather_norm(1, &mut out), None);
        let n = rows.gather_norm(2, &mut out).unwrap();
        assert!((n / (1e200 * 2f64.sqrt()) - 1.0).abs() < 1e-15);
        assert_eq!(rows.gather_norm(3, &mut out), None);
        let f = [1.0f32, f32::NEG_INFINITY];
        assert!(!Rows::dense_f32(&f, 2).gather(0, &mut out));
    }
}

//! The scoring GEMM `h = Ξx` for rows read in place from the caller's buffer.
//!
//! A general GEMM needs the rows widened to f64 and then packed: two extra passes over
//! the largest buffer, which measured as most of the scoring time (BENCHMARKS.md). These
//! kernels read each row once, widening components as they go, and accumulate in f64
//! with FMA. They also return `‖x‖²` from the same pass, so no separate norm pass reads
//! the rows again. Every memory value is f32-representable (the model file stores
//! f32), so each product of an f32 component with a memory is exact in f64 and only the
//! f64 sums round.
//!
//! Two layouts:
//! - With AVX-512, outer-product form: a few rows are widened into an L1-resident f64
//!   panel, and each component is broadcast against a row of `Ξᵀ` (the model's
//!   `panel`, memories padded to 8 lanes). Every load feeds several FMAs; the
//!   dot-product form below was bound by reading `Ξ` (64 KiB at d = 512, M = 16,
//!   larger than L1) once per pair of rows. The components are taken in 16 KiB slices
//!   of `Ξᵀ`, each slice over all the rows, so `Ξᵀ` is read from L1, not L2.
//!   f64 rows take the same kernel (loaded instead of widened), so one table stored
//!   either way scores to the same bits.
//! - With AVX2 only, dot-product form: a tile is 2 rows × 4 memories, each
//!   pair accumulated in a 4-lane f64 vector over `d`, then reduced horizontally.

use crate::rows::{Rows, Values};

const RT: usize = 2;
const MT: usize = 4;

/// Lanes of one `Ξᵀ` row chunk (a 512-bit f64 vector).
const LANES: usize = 8;

/// `Ξᵀ` (`d × mp`, row-major) with `mp = m` rounded up to a multiple of [`LANES`], the
/// padding zero.
pub fn panel(xi: &[f64], m: usize, d: usize) -> Aligned {
    let mp = m.next_multiple_of(LANES);
    let mut t = Aligned::zeroed(d * mp);
    for mu in 0..m {
        for j in 0..d {
            t[j * mp + mu] = xi[mu * d + j];
        }
    }
    t
}

/// A zeroed f64 buffer that starts on a 64-byte cache line. A `Vec<f64>` starts on
/// 16 bytes, so every 512-bit load of `Ξᵀ` and every store of a widened row crossed
/// two lines: aligning them made the kernel 5–7 % faster (best of 20, d = 512).
#[derive(Debug)]
pub struct Aligned {
    buf: Vec<f64>,
    off: usize,
    len: usize,
}

impl Aligned {
    pub fn zeroed(len: usize) -> Self {
        let buf = vec![0.0; len + LANES - 1];
        let off = buf.as_ptr().align_offset(64).min(LANES - 1);
        Aligned { buf, off, len }
    }
}

impl Clone for Aligned {
    /// A copy is aligned anew: the bytes move, so the offset does too.
    fn clone(&self) -> Self {
        let mut c = Aligned::zeroed(self.len);
        c.copy_from_slice(self);
        c
    }
}

impl std::ops::Deref for Aligned {
    type Target = [f64];
    fn deref(&self) -> &[f64] {
        &self.buf[self.off..self.off + self.len]
    }
}

impl std::ops::DerefMut for Aligned {
    fn deref_mut(&mut self) -> &mut [f64] {
        &mut self.buf[self.off..self.off + self.len]
    }
}

/// Evaluates `$body` with `$row`, a `Copy` closure from a row index to that row as a
/// slice of the view's element type, borrowed where the row lies.
macro_rules! by_row {
    ($rows:expr, $row:ident => $body:expr) => {{
        let rows: &Rows<'_> = $rows;
        let d = rows.dim;
        match rows.values {
            Values::F32(v) => {
                let $row = |i: usize| &v[rows.start_of(i)..][..d];
                $body
            }
            Values::F64(v) => {
                let $row = |i: usize| &v[rows.start_of(i)..][..d];
                $body
            }
            Values::F32Le(b) => {
                let $row = |i: usize| rows.le_row(b, i);
                $body
            }
        }
    }};
}

/// `h[k·m + μ] = x_k·ξ_μ` and `sq[k] = ‖x_k‖²` for `x_k = rows[idx[k]]`. Rows listed
/// in `idx` must be non-null; non-finite components propagate into `sq`. `xit` is
/// [`panel`]`(xi, m, d)`.
pub fn dots_in_place(
    rows: &Rows<'_>,
    idx: &[usize],
    xi: &[f64],
    xit: &[f64],
    m: usize,
    h: &mut [f64],
    sq: &mut [f64],
) {
    debug_assert_eq!(h.len(), idx.len() * m);
    debug_assert_eq!(sq.len(), idx.len());
    debug_assert_eq!(xit.len(), rows.dim * m.next_multiple_of(LANES));
    // Each arm instantiates the kernels for its element type; a row is borrowed where
    // it lies. f64 rows take the same kernels, so a table stored as f32 or as f64
    // scores to the same bits (the widening is exact; the sums run in one order).
    let call = Call {
        idx,
        xi,
        xit,
        m,
        h,
        sq,
    };
    by_row!(rows, row => best(rows.dim, row, call))
}

/// One call's rows to score, memories and outputs, as every kernel takes them.
struct Call<'c> {
    idx: &'c [usize],
    xi: &'c [f64],
    xit: &'c [f64],
    m: usize,
    h: &'c mut [f64],
    sq: &'c mut [f64],
}

/// The fastest kernel this CPU runs, for rows of `d` components given by `row`.
#[inline(always)]
fn best<'a, T: Copy + Into<f64> + Lane + 'a>(
    d: usize,
    row: impl Fn(usize) -> &'a [T] + Copy,
    c: Call<'_>,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports the features this function is compiled for.
            unsafe { avx512::panels(d, row, c) };
            return;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports the features these functions are compiled for.
            unsafe { avx2::tiles(d, row, c) };
            return;
        }
    }
    portable(d, row, c)
}

fn portable<'a, T: Copy + Into<f64> + 'a>(d: usize, row: impl Fn(usize) -> &'a [T], c: Call<'_>) {
    let Call {
        idx, xi, m, h, sq, ..
    } = c;
    for (k, &i) in idx.iter().enumerate() {
        let x = row(i);
        let mut acc = [0.0f64; 4];
        for c in x.chunks(4) {
            for (a, &v) in acc.iter_mut().zip(c) {
                let v: f64 = v.into();
                *a += v * v;
            }
        }
        sq[k] = (acc[0] + acc[1]) + (acc[2] + acc[3]);
        for mu in 0..m {
            let w = &xi[mu * d..(mu + 1) * d];
            let mut acc = [0.0f64; 4];
            for (cx, cw) in x.chunks(4).zip(w.chunks(4)) {
                for ((a, &v), &u) in acc.iter_mut().zip(cx).zip(cw) {
                    *a += v.into() * u;
                }
            }
            h[k * m + mu] = (acc[0] + acc[1]) + (acc[2] + acc[3]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
use lanes::Lane;

/// Off x86 only the portable kernel exists, and any widening type takes it.
#[cfg(not(target_arch = "x86_64"))]
trait Lane: Copy + Into<f64> {}
#[cfg(not(target_arch = "x86_64"))]
impl<T: Copy + Into<f64>> Lane for T {}

/// Row component types the kernels widen to f64 lanes (a plain load for f64).
#[cfg(target_arch = "x86_64")]
mod lanes {
    use std::arch::x86_64::*;

    use crate::rows::F32Le;

    pub trait Lane: Copy + Into<f64> {
        /// Four components from `p` (AVX2).
        unsafe fn load4(p: *const Self) -> __m256d;
        /// Eight components from `p` (AVX-512).
        unsafe fn load8(p: *const Self) -> __m512d;
    }

    // An x86 host is little-endian, and the unaligned loads take any address.
    impl Lane for F32Le {
        #[inline(always)]
        unsafe fn load4(p: *const F32Le) -> __m256d {
            unsafe { _mm256_cvtps_pd(_mm_loadu_ps(p.cast())) }
        }
        #[inline(always)]
        unsafe fn load8(p: *const F32Le) -> __m512d {
            unsafe { _mm512_cvtps_pd(_mm256_loadu_ps(p.cast())) }
        }
    }

    impl Lane for f32 {
        #[inline(always)]
        unsafe fn load4(p: *const f32) -> __m256d {
            unsafe { _mm256_cvtps_pd(_mm_loadu_ps(p)) }
        }
        #[inline(always)]
        unsafe fn load8(p: *const f32) -> __m512d {
            unsafe { _mm512_cvtps_pd(_mm256_loadu_ps(p)) }
        }
    }

    impl Lane for f64 {
        #[inline(always)]
        unsafe fn load4(p: *const f64) -> __m256d {
            unsafe { _mm256_loadu_pd(p) }
        }
        #[inline(always)]
        unsafe fn load8(p: *const f64) -> __m512d {
            unsafe { _mm512_loadu_pd(p) }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::lanes::Lane as Load4;
    use super::{Call, MT, RT};

    #[inline(always)]
    unsafe fn hsum(v: __m256d) -> f64 {
        unsafe {
            let lo = _mm256_castpd256_pd128(v);
            let hi = _mm256_extractf128_pd(v, 1);
            let s = _mm_add_pd(lo, hi);
            _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)))
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tiles<'a, T: Load4 + 'a>(d: usize, row: impl Fn(usize) -> &'a [T], c: Call<'_>) {
        let Call {
            idx, xi, m, h, sq, ..
        } = c;
        let d4 = d / 4 * 4;
        for (t, chunk) in idx.chunks(RT).enumerate() {
            // A short last tile repeats its row; the duplicate results are dropped.
            let x0 = row(chunk[0]);
            let x1 = row(chunk[chunk.len() - 1]);
            let (k0, k1) = (t * RT, t * RT + chunk.len() - 1);
            let mut mt = 0;
            while mt < m {
                let w = MT.min(m - mt);
                // Memories beyond m in a short tile alias the last one; dropped below.
                let rows_w: [&[f64]; MT] = std::array::from_fn(|q| {
                    let mu = mt + q.min(w - 1);
                    &xi[mu * d..(mu + 1) * d]
                });
                let first = mt == 0;
                unsafe {
                    let mut a = [[_mm256_setzero_pd(); MT]; RT];
                    let mut s = [_mm256_setzero_pd(); RT];
                    let mut j = 0;
                    while j < d4 {
                        let v0 = T::load4(x0.as_ptr().add(j));
                        let v1 = T::load4(x1.as_ptr().add(j));
                        if first {
                            s[0] = _mm256_fmadd_pd(v0, v0, s[0]);
                            s[1] = _mm256_fmadd_pd(v1, v1, s[1]);
                        }
                        for q in 0..MT {
                            let c = _mm256_loadu_pd(rows_w[q].as_ptr().add(j));
                            a[0][q] = _mm256_fmadd_pd(v0, c, a[0][q]);
                            a[1][q] = _mm256_fmadd_pd(v1, c, a[1][q]);
                        }
                        j += 4;
                    }
                    let mut out = [[0.0f64; MT]; RT];
                    for r in 0..RT {
                        for q in 0..MT {
                            out[r][q] = hsum(a[r][q]);
                        }
                    }
                    let mut ssq = [hsum(s[0]), hsum(s[1])];
                    for j in d4..d {
                        let (u0, u1): (f64, f64) = (x0[j].into(), x1[j].into());
                        if first {
                            ssq[0] += u0 * u0;
                            ssq[1] += u1 * u1;
                        }
                        for q in 0..MT {
                            out[0][q] += u0 * rows_w[q][j];
                            out[1][q] += u1 * rows_w[q][j];
                        }
                    }
                    for (r, k) in [(0, k0), (1, k1)] {
                        h[k * m + mt..k * m + mt + w].copy_from_slice(&out[r][..w]);
                        if first {
                            sq[k] = ssq[r];
                        }
                    }
                }
                mt += MT;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::lanes::Lane;
    use super::{Call, LANES};

    /// Rows per panel: 6 rows × 2 vectors = 12 accumulators in flight hide the FMA
    /// latency.
    const R: usize = 6;

    /// Bytes of `Ξᵀ` one pass over the rows reads: the slice must stay in L1 (48 KiB)
    /// beside a panel. The whole of `Ξᵀ` at d = 512, M = 16 is 64 KiB; streamed from L2
    /// once per panel it held the FMA loop to about 4.1 G FMA/s, against 5.3 G when it
    /// fits (BENCHMARKS.md).
    const SLICE_BYTES: usize = 16 << 10;

    /// Components per pass for `mp` padded memories: a multiple of the lane count, or
    /// the whole row when fewer than two vectors' worth of components fit the slice.
    /// Each pass reloads and stores every row's `mp` accumulators, so thin slices of
    /// wide memory sets trade L1 misses on `Ξᵀ` for accumulator traffic: at 640
    /// memories (K = 10, M = 64, best routing) 8-component slices made the whole score
    /// 1.7× slower than one pass (50,000 rows × d = 512, criterion medians
    /// 1.69 s against 0.98 s; 16 components 1.39 s, 64 1.06 s), and at the paper
    /// recipe's 160 (K = 10, M = 16, rows without a group) 2.5× slower (200,000 rows:
    /// 1.13 s against 0.45 s).
    fn slice_len(mp: usize, d: usize) -> usize {
        let kc = SLICE_BYTES / (mp * 8) / LANES * LANES;
        if kc < 2 * LANES {
            return d.next_multiple_of(LANES);
        }
        kc.min(d.next_multiple_of(LANES))
    }

    /// The rows are processed in passes over slices `[j0, j1)` of the components, each
    /// pass over every row in `idx`, so a slice of `Ξᵀ` is read from L2 once per call
    /// rather than once per panel. A row's accumulators wait in memory between passes
    /// and pick up where they stopped: every sum still runs over the components in
    /// order, so the bits do not depend on the slicing.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn panels<'a, T: Lane + 'a>(d: usize, row: impl Fn(usize) -> &'a [T], c: Call<'_>) {
        let kc = slice_len(c.m.next_multiple_of(LANES), d);
        unsafe { sliced(d, row, c, kc) }
    }

    /// [`panels`] with slices of `kc` components (a multiple of 8).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn sliced<'a, T: Lane + 'a>(
        d: usize,
        row: impl Fn(usize) -> &'a [T],
        c: Call<'_>,
        kc: usize,
    ) {
        let Call {
            idx, xit, m, h, sq, ..
        } = c;
        debug_assert!(kc > 0 && kc.is_multiple_of(LANES));
        let n = idx.len();
        let mp = m.next_multiple_of(LANES);
        let d8 = d / LANES * LANES;
        let mut panel = super::Aligned::zeroed(R * kc);
        // Per row: `mp` memory accumulators, then the 8 lanes of its norm.
        let stride = mp + LANES;
        let mut acc = super::Aligned::zeroed(n * stride);
        let mut j0 = 0;
        while j0 < d {
            let j1 = (j0 + kc).min(d);
            let len = j1 - j0;
            for (t, chunk) in idx.chunks(R).enumerate() {
                // Rows routed by group are scattered through the batch (every tenth
                // row, say), which the hardware prefetcher does not follow: ask for
                // the next panel's slices now, so they arrive while this one computes.
                for &i in idx.iter().skip((t + 1) * R).take(R) {
                    let next = row(i)[j0..j1].as_ptr();
                    let mut off = 0;
                    while off < len {
                        // SAFETY: a prefetch never faults; the address lies in the row.
                        unsafe { _mm_prefetch::<_MM_HINT_T0>(next.add(off) as *const i8) };
                        off += 64 / std::mem::size_of::<T>();
                    }
                }
                let vec = d8.saturating_sub(j0).min(len);
                let mut r = 0;
                while r < chunk.len() {
                    // Rows in threes: each row's norm is one chain of dependent FMAs,
                    // so three chains in flight hide the FMA latency.
                    let g = (chunk.len() - r).min(W3);
                    let xs: [&[T]; W3] =
                        std::array::from_fn(|q| &row(chunk[r + q.min(g - 1)])[j0..j1]);
                    let base = acc.as_mut_ptr();
                    let dsts: [*mut f64; W3] =
                        std::array::from_fn(|q| panel[(r + q.min(g - 1)) * kc..].as_mut_ptr());
                    let lanes: [*mut f64; W3] = std::array::from_fn(|q| {
                        // SAFETY: row t·R + r + q of `acc` exists; its lanes follow its mp sums.
                        unsafe { base.add((t * R + r + q.min(g - 1)) * stride + mp) }
                    });
                    // SAFETY: each `xs` row and panel row hold `len` elements and each
                    // `lanes` 8; the vector part stops at `vec`, a multiple of 8. A
                    // short group repeats its last row, which then only writes the same
                    // values twice, so it is widened alone.
                    unsafe {
                        match g {
                            3 => widen::<T, 3>(xs, dsts, lanes, len, vec),
                            _ => {
                                for q in 0..g {
                                    widen::<T, 1>([xs[q]], [dsts[q]], [lanes[q]], len, vec);
                                }
                            }
                        }
                    }
                    r += g;
                }
                let a = &mut acc[t * R * stride..];
                let slice = xit[j0 * mp..].as_ptr();
                let first = j0 == 0;
                let mut c0 = 0;
                while c0 < mp {
                    // SAFETY: the panel holds R rows of `len`; `slice` is `len` rows of
                    // mp; the block's columns [c0, c0 + 8·W) lie within mp; `a` holds
                    // the chunk's rows at `stride`.
                    unsafe {
                        let w = if mp - c0 >= 2 * LANES { 2 } else { 1 };
                        // A bucket's last panel is usually short: only its rows are
                        // multiplied (rows per group in a page are few, so this is a
                        // twentieth of the FMAs).
                        macro_rules! go {
                            ($w:literal, $nr:literal) => {
                                block::<$w, $nr>(&panel, kc, len, slice, mp, c0, a, stride, first)
                            };
                        }
                        match (w, chunk.len()) {
                            (2, 6) => go!(2, 6),
                            (2, 5) => go!(2, 5),
                            (2, 4) => go!(2, 4),
                            (2, 3) => go!(2, 3),
                            (2, 2) => go!(2, 2),
                            (2, _) => go!(2, 1),
                            (_, 6) => go!(1, 6),
                            (_, 5) => go!(1, 5),
                            (_, 4) => go!(1, 4),
                            (_, 3) => go!(1, 3),
                            (_, 2) => go!(1, 2),
                            _ => go!(1, 1),
                        }
                        c0 += w * LANES;
                    }
                }
            }
            j0 = j1;
        }
        for (k, &i) in idx.iter().enumerate() {
            let a = &acc[k * stride..(k + 1) * stride];
            h[k * m..(k + 1) * m].copy_from_slice(&a[..m]);
            // SAFETY: `a[mp..]` holds the norm's 8 lanes.
            let mut s = unsafe { _mm512_reduce_add_pd(_mm512_loadu_pd(a[mp..].as_ptr())) };
            for &v in &row(i)[d8..d] {
                let v: f64 = v.into();
                s += v * v;
            }
            sq[k] = s;
        }
    }

    /// Rows widened together (see `sliced`).
    const W3: usize = 3;

    /// Widens a slice of each of `N` rows into the panel and adds its first `vec`
    /// components (a multiple of 8) into that row's norm lanes. The rest (the row's
    /// last `d mod 8` components) are added after the lanes are summed, as a whole row
    /// would be. Each row's lanes see its components in order, so the bits do not
    /// depend on `N`.
    #[inline(always)]
    unsafe fn widen<T: Lane, const N: usize>(
        xs: [&[T]; N],
        dst: [*mut f64; N],
        lanes: [*mut f64; N],
        len: usize,
        vec: usize,
    ) {
        unsafe {
            let mut acc: [__m512d; N] = std::array::from_fn(|q| _mm512_loadu_pd(lanes[q]));
            let mut j = 0;
            while j < vec {
                for q in 0..N {
                    let v = T::load8(xs[q].as_ptr().add(j));
                    _mm512_storeu_pd(dst[q].add(j), v);
                    acc[q] = _mm512_fmadd_pd(v, v, acc[q]);
                }
                j += LANES;
            }
            for q in 0..N {
                _mm512_storeu_pd(lanes[q], acc[q]);
                for (j, &v) in xs[q].iter().enumerate().take(len).skip(vec) {
                    *dst[q].add(j) = v.into();
                }
            }
        }
    }

    /// Continues `acc[r·stride + c] += Σ_j panel_r[j] · ξ_c[j]` over the slice for the
    /// panel's first `NR` rows and the memories `c ∈ [c0, c0 + 8·W)` (starting from 0
    /// on the first slice).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn block<const W: usize, const NR: usize>(
        panel: &[f64],
        ps: usize,
        len: usize,
        xit: *const f64,
        mp: usize,
        c0: usize,
        acc: &mut [f64],
        stride: usize,
        first: bool,
    ) {
        unsafe {
            let at = |r: usize, q: usize| r * stride + c0 + q * LANES;
            let mut a: [[__m512d; W]; NR] = std::array::from_fn(|r| {
                std::array::from_fn(|q| {
                    if first {
                        _mm512_setzero_pd()
                    } else {
                        _mm512_loadu_pd(acc.as_ptr().add(at(r, q)))
                    }
                })
            });
            let p = panel.as_ptr();
            let mut w = xit.add(c0);
            for j in 0..len {
                let cols: [__m512d; W] = std::array::from_fn(|q| _mm512_loadu_pd(w.add(q * LANES)));
                for (r, a) in a.iter_mut().enumerate() {
                    let b = _mm512_set1_pd(*p.add(r * ps + j));
                    for q in 0..W {
                        a[q] = _mm512_fmadd_pd(b, cols[q], a[q]);
                    }
                }
                w = w.add(mp);
            }
            for (r, a) in a.iter().enumerate() {
                for (q, v) in a.iter().enumerate() {
                    _mm512_storeu_pd(acc.as_mut_ptr().add(at(r, q)), *v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type Kernel = fn(&Rows<'_>, Call<'_>);

    /// Every implementation this CPU can run, each called directly, so the AVX2 path is
    /// tested on an AVX-512 machine too.
    fn kernels() -> Vec<(&'static str, Kernel)> {
        let mut k: Vec<(&'static str, Kernel)> = vec![
            ("dispatch", |r, c| {
                dots_in_place(r, c.idx, c.xi, c.xit, c.m, c.h, c.sq)
            }),
            (
                "portable",
                |r, c| by_row!(r, row => portable(r.dim, row, c)),
            ),
        ];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                k.push(("avx2", |r, c| unsafe {
                    by_row!(r, row => avx2::tiles(r.dim, row, c))
                }));
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                k.push(("avx512", |r, c| unsafe {
                    by_row!(r, row => avx512::panels(r.dim, row, c))
                }));
            }
        }
        k
    }

    /// Memories (f32-representable, as a model file stores them), their panel, and
    /// rows, all uniform in ±0.5.
    fn random(n: usize, m: usize, d: usize, seed: u64) -> (Vec<f64>, Aligned, Vec<f32>) {
        let mut rng = crate::rng::Rng::new(seed);
        let xi: Vec<f64> = (0..m * d)
            .map(|_| f64::from((rng.next_f64() - 0.5) as f32))
            .collect();
        let xit = panel(&xi, m, d);
        let x: Vec<f32> = (0..n * d).map(|_| (rng.next_f64() - 0.5) as f32).collect();
        (xi, xit, x)
    }

    /// `x`'s rows as little-endian bytes, each after a gap of 1 to 5 bytes (so at every
    /// alignment), and where each starts.
    fn scattered(x: &[f32], d: usize) -> (Vec<u8>, Vec<usize>) {
        let (mut buf, mut at) = (Vec::new(), Vec::new());
        for (i, row) in x.chunks(d).enumerate() {
            buf.extend(std::iter::repeat_n(0xA5, 1 + i % 5));
            at.push(buf.len());
            buf.extend(row.iter().flat_map(|v| v.to_le_bytes()));
        }
        (buf, at)
    }

    /// Every kernel against the naive f64 sums, rows gathered in a scrambled order.
    fn check(n: usize, m: usize, d: usize, seed: u64) {
        let (xi, xit, x) = random(n, m, d, seed);
        let x64: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
        let idx: Vec<usize> = (0..n).map(|k| (k * 7 + 3) % n).collect();
        let (buf, at) = scattered(&x, d);
        for rows in [
            Rows::dense_f32(&x, d),
            Rows::dense_f64(&x64, d),
            Rows::scattered_f32_le(&buf, &at, d),
        ] {
            for (name, kernel) in kernels() {
                let (mut h, mut sq) = (vec![f64::NAN; n * m], vec![f64::NAN; n]);
                let c = Call {
                    idx: &idx,
                    xi: &xi,
                    xit: &xit,
                    m,
                    h: &mut h,
                    sq: &mut sq,
                };
                kernel(&rows, c);
                for (k, &i) in idx.iter().enumerate() {
                    let want_sq: f64 = (0..d).map(|j| x64[i * d + j] * x64[i * d + j]).sum();
                    assert!(
                        (sq[k] - want_sq).abs() <= 1e-12 * (1.0 + want_sq),
                        "{name}: sq, n{n} m{m} d{d}"
                    );
                    for mu in 0..m {
                        let want: f64 = (0..d).map(|j| x64[i * d + j] * xi[mu * d + j]).sum();
                        assert!(
                            (h[k * m + mu] - want).abs() <= 1e-12 * (1.0 + want.abs()),
                            "{name}: h[{k}][{mu}] = {} vs {want}, n{n} m{m} d{d}",
                            h[k * m + mu]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn matches_naive_for_odd_shapes() {
        for (n, m, d) in [
            (1, 1, 1),
            (5, 3, 7),
            (9, 17, 33),
            (4, 8, 16),
            (3, 5, 4),
            (13, 16, 512),
            (7, 24, 40),
            (6, 33, 9),
            // Several component slices, the last one ending in the d mod 8 tail.
            (13, 16, 300),
            (7, 40, 203),
        ] {
            check(n, m, d, (n * 1000 + m * 10 + d) as u64);
        }
    }

    #[test]
    fn f32_f64_and_unaligned_le_rows_give_the_same_bits() {
        let (n, m, d) = (11, 16, 77);
        let (xi, xit, x) = random(n, m, d, 8);
        let x64: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
        let idx: Vec<usize> = (0..n).rev().collect();
        let run = |rows: &Rows<'_>| {
            let (mut h, mut sq) = (vec![0.0; n * m], vec![0.0; n]);
            dots_in_place(rows, &idx, &xi, &xit, m, &mut h, &mut sq);
            (h, sq)
        };
        let want = run(&Rows::dense_f32(&x, d));
        assert_eq!(run(&Rows::dense_f64(&x64, d)), want);
        let (buf, at) = scattered(&x, d);
        assert_eq!(run(&Rows::scattered_f32_le(&buf, &at, d)), want);
    }

    /// The AVX-512 kernel sums in component order however it slices the components,
    /// so every slice length gives the bits of one pass over the whole row.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn slicing_the_components_keeps_the_bits() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            eprintln!("skipped: this CPU has no AVX-512");
            return;
        }
        let (n, m, d) = (15, 16, 203);
        let (_, xit, x) = random(n, m, d, 21);
        let idx: Vec<usize> = (0..n).map(|k| (k * 4 + 1) % n).collect();
        let run = |kc: usize| {
            let (mut h, mut sq) = (vec![0.0; n * m], vec![0.0; n]);
            // SAFETY: the CPU has AVX-512 (checked above).
            let row = |i: usize| &x[i * d..(i + 1) * d];
            let c = Call {
                idx: &idx,
                xi: &[],
                xit: &xit,
                m,
                h: &mut h,
                sq: &mut sq,
            };
            unsafe { avx512::sliced(d, row, c, kc) };
            (h, sq)
        };
        let whole = run(d.next_multiple_of(8));
        for kc in [8, 16, 48, 200] {
            assert_eq!(run(kc), whole, "slices of {kc}");
        }
    }

    #[test]
    fn aligned_buffers_start_on_a_cache_line_and_clone_whole() {
        for len in [0, 1, 7, 8, 1000] {
            let mut a = Aligned::zeroed(len);
            assert_eq!(a.len(), len);
            assert!(a.iter().all(|&v| v == 0.0));
            a.iter_mut().enumerate().for_each(|(i, v)| *v = i as f64);
            let b = a.clone();
            for x in [&a, &b] {
                assert_eq!(x.as_ptr() as usize % 64, 0, "len {len}");
            }
            assert_eq!(&a[..], &b[..]);
        }
    }

    #[test]
    fn panel_is_the_padded_transpose() {
        let xi: Vec<f64> = (0..3 * 2).map(|v| v as f64).collect(); // m = 3, d = 2
        let t = panel(&xi, 3, 2);
        assert_eq!(t.len(), 2 * 8);
        assert_eq!(&t[..8], &[0.0, 2.0, 4.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(&t[8..], &[1.0, 3.0, 5.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn every_kernel_matches_naive(n in 1usize..20, m in 1usize..40, d in 1usize..70, seed in 0u64..1000) {
            check(n, m, d, seed);
        }
    }
}

//! The scoring GEMM `h = Ξx` for rows read in place from the caller's buffer.
//!
//! A general GEMM needs the rows widened to f64 and then packed: two extra passes over
//! the largest buffer, which measured as most of the scoring time (BENCHMARKS.md). This
//! kernel reads each row once, widening components as it goes, and accumulates in f64
//! with FMA. It also returns `‖x‖²` from the same pass, so no separate norm pass reads
//! the rows again. Every memory value is f32-representable (the model file stores
//! f32), so each product of an f32 component with a memory is exact in f64 and only the
//! f64 sums round.
//!
//! Layout: dot-product form. A tile is 2 rows × 4 memories, each pair accumulated in
//! a 4-lane f64 vector over `d`, then reduced horizontally. `Ξ` stays row-major.

use crate::rows::{Rows, Values};

const RT: usize = 2;
const MT: usize = 4;

/// `h[k·m + μ] = x_k·ξ_μ` and `sq[k] = ‖x_k‖²` for `x_k = rows[idx[k]]`. Rows listed
/// in `idx` must be non-null; non-finite components propagate into `sq`.
pub fn dots_in_place(
    rows: &Rows<'_>,
    idx: &[usize],
    xi: &[f64],
    m: usize,
    h: &mut [f64],
    sq: &mut [f64],
) {
    debug_assert_eq!(h.len(), idx.len() * m);
    debug_assert_eq!(sq.len(), idx.len());
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports the features these functions are compiled for.
            unsafe {
                match rows.values {
                    Values::F32(v) => avx2::tiles_f32(v, rows, idx, xi, m, h, sq),
                    Values::F64(v) => avx2::tiles_f64(v, rows, idx, xi, m, h, sq),
                }
            }
            return;
        }
    }
    match rows.values {
        Values::F32(v) => portable(v, rows, idx, xi, m, h, sq),
        Values::F64(v) => portable(v, rows, idx, xi, m, h, sq),
    }
}

fn portable<T: Copy + Into<f64>>(
    values: &[T],
    rows: &Rows<'_>,
    idx: &[usize],
    xi: &[f64],
    m: usize,
    h: &mut [f64],
    sq: &mut [f64],
) {
    let d = rows.dim;
    for (k, &i) in idx.iter().enumerate() {
        let s = rows.start_of(i);
        let x = &values[s..s + d];
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
mod avx2 {
    use std::arch::x86_64::*;

    use super::{MT, RT};
    use crate::rows::Rows;

    /// Loads 4 components starting at `p` as f64.
    trait Load4: Copy {
        unsafe fn load4(p: *const Self) -> __m256d;
    }
    impl Load4 for f32 {
        #[inline(always)]
        unsafe fn load4(p: *const f32) -> __m256d {
            unsafe { _mm256_cvtps_pd(_mm_loadu_ps(p)) }
        }
    }
    impl Load4 for f64 {
        #[inline(always)]
        unsafe fn load4(p: *const f64) -> __m256d {
            unsafe { _mm256_loadu_pd(p) }
        }
    }

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
    pub unsafe fn tiles_f32(
        v: &[f32],
        rows: &Rows<'_>,
        idx: &[usize],
        xi: &[f64],
        m: usize,
        h: &mut [f64],
        sq: &mut [f64],
    ) {
        unsafe { tiles(v, rows, idx, xi, m, h, sq) }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tiles_f64(
        v: &[f64],
        rows: &Rows<'_>,
        idx: &[usize],
        xi: &[f64],
        m: usize,
        h: &mut [f64],
        sq: &mut [f64],
    ) {
        unsafe { tiles(v, rows, idx, xi, m, h, sq) }
    }

    #[inline(always)]
    unsafe fn tiles<T: Load4 + Into<f64>>(
        values: &[T],
        rows: &Rows<'_>,
        idx: &[usize],
        xi: &[f64],
        m: usize,
        h: &mut [f64],
        sq: &mut [f64],
    ) {
        let d = rows.dim;
        let d4 = d / 4 * 4;
        for (t, chunk) in idx.chunks(RT).enumerate() {
            // A short last tile repeats its row; the duplicate results are dropped.
            let s0 = rows.start_of(chunk[0]);
            let s1 = rows.start_of(chunk[chunk.len() - 1]);
            let x0 = &values[s0..s0 + d];
            let x1 = &values[s1..s1 + d];
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_naive_for_odd_shapes() {
        let mut rng = crate::rng::Rng::new(11);
        for (n, m, d) in [(1, 1, 1), (5, 3, 7), (9, 17, 33), (4, 8, 16), (3, 5, 4)] {
            let xi: Vec<f64> = (0..m * d)
                .map(|_| f64::from((rng.next_f64() - 0.5) as f32))
                .collect();
            let x: Vec<f32> = (0..n * d).map(|_| (rng.next_f64() - 0.5) as f32).collect();
            let x64: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
            let idx: Vec<usize> = (0..n).rev().collect();
            for rows in [Rows::dense_f32(&x, d), Rows::dense_f64(&x64, d)] {
                let (mut h, mut sq) = (vec![0.0; n * m], vec![0.0; n]);
                dots_in_place(&rows, &idx, &xi, m, &mut h, &mut sq);
                let (mut hp, mut sqp) = (vec![0.0; n * m], vec![0.0; n]);
                match rows.values {
                    Values::F32(v) => portable(v, &rows, &idx, &xi, m, &mut hp, &mut sqp),
                    Values::F64(v) => portable(v, &rows, &idx, &xi, m, &mut hp, &mut sqp),
                }
                for (k, &i) in idx.iter().enumerate() {
                    let want_sq: f64 = (0..d).map(|j| x64[i * d + j] * x64[i * d + j]).sum();
                    assert!((sq[k] - want_sq).abs() <= 1e-12 * (1.0 + want_sq));
                    assert!((sqp[k] - want_sq).abs() <= 1e-12 * (1.0 + want_sq));
                    for mu in 0..m {
                        let want: f64 = (0..d).map(|j| x64[i * d + j] * xi[mu * d + j]).sum();
                        assert!(
                            (h[k * m + mu] - want).abs() <= 1e-12 * (1.0 + want.abs()),
                            "n{n} m{m} d{d}"
                        );
                        assert!((hp[k * m + mu] - want).abs() <= 1e-12 * (1.0 + want.abs()));
                    }
                }
            }
        }
    }
}

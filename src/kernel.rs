//! Scalar and matrix building blocks shared by scoring, training and baselines.
//!
//! Everything is f64: inputs are widened once when gathered, so the log-sum-exp of the
//! rows with huge norms in the golden vectors stays exact and the energy is
//! accumulated in f64 as the spec requires.

use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2};

use crate::vexp::exp_in_place;

/// `A_β(h) = (1/β)(logsumexp(βh) − log M)`, computed around `max h` so nothing
/// overflows however large the norms are.
#[inline]
pub fn log_mean_exp(h: &[f64], beta: f64) -> f64 {
    debug_assert!(!h.is_empty());
    let m = h.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut buf = [0.0f64; 64];
    let mut s = 0.0;
    for c in h.chunks(buf.len()) {
        let b = &mut buf[..c.len()];
        for (o, &v) in b.iter_mut().zip(c) {
            *o = beta * (v - m);
        }
        exp_in_place(b);
        s += b.iter().sum::<f64>();
    }
    m + (s.ln() - (h.len() as f64).ln()) / beta
}

/// `A_β(h)` and `softmax(βh)` (into `p`) from one set of exponentials.
#[inline]
pub fn lme_softmax(h: &[f64], beta: f64, p: &mut [f64]) -> f64 {
    let m = h.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    for (o, &v) in p.iter_mut().zip(h) {
        *o = beta * (v - m);
    }
    exp_in_place(p);
    let s: f64 = p.iter().sum();
    let inv = 1.0 / s;
    p.iter_mut().for_each(|o| *o *= inv);
    m + (s.ln() - (h.len() as f64).ln()) / beta
}

/// [`lme_softmax`] for `n = a.len()` rows of `m` values at once: `a[r]` and the row's
/// softmax in `p[r·m..]`, bit for bit what the row-wise call returns.
///
/// A row has only `m` (about 16) exponentials, too few to fill the vector unit: called
/// per row, `exp`'s long dependency chain was exposed and cost a tenth of `reclag
/// score`. One call over the whole block keeps the lanes busy.
pub fn lme_softmax_rows(h: &[f64], m: usize, beta: f64, p: &mut [f64], a: &mut [f64]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports the feature the copy is compiled for; like
            // `small_gemm`'s copies it gives the portable loop's bits.
            unsafe { lme_softmax_rows_avx512(h, m, beta, p, a) };
            return;
        }
    }
    lme_softmax_rows_portable(h, m, beta, p, a);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn lme_softmax_rows_avx512(h: &[f64], m: usize, beta: f64, p: &mut [f64], a: &mut [f64]) {
    lme_softmax_rows_portable(h, m, beta, p, a);
}

#[inline(always)]
fn lme_softmax_rows_portable(h: &[f64], m: usize, beta: f64, p: &mut [f64], a: &mut [f64]) {
    debug_assert_eq!(h.len(), a.len() * m);
    debug_assert_eq!(p.len(), h.len());
    if m == 0 {
        return;
    }
    let mut maxes = Vec::with_capacity(a.len());
    for (hr, pr) in h.chunks_exact(m).zip(p.chunks_exact_mut(m)) {
        let mx = hr.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        for (o, &v) in pr.iter_mut().zip(hr) {
            *o = beta * (v - mx);
        }
        maxes.push(mx);
    }
    exp_in_place(p);
    let ln_m = (m as f64).ln();
    for ((pr, ar), mx) in p.chunks_exact_mut(m).zip(a.iter_mut()).zip(maxes) {
        let s: f64 = pr.iter().sum();
        let inv = 1.0 / s;
        pr.iter_mut().for_each(|o| *o *= inv);
        *ar = mx + (s.ln() - ln_m) / beta;
    }
}

/// `out (n×m) = p (n×m) · g (m×m)` for the small square products of the dynamics,
/// where a general GEMM's packing costs more than the arithmetic.
///
/// The loop is written once; the AVX-512 and AVX2 copies are the same source compiled
/// for wider vectors. Rust never contracts `a * b + c` into an FMA, so every copy gives
/// the same bits.
pub fn small_gemm(p: &[f64], g: &[f64], m: usize, out: &mut [f64]) {
    debug_assert_eq!(g.len(), m * m);
    debug_assert_eq!(p.len(), out.len());
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports the feature the copy is compiled for.
            unsafe { small_gemm_avx512(p, g, m, out) };
            return;
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: as above.
            unsafe { small_gemm_avx2(p, g, m, out) };
            return;
        }
    }
    small_gemm_portable(p, g, m, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn small_gemm_avx512(p: &[f64], g: &[f64], m: usize, out: &mut [f64]) {
    small_gemm_portable(p, g, m, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn small_gemm_avx2(p: &[f64], g: &[f64], m: usize, out: &mut [f64]) {
    small_gemm_portable(p, g, m, out);
}

#[inline(always)]
fn small_gemm_portable(p: &[f64], g: &[f64], m: usize, out: &mut [f64]) {
    // The usual memory counts get a copy with `m` known, so a row's accumulators stay
    // in registers instead of going through memory once per term.
    match m {
        8 => return small_gemm_fixed::<8>(p, g, out),
        10 => return small_gemm_fixed::<10>(p, g, out),
        16 => return small_gemm_fixed::<16>(p, g, out),
        32 => return small_gemm_fixed::<32>(p, g, out),
        _ => {}
    }
    for (pr, or) in p.chunks_exact(m).zip(out.chunks_exact_mut(m)) {
        or.fill(0.0);
        for (&pj, gr) in pr.iter().zip(g.chunks_exact(m)) {
            for (o, &gv) in or.iter_mut().zip(gr) {
                *o += pj * gv;
            }
        }
    }
}

#[inline(always)]
fn small_gemm_fixed<const M: usize>(p: &[f64], g: &[f64], out: &mut [f64]) {
    for (pr, or) in p.chunks_exact(M).zip(out.chunks_exact_mut(M)) {
        let mut acc = [0.0f64; M];
        for (&pj, gr) in pr.iter().zip(g.chunks_exact(M)) {
            for (a, &gv) in acc.iter_mut().zip(gr) {
                *a += pj * gv;
            }
        }
        or.copy_from_slice(&acc);
    }
}

/// Logistic function without overflow for large |z|.
#[inline]
pub fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// Index of the first maximum (ties resolve to the lowest index, like numpy).
#[inline]
pub fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

#[inline]
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[inline]
pub fn norm2(a: &[f64]) -> f64 {
    dot(a, a)
}

/// `out (n×m) = a (n×d) · bᵀ` where `b` is `m×d`, all row-major.
pub fn gemm_abt(a: &[f64], n: usize, d: usize, b: &[f64], m: usize, out: &mut [f64]) {
    debug_assert_eq!(a.len(), n * d);
    debug_assert_eq!(b.len(), m * d);
    debug_assert_eq!(out.len(), n * m);
    if n == 0 || m == 0 {
        return;
    }
    let a = ArrayView2::from_shape((n, d), a).expect("shape checked");
    let b = ArrayView2::from_shape((m, d), b).expect("shape checked");
    let mut c = ArrayViewMut2::from_shape((n, m), out).expect("shape checked");
    general_mat_mul(1.0, &a, &b.t(), 0.0, &mut c);
}

/// Terms per f32 partial sum in [`gemm_abt_f32_blocked`]: each partial sum's rounding
/// grows with its length, so the products are summed in f32 over this many terms and
/// the partial sums in f64.
pub const F32_BLOCK: usize = 32;

/// Rows per pass of [`gemm_abt_f32_blocked`]: the f32 partials and the f64 sums of a
/// pass stay in a core's L2 cache at `m` up to about 1000.
const F32_ROWS: usize = 64;

/// `out (n×m) = a (n×d) · bᵀ` (`b` is `m×d`, all row-major) with f32 products summed in
/// f32 over [`F32_BLOCK`] terms and those partial sums added in f64: the variant of
/// spec §1's f64 accumulation that `Precision::F32Blocked` measures. An f32 product
/// runs at twice the vector width of an f64 one, so this is the one place where the
/// rule's cost is visible; the deviations it causes are measured, not assumed.
pub fn gemm_abt_f32_blocked(a: &[f32], n: usize, d: usize, b: &[f32], m: usize, out: &mut [f64]) {
    debug_assert_eq!(a.len(), n * d);
    debug_assert_eq!(b.len(), m * d);
    debug_assert_eq!(out.len(), n * m);
    out.fill(0.0);
    if n == 0 || m == 0 || d == 0 {
        return;
    }
    let b = ArrayView2::from_shape((m, d), b).expect("shape checked");
    let mut part = vec![0f32; F32_ROWS.min(n) * m];
    for (r0, acc) in (0..n).step_by(F32_ROWS).zip(out.chunks_mut(F32_ROWS * m)) {
        let rows = acc.len() / m;
        let a =
            ArrayView2::from_shape((rows, d), &a[r0 * d..(r0 + rows) * d]).expect("shape checked");
        let part = &mut part[..rows * m];
        for k0 in (0..d).step_by(F32_BLOCK) {
            let k1 = (k0 + F32_BLOCK).min(d);
            let mut c = ArrayViewMut2::from_shape((rows, m), &mut *part).expect("shape checked");
            general_mat_mul(
                1.0,
                &a.slice(ndarray::s![.., k0..k1]),
                &b.slice(ndarray::s![.., k0..k1]).t(),
                0.0,
                &mut c,
            );
            acc.iter_mut()
                .zip(part.iter())
                .for_each(|(o, &p)| *o += f64::from(p));
        }
    }
}

/// `out (n×d) = p (n×m) · b (m×d)`, all row-major.
pub fn gemm_ab(p: &[f64], n: usize, m: usize, b: &[f64], d: usize, out: &mut [f64]) {
    debug_assert_eq!(p.len(), n * m);
    debug_assert_eq!(b.len(), m * d);
    debug_assert_eq!(out.len(), n * d);
    if n == 0 || d == 0 {
        return;
    }
    let p = ArrayView2::from_shape((n, m), p).expect("shape checked");
    let b = ArrayView2::from_shape((m, d), b).expect("shape checked");
    let mut c = ArrayViewMut2::from_shape((n, d), out).expect("shape checked");
    general_mat_mul(1.0, &p, &b, 0.0, &mut c);
}

/// `out (m×d) = cᵀ x` where `c` is `n×m` and `x` is `n×d`, all row-major.
pub fn gemm_atb(c: &[f64], n: usize, m: usize, x: &[f64], d: usize, out: &mut [f64]) {
    debug_assert_eq!(c.len(), n * m);
    debug_assert_eq!(x.len(), n * d);
    debug_assert_eq!(out.len(), m * d);
    if m == 0 || d == 0 {
        return;
    }
    let c = ArrayView2::from_shape((n, m), c).expect("shape checked");
    let x = ArrayView2::from_shape((n, d), x).expect("shape checked");
    let mut o = ArrayViewMut2::from_shape((m, d), out).expect("shape checked");
    general_mat_mul(1.0, &c.t(), &x, 0.0, &mut o);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_blocked_products_match_f64_and_sum_blocks_in_f64() {
        let (n, d, m) = (70, 100, 9);
        let a: Vec<f64> = (0..n * d)
            .map(|i| ((i * 37 % 101) as f64 - 50.0) / 50.0)
            .collect();
        let b: Vec<f64> = (0..m * d)
            .map(|i| ((i * 53 % 97) as f64 - 48.0) / 48.0)
            .collect();
        let mut exact = vec![0.0; n * m];
        gemm_abt(&a, n, d, &b, m, &mut exact);
        let a32: Vec<f32> = a.iter().map(|&v| v as f32).collect();
        let b32: Vec<f32> = b.iter().map(|&v| v as f32).collect();
        let mut got = vec![0.0; n * m];
        gemm_abt_f32_blocked(&a32, n, d, &b32, m, &mut got);
        for (g, e) in got.iter().zip(&exact) {
            assert!((g - e).abs() < 1e-5, "{g} vs {e}");
        }
        // 1e8 + 4095 ones: an f32 running sum stays at 1e8 (its ulp there is 8). The
        // first block's 31 ones are lost the same way, but every later block sums to
        // 32 exactly in f32 and those sums are added in f64: 1e8 + 4064.
        let d = 4096;
        let mut a = vec![1f32; d];
        a[0] = 1e8;
        let mut out = [0.0];
        gemm_abt_f32_blocked(&a, 1, d, &vec![1f32; d], 1, &mut out);
        assert!((out[0] - (1e8 + 4064.0)).abs() <= 8.0, "{}", out[0]);
    }

    #[test]
    fn log_mean_exp_of_zero_is_zero_and_bounded_by_max() {
        assert_eq!(log_mean_exp(&[0.0, 0.0, 0.0], 5.0), 0.0);
        let h = [1.0, -2.0, 3.5];
        let a = log_mean_exp(&h, 5.0);
        assert!(a <= 3.5 && a > 3.5 - (3.0f64).ln() / 5.0 - 1e-12);
        // Huge values: naive exp would overflow.
        let a = log_mean_exp(&[1e4, 1e4 - 1.0], 5.0);
        assert!((a - (1e4 + ((1.0 + (-5.0f64).exp()).ln() - 2f64.ln()) / 5.0)).abs() < 1e-9);
    }

    #[test]
    fn row_batched_softmax_is_bitwise_the_row_wise_one() {
        let mut rng = crate::rng::Rng::new(3);
        for m in [1, 3, 16, 17] {
            let n = 37;
            let h: Vec<f64> = (0..n * m).map(|_| 40.0 * (rng.next_f64() - 0.5)).collect();
            let (mut p, mut a) = (vec![0.0; n * m], vec![0.0; n]);
            lme_softmax_rows(&h, m, 5.0, &mut p, &mut a);
            for r in 0..n {
                let mut q = vec![0.0; m];
                let want = lme_softmax(&h[r * m..(r + 1) * m], 5.0, &mut q);
                assert_eq!(a[r].to_bits(), want.to_bits(), "m {m} row {r}");
                assert_eq!(&p[r * m..(r + 1) * m], &q[..]);
                assert_eq!(
                    want.to_bits(),
                    log_mean_exp(&h[r * m..(r + 1) * m], 5.0).to_bits()
                );
            }
        }
    }

    #[test]
    fn small_gemm_matches_the_general_one() {
        let mut rng = crate::rng::Rng::new(4);
        for (n, m) in [(1, 1), (5, 16), (9, 7), (3, 8), (4, 10), (2, 32)] {
            let p: Vec<f64> = (0..n * m).map(|_| rng.next_f64() - 0.5).collect();
            let g: Vec<f64> = (0..m * m).map(|_| rng.next_f64() * 3.0).collect();
            let (mut a, mut b) = (vec![f64::NAN; n * m], vec![0.0; n * m]);
            small_gemm(&p, &g, m, &mut a);
            let mut c = vec![f64::NAN; n * m];
            small_gemm_portable(&p, &g, m, &mut c);
            assert_eq!(a, c, "the vector copies give the portable loop's bits");
            gemm_ab(&p, n, m, &g, m, &mut b);
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() <= 1e-12 * (1.0 + y.abs()), "{x} vs {y}");
            }
        }
    }

    #[test]
    fn sigmoid_is_stable() {
        assert_eq!(sigmoid(-1e6), 0.0);
        assert_eq!(sigmoid(1e6), 1.0);
        assert!((sigmoid(0.0) - 0.5).abs() < 1e-15);
    }

    #[test]
    fn gemm_matches_naive() {
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]; // 2x3
        let b = [1.0, 0.0, -1.0, 2.0, 1.0, 0.5]; // 2x3
        let mut out = [0.0; 4];
        gemm_abt(&a, 2, 3, &b, 2, &mut out);
        assert_eq!(out, [-2.0, 5.5, -2.0, 16.0]);
        let mut x = [0.0; 6];
        gemm_ab(&[1.0, 1.0, 0.0, 2.0], 2, 2, &b, 3, &mut x);
        assert_eq!(x, [3.0, 1.0, -0.5, 4.0, 2.0, 1.0]);
    }
}

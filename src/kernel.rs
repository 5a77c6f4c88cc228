//! Scalar and matrix building blocks shared by scoring, training and baselines.
//!
//! Everything is f64: inputs are widened once when gathered, so the log-sum-exp of the
//! rows with huge norms in the golden vectors stays exact and the energy is
//! accumulated in f64 as the spec requires.

use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2};

/// `A_β(h) = (1/β)(logsumexp(βh) − log M)`, computed around `max h` so nothing
/// overflows however large the norms are.
#[inline]
pub fn log_mean_exp(h: &[f64], beta: f64) -> f64 {
    debug_assert!(!h.is_empty());
    let m = h.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let s: f64 = h.iter().map(|&v| (beta * (v - m)).exp()).sum();
    m + (s.ln() - (h.len() as f64).ln()) / beta
}

/// `A_β(h)` and `softmax(βh)` (into `p`) from one set of exponentials.
#[inline]
pub fn lme_softmax(h: &[f64], beta: f64, p: &mut [f64]) -> f64 {
    let m = h.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut s = 0.0;
    for (o, &v) in p.iter_mut().zip(h) {
        let e = (beta * (v - m)).exp();
        *o = e;
        s += e;
    }
    let inv = 1.0 / s;
    p.iter_mut().for_each(|o| *o *= inv);
    m + (s.ln() - (h.len() as f64).ln()) / beta
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

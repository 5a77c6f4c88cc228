//! §10's whitening folded into the memories, so a row pays no `d × d` product.
//!
//! Scoring needs `pre(x) = W(z − μ)/‖W(z − μ)‖` (with `z = l2(x)`) only through
//! `h = Ξ pre(x)` and `‖pre(x)‖`: the dynamics run in memory space (`score::dynamics`).
//! So with `P = ΞW` and `c = Pμ`, both fixed per model,
//!
//! ```text
//! h = (P z − c) / n,    n = ‖W(z − μ)‖ = ‖Lᵀ(z − μ)‖,    W² = L Lᵀ (Cholesky)
//! ```
//!
//! `P z` is the scoring kernel's product read in place from the caller's rows, exactly
//! as the paper recipe scores; the norm is a triangular product, half of `W`'s `d²`
//! multiply-adds. At d = 512, K = 10, M = 64 a row costs 0.46 M multiply-adds instead
//! of 0.59 M, and no whitened copy of the rows is written and read back
//! (BENCHMARKS.md, "Whitened recipe").
//!
//! The factors take `O(d³)` to build, once per model, on first use; past
//! [`MAX_DIM`] that is no longer small beside what a run scores, and models that large
//! keep the explicit whitening.

use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayView2, s};

use crate::tile::Aligned;

/// Widest model that folds its whitening (the `O(d³)` set-up stays under ~0.2 s).
pub(crate) const MAX_DIM: usize = 1024;

/// Columns of `L` per product in [`Folded::norms`]: a panel of `V·L` stays in L2.
const TRI_BLOCK: usize = 64;

/// One target's folded memories: `P = ΞW` (`m×d`), its scoring panel and `c = Pμ`.
#[derive(Clone, Debug)]
pub(crate) struct FoldedTarget {
    pub p: Vec<f64>,
    /// `P` rounded to f32, for [`crate::Precision::F32Blocked`] products.
    pub p32: Vec<f32>,
    pub panel: Aligned,
    pub c: Vec<f64>,
}

/// The model's folded whitening: one [`FoldedTarget`] per group, then the union's.
#[derive(Clone, Debug)]
pub(crate) struct Folded {
    pub targets: Vec<FoldedTarget>,
    /// `μ`, the fit rows' mean.
    pub mu: Vec<f64>,
    /// Lower-triangular `L` with `L Lᵀ = W²` (row-major `d×d`).
    l: Vec<f64>,
    d: usize,
}

impl Folded {
    /// Folds `w` (symmetric `d×d`) and `mu` into each memory matrix in `xis`
    /// (`(Ξ, m)`, row-major `m×d`). `None` when `W²` has no Cholesky factor in floating
    /// point (it is positive definite in exact arithmetic: `λ' > 0`), so the caller
    /// whitens explicitly instead.
    pub fn build(w: &[f64], mu: &[f64], xis: &[(&[f64], usize)], d: usize) -> Option<Folded> {
        let mut s2 = vec![0.0; d * d];
        crate::kernel::gemm_abt(w, d, d, w, d, &mut s2);
        let l = cholesky(&s2, d)?;
        let targets = xis
            .iter()
            .map(|&(xi, m)| {
                // `W` is symmetric, so `ΞW = Ξ Wᵀ`.
                let mut p = vec![0.0; m * d];
                crate::kernel::gemm_abt(xi, m, d, w, d, &mut p);
                let mut c = vec![0.0; m];
                crate::kernel::gemm_abt(&p, m, d, mu, 1, &mut c);
                let panel = crate::tile::panel(&p, m, d);
                let p32 = p.iter().map(|&v| v as f32).collect();
                FoldedTarget { p, p32, panel, c }
            })
            .collect();
        Some(Folded {
            targets,
            mu: mu.to_vec(),
            l,
            d,
        })
    }

    /// `out[r] = ‖Lᵀ v_r‖² = ‖W v_r‖²` for the rows `v_r` of `v` (`n×d`), summed in a
    /// fixed order (column blocks of `L`), whatever the thread count.
    pub fn norms(&self, v: &[f64], n: usize, out: &mut [f64]) {
        let d = self.d;
        out.fill(0.0);
        if n == 0 {
            return;
        }
        let v = ArrayView2::from_shape((n, d), v).expect("shape checked");
        let l = ArrayView2::from_shape((d, d), &self.l[..]).expect("shape checked");
        let mut y = Array2::<f64>::zeros((n, TRI_BLOCK.min(d)));
        for j0 in (0..d).step_by(TRI_BLOCK) {
            let j1 = (j0 + TRI_BLOCK).min(d);
            let mut yb = y.slice_mut(s![.., ..j1 - j0]);
            // `(vᵀL)_j = Σ_{i ≥ j} v_i L_ij`: rows above the block are zero in `L`.
            general_mat_mul(
                1.0,
                &v.slice(s![.., j0..]),
                &l.slice(s![j0.., j0..j1]),
                0.0,
                &mut yb,
            );
            for (o, row) in out.iter_mut().zip(yb.rows()) {
                *o += row.iter().map(|v| v * v).sum::<f64>();
            }
        }
    }
}

/// Lower-triangular `L` with `L Lᵀ = a` (row-major `n×n`), or `None` when a pivot is
/// not positive.
fn cholesky(a: &[f64], n: usize) -> Option<Vec<f64>> {
    // Row by row: `L_ij = (a_ij − Σ_{k<j} L_ik L_jk) / L_jj` needs rows `i` and `j`
    // up to column `j`, both contiguous in row-major order.
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let sum: f64 = l[i * n..i * n + j]
                .iter()
                .zip(&l[j * n..j * n + j])
                .map(|(x, y)| x * y)
                .sum();
            let v = a[i * n + j] - sum;
            l[i * n + j] = if j < i {
                v / l[j * n + j]
            } else if v > 0.0 && v.is_finite() {
                v.sqrt()
            } else {
                return None;
            };
        }
    }
    Some(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spd(d: usize, seed: u64) -> (Vec<f64>, Vec<f64>) {
        // W = B Bᵀ + I, symmetric positive definite.
        let mut rng = crate::rng::Rng::new(seed);
        let b: Vec<f64> = (0..d * d).map(|_| rng.next_f64() * 2.0 - 1.0).collect();
        let mut w = vec![0.0; d * d];
        crate::kernel::gemm_abt(&b, d, d, &b, d, &mut w);
        for i in 0..d {
            w[i * d + i] += 1.0;
        }
        let mu: Vec<f64> = (0..d).map(|_| rng.next_f64() * 2.0 - 1.0 * 0.1).collect();
        (w, mu)
    }

    #[test]
    fn norms_equal_the_explicit_whitening() {
        for d in [1, 7, 64, 130] {
            let (w, mu) = spd(d, d as u64);
            let f = Folded::build(&w, &mu, &[], d).expect("positive definite");
            let mut rng = crate::rng::Rng::new(9);
            let n = 37;
            let v: Vec<f64> = (0..n * d).map(|_| rng.next_f64() * 2.0 - 1.0).collect();
            let mut got = vec![0.0; n];
            f.norms(&v, n, &mut got);
            let mut wv = vec![0.0; n * d];
            crate::kernel::gemm_abt(&v, n, d, &w, d, &mut wv);
            for (r, g) in got.iter().enumerate() {
                let want = crate::kernel::norm2(&wv[r * d..(r + 1) * d]);
                assert!(
                    (g - want).abs() <= 1e-11 * want,
                    "d = {d}, row {r}: {g} vs {want}"
                );
            }
        }
    }

    #[test]
    fn folded_memories_are_the_memories_times_w() {
        let d = 5;
        let (w, mu) = spd(d, 3);
        let xi: Vec<f64> = (0..2 * d).map(|i| i as f64 - 4.0).collect();
        let f = Folded::build(&w, &mu, &[(&xi, 2)], d).unwrap();
        let t = &f.targets[0];
        for m in 0..2 {
            for j in 0..d {
                let want: f64 = (0..d).map(|k| xi[m * d + k] * w[k * d + j]).sum();
                assert!((t.p[m * d + j] - want).abs() < 1e-12);
            }
            let want: f64 = (0..d).map(|j| t.p[m * d + j] * mu[j]).sum();
            assert!((t.c[m] - want).abs() < 1e-12);
        }
    }

    #[test]
    fn a_singular_square_has_no_factor() {
        assert!(cholesky(&[1.0, 1.0, 1.0, 1.0], 2).is_none());
        assert!(cholesky(&[0.0], 1).is_none());
        let l = cholesky(&[4.0, 2.0, 2.0, 5.0], 2).unwrap();
        assert_eq!(l, vec![2.0, 0.0, 1.0, 2.0]);
    }
}

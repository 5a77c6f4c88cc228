//! §10's preprocessing: the pooled within-group covariance of the fit rows and its
//! symmetric inverse square root.
//!
//! The eigendecomposition is the classic Householder tridiagonalisation and implicit
//! QL iteration (EISPACK's `tred2`/`tql2`, as in JAMA): `O(d³)`, accurate to
//! rounding, and small enough to keep the core free of a LAPACK dependency.

use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2, s};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::model::Whitening;

/// §10's shrinkage `s`: `λ' = max(λ, 0) + s·mean(λ)`.
pub const SHRINKAGE: f64 = 1e-3;

/// Rows per pass of the covariance accumulation: bounds the centred copy.
const CHUNK: usize = 8192;
/// Columns of `Σ` per parallel task; each task owns its columns, so the sum is
/// computed in one fixed order whatever the thread count (byte-identical models).
const COLS: usize = 64;

/// `μ` (mean of all rows) and `Σ_w = (1/N) Σ_g Σ_{i∈g} (z_i − m_g)(z_i − m_g)ᵀ`
/// (row-major `d×d`) of the groups' fit rows (`n_g×d` each, already `l2`).
pub fn pooled_within(groups: &[&[f64]], d: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    let n: usize = groups.iter().map(|g| g.len() / d).sum();
    if n == 0 {
        return Err(Error::EmptyInput("no fit rows to whiten".into()));
    }
    let mut mu = vec![0.0; d];
    let mut sigma = vec![0.0; d * d];
    let mut centred = Vec::new();
    for g in groups {
        let ng = g.len() / d;
        if ng == 0 {
            continue;
        }
        let mut mg = vec![0.0; d];
        for r in g.chunks_exact(d) {
            mg.iter_mut().zip(r).for_each(|(m, v)| *m += v);
        }
        mu.iter_mut().zip(&mg).for_each(|(m, v)| *m += v);
        mg.iter_mut().for_each(|v| *v /= ng as f64);
        for rows in g.chunks(CHUNK * d) {
            let k = rows.len() / d;
            centred.clear();
            for r in rows.chunks_exact(d) {
                centred.extend(r.iter().zip(&mg).map(|(v, m)| v - m));
            }
            let x = ArrayView2::from_shape((k, d), &centred[..]).expect("shape checked");
            // Σ[:, cols] += xᵀ x[:, cols], one task per block of columns.
            let mut blocks: Vec<(usize, Vec<f64>)> = (0..d)
                .step_by(COLS)
                .map(|c0| (c0, vec![0.0; d * COLS.min(d - c0)]))
                .collect();
            blocks.par_iter_mut().for_each(|(c0, out)| {
                let w = out.len() / d;
                let mut o = ArrayViewMut2::from_shape((d, w), &mut out[..]).expect("shape");
                general_mat_mul(1.0, &x.t(), &x.slice(s![.., *c0..*c0 + w]), 0.0, &mut o);
            });
            for (c0, out) in &blocks {
                let w = out.len() / d;
                for i in 0..d {
                    let row = &mut sigma[i * d + c0..i * d + c0 + w];
                    row.iter_mut()
                        .zip(&out[i * w..(i + 1) * w])
                        .for_each(|(s, v)| *s += v);
                }
            }
        }
    }
    mu.iter_mut().for_each(|v| *v /= n as f64);
    sigma.iter_mut().for_each(|v| *v /= n as f64);
    // Symmetric by construction up to the order of a block's sums; make it exact.
    for i in 0..d {
        for j in 0..i {
            let v = 0.5 * (sigma[i * d + j] + sigma[j * d + i]);
            sigma[i * d + j] = v;
            sigma[j * d + i] = v;
        }
    }
    Ok((mu, sigma))
}

/// `W = V diag(λ'^{-1/2}) Vᵀ` with `λ'_j = max(λ_j, 0) + s·mean(λ)` for the
/// eigendecomposition `Σ = V diag(λ) Vᵀ`.
pub fn inverse_sqrt(sigma: &[f64], d: usize, shrinkage: f64) -> Result<Vec<f64>> {
    let (lambda, vt) = symmetric_eigen(sigma, d)?;
    let mean = lambda.iter().sum::<f64>() / d as f64;
    let floor = shrinkage * mean;
    let mut b = vt;
    for (j, row) in b.chunks_exact_mut(d).enumerate() {
        let l = lambda[j].max(0.0) + floor;
        if l.is_nan() || l <= 0.0 {
            return Err(Error::Model(format!(
                "the within-group covariance is zero (eigenvalue {j} is {}); the fit rows do not vary",
                lambda[j]
            )));
        }
        let f = l.powf(-0.25);
        row.iter_mut().for_each(|v| *v *= f);
    }
    let mut w = vec![0.0; d * d];
    crate::kernel::gemm_atb(&b, d, d, &b, d, &mut w);
    for i in 0..d {
        for j in 0..i {
            let v = 0.5 * (w[i * d + j] + w[j * d + i]);
            w[i * d + j] = v;
            w[j * d + i] = v;
        }
    }
    Ok(w)
}

/// Fits §10's preprocessing from each group's `l2`-normalised fit rows. Also returns
/// `Σ_w`, which the model does not keep.
pub fn fit(groups: &[&[f64]], d: usize, shrinkage: f64) -> Result<(Whitening, Vec<f64>)> {
    let (mu, sigma) = pooled_within(groups, d)?;
    let w = inverse_sqrt(&sigma, d, shrinkage)?;
    Ok((Whitening::new(d, mu, w)?, sigma))
}

/// Eigenvalues and eigenvectors (as the rows of the second result, `d×d`) of a
/// symmetric matrix.
pub fn symmetric_eigen(a: &[f64], n: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    assert_eq!(a.len(), n * n, "a square matrix");
    if a.iter().any(|v| !v.is_finite()) {
        return Err(Error::Model("the covariance has non-finite values".into()));
    }
    let mut v = a.to_vec();
    let mut d = vec![0.0; n];
    let mut e = vec![0.0; n];
    tred2(&mut v, &mut d, &mut e, n);
    // tql2 rotates pairs of columns of V; transposed, they are pairs of rows.
    let mut vt = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            vt[j * n + i] = v[i * n + j];
        }
    }
    tql2(&mut vt, &mut d, &mut e, n)?;
    Ok((d, vt))
}

/// Householder reduction of the symmetric `v` to tridiagonal form: `d` the diagonal,
/// `e` the subdiagonal (in `e[1..]`), `v` the accumulated orthogonal transformation.
/// Index loops are kept as in the published algorithm, so it can be checked line by
/// line against it.
#[allow(clippy::needless_range_loop)]
fn tred2(v: &mut [f64], d: &mut [f64], e: &mut [f64], n: usize) {
    let at = |i: usize, j: usize| i * n + j;
    for j in 0..n {
        d[j] = v[at(n - 1, j)];
    }
    for i in (1..n).rev() {
        let mut scale = 0.0;
        let mut h = 0.0;
        for k in 0..i {
            scale += d[k].abs();
        }
        if scale == 0.0 {
            e[i] = d[i - 1];
            for j in 0..i {
                d[j] = v[at(i - 1, j)];
                v[at(i, j)] = 0.0;
                v[at(j, i)] = 0.0;
            }
        } else {
            for k in 0..i {
                d[k] /= scale;
                h += d[k] * d[k];
            }
            let mut f = d[i - 1];
            let mut g = h.sqrt();
            if f > 0.0 {
                g = -g;
            }
            e[i] = scale * g;
            h -= f * g;
            d[i - 1] = f - g;
            for ej in e.iter_mut().take(i) {
                *ej = 0.0;
            }
            for j in 0..i {
                f = d[j];
                v[at(j, i)] = f;
                g = e[j] + v[at(j, j)] * f;
                for k in j + 1..i {
                    g += v[at(k, j)] * d[k];
                    e[k] += v[at(k, j)] * f;
                }
                e[j] = g;
            }
            f = 0.0;
            for j in 0..i {
                e[j] /= h;
                f += e[j] * d[j];
            }
            let hh = f / (h + h);
            for j in 0..i {
                e[j] -= hh * d[j];
            }
            for j in 0..i {
                f = d[j];
                g = e[j];
                for k in j..i {
                    v[at(k, j)] -= f * e[k] + g * d[k];
                }
                d[j] = v[at(i - 1, j)];
                v[at(i, j)] = 0.0;
            }
        }
        d[i] = h;
    }
    for i in 0..n.saturating_sub(1) {
        v[at(n - 1, i)] = v[at(i, i)];
        v[at(i, i)] = 1.0;
        let h = d[i + 1];
        if h != 0.0 {
            for k in 0..=i {
                d[k] = v[at(k, i + 1)] / h;
            }
            for j in 0..=i {
                let mut g = 0.0;
                for k in 0..=i {
                    g += v[at(k, i + 1)] * v[at(k, j)];
                }
                for k in 0..=i {
                    v[at(k, j)] -= g * d[k];
                }
            }
        }
        for k in 0..=i {
            v[at(k, i + 1)] = 0.0;
        }
    }
    for j in 0..n {
        d[j] = v[at(n - 1, j)];
        v[at(n - 1, j)] = 0.0;
    }
    v[at(n - 1, n - 1)] = 1.0;
    e[0] = 0.0;
}

/// Implicit QL on the tridiagonal `(d, e)`, rotating the rows of `vt` along.
fn tql2(vt: &mut [f64], d: &mut [f64], e: &mut [f64], n: usize) -> Result<()> {
    for i in 1..n {
        e[i - 1] = e[i];
    }
    e[n - 1] = 0.0;
    let mut f = 0.0;
    let mut tst1: f64 = 0.0;
    let eps = f64::EPSILON;
    for l in 0..n {
        tst1 = tst1.max(d[l].abs() + e[l].abs());
        let mut m = l;
        while m < n {
            if e[m].abs() <= eps * tst1 {
                break;
            }
            m += 1;
        }
        if m == n {
            m = n - 1;
        }
        if m > l {
            let mut iter = 0;
            loop {
                iter += 1;
                if iter > 60 {
                    return Err(Error::Model(
                        "the eigendecomposition of the covariance did not converge".into(),
                    ));
                }
                let mut g = d[l];
                let mut p = (d[l + 1] - g) / (2.0 * e[l]);
                let mut r = p.hypot(1.0);
                if p < 0.0 {
                    r = -r;
                }
                d[l] = e[l] / (p + r);
                d[l + 1] = e[l] * (p + r);
                let dl1 = d[l + 1];
                let mut h = g - d[l];
                for di in d.iter_mut().skip(l + 2) {
                    *di -= h;
                }
                f += h;
                p = d[m];
                let mut c = 1.0;
                let mut c2 = c;
                let mut c3 = c;
                let el1 = e[l + 1];
                let mut s = 0.0;
                let mut s2 = 0.0;
                for i in (l..m).rev() {
                    c3 = c2;
                    c2 = c;
                    s2 = s;
                    g = c * e[i];
                    h = c * p;
                    r = p.hypot(e[i]);
                    e[i + 1] = s * r;
                    s = e[i] / r;
                    c = p / r;
                    p = c * d[i] - s * g;
                    d[i + 1] = h + s * (c * g + s * d[i]);
                    let (lo, hi) = vt.split_at_mut((i + 1) * n);
                    let row_i = &mut lo[i * n..];
                    let row_i1 = &mut hi[..n];
                    for (a, b) in row_i.iter_mut().zip(row_i1.iter_mut()) {
                        let hv = *b;
                        *b = s * *a + c * hv;
                        *a = c * *a - s * hv;
                    }
                }
                p = -s * s2 * c3 * el1 * e[l] / dl1;
                e[l] = s * p;
                d[l] = c * p;
                if e[l].abs() <= eps * tst1 {
                    break;
                }
            }
        }
        d[l] += f;
        e[l] = 0.0;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// `A V = V Λ` and `V Vᵀ = I` to rounding, on random symmetric matrices of several
    /// sizes, including a rank-deficient one.
    #[test]
    fn eigendecomposition_reconstructs_the_matrix() {
        let mut rng = Rng::new(3);
        for n in [1usize, 2, 3, 7, 40] {
            for rank in [n, n / 2] {
                let b: Vec<f64> = (0..n * n).map(|_| rng.next_f64() - 0.5).collect();
                let mut a = vec![0.0; n * n];
                for i in 0..n {
                    for j in 0..n {
                        a[i * n + j] = (0..rank).map(|k| b[i * n + k] * b[j * n + k]).sum();
                    }
                }
                let (lambda, vt) = symmetric_eigen(&a, n).unwrap();
                for (j, u) in vt.chunks_exact(n).enumerate() {
                    for i in 0..n {
                        let av: f64 = (0..n).map(|k| a[i * n + k] * u[k]).sum();
                        assert!((av - lambda[j] * u[i]).abs() < 1e-10, "n {n} rank {rank}");
                    }
                    for (k, w) in vt.chunks_exact(n).enumerate() {
                        let dot: f64 = u.iter().zip(w).map(|(x, y)| x * y).sum();
                        let want = if j == k { 1.0 } else { 0.0 };
                        assert!((dot - want).abs() < 1e-10, "n {n}");
                    }
                }
                assert!(lambda.iter().all(|&l| l > -1e-10));
                let zeros = lambda.iter().filter(|l| l.abs() < 1e-10).count();
                assert!(zeros >= n - rank, "n {n} rank {rank}: {lambda:?}");
            }
        }
    }

    /// `W Σ' W = I`: the whitened rows have unit covariance (with the shrinkage).
    #[test]
    fn inverse_square_root_whitens() {
        let mut rng = Rng::new(8);
        let n = 12;
        let b: Vec<f64> = (0..n * n).map(|_| rng.next_f64() - 0.5).collect();
        let mut a = vec![0.0; n * n];
        crate::kernel::gemm_atb(&b, n, n, &b, n, &mut a);
        let w = inverse_sqrt(&a, n, 0.0).unwrap();
        let mut aw = vec![0.0; n * n];
        let mut waw = vec![0.0; n * n];
        crate::kernel::gemm_ab(&a, n, n, &w, n, &mut aw);
        crate::kernel::gemm_ab(&w, n, n, &aw, n, &mut waw);
        for i in 0..n {
            for j in 0..n {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((waw[i * n + j] - want).abs() < 1e-8, "{i},{j}");
            }
        }
    }
}

//! Side-by-side baselines (spec §9). All scores follow the metric convention: higher
//! means "more in-distribution". Query and reference rows arrive already preprocessed
//! with the model's `pre`.

use std::collections::HashMap;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::kernel::{dot, gemm_abt, log_mean_exp, norm2};
use crate::model::{GroupKey, Normalize};

/// The ID training rows, grouped by label.
pub struct Reference {
    d: usize,
    /// Per group: its key and its rows (`n_g × d`, preprocessed).
    groups: Vec<(Option<GroupKey>, Vec<f64>)>,
    index: HashMap<Option<GroupKey>, usize>,
}

impl Reference {
    pub fn new(d: usize, groups: Vec<(Option<GroupKey>, Vec<f64>)>) -> Result<Self> {
        if groups.iter().all(|(_, x)| x.is_empty()) {
            return Err(Error::EmptyInput(
                "the baseline reference (--train) has no rows".into(),
            ));
        }
        let index = groups
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (k.clone(), i))
            .collect();
        Ok(Reference { d, groups, index })
    }

    fn all_rows(&self) -> Vec<f64> {
        self.groups
            .iter()
            .flat_map(|(_, x)| x.iter().copied())
            .collect()
    }

    /// Reference group index for a query's routed key; `None` (no routing, or a key
    /// the reference lacks) means "all reference rows".
    fn route(&self, key: &Option<GroupKey>) -> Option<usize> {
        key.as_ref().and_then(|_| self.index.get(key).copied())
    }
}

/// Which baseline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Baseline {
    He,
    She,
    Mahalanobis,
    Knn,
    Msp,
    Energy,
}

impl Baseline {
    pub const ALL: [Baseline; 6] = [
        Baseline::He,
        Baseline::She,
        Baseline::Mahalanobis,
        Baseline::Knn,
        Baseline::Msp,
        Baseline::Energy,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Baseline::He => "he",
            Baseline::She => "she",
            Baseline::Mahalanobis => "mahalanobis",
            Baseline::Knn => "knn",
            Baseline::Msp => "msp",
            Baseline::Energy => "energy",
        }
    }
    pub fn parse(s: &str) -> Result<Self> {
        Baseline::ALL.into_iter().find(|b| b.name() == s).ok_or_else(|| {
            Error::param(
                "baselines",
                format!("unknown baseline '{s}'; expected some of he, she, mahalanobis, knn, msp, energy"),
            )
        })
    }
    /// Whether it needs the logits column rather than the training rows.
    pub fn needs_logits(self) -> bool {
        matches!(self, Baseline::Msp | Baseline::Energy)
    }
}

/// HE: `A_β` against all ID training rows of the routed group as untrained memories.
pub fn he(r: &Reference, beta: f64, q: &[f64], route: &[Option<GroupKey>]) -> Vec<f64> {
    let all = r.all_rows();
    per_route(r, q, route, |gi, qs| {
        let x = gi.map_or(&all, |g| &r.groups[g].1);
        let n = x.len() / r.d;
        let nq = qs.len() / r.d;
        let mut out = vec![0.0; nq];
        const B: usize = 64;
        out.par_chunks_mut(B)
            .zip(qs.par_chunks(B * r.d))
            .for_each(|(o, qb)| {
                let mut h = vec![0.0; o.len() * n];
                gemm_abt(qb, o.len(), r.d, x, n, &mut h);
                for (i, v) in o.iter_mut().enumerate() {
                    *v = log_mean_exp(&h[i * n..(i + 1) * n], beta);
                }
            });
        out
    })
}

/// SHE: inner product with the routed group's mean; without a route, the best mean.
pub fn she(r: &Reference, q: &[f64], route: &[Option<GroupKey>]) -> Vec<f64> {
    let means: Vec<Vec<f64>> = r.groups.iter().map(|(_, x)| mean(x, r.d)).collect();
    q.chunks(r.d)
        .zip(route)
        .map(|(x, key)| match r.route(key) {
            Some(g) => dot(x, &means[g]),
            None => means
                .iter()
                .map(|m| dot(x, m))
                .fold(f64::NEG_INFINITY, f64::max),
        })
        .collect()
}

/// Mahalanobis: class means with a shared (pooled) covariance; score = −min distance².
/// A ridge of `1e-6 · trace/d` keeps the covariance invertible on normalised rows.
pub fn mahalanobis(r: &Reference, q: &[f64]) -> Result<Vec<f64>> {
    let d = r.d;
    let means: Vec<Vec<f64>> = r.groups.iter().map(|(_, x)| mean(x, d)).collect();
    let mut cov = vec![0.0; d * d];
    let mut n = 0usize;
    for ((_, x), mu) in r.groups.iter().zip(&means) {
        for row in x.chunks(d) {
            let c: Vec<f64> = row.iter().zip(mu).map(|(a, b)| a - b).collect();
            for i in 0..d {
                for j in 0..=i {
                    cov[i * d + j] += c[i] * c[j];
                }
            }
            n += 1;
        }
    }
    let trace: f64 = (0..d).map(|i| cov[i * d + i]).sum::<f64>() / n as f64;
    for i in 0..d {
        for j in 0..=i {
            cov[i * d + j] /= n as f64;
            cov[j * d + i] = cov[i * d + j];
        }
        cov[i * d + i] += 1e-6 * trace / d as f64 + 1e-12;
    }
    let l = cholesky(&cov, d)
        .ok_or_else(|| Error::Model("covariance is not positive definite".into()))?;
    let w = lower_inverse(&l, d);
    // Whitened means and queries: z = W x, distance = ‖z_q − z_c‖².
    let whiten = |x: &[f64]| -> Vec<f64> {
        let n = x.len() / d;
        let mut z = vec![0.0; n * d];
        gemm_abt(x, n, d, &w, d, &mut z);
        z
    };
    let zm = whiten(&means.concat());
    let zq = whiten(q);
    Ok(zq
        .par_chunks(d)
        .map(|z| {
            -zm.chunks(d)
                .map(|c| z.iter().zip(c).map(|(a, b)| (a - b) * (a - b)).sum::<f64>())
                .fold(f64::INFINITY, f64::min)
        })
        .collect())
}

/// KNN: on L2-normalised rows, −(distance to the k-th nearest ID training row).
pub fn knn(r: &Reference, q: &[f64], k: usize) -> Vec<f64> {
    let d = r.d;
    let mut x = r.all_rows();
    x.chunks_mut(d).for_each(|row| Normalize::L2.apply(row));
    let n = x.len() / d;
    let k = k.clamp(1, n);
    let mut qn = q.to_vec();
    qn.chunks_mut(d).for_each(|row| Normalize::L2.apply(row));
    let mut out = vec![0.0; qn.len() / d];
    const B: usize = 64;
    out.par_chunks_mut(B)
        .zip(qn.par_chunks(B * d))
        .for_each(|(o, qb)| {
            let mut h = vec![0.0; o.len() * n];
            gemm_abt(qb, o.len(), d, &x, n, &mut h);
            for (i, v) in o.iter_mut().enumerate() {
                let row = &mut h[i * n..(i + 1) * n];
                let qq = norm2(&qb[i * d..(i + 1) * d]);
                // k-th nearest = k-th largest inner product (both sides unit or zero).
                let (_, kth, _) = row.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
                let dist2 = (qq + 1.0 - 2.0 * *kth).max(0.0);
                *v = -dist2.sqrt();
            }
        });
    out
}

/// MSP: the largest softmax probability of the logits.
pub fn msp(logits: &[f64], c: usize) -> Vec<f64> {
    logits
        .chunks(c)
        .map(|z| {
            let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            1.0 / z.iter().map(|v| (v - m).exp()).sum::<f64>()
        })
        .collect()
}

/// Energy score `T·logsumexp(z/T)` with `T = 1`.
pub fn energy(logits: &[f64], c: usize) -> Vec<f64> {
    logits
        .chunks(c)
        .map(|z| log_mean_exp(z, 1.0) + (c as f64).ln())
        .collect()
}

fn mean(x: &[f64], d: usize) -> Vec<f64> {
    let n = (x.len() / d).max(1) as f64;
    let mut m = vec![0.0; d];
    for row in x.chunks(d) {
        for (a, b) in m.iter_mut().zip(row) {
            *a += b;
        }
    }
    m.iter_mut().for_each(|v| *v /= n);
    m
}

/// Groups queries by route, runs `f(group, rows)` once per route, scatters back.
fn per_route(
    r: &Reference,
    q: &[f64],
    route: &[Option<GroupKey>],
    f: impl Fn(Option<usize>, &[f64]) -> Vec<f64>,
) -> Vec<f64> {
    let d = r.d;
    let mut buckets: HashMap<Option<usize>, Vec<usize>> = HashMap::new();
    for (i, key) in route.iter().enumerate() {
        buckets.entry(r.route(key)).or_default().push(i);
    }
    let mut out = vec![0.0; route.len()];
    let mut keys: Vec<_> = buckets.keys().copied().collect();
    keys.sort();
    for g in keys {
        let idx = &buckets[&g];
        let rows: Vec<f64> = idx
            .iter()
            .flat_map(|&i| q[i * d..(i + 1) * d].iter().copied())
            .collect();
        for (&i, v) in idx.iter().zip(f(g, &rows)) {
            out[i] = v;
        }
    }
    out
}

fn cholesky(a: &[f64], d: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i * d + k] * l[j * d + k]).sum();
            if i == j {
                let v = a[i * d + i] - s;
                if v <= 0.0 {
                    return None;
                }
                l[i * d + i] = v.sqrt();
            } else {
                l[i * d + j] = (a[i * d + j] - s) / l[j * d + j];
            }
        }
    }
    Some(l)
}

/// Inverse of a lower-triangular matrix by forward substitution.
fn lower_inverse(l: &[f64], d: usize) -> Vec<f64> {
    let mut inv = vec![0.0; d * d];
    for col in 0..d {
        for i in col..d {
            let s: f64 = (col..i).map(|k| l[i * d + k] * inv[k * d + col]).sum();
            let rhs = if i == col { 1.0 } else { 0.0 };
            inv[i * d + col] = (rhs - s) / l[i * d + i];
        }
    }
    inv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cholesky_inverse_whitens() {
        let a = [4.0, 2.0, 2.0, 3.0];
        let l = cholesky(&a, 2).unwrap();
        let w = lower_inverse(&l, 2);
        // W A Wᵀ = I
        let mut wa = [0.0; 4];
        for i in 0..2 {
            for j in 0..2 {
                wa[i * 2 + j] = (0..2).map(|k| w[i * 2 + k] * a[k * 2 + j]).sum();
            }
        }
        for i in 0..2 {
            for j in 0..2 {
                let v: f64 = (0..2).map(|k| wa[i * 2 + k] * w[j * 2 + k]).sum();
                assert!((v - if i == j { 1.0 } else { 0.0 }).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn msp_and_energy() {
        let z = [0.0, 0.0];
        assert!((msp(&z, 2)[0] - 0.5).abs() < 1e-15);
        assert!((energy(&z, 2)[0] - 2f64.ln()).abs() < 1e-15);
    }
}

//! Spherical k-means (§10): the memories of the whitened recipe. Rows and centres are
//! unit vectors (or zero rows), similarity is the inner product.

use rayon::prelude::*;

use crate::kernel::{gemm_abt, norm2};
use crate::rng::Rng;

/// §10's number of Lloyd iterations.
pub const ITERATIONS: usize = 25;

/// Rows per parallel task of an assignment step. The per-task sums are added in task
/// order, so the result does not depend on the thread count.
const BLOCK: usize = 2048;

/// k-means++ on cosine distance: the first centre a uniformly drawn row, each next a
/// row drawn with probability ∝ `max(0, 1 − max_c cos(row, c))` (uniformly when
/// every weight is 0). Returns `m` centres (`m×d`), copies of rows.
pub fn seed(x: &[f64], d: usize, m: usize, rng: &mut Rng) -> Vec<f64> {
    let n = x.len() / d;
    assert!(m >= 1 && m <= n, "1 <= m <= n");
    let norms: Vec<f64> = x.chunks_exact(d).map(|r| norm2(r).sqrt()).collect();
    let mut centres = Vec::with_capacity(m * d);
    let first = rng.below(n as u64) as usize;
    centres.extend_from_slice(&x[first * d..(first + 1) * d]);
    let mut best_cos = vec![f64::NEG_INFINITY; n];
    let mut last = first;
    while centres.len() < m * d {
        let c = &x[last * d..(last + 1) * d];
        let cn = norms[last];
        best_cos
            .par_iter_mut()
            .zip(x.par_chunks_exact(d))
            .zip(norms.par_iter())
            .for_each(|((b, r), &rn)| {
                let cos = if rn > 0.0 && cn > 0.0 {
                    crate::kernel::dot(r, c) / (rn * cn)
                } else {
                    0.0
                };
                *b = b.max(cos);
            });
        let weights: Vec<f64> = best_cos.iter().map(|&c| (1.0 - c).max(0.0)).collect();
        let total: f64 = weights.iter().sum();
        let pick = if total > 0.0 {
            let mut t = rng.next_f64() * total;
            let mut pick = None;
            for (i, &w) in weights.iter().enumerate() {
                if w > 0.0 {
                    pick = Some(i);
                    if t < w {
                        break;
                    }
                    t -= w;
                }
            }
            pick.expect("a positive weight exists")
        } else {
            rng.below(n as u64) as usize
        };
        centres.extend_from_slice(&x[pick * d..(pick + 1) * d]);
        last = pick;
    }
    centres
}

/// One Lloyd iteration: assigns every row to the centre of largest inner product
/// (ties: the lowest index), then replaces each centre by the `l2` of its rows' sum;
/// a centre with no rows becomes a uniformly drawn row. Returns the objective of the
/// assignment, `Σ_i x_i·c_{a(i)}` against the centres it was made with.
pub fn lloyd_step(x: &[f64], d: usize, centres: &mut [f64], rng: &mut Rng) -> f64 {
    let m = centres.len() / d;
    let n = x.len() / d;
    let parts: Vec<(Vec<f64>, Vec<u64>, f64)> = x
        .par_chunks(BLOCK * d)
        .map(|rows| {
            let k = rows.len() / d;
            let mut h = vec![0.0; k * m];
            gemm_abt(rows, k, d, centres, m, &mut h);
            let mut sums = vec![0.0; m * d];
            let mut counts = vec![0u64; m];
            let mut objective = 0.0;
            for (r, hr) in h.chunks_exact(m).enumerate() {
                let mut best = 0;
                for (c, &v) in hr.iter().enumerate() {
                    if v > hr[best] {
                        best = c;
                    }
                }
                objective += hr[best];
                counts[best] += 1;
                sums[best * d..(best + 1) * d]
                    .iter_mut()
                    .zip(&rows[r * d..(r + 1) * d])
                    .for_each(|(s, v)| *s += v);
            }
            (sums, counts, objective)
        })
        .collect();
    let mut sums = vec![0.0; m * d];
    let mut counts = vec![0u64; m];
    let mut objective = 0.0;
    for (s, c, o) in parts {
        sums.iter_mut().zip(&s).for_each(|(a, b)| *a += b);
        counts.iter_mut().zip(&c).for_each(|(a, b)| *a += b);
        objective += o;
    }
    for c in 0..m {
        let dst = &mut centres[c * d..(c + 1) * d];
        if counts[c] == 0 {
            let r = rng.below(n as u64) as usize;
            dst.copy_from_slice(&x[r * d..(r + 1) * d]);
            continue;
        }
        let s = &sums[c * d..(c + 1) * d];
        let norm = norm2(s).sqrt();
        let inv = if norm > 0.0 { 1.0 / norm } else { 0.0 };
        dst.iter_mut().zip(s).for_each(|(o, v)| *o = v * inv);
    }
    objective
}

/// §10's memories of one group: its rows themselves when `m ≥ n`, else `m` centres
/// seeded by [`seed`] and refined by [`ITERATIONS`] Lloyd iterations.
pub fn memories(x: &[f64], d: usize, m: usize, rng: &mut Rng) -> Vec<f64> {
    let n = x.len() / d;
    if m >= n {
        return x.to_vec();
    }
    let mut centres = seed(x, d, m, rng);
    for _ in 0..ITERATIONS {
        lloyd_step(x, d, &mut centres, rng);
    }
    centres
}

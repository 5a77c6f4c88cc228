//! Spec §11: conformal p-values against stored calibration scores, and
//! Benjamini–Hochberg over a batch of them. A p-value is the share of calibration rows
//! scoring at most as high as the row (plus one for the row itself), so under
//! exchangeability with those rows an ID row has `P(p ≤ α) ≤ α`, whatever the score's
//! distribution.

use crate::metrics::quantile_lower;

/// Calibration scores ready for [`Calibration::p_value`]: sorted once, so each row
/// costs one binary search.
#[derive(Clone, Debug, PartialEq)]
pub struct Calibration {
    sorted: Vec<f64>,
}

impl Calibration {
    /// Non-finite scores are dropped: a calibration row with no score is not a row
    /// the model was thresholded on.
    pub fn new(scores: impl IntoIterator<Item = f64>) -> Self {
        let mut sorted: Vec<f64> = scores.into_iter().filter(|s| s.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        Calibration { sorted }
    }

    /// Scores already sorted ascending and finite, as a model file stores them.
    pub fn from_sorted(sorted: Vec<f64>) -> Option<Self> {
        let ok = sorted.iter().all(|s| s.is_finite()) && sorted.is_sorted_by(|a, b| a <= b);
        ok.then_some(Calibration { sorted })
    }

    /// The scores, ascending.
    pub fn scores(&self) -> &[f64] {
        &self.sorted
    }

    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    /// `(1 + #{c_i ≤ s}) / (n + 1)`; NaN for a NaN score (a row with no score has no
    /// p-value).
    pub fn p_value(&self, s: f64) -> f64 {
        if s.is_nan() {
            return f64::NAN;
        }
        let at_most = self.sorted.partition_point(|&c| c <= s);
        (1 + at_most) as f64 / (self.sorted.len() + 1) as f64
    }
}

/// Where a scored row takes its p-value from (§11): the calibration scores of the
/// same kind as its score.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Against {
    /// Its group's own calibration margins: routed by a group value or by logits.
    Group(u32),
    /// The best-route scores of every calibration row: routed by largest margin.
    Best,
    /// `A_∪ − τ_*` of every calibration row: union mode.
    Union,
}

/// The calibration scores a model keeps (§11): per group, the margins `A_g − τ_g` of
/// its own calibration rows; the best-route scores `max_g(A_g − τ_g)` and the union
/// margins `A_∪ − τ_*` of all of them; and the level `ood_rate` the `τ` were taken at.
#[derive(Clone, Debug, PartialEq)]
pub struct CalibrationSets {
    pub ood_rate: f64,
    pub own: Vec<Calibration>,
    pub best: Calibration,
    pub union: Calibration,
}

impl CalibrationSets {
    pub fn against(&self, a: Against) -> &Calibration {
        match a {
            Against::Group(g) => &self.own[g as usize],
            Against::Best => &self.best,
            Against::Union => &self.union,
        }
    }
}

/// Energies of calibration rows against every group and the union, from which §7's
/// thresholds and §11's calibration scores follow. Rows arrive in blocks of one
/// group (training: a group's held-out rows) or mixed (re-thresholding: a batch of
/// labelled rows); only `K + 1` numbers per row are kept, never the rows.
#[derive(Clone, Debug)]
pub struct CalibrationEnergies {
    k: usize,
    group: Vec<u32>,
    /// Row-major `n × (K + 1)`: `A_1 … A_K, A_∪`.
    a: Vec<f64>,
}

/// Thresholds and calibration scores computed from [`CalibrationEnergies`].
#[derive(Clone, Debug, PartialEq)]
pub struct Thresholds {
    pub tau: Vec<f64>,
    pub tau_star: f64,
    pub sets: CalibrationSets,
    /// Rows per group.
    pub rows: Vec<u64>,
}

impl CalibrationEnergies {
    pub fn new(k: usize) -> Self {
        CalibrationEnergies {
            k,
            group: Vec::new(),
            a: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.group.len()
    }

    pub fn is_empty(&self) -> bool {
        self.group.is_empty()
    }

    /// Rows per group so far.
    pub fn counts(&self) -> Vec<u64> {
        let mut c = vec![0u64; self.k];
        for &g in &self.group {
            c[g as usize] += 1;
        }
        c
    }

    /// Adds preprocessed rows `x` (`n×d`) of groups `group` (`group.len() == n`):
    /// their energies against each of `memories` (`(Ξ_g, M_g)` in group order) and
    /// against the union `(Ξ_∪, M_∪)`, each by [`crate::score::energies`], the
    /// function training thresholds with, so re-thresholding a model on its own
    /// calibration rows gives back its `τ` bit for bit.
    pub fn push(
        &mut self,
        memories: &[(&[f64], usize)],
        union: (&[f64], usize),
        beta: f64,
        x: &[f64],
        d: usize,
        group: &[u32],
    ) {
        let n = group.len();
        debug_assert_eq!(x.len(), n * d);
        debug_assert_eq!(memories.len(), self.k);
        let cols: Vec<Vec<f64>> = memories
            .iter()
            .chain(std::iter::once(&union))
            .map(|&(xi, m)| crate::score::energies(xi, m, beta, x, d))
            .collect();
        self.a.reserve(n * (self.k + 1));
        for i in 0..n {
            self.a.extend(cols.iter().map(|c| c[i]));
        }
        self.group.extend_from_slice(group);
    }

    /// §7's thresholds at level `ood_rate` and §11's calibration scores. A group with
    /// no rows has no threshold: the error names its index.
    pub fn thresholds(&self, ood_rate: f64) -> Result<Thresholds, usize> {
        let k = self.k;
        let w = k + 1;
        let mut own: Vec<Vec<f64>> = vec![Vec::new(); k];
        for (i, &g) in self.group.iter().enumerate() {
            own[g as usize].push(self.a[i * w + g as usize]);
        }
        let mut tau = Vec::with_capacity(k);
        for (g, e) in own.iter().enumerate() {
            tau.push(quantile_lower(e, ood_rate).ok_or(g)?);
        }
        let union: Vec<f64> = (0..self.len()).map(|i| self.a[i * w + k]).collect();
        let tau_star = quantile_lower(&union, ood_rate).ok_or(0usize)?;
        let best = (0..self.len()).map(|i| {
            let row = &self.a[i * w..i * w + k];
            // Ties go to the first group, as routing's do; only the value matters here.
            row.iter()
                .zip(&tau)
                .map(|(a, t)| a - t)
                .fold(f64::NEG_INFINITY, f64::max)
        });
        let rows = own.iter().map(|e| e.len() as u64).collect();
        let own = own
            .into_iter()
            .zip(&tau)
            .map(|(e, t)| Calibration::new(e.into_iter().map(|a| a - t)))
            .collect();
        Ok(Thresholds {
            sets: CalibrationSets {
                ood_rate,
                own,
                best: Calibration::new(best),
                union: Calibration::new(union.iter().map(|a| a - tau_star)),
            },
            tau,
            tau_star,
            rows,
        })
    }
}

/// Which p-values Benjamini–Hochberg rejects at level `q`: the `k` smallest, `k` the
/// largest rank with `p_(k) ≤ k q / m`. NaN p-values (rows with no score) are never
/// rejected and do not count in `m`.
pub fn benjamini_hochberg(p: &[f64], q: f64) -> Vec<bool> {
    let mut order: Vec<usize> = (0..p.len()).filter(|&i| !p[i].is_nan()).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let m = order.len() as f64;
    let k = order
        .iter()
        .enumerate()
        .rev()
        .find(|&(rank, &i)| p[i] <= (rank + 1) as f64 * q / m)
        .map_or(0, |(rank, _)| rank + 1);
    let mut rejected = vec![false; p.len()];
    for &i in &order[..k] {
        rejected[i] = true;
    }
    rejected
}

/// Benjamini–Hochberg from counts: `counts` holds each distinct p-value once,
/// ascending, with how many rows have it. Returns the largest rejected p-value (every
/// p-value at or below it is rejected), `None` when nothing is. The same decision as
/// [`benjamini_hochberg`] on the expanded list: within a run of equal p-values the
/// last rank has the loosest bound, so only run ends need testing.
pub fn benjamini_hochberg_threshold(counts: &[(f64, u64)], q: f64) -> Option<f64> {
    let m = counts.iter().map(|(_, c)| c).sum::<u64>() as f64;
    let mut rank = 0u64;
    let mut last = None;
    for &(p, c) in counts {
        rank += c;
        if p <= rank as f64 * q / m {
            last = Some(p);
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p_values_count_ties_as_at_most_and_skip_missing_scores() {
        let c = Calibration::new([0.3, 0.1, f64::NAN, 0.2, 0.2]);
        assert_eq!(c.len(), 4);
        assert_eq!(c.p_value(-1.0), 1.0 / 5.0);
        assert_eq!(c.p_value(0.2), 4.0 / 5.0);
        assert_eq!(c.p_value(9.0), 1.0);
        assert!(c.p_value(f64::NAN).is_nan());
        assert_eq!(Calibration::new([]).p_value(0.0), 1.0);
    }

    #[test]
    fn benjamini_hochberg_takes_the_largest_passing_rank() {
        // Sorted with bounds k·q/m: 0.01 ≤ 0.0125, 0.03 > 0.025, 0.035 ≤ 0.0375,
        // 0.9 > 0.05; so k = 3 and 0.03 is rejected though it fails its own bound.
        let p = [0.035, 0.9, 0.01, 0.03, f64::NAN];
        assert_eq!(
            benjamini_hochberg(&p, 0.05),
            [true, false, true, true, false]
        );
        assert_eq!(benjamini_hochberg(&[0.5, 0.6], 0.05), [false, false]);
        assert!(benjamini_hochberg(&[], 0.1).is_empty());
    }

    /// On discrete p-values with many ties (as conformal ones are), the counted form
    /// rejects exactly the rows the list form does.
    #[test]
    fn threshold_from_counts_agrees_with_the_list_form() {
        let mut rng = crate::rng::Rng::new(3);
        for trial in 0..200 {
            let n_cal = 1 + rng.below(50) as usize;
            let m = 1 + rng.below(300) as usize;
            // Mostly large p-values, some small: a mix of ID and OOD rows.
            let p: Vec<f64> = (0..m)
                .map(|_| {
                    let j = if rng.next_f64() < 0.3 {
                        rng.below(3)
                    } else {
                        rng.below(n_cal as u64 + 1)
                    };
                    (1 + j) as f64 / (n_cal + 1) as f64
                })
                .collect();
            let q = [0.05, 0.1, 0.2, 0.5][trial % 4];
            let want = benjamini_hochberg(&p, q);
            let mut counts: Vec<(f64, u64)> = Vec::new();
            let mut sorted = p.clone();
            sorted.sort_by(f64::total_cmp);
            for v in sorted {
                match counts.last_mut() {
                    Some((last, c)) if *last == v => *c += 1,
                    _ => counts.push((v, 1)),
                }
            }
            let t = benjamini_hochberg_threshold(&counts, q);
            let got: Vec<bool> = p.iter().map(|v| t.is_some_and(|t| *v <= t)).collect();
            assert_eq!(got, want, "trial {trial}");
        }
    }
}

//! Spec §11: conformal p-values against stored calibration scores, and
//! Benjamini–Hochberg over a batch of them. A p-value is the share of calibration rows
//! scoring at most as high as the row (plus one for the row itself), so under
//! exchangeability with those rows an ID row has `P(p ≤ α) ≤ α`, whatever the score's
//! distribution.

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
}

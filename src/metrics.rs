//! Evaluation metrics (spec §7 quantile, §8). ID is the positive class and a higher
//! score means "more ID".

/// The `⌊q·(n−1)⌋`-th order statistic (numpy `method="lower"`). NaNs are ignored.
/// Returns `None` for an empty input.
pub fn quantile_lower(values: &[f64], q: f64) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    let k = ((q.clamp(0.0, 1.0)) * (v.len() - 1) as f64).floor() as usize;
    let (_, kth, _) = v.select_nth_unstable_by(k, |a, b| a.total_cmp(b));
    Some(*kth)
}

/// AUROC with ties counted one half (Mann–Whitney U over average ranks).
pub fn auroc(id: &[f64], ood: &[f64]) -> f64 {
    let (n1, n0) = (id.len() as f64, ood.len() as f64);
    if id.is_empty() || ood.is_empty() {
        return f64::NAN;
    }
    let mut all: Vec<(f64, bool)> = id
        .iter()
        .map(|&s| (s, true))
        .chain(ood.iter().map(|&s| (s, false)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut rank_sum_id = 0.0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j + 1 < all.len() && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        // Average 1-based rank of the tie run i..=j.
        let avg = (i + j) as f64 / 2.0 + 1.0;
        let ids = all[i..=j].iter().filter(|e| e.1).count() as f64;
        rank_sum_id += avg * ids;
        i = j + 1;
    }
    (rank_sum_id - n1 * (n1 + 1.0) / 2.0) / (n1 * n0)
}

/// FPR at 95 % TPR: threshold = the 5 % quantile (§7) of the ID scores; the fraction
/// of OOD rows scoring at or above it.
pub fn fpr_at_95_tpr(id: &[f64], ood: &[f64]) -> f64 {
    let Some(t) = quantile_lower(id, 0.05) else {
        return f64::NAN;
    };
    if ood.is_empty() {
        return f64::NAN;
    }
    ood.iter().filter(|&&s| s >= t).count() as f64 / ood.len() as f64
}

/// Average precision with `pos` as the positive class (higher score = positive),
/// i.e. `Σ (R_k − R_{k−1}) P_k` over distinct thresholds (scikit-learn's definition).
pub fn average_precision(pos: &[f64], neg: &[f64]) -> f64 {
    if pos.is_empty() {
        return f64::NAN;
    }
    let mut all: Vec<(f64, bool)> = pos
        .iter()
        .map(|&s| (s, true))
        .chain(neg.iter().map(|&s| (s, false)))
        .collect();
    all.sort_by(|a, b| b.0.total_cmp(&a.0));
    let p_total = pos.len() as f64;
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut prev_recall = 0.0;
    let mut ap = 0.0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j < all.len() && all[j].0 == all[i].0 {
            if all[j].1 {
                tp += 1.0;
            } else {
                fp += 1.0;
            }
            j += 1;
        }
        let recall = tp / p_total;
        let precision = tp / (tp + fp);
        ap += (recall - prev_recall) * precision;
        prev_recall = recall;
        i = j;
    }
    ap
}

/// AUROC, FPR95 and both AUPRs of one ID/OOD pair.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Report {
    pub auroc: f64,
    pub fpr95: f64,
    pub aupr_in: f64,
    pub aupr_out: f64,
    pub n_id: usize,
    pub n_ood: usize,
}

/// Scores that are NaN (null rows) are dropped before computing anything.
pub fn report(id: &[f64], ood: &[f64]) -> Report {
    let id: Vec<f64> = id.iter().copied().filter(|v| !v.is_nan()).collect();
    let ood: Vec<f64> = ood.iter().copied().filter(|v| !v.is_nan()).collect();
    let neg = |v: &[f64]| v.iter().map(|x| -x).collect::<Vec<_>>();
    Report {
        auroc: auroc(&id, &ood),
        fpr95: fpr_at_95_tpr(&id, &ood),
        aupr_in: average_precision(&id, &ood),
        aupr_out: average_precision(&neg(&ood), &neg(&id)),
        n_id: id.len(),
        n_ood: ood.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perfect_and_inverted_separation() {
        let r = report(&[3.0, 4.0, 5.0], &[0.0, 1.0]);
        assert_eq!(
            (r.auroc, r.fpr95, r.aupr_in, r.aupr_out),
            (1.0, 0.0, 1.0, 1.0)
        );
        let r = report(&[0.0, 1.0], &[3.0, 4.0]);
        assert_eq!(r.auroc, 0.0);
        assert_eq!(r.fpr95, 1.0);
    }

    #[test]
    fn all_ties_give_one_half() {
        assert_eq!(auroc(&[1.0, 1.0], &[1.0, 1.0, 1.0]), 0.5);
    }
}

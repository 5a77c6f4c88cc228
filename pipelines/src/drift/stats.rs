//! The statistics of a drift verdict: the one-sided binomial test and quantiles.

/// `ln Γ(x)` for `x > 0` (Lanczos, g = 7; relative error below 1e-13).
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection keeps the series in its accurate range.
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = G[0];
    let t = x + 7.5;
    for (i, g) in G.iter().enumerate().skip(1) {
        a += g / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

fn ln_pmf(i: u64, n: u64, ln_p: f64, ln_q: f64) -> f64 {
    let (i, n) = (i as f64, n as f64);
    ln_gamma(n + 1.0) - ln_gamma(i + 1.0) - ln_gamma(n - i + 1.0) + i * ln_p + (n - i) * ln_q
}

/// `P(X ≥ k)` for `X ~ Binomial(n, p)`: the p-value of seeing `k` or more OOD rows in
/// `n` when the model's calibrated rate is `p`. The tail is summed from whichever side
/// is short, term by term in log space, so it stays exact far into the tail (where
/// the drift verdicts are made) without an incomplete-beta library.
pub fn binomial_sf(k: u64, n: u64, p: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if k > n || p <= 0.0 {
        return 0.0;
    }
    if p >= 1.0 {
        return 1.0;
    }
    let (ln_p, ln_q) = (p.ln(), (-p).ln_1p());
    let mean = n as f64 * p;
    // Both sums start at the mode's side and walk away from it, so the terms only
    // shrink: once one underflows to zero, so do all the rest. Without that stop, a
    // drifted partition (its count far above the mean, every term zero) summed all
    // `n` terms, 3 `ln_gamma` each: 12 % of a drift run's CPU in `perf`.
    let sum_from = |range: &mut dyn Iterator<Item = u64>| {
        let mut s = 0.0;
        for i in range {
            let t = ln_pmf(i, n, ln_p, ln_q).exp();
            s += t;
            if t < s * 1e-17 || t == 0.0 {
                break;
            }
        }
        s
    };
    if k as f64 > mean {
        sum_from(&mut (k..=n)).min(1.0)
    } else {
        (1.0 - sum_from(&mut (0..k).rev())).clamp(0.0, 1.0)
    }
}

fn ln_choose(n: u64, k: u64) -> f64 {
    ln_gamma(n as f64 + 1.0) - ln_gamma(k as f64 + 1.0) - ln_gamma((n - k) as f64 + 1.0)
}

/// One-sided Fisher exact test that a partition's OOD share `k / n` exceeds a
/// reference's `r / m`: `P(X ≥ k)` for `X` hypergeometric (`n` draws from `n + m`
/// rows of which `k + r` are OOD). Unlike [`binomial_sf`] against `r / m`, it counts
/// the reference as the sample it is, so a reference that happens to run low does not
/// turn ordinary days into alarms.
pub fn fisher_sf(k: u64, n: u64, r: u64, m: u64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    let (total, ood) = (n + m, k + r);
    let hi = n.min(ood);
    let ln_denom = ln_choose(total, n);
    let pmf = |i: u64| (ln_choose(ood, i) + ln_choose(total - ood, n - i) - ln_denom).exp();
    let lo = ood.saturating_sub(m);
    let mean = n as f64 * ood as f64 / total as f64;
    let mut s = 0.0;
    // Walk away from the mode, as `binomial_sf` does: the terms only shrink.
    if k as f64 > mean {
        for i in k..=hi {
            let t = pmf(i);
            s += t;
            if t < s * 1e-17 || t == 0.0 {
                break;
            }
        }
        s.min(1.0)
    } else {
        for i in (lo..k).rev() {
            let t = pmf(i);
            s += t;
            if t < s * 1e-17 || t == 0.0 {
                break;
            }
        }
        (1.0 - s).clamp(0.0, 1.0)
    }
}

/// The `q`-quantile of sorted values, by linear interpolation between order statistics
/// (NumPy's default), so reported percentiles match what users compute themselves.
pub fn quantile_sorted(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let h = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (lo, hi) = (h.floor() as usize, h.ceil() as usize);
    Some(sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exact tails of small binomials, by summing the pmf with integer binomials.
    fn exact(k: u64, n: u64, p: f64) -> f64 {
        let mut c = 1.0f64;
        let mut total = 0.0;
        for i in 0..=n {
            if i > 0 {
                c = c * (n - i + 1) as f64 / i as f64;
            }
            if i >= k {
                total += c * p.powi(i as i32) * (1.0 - p).powi((n - i) as i32);
            }
        }
        total
    }

    #[test]
    fn binomial_tail_matches_exact_sums() {
        assert!((binomial_sf(8, 10, 0.5) - 56.0 / 1024.0).abs() < 1e-14);
        for (n, p) in [(20, 0.05), (50, 0.3), (60, 0.9)] {
            for k in 0..=n {
                let (got, want) = (binomial_sf(k, n, p), exact(k, n, p));
                assert!(
                    (got - want).abs() <= 1e-12 * want.max(1e-300) + 1e-15,
                    "k={k} n={n} p={p}: {got} vs {want}"
                );
            }
        }
        assert_eq!(binomial_sf(0, 5, 0.1), 1.0);
        assert_eq!(binomial_sf(6, 5, 0.1), 0.0);
        // Far tail: 200 OOD rows in 1000 at a 5% rate is astronomically unlikely, but
        // still a positive, finite number rather than 0 or NaN.
        let far = binomial_sf(200, 1000, 0.05);
        assert!(far > 0.0 && far < 1e-50, "{far}");
        // Monotone in k.
        let mut last = 1.0;
        for k in 0..=120 {
            let v = binomial_sf(k, 1000, 0.05);
            assert!(v <= last + 1e-15, "k={k}");
            last = v;
        }
    }

    /// The early stop at an underflowed term gives the full log-space sum's value, in
    /// the body, far in the tail, and where every term underflows (a drifted
    /// partition of 100k rows).
    #[test]
    fn stopping_at_underflow_loses_nothing() {
        let (n, p) = (100_000u64, 0.05f64);
        let (ln_p, ln_q) = (p.ln(), (-p).ln_1p());
        let full = |k: u64| -> f64 {
            (k..=n)
                .map(|i| ln_pmf(i, n, ln_p, ln_q).exp())
                .sum::<f64>()
                .min(1.0)
        };
        for k in [5_100u64, 5_500, 6_000, 7_500, 20_000, 60_000] {
            let (got, want) = (binomial_sf(k, n, p), full(k));
            assert!((got - want).abs() <= 1e-12 * want, "k={k}: {got} vs {want}");
        }
        assert!(binomial_sf(6_000, n, p) > 0.0);
        assert_eq!(binomial_sf(20_000, n, p), 0.0);
    }

    /// Against the direct sum of the hypergeometric tail, and the tail of the
    /// table `[[66, 634], [183, 2617]]` summed in exact integers (Python's
    /// `math.comb`): 0.0059991.
    #[test]
    fn fisher_tail_matches_exact_sums() {
        fn exact(k: u64, n: u64, r: u64, m: u64) -> f64 {
            let c = |n: u64, k: u64| -> f64 {
                (0..k).fold(1.0, |a, i| a * (n - i) as f64 / (i + 1) as f64)
            };
            let (total, ood) = (n + m, k + r);
            (k..=n.min(ood))
                .map(|i| c(ood, i) * c(total - ood, n - i) / c(total, n))
                .sum()
        }
        for (k, n, r, m) in [
            (3, 10, 1, 20),
            (0, 10, 5, 20),
            (10, 10, 0, 30),
            (7, 40, 9, 60),
            (2, 40, 20, 60),
        ] {
            let (a, b) = (fisher_sf(k, n, r, m), exact(k, n, r, m));
            assert!(
                (a - b).abs() < 1e-12 * b.max(1e-300) + 1e-15,
                "{k} {n} {r} {m}: {a} vs {b}"
            );
        }
        let p = fisher_sf(66, 700, 183, 2800);
        assert!((p - 0.005_999_087).abs() < 1e-8, "{p}");
        // Far more conservative than the binomial against the reference's rate.
        assert!(binomial_sf(66, 700, 183.0 / 2800.0) < p);
    }

    #[test]
    fn quantiles_interpolate_like_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile_sorted(&v, 0.5), Some(2.5));
        assert_eq!(quantile_sorted(&v, 0.0), Some(1.0));
        assert_eq!(quantile_sorted(&v, 1.0), Some(4.0));
        assert!((quantile_sorted(&v, 0.05).unwrap() - 1.15).abs() < 1e-12);
        assert_eq!(quantile_sorted(&[], 0.5), None);
    }
}

//! The spec's properties (§2): the origin attractor for any Ξ and τ > 0, energy
//! descent along trajectories, and the vanilla Hopfield limit.

use proptest::prelude::*;
use reclag::kernel::norm2;
use reclag::score::step;
use reclag::{Rows, ScoreOutput, Work, lyapunov};

use crate::common::model;

fn xi_strategy() -> impl Strategy<Value = (usize, usize, Vec<f64>)> {
    (1usize..8, 1usize..10).prop_flat_map(|(m, d)| {
        (
            Just(m),
            Just(d),
            proptest::collection::vec(-5.0f64..5.0, m * d),
        )
    })
}

fn unit(v: &[f64]) -> Vec<f64> {
    let n = norm2(v).sqrt();
    if n == 0.0 {
        v.to_vec()
    } else {
        v.iter().map(|x| x / n).collect()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// For every Ξ and τ > 0: the origin and a ball of radius τ/max‖ξ‖ map to 0 in one
    /// step (A_β(Ξx) ≤ max_μ ξ_μᵀx ≤ max‖ξ‖·‖x‖ < τ there).
    #[test]
    fn origin_and_small_ball_are_captured(
        (m, d, xi) in xi_strategy(),
        tau in 0.01f64..5.0,
        beta in 0.1f64..20.0,
        dir in proptest::collection::vec(-1.0f64..1.0, 10),
        frac in 0.0f64..0.999,
    ) {
        let mdl = model(vec![(None, xi.clone(), m, tau)], d, beta, tau);
        let max_norm = xi.chunks(d).map(|r| norm2(r).sqrt()).fold(0.0, f64::max);
        let radius = if max_norm > 0.0 { tau / max_norm } else { 1.0 };
        let u = unit(&dir[..d]);
        let x: Vec<f64> = u.iter().map(|v| v * radius * frac).collect();
        let mut rows = vec![0.0; d];
        rows.extend_from_slice(&x);
        let mut out = ScoreOutput::default();
        mdl.score_into(&Rows::dense_f64(&rows, d), None, Work::WithDynamics, &mut out).unwrap();
        for r in 0..2 {
            prop_assert!(out.is_ood[r], "row {} not captured: energy {} tau {}", r, out.energy[r], tau);
            prop_assert_eq!(out.steps[r], 1);
            prop_assert_eq!(out.attractor[r], -1);
            prop_assert!(out.ood_probability[r] > 0.5);
        }
        prop_assert!(step(&xi, m, beta, tau, &x).iter().all(|&v| v == 0.0));
    }

    /// `E_τ` never increases along a trajectory (CCCP descent), for any τ.
    #[test]
    fn energy_never_increases(
        (m, d, xi) in xi_strategy(),
        tau in -5.0f64..5.0,
        beta in 0.1f64..10.0,
        x0 in proptest::collection::vec(-4.0f64..4.0, 10),
    ) {
        let mut x = x0[..d].to_vec();
        let mut e = lyapunov(&xi, m, beta, tau, &x);
        for t in 0..20 {
            let next = step(&xi, m, beta, tau, &x);
            let e_next = lyapunov(&xi, m, beta, tau, &next);
            prop_assert!(e_next <= e + 1e-9 * (1.0 + e.abs()), "step {}: E went {} -> {}", t, e, e_next);
            x = next;
            e = e_next;
        }
    }

    /// With τ → −∞ the update is the vanilla modern Hopfield update Ξᵀ softmax(βΞx).
    #[test]
    fn vanilla_limit(
        (m, d, xi) in xi_strategy(),
        beta in 0.1f64..10.0,
        x0 in proptest::collection::vec(-4.0f64..4.0, 10),
    ) {
        let x = &x0[..d];
        let h: Vec<f64> = xi.chunks(d).map(|r| r.iter().zip(x).map(|(a, b)| a * b).sum()).collect();
        // Naive softmax, written independently of the kernel.
        let mx = h.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = h.iter().map(|v| (beta * (v - mx)).exp()).collect();
        let z: f64 = e.iter().sum();
        let want: Vec<f64> = (0..d).map(|j| (0..m).map(|mu| e[mu] / z * xi[mu * d + j]).sum()).collect();
        let got = step(&xi, m, beta, -1e300, x);
        for (a, b) in got.iter().zip(&want) {
            prop_assert!((a - b).abs() <= 1e-9 * (1.0 + b.abs()));
        }
        // And the full model never captures a row in this limit.
        let mdl = model(vec![(None, xi.clone(), m, -1e300)], d, beta, -1e300);
        let mut out = ScoreOutput::default();
        mdl.score_into(&Rows::dense_f64(x, d), None, Work::WithDynamics, &mut out).unwrap();
        prop_assert!(!out.is_ood[0]);
    }
}

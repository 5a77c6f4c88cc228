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

mod readers {
    use std::sync::{Arc, OnceLock};

    use arrow_array::builder::{Float32Builder, ListBuilder};
    use arrow_array::{ArrayRef, Int64Array};
    use proptest::prelude::*;
    use reclag::{GroupKey, ScoreOutput, Work};

    use crate::common::{cli, fsl, model, write_parquet};

    fn model_bytes() -> &'static (Vec<u8>, String) {
        static B: OnceLock<(Vec<u8>, String)> = OnceLock::new();
        B.get_or_init(|| {
            let m = model(
                vec![
                    (
                        Some(GroupKey::Int(0)),
                        (0..24).map(|i| i as f64 * 0.1).collect(),
                        3,
                        0.5,
                    ),
                    (
                        Some(GroupKey::Int(4)),
                        (0..16).map(|i| 1.0 - i as f64 * 0.1).collect(),
                        2,
                        0.7,
                    ),
                ],
                8,
                5.0,
                0.6,
            );
            (
                reclag::format::to_bytes(&m).unwrap(),
                reclag::format::checksum(&m),
            )
        })
    }

    /// A small valid data file's bytes. Only bytes are kept across cases: a static
    /// `TempDir` is never dropped, so its directory would outlive the test run.
    fn data_file() -> &'static Vec<u8> {
        static D: OnceLock<Vec<u8>> = OnceLock::new();
        D.get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let rows: Vec<Option<Vec<f32>>> =
                (0..50).map(|i| Some(vec![i as f32 * 0.01; 8])).collect();
            let p = dir.path().join("data.parquet");
            write_parquet(
                &p,
                vec![
                    ("embedding", fsl(&rows, 8)),
                    (
                        "label",
                        Arc::new(Int64Array::from(vec![0i64; 50])) as ArrayRef,
                    ),
                ],
            );
            std::fs::read(&p).unwrap()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// A damaged model file is an error (or, when the damage misses the content,
        /// the same model), never a panic.
        #[test]
        fn model_reader_survives_damage(cut in 0usize..4096, flips in proptest::collection::vec((0usize..4096, 1u8..=255), 0..4)) {
            let (good, sum) = model_bytes();
            let mut b = good.clone();
            for (pos, x) in flips {
                let n = b.len();
                b[pos % n] ^= x;
            }
            if cut < b.len() && cut % 3 == 0 {
                b.truncate(cut);
            }
            match reclag::format::from_bytes(b.into(), std::path::Path::new("fuzz.parquet")) {
                Ok(m) => prop_assert_eq!(&reclag::format::checksum(&m), sum),
                Err(e) => prop_assert!(e.to_string().starts_with("model file fuzz.parquet:"), "{}", e),
            }
        }

        /// A damaged input table fails `reclag score` with an error naming the file.
        #[test]
        fn data_reader_survives_damage(cut in 0usize..8192, flips in proptest::collection::vec((0usize..8192, 1u8..=255), 1..4)) {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("model.parquet"), &model_bytes().0).unwrap();
            let mut b = data_file().clone();
            for (pos, x) in flips {
                let n = b.len();
                b[pos % n] ^= x;
            }
            if cut < b.len() && cut % 2 == 0 {
                b.truncate(cut);
            }
            let input = dir.path().join("in.parquet");
            std::fs::write(&input, &b).unwrap();
            let out = dir.path().join("out.parquet");
            let r = cli(&["score", "--model", dir.path().join("model.parquet").to_str().unwrap(), "--input", input.to_str().unwrap(), "--output", out.to_str().unwrap()]);
            if let Err(e) = r {
                prop_assert!(!e.is_empty());
            }
        }

        /// Arbitrary List columns (ragged, null, NaN) through the Arrow adapter: an
        /// error iff a non-null row has the wrong length, otherwise null outputs
        /// exactly for null or non-finite rows.
        #[test]
        fn list_adapter_is_total(rows in proptest::collection::vec(proptest::option::of(proptest::collection::vec(prop_oneof![Just(f32::NAN), -3.0f32..3.0], 7..10)), 0..40)) {
            let mut b = ListBuilder::new(Float32Builder::new());
            for r in &rows {
                match r {
                    Some(v) => { b.values().append_slice(v); b.append(true); }
                    None => b.append(false),
                }
            }
            let arr = b.finish();
            let m = model(vec![(None, (0..24).map(|i| (i as f64).sin()).collect(), 3, 0.1)], 8, 5.0, 0.1);
            let bad_row = rows.iter().position(|r| r.as_ref().is_some_and(|v| v.len() != 8));
            match reclag::arrow::embedding_rows(&arr, "e", Some(8)) {
                Err(e) => prop_assert!(bad_row.is_some(), "unexpected error {}", e),
                Ok(view) => {
                    prop_assert!(bad_row.is_none());
                    let mut out = ScoreOutput::default();
                    m.score_into(&view, None, Work::WithDynamics, &mut out).unwrap();
                    for (i, r) in rows.iter().enumerate() {
                        let want = r.as_ref().is_some_and(|v| v.iter().all(|x| x.is_finite()));
                        prop_assert_eq!(out.valid[i], want);
                    }
                }
            }
        }
    }
}
